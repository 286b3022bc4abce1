"""Fine-tuning criteria (``pretrain.tasks.base.Criterion``: per-term sums and counts).

- ``ClassificationCriterion``: cross-entropy of a sequence classifier; term ``cls``, counted
  in examples (BERT §4.1: "standard classification loss with C and W, i.e., log(softmax(CW^T))").
- ``RegressionCriterion``: squared error of a one-output head (STS-B; Hugging Face's
  ``*ForSequenceClassification`` with ``num_labels=1`` uses MSE); term ``mse``, in examples.
- ``TokenCriterion``: cross-entropy at the labelled positions (first sub-token of each word,
  BERT §5.3; -100 elsewhere); term ``tok``, counted in labelled tokens, so every word weighs
  the same whichever micro batch it lands in.

Batches hold ``input_ids``, ``attention_mask``, ``token_type_ids`` int64 ``[batch, seq]`` and
``labels``: int64 ``[batch]`` (classification), float32 ``[batch]`` (regression) or int64
``[batch, seq]`` (token). The model is a ``pretrain.models.heads.FineTuneModel`` (or the
DeepSpeed engine around one) returning logits.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from common.schema import IGNORE_INDEX
from pretrain.tasks.base import Batch, Criterion, Terms


def _logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).float()


class ClassificationCriterion(Criterion):
    """Cross-entropy summed over examples; logs ``cls_correct`` and ``cls_count``."""

    weights = {"cls": 1.0}

    def sample_size(self, batch: Batch) -> Terms:
        return {"cls": torch.tensor(batch["labels"].shape[0], dtype=torch.int64)}

    def __call__(self, model: nn.Module, batch: Batch) -> Tuple[Terms, Terms, Terms]:
        logits = _logits(model, batch)
        labels = batch["labels"].long()
        loss = F.cross_entropy(logits, labels, reduction="sum")
        n = torch.tensor(labels.numel(), dtype=torch.int64, device=logits.device)
        logs = {"cls_correct": (logits.argmax(-1) == labels).sum().detach(), "cls_count": n}
        return {"cls": loss}, {"cls": n}, logs


class RegressionCriterion(Criterion):
    """Squared error summed over examples; logs ``mse_count``."""

    weights = {"mse": 1.0}

    def sample_size(self, batch: Batch) -> Terms:
        return {"mse": torch.tensor(batch["labels"].shape[0], dtype=torch.int64)}

    def __call__(self, model: nn.Module, batch: Batch) -> Tuple[Terms, Terms, Terms]:
        pred = _logits(model, batch).squeeze(-1)
        loss = F.mse_loss(pred, batch["labels"].float(), reduction="sum")
        n = torch.tensor(pred.shape[0], dtype=torch.int64, device=pred.device)
        return {"mse": loss}, {"mse": n}, {"mse_count": n}


class TokenCriterion(Criterion):
    """Cross-entropy summed over labelled tokens; logs ``tok_correct`` and ``tok_count``."""

    weights = {"tok": 1.0}

    def sample_size(self, batch: Batch) -> Terms:
        return {"tok": (batch["labels"] != IGNORE_INDEX).sum()}

    def __call__(self, model: nn.Module, batch: Batch) -> Tuple[Terms, Terms, Terms]:
        logits = _logits(model, batch)
        labels = batch["labels"].long()
        sel = labels != IGNORE_INDEX
        n = sel.sum()
        if int(n):
            loss = F.cross_entropy(logits[sel], labels[sel], reduction="sum")
        else:  # keeps every parameter in the graph (data-parallel reduction must not stall)
            loss = logits.sum() * 0.0
        logs = {"tok_correct": (logits[sel].argmax(-1) == labels[sel]).sum().detach(), "tok_count": n.detach()}
        return {"tok": loss}, {"tok": n}, logs


CRITERIA: Dict[str, type] = {"classification": ClassificationCriterion, "regression": RegressionCriterion, "token": TokenCriterion}
