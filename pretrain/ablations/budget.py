"""The ``real_tokens`` budget of an ablation: every arm trains on as many real
(non-padding) tokens per step as the first arm, by its global batch size.

RoBERTa §4.2 (Liu et al. 2019) compares input formats at about equal text: for
SENTENCE-PAIR, "Since these inputs are significantly shorter than 512 tokens, we increase
the batch size so that the total number of tokens remains similar to SEGMENT-PAIR", and for
DOC-SENTENCES it varies the batch size "to achieve a similar number of total tokens as
FULL-SENTENCES". Equal sequence slots (the ``tokens`` budget: steps × batch ×
max_seq_length) give an arm of short rows less text; this budget gives it more rows.

An arm's real tokens per row slot come from its built training data: the mean row length
(special tokens counted, padding not) of the shard manifest's instance statistics
(``stats.instances.train``: tokens / sequences of copy 0, the rows a dynamic build makes),
or ``data.max_seq_length`` for DOC-SENTENCES batched by tokens (``pretrain.training.batching
.TokenBudgetSampler`` already reads ``global_batch_size × max_seq_length`` tokens a step).
The steps, learning rate and intervals stay as composed; the micro batch stays within
``train.micro_batch_size`` (the loop accumulates the rest), so memory per forward pass does
not grow. The batches split over ``WORLD_SIZE`` ranks (1 when unset), the world size
``pretrain ablate`` checks with; ``pretrain submit`` checks them against its job's ranks and
names an arm whose batch does not split (submit with ``WORLD_SIZE=<ranks>`` set then).
"""

from __future__ import annotations

import os
from typing import Dict

from common.errors import UserError
from pretrain.config import RunConfig

# Arms' real tokens (steps × batch × tokens per row slot) may differ from the first arm's
# by this share at most: the batch is a whole number of rows (and of ranks).
REAL_TOKEN_TOLERANCE = 0.05


def tokens_per_row(cfg: RunConfig, build_missing: bool = False) -> float:
    """Real (non-padding) tokens per row slot of ``cfg``'s training data (module
    docstring). With ``build_missing`` the data are built if they are not yet
    (``data_prep.build.build``: cached by fingerprint, so the runner's later
    ``prepare_data`` finds them up to date). Raises UserError for data that are not built
    (without ``build_missing``) or do not build, or a manifest without instance statistics."""
    from data_prep.build import build
    from data_prep.config import data_fingerprint, resolve_output_dir
    from data_prep.shards import MANIFEST, read_manifest

    if cfg.data.format == "doc_sentences" and cfg.data.doc_sentences_batching == "tokens":
        return float(cfg.data.max_seq_length)
    if build_missing:
        directory = build(cfg.data)
    else:
        directory = resolve_output_dir(cfg.data)
        if not (directory / MANIFEST).is_file() or read_manifest(directory).get("fingerprint") != data_fingerprint(cfg.data):
            raise UserError(f"{cfg.name}: budget real_tokens needs the arm's data built in {directory}; run "
                            "pretrain ablate (it builds them first) or data-prep build with the arm's data config")
    stats = read_manifest(directory).get("stats", {}).get("instances", {}).get("train", {})
    if not stats.get("sequences"):
        raise UserError(f"{directory}: the manifest has no training instance statistics; rebuild it with data-prep build --force")
    return stats["tokens"] / stats["sequences"]


def _batch_near(target: float, cfg: RunConfig, world_size: int) -> int:
    """The global batch nearest ``target`` rows that splits over ``world_size`` ranks into
    micro batches of at least half of ``train.micro_batch_size`` (so a batch with few
    divisors does not fall back to tiny forward passes)."""
    from pretrain.training.engine import split_batch

    cap = int(cfg.train.micro_batch_size)
    base = max(1, round(target / world_size))
    for offset in range(base + 1):
        for k in (base + offset, base - offset):
            if k >= 1 and split_batch(k * world_size, cap, world_size)[0] >= max(1, min(cap, k) // 2):
                return k * world_size
    return base * world_size


def equalize_real_tokens(cfgs: Dict[str, RunConfig], build_missing: bool = True) -> Dict[str, float]:
    """Set ``train.global_batch_size`` of every run after the first so that its real tokens
    per step (batch × ``tokens_per_row``) are the first run's, the nearest batch that splits
    over ``WORLD_SIZE`` ranks (1 by default) with micro batches of at least half of
    ``train.micro_batch_size``. Modifies ``cfgs``; returns run → tokens per row slot.
    Builds every arm's data that is not built yet (``build_missing=False``: UserError instead,
    for ``bench/suite_cost.py``, which only reads). Raises UserError as ``tokens_per_row``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    per_row = _per_row(cfgs, build_missing=build_missing)
    runs = list(cfgs)
    first = cfgs[runs[0]]
    target = first.train.global_batch_size * per_row[runs[0]]
    for run in runs[1:]:
        cfgs[run].train.global_batch_size = _batch_near(target / per_row[run], cfgs[run], world_size)
    return per_row


def _per_row(cfgs: Dict[str, RunConfig], build_missing: bool = False) -> Dict[str, float]:
    from data_prep.config import data_fingerprint

    seen: Dict[str, float] = {}
    out: Dict[str, float] = {}
    for run, cfg in cfgs.items():
        key = data_fingerprint(cfg.data) + f":{cfg.data.doc_sentences_batching}"
        if key not in seen:
            seen[key] = tokens_per_row(cfg, build_missing)
        out[run] = seen[key]
    return out


def check_real_tokens(cfgs: Dict[str, RunConfig]) -> None:
    """Raise UserError, listing every run's steps × batch × tokens per row slot, when a
    run's real tokens differ from the first run's by more than ``REAL_TOKEN_TOLERANCE``
    (``equalize_real_tokens`` makes them equal up to whole rows). The arms' data must be
    built (UserError otherwise, as ``tokens_per_row``)."""
    per_row = _per_row(cfgs)
    total = {r: c.train.max_steps * c.train.global_batch_size * per_row[r] for r, c in cfgs.items()}
    target = next(iter(total.values()))
    if any(abs(t - target) > REAL_TOKEN_TOLERANCE * target for t in total.values()):
        detail = ", ".join(
            f"{r}={c.train.max_steps}×{c.train.global_batch_size}×{per_row[r]:.1f}={total[r]:,.0f}" for r, c in cfgs.items()
        )
        raise UserError(
            f"arms see different numbers of real tokens (train.max_steps × train.global_batch_size × mean row "
            f"length): {detail}; with budget real_tokens leave the arms' global_batch_size to the runner, or "
            "raise the first arm's batch so whole rows can match it"
        )
