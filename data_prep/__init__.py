"""Data preparation for BERT-family pretraining: corpus reading, tokenizer training,
instance creation, masking and sharding."""
