"""Held-out masked-LM (and sentence-task) evaluation.

The validation split is masked once at data-prep time (``masking.validation_seed``), so
every arm of an ablation is scored on the same positions. The loss is a token average over
the whole split — the sum of per-token cross-entropies divided by the number of predicted
tokens — not a mean of batch means, so it does not depend on how the split is batched or
on the world size (up to float summation order). A model with an NSP or SOP head is also
scored on the split's sentence labels when it has them (BERT §3.1 reports NSP accuracy,
ALBERT Table 5 SOP accuracy), as an average over pairs.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import numpy as np
import torch

from pretrain.training.batching import Collator
from pretrain.training.distributed import all_reduce_sum


@torch.no_grad()
def evaluate(
    model: Callable[..., Dict[str, torch.Tensor]],
    collator: Collator,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    max_batches: Optional[int] = None,
) -> Dict[str, float]:
    """MLM loss, perplexity and accuracy over the validation split.

    The split is read in row order in batches of ``batch_size × world_size`` sequences;
    rank ``r`` scores the ``r``-th slice of each batch and the sums are added over ranks.
    Every rank runs the same number of forward passes (ZeRO-3 gathers weights collectively):
    a rank whose slice of the last batch is empty scores one row and discards it.

    Args:
        model: the DeepSpeed engine (or any module) returning ``mlm_loss`` (float scalar,
            mean over the batch's labelled tokens) and ``mlm_correct`` / ``mlm_count``.
            It is put in eval mode for the pass and back in train mode after.
        collator: a Collator over the validation split (masked, so epoch 0 = its one copy).
        batch_size: sequences per forward pass on one rank (``train.micro_batch_size``).
        max_batches: score only the first this many global batches (None = all).
    Returns:
        ``{"mlm_loss": nats per predicted token, "perplexity": exp(mlm_loss),
        "mlm_accuracy": share of predicted tokens whose argmax is right,
        "num_tokens": predicted tokens scored}``, plus, when the model returns sentence
        scores (a sentence head and labels in the split), ``"<nsp|sop>_loss"`` (nats per
        pair) and ``"sentence_accuracy"`` (share of pairs classified right).
    """
    n = len(collator.split)
    step = batch_size * world_size
    starts = list(range(0, n, step))
    if max_batches is not None:
        starts = starts[: max(1, int(max_batches))]
    # Sums in float64: thousands of batch losses lose digits in float32.
    # MLM loss sum, correct, count; sentence loss sum, correct, count.
    totals = torch.zeros(6, dtype=torch.float64)
    sentence_key = None
    was_training = getattr(model, "training", True)
    model.eval()
    try:
        for s in starts:
            rows = np.arange(s, min(s + step, n))
            mine = rows[rank * batch_size : (rank + 1) * batch_size]
            keep = len(mine) > 0
            batch = collator(mine if keep else rows[:1], epoch=0)
            out = model(**batch)
            if not keep:
                continue
            count = float(out["mlm_count"])
            totals[:3] += torch.tensor([float(out["mlm_loss"]) * count, float(out["mlm_correct"]), count], dtype=torch.float64)
            if "sentence_count" in out:
                sentence_key = next(k for k in ("nsp_loss", "sop_loss") if k in out)
                pairs = float(out["sentence_count"])
                totals[3:] += torch.tensor([float(out[sentence_key]) * pairs, float(out["sentence_correct"]), pairs],
                                           dtype=torch.float64)
    finally:
        model.train(was_training)
    all_reduce_sum(totals)
    loss_sum, correct, count, s_loss_sum, s_correct, s_count = totals.tolist()
    if count == 0:
        raise ValueError("the validation split has no labelled tokens")
    loss = loss_sum / count
    result = {"mlm_loss": loss, "perplexity": math.exp(min(loss, 700.0)), "mlm_accuracy": correct / count,
              "num_tokens": int(count)}
    if s_count > 0:
        # Every rank that scored pairs knows the key; all ranks see the same model and split.
        result[sentence_key or "sentence_loss"] = s_loss_sum / s_count
        result["sentence_accuracy"] = s_correct / s_count
    return result
