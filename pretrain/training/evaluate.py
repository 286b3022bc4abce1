"""Held-out scoring with any criterion: the sums of a whole split, over every rank.

A criterion returns per-batch sums and counts (``pretrain.tasks.base.Criterion``), so the
split's loss is the sum of per-item losses over the split divided by the number of items
— a token average for MLM, not a mean of batch means — and does not depend on how the
split is batched or on the world size (up to float summation order). Tasks turn the sums
into their metrics (``pretrain.tasks.pretraining``: MLM loss, perplexity, accuracy; NSP/SOP
loss and accuracy).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import torch
from torch import nn

from pretrain.tasks.base import Batch, Criterion
from pretrain.training.distributed import all_reduce_sum


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Every tensor of ``batch`` on ``device`` (no copy when it is already there)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def module_device(model: nn.Module) -> torch.device:
    """Where ``model`` computes: a DeepSpeed engine's ``device``, else its first parameter's."""
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


@torch.no_grad()
def score_split(
    criterion: Criterion,
    model: nn.Module,
    collate: Callable[[np.ndarray], Batch],
    num_rows: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    max_batches: Optional[int] = None,
) -> Dict[str, Dict[str, float]]:
    """Sum ``criterion``'s loss sums, sample sizes and logs over a split, over all ranks.

    The split's rows ``0 .. num_rows-1`` are read in order in global batches of
    ``batch_size × world_size``; rank ``r`` scores the ``r``-th slice of each and the sums
    are added over ranks (in float64: thousands of batch sums lose digits in float32).
    Every rank runs the same number of forward passes (ZeRO-3 gathers weights
    collectively): a rank whose slice of the last batch is empty scores one row and
    discards it.

    Args:
        criterion: scores ``model`` on a batch (``Criterion.__call__``).
        model: the DeepSpeed engine or any module; in eval mode for the pass, restored after.
        collate: rows int64 ``[n]`` → a CPU batch (moved to the model's device here).
        num_rows: rows in the split.
        batch_size: rows per forward pass on one rank.
        max_batches: score only the first this many global batches (None = all).
    Returns:
        ``{"loss_sum": {term: nats}, "sample_size": {term: count}, "logs": {name: sum}}``,
        identical on every rank.
    Raises:
        ValueError: an empty split.
    """
    if num_rows < 1:
        raise ValueError("the split to score is empty")
    step = batch_size * world_size
    starts = list(range(0, num_rows, step))
    if max_batches is not None:
        starts = starts[: max(1, int(max_batches))]
    device = module_device(model)
    totals: Dict[str, Dict[str, float]] = {"loss_sum": {}, "sample_size": {}, "logs": {}}
    was_training = getattr(model, "training", True)
    model.eval()
    try:
        for s in starts:
            rows = np.arange(s, min(s + step, num_rows))
            mine = rows[rank * batch_size : (rank + 1) * batch_size]
            keep = len(mine) > 0
            parts = criterion(model, to_device(collate(mine if keep else rows[:1]), device))
            for name, part in zip(totals, parts):
                for k, v in part.items():
                    totals[name][k] = totals[name].get(k, 0.0) + (float(v) if keep else 0.0)
    finally:
        model.train(was_training)
    # Every rank ran the criterion on the same model and split, so the keys agree.
    keys = [(name, k) for name in totals for k in sorted(totals[name])]
    reduced = all_reduce_sum(torch.tensor([totals[name][k] for name, k in keys], dtype=torch.float64)).tolist()
    for (name, k), v in zip(keys, reduced):
        totals[name][k] = v
    return totals
