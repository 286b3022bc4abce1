"""ELECTRA's criterion (Clark et al. 2020, §2 Eq. 1): the generator's masked-LM loss plus λ
times the discriminator's replaced-token-detection loss, fairseq style
(``pretrain.tasks.base.Criterion``: sums and the counts they are sums over).

- ``gen_mlm``: cross-entropy of the generator's logits at the masked positions, summed;
  counted over the masked positions. Weight ``electra.gen_weight`` (1.0).
- ``disc``: binary cross-entropy of the discriminator's logits against "replaced" (the
  sampled token differs from the original), summed over every non-padding token
  (``disc_positions=all``, the paper and the reference's ``_get_discriminator_output``
  weighting by ``input_mask``) or over the masked positions only (``masked``: Table 5's
  "ELECTRA 15%"); counted over the same positions. Weight ``electra.disc_weight``
  (λ = 50, Table 6).

The reference divides each loss by its own count in the batch; here the loop divides by
the optimizer step's global counts (``pretrain.tasks.base``), which is the same thing for
one micro batch on one rank and weighs every token alike otherwise.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from common.schema import IGNORE_INDEX
from pretrain.tasks.base import Batch, Criterion, Terms


class ElectraCriterion(Criterion):
    """Generator MLM + λ · discriminator loss, computed in fp32.

    Args:
        electra_cfg: ``pretrain.config.ElectraConfig`` (weights, ``disc_positions``).
        sampler: random generator of the generator's sampling (None = torch's global one,
            saved in checkpoints: training; a seeded one: evaluation, so every arm and every
            resume scores the same corruptions).

    Batches: int64 ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels``
    ``[batch, seq]`` (``pretrain.training.batching.Collator``). Logs (int64 sums over the
    batch): ``gen_correct`` (argmax = original at masked positions), ``gen_count``,
    ``sampled_original`` (samples equal to the original), ``disc_correct``, ``disc_count``,
    ``disc_true_pos`` (replaced and predicted replaced), ``disc_pred_pos`` (predicted
    replaced), ``disc_replaced`` (replaced): precision = true_pos / pred_pos, recall =
    true_pos / replaced, as the reference's ``disc_precision`` / ``disc_recall``.
    """

    def __init__(self, electra_cfg, sampler: Optional[torch.Generator] = None) -> None:
        self.weights = {"gen_mlm": float(electra_cfg.gen_weight), "disc": float(electra_cfg.disc_weight)}
        self.disc_positions = electra_cfg.disc_positions
        self.sampler = sampler

    def _disc_mask(self, batch: Batch) -> torch.Tensor:
        if self.disc_positions == "masked":
            return batch["labels"] != IGNORE_INDEX
        return batch["attention_mask"].bool()

    def sample_size(self, batch: Batch) -> Terms:
        return {"gen_mlm": (batch["labels"] != IGNORE_INDEX).sum(), "disc": self._disc_mask(batch).sum()}

    def __call__(self, model: nn.Module, batch: Batch) -> Tuple[Terms, Terms, Terms]:
        labels = batch["labels"]
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"], labels=labels, sampler=self.sampler)
        target = labels[labels != IGNORE_INDEX]
        logits = out["mlm_logits"].float()
        # a term with no items keeps every parameter in the graph (data-parallel reduction)
        gen = F.cross_entropy(logits, target, reduction="sum") if target.numel() else logits.sum() * 0.0
        where = self._disc_mask(batch)
        d_logits = out["disc_logits"].float()
        replaced = out["replaced"]
        disc = F.binary_cross_entropy_with_logits(d_logits[where], replaced[where].float(), reduction="sum")
        sizes = {"gen_mlm": torch.tensor(target.numel()), "disc": where.sum()}
        with torch.no_grad():
            pred = d_logits > 0
            rep, pred_w = replaced & where, pred & where
            logs = {
                "gen_correct": (logits.argmax(-1) == target).sum(),
                "gen_count": sizes["gen_mlm"],
                "sampled_original": (out["sampled"] == target).sum(),
                "disc_correct": ((pred == replaced) & where).sum(),
                "disc_count": sizes["disc"],
                "disc_true_pos": (rep & pred).sum(),
                "disc_pred_pos": pred_w.sum(),
                "disc_replaced": rep.sum(),
            }
        return {"gen_mlm": gen, "disc": disc}, sizes, logs
