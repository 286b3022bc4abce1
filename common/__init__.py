"""What ``data_prep`` and ``pretrain`` share: the user-facing error, the YAML config loader,
atomic writes and the shard schema (column names, label ids, format names). Defined here once;
both packages import it, neither imports the other for these."""
