"""DistilBERT's triple loss (Sanh et al. 2019, §2-3), scored fairseq style from the logits
and last hidden states of a student and a frozen teacher (``pretrain.tasks.base.Criterion``).

    step loss = alpha_ce · L_ce + alpha_mlm · L_mlm + alpha_cos · L_cos

- ``ce``: the distillation loss, ``T² · KL(p_teacher^T || p_student^T)`` per token, where
  ``p^T = softmax(logits / T)`` (Hinton et al. 2015; §2 "softmax-temperature", T = 2),
  averaged over every non-padding token (or the masked ones only, ``restrict_ce_to_mask``).
  Minimising this KL has the gradient of the paper's cross-entropy ``Σ t_i log s_i`` (they
  differ by the teacher's entropy, a constant). Hugging Face's ``distiller.py`` computes
  ``KLDivLoss(reduction="batchmean")`` over the selected tokens times T²: the same mean.
- ``mlm``: the student's masked-LM cross-entropy, averaged over the masked tokens (§3).
- ``cos``: the cosine embedding loss ``1 - cos(h_student, h_teacher)`` between the last
  hidden states, averaged over the non-padding tokens (§3; ``distiller.py`` uses
  ``CosineEmbeddingLoss`` with target 1 over the attention mask).

Each term is returned as a SUM over its tokens with the count it is a sum over; the loop
divides by the global counts of the optimizer step, so every token of the step weighs the
same whatever micro batch or rank it landed in (fairseq's ``sample_size``).
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from common.schema import IGNORE_INDEX
from pretrain.tasks.base import Batch, Criterion, Terms


def _empty(x: torch.Tensor) -> torch.Tensor:
    # A term with no items: zero, but every parameter stays in the graph (data-parallel
    # reduction would otherwise wait for gradients that never come).
    return x.sum() * 0.0


class DistillationCriterion(Criterion):
    """Distillation + masked LM + cosine loss of a student against a frozen teacher.

    Args:
        teacher: the frozen teacher (``pretrain.models.encoder.BertForPretraining``, eval
            mode, no gradients; it runs under ``torch.no_grad``). Same vocabulary and
            hidden size as the student.
        temperature: T (> 0).
        alpha_ce, alpha_mlm, alpha_cos: the weights of the three terms (``weights``).
        restrict_ce_to_mask: the ``ce`` term over the masked tokens only.

    Batches (``pretrain.training.batching.Collator``, dynamic masking): int64
    ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels`` ``[batch, seq]``
    (-100 = not masked). The student and the teacher decode every non-padding position
    (``labels`` passed to the models only select positions). Terms: ``ce``, ``mlm``,
    ``cos`` (logged as ``ce_loss``, ``mlm_loss``, ``cos_loss``), float32 sums in nats (cos:
    in units of 1 - cosine). Logs (int64/float sums): ``mlm_correct``, ``mlm_count`` (the
    student's masked-token accuracy), ``teacher_mlm_correct``, ``teacher_mlm_nll`` (the
    teacher on the same masks, for the share of its quality the student keeps).
    """

    def __init__(self, teacher: nn.Module, temperature: float, alpha_ce: float, alpha_mlm: float, alpha_cos: float,
                 restrict_ce_to_mask: bool = False) -> None:
        self.teacher = teacher
        self.temperature = float(temperature)
        self.restrict_ce_to_mask = restrict_ce_to_mask
        self.weights = {"ce": float(alpha_ce), "mlm": float(alpha_mlm), "cos": float(alpha_cos)}

    def sample_size(self, batch: Batch) -> Terms:
        masked = (batch["labels"] != IGNORE_INDEX).sum()
        tokens = batch["attention_mask"].bool().sum()
        return {"ce": masked if self.restrict_ce_to_mask else tokens, "mlm": masked, "cos": tokens}

    def __call__(self, model: nn.Module, batch: Batch) -> Tuple[Terms, Terms, Terms]:
        attention_mask, labels = batch["attention_mask"], batch["labels"]
        keep = attention_mask.bool()
        select = torch.where(keep, torch.zeros_like(labels), torch.full_like(labels, IGNORE_INDEX))
        inputs = dict(input_ids=batch["input_ids"], attention_mask=attention_mask, token_type_ids=batch["token_type_ids"],
                      labels=select)
        student = model(**inputs)
        with torch.no_grad():
            teacher = self.teacher(**inputs)
        s_logits, t_logits = student["mlm_logits"].float(), teacher["mlm_logits"].float()  # [tokens, vocab]
        s_hidden, t_hidden = student["hidden_states"][keep].float(), teacher["hidden_states"][keep].float()  # [tokens, H]
        target = labels[keep]  # [tokens], in the row-major order of the decoded positions
        masked = target != IGNORE_INDEX
        t = self.temperature

        ce_rows = masked if self.restrict_ce_to_mask else slice(None)
        if s_logits[ce_rows].numel():
            ce = F.kl_div(F.log_softmax(s_logits[ce_rows] / t, dim=-1), F.log_softmax(t_logits[ce_rows] / t, dim=-1),
                          reduction="sum", log_target=True) * (t * t)
        else:
            ce = _empty(s_logits)
        if masked.any():
            mlm = F.cross_entropy(s_logits[masked], target[masked], reduction="sum")
            teacher_nll = F.cross_entropy(t_logits[masked], target[masked], reduction="sum").detach()
        else:
            mlm, teacher_nll = _empty(s_logits), torch.zeros((), device=s_logits.device)
        cos = (1.0 - F.cosine_similarity(s_hidden, t_hidden, dim=-1)).sum() if len(s_hidden) else _empty(s_hidden)

        sizes = self.sample_size(batch)
        logs = {
            "mlm_correct": (s_logits[masked].argmax(-1) == target[masked]).sum().detach(),
            "mlm_count": sizes["mlm"],
            "teacher_mlm_correct": (t_logits[masked].argmax(-1) == target[masked]).sum(),
            "teacher_mlm_nll": teacher_nll,
        }
        return {"ce": ce, "mlm": mlm, "cos": cos}, sizes, logs
