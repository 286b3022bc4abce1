"""ELECTRA pretraining (Clark et al. 2020) as a ``Task``: replaced-token detection with a
jointly trained generator, on the same data, batches and loop as MLM pretraining.

What differs from ``pretrain.tasks.pretraining.PretrainingTask`` (whose data preparation,
sampler and collator it reuses unchanged):

- the trainable module: ``pretrain.models.electra.ElectraForPretraining`` (generator and
  discriminator in one module, shared embeddings);
- the criterion: ``pretrain.criterions.electra.ElectraCriterion`` (generator MLM + λ ·
  discriminator loss); the masked input comes from the collator's dynamic masking
  (``data.masking``: the recipe sets ELECTRA's 15%, 85% [MASK] / 15% kept, no random
  tokens, as the reference's ``pretrain_helpers.mask``);
- FLOPs: both networks (``electra_flops_per_token``);
- evaluation on the validation split (masked once at data-prep time) with the generator's
  sampling seeded by ``data.masking.validation_seed``, so every evaluation, arm and
  resume scores the same corruptions: ``gen_mlm_loss`` / ``gen_mlm_accuracy`` (the
  generator; reference ``masked_lm_loss`` / ``masked_lm_accuracy``),
  ``sampled_original_fraction`` (reference ``sampled_masked_lm_accuracy``), ``disc_loss``
  and the discriminator's ``disc_accuracy`` over the scored tokens and ``disc_precision``
  / ``disc_recall`` on replaced tokens (reference ``disc_accuracy``, ``disc_precision``,
  ``disc_recall``), ``replaced_fraction``, and ``loss`` (the weighted total).
"""

from __future__ import annotations

import math
from typing import Any, Dict

import torch
from torch import nn

from common.errors import UserError
from pretrain.criterions.electra import ElectraCriterion
from pretrain.models.electra import ElectraForPretraining, electra_flops_per_token, generator_config
from pretrain.tasks.pretraining import PretrainingTask
from pretrain.training import distributed
from pretrain.training.evaluate import module_device
from pretrain.training.mfu import ModelFlops


def check_electra_config(cfg: Any) -> None:
    """Every ELECTRA value of run config ``cfg``, before anything is built. Raises
    UserError naming the key: a sentence objective (ELECTRA has none), generator_size
    outside (0, 1], generator_layers outside (0, 1], a negative or all-zero weight, a
    temperature <= 0, a generator shape that cannot be built (``generator_config``)."""
    e = cfg.electra
    if cfg.objective.sentence != "none":
        raise UserError(f"task=electra trains no sentence head; objective.sentence={cfg.objective.sentence} "
                        "must be none (use data.format=full_sentences or doc_sentences, data.sentence_objective=none)")
    for key in ("generator_size", "generator_layers"):
        v = getattr(e, key)
        if not 0.0 < v <= 1.0:
            raise UserError(f"electra.{key}={v} must be in (0, 1] (a fraction of the discriminator's; "
                            "Table 6: generator_size 0.25 for Small, 0.333 for Base)")
    for key in ("gen_weight", "disc_weight"):
        if getattr(e, key) < 0 or not math.isfinite(getattr(e, key)):
            raise UserError(f"electra.{key}={getattr(e, key)} must be a finite number >= 0")
    if e.gen_weight == 0 and e.disc_weight == 0:
        raise UserError("electra.gen_weight and disc_weight are both 0: nothing would train")
    if not e.temperature > 0 or not math.isfinite(e.temperature):
        raise UserError(f"electra.temperature={e.temperature} must be > 0 (1.0: the generator's softmax)")
    generator_config(cfg.model, e)


class ElectraTask(PretrainingTask):
    """Replaced-token detection of a ``pretrain.config.RunConfig`` with
    ``task=electra``."""

    summary_keys = ("disc_loss", "disc_accuracy", "disc_precision", "disc_recall", "gen_mlm_loss", "gen_mlm_accuracy")
    primary_metric = "disc_loss"

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """``PretrainingTask``'s checks (sequences fit the positions) and
        ``check_electra_config``. Raises UserError."""
        super().check_config(cfg)
        check_electra_config(cfg)

    def prepare(self, world: distributed.World) -> None:
        super().prepare(world)
        self._criterion = ElectraCriterion(self.cfg.electra)

    def build_model(self) -> nn.Module:
        model = ElectraForPretraining(self.cfg.model, self.cfg.electra)
        self.model_flops = ElectraFlops(model)  # before ZeRO-3 partitions the weights away
        return model

    def evaluate(self, model: nn.Module, world: distributed.World) -> Dict[str, float]:
        sampler = torch.Generator(device=module_device(model)).manual_seed(int(self.cfg.data.masking.validation_seed))
        crit = ElectraCriterion(self.cfg.electra, sampler=sampler)
        s = self.score_validation(crit, model, world)
        n_gen, n_disc, logs = s["sample_size"]["gen_mlm"], s["sample_size"]["disc"], s["logs"]
        if n_gen == 0 or n_disc == 0:
            raise ValueError("the validation split has no masked tokens")
        per_term = {"gen_mlm": s["loss_sum"]["gen_mlm"] / n_gen, "disc": s["loss_sum"]["disc"] / n_disc}
        return {
            "loss": sum(crit.weights[k] * v for k, v in per_term.items()),
            "gen_mlm_loss": per_term["gen_mlm"],
            "gen_mlm_accuracy": logs["gen_correct"] / n_gen,
            "sampled_original_fraction": logs["sampled_original"] / n_gen,
            "disc_loss": per_term["disc"],
            "disc_accuracy": logs["disc_correct"] / n_disc,
            # no replaced token predicted (or none there): precision (recall) is undefined; 0 by convention
            "disc_precision": logs["disc_true_pos"] / logs["disc_pred_pos"] if logs["disc_pred_pos"] else 0.0,
            "disc_recall": logs["disc_true_pos"] / logs["disc_replaced"] if logs["disc_replaced"] else 0.0,
            "replaced_fraction": logs["disc_replaced"] / n_disc,
            "num_tokens": int(n_disc),
        }


class ElectraFlops(ModelFlops):
    """``ModelFlops`` of both ELECTRA networks (``electra_flops_per_token``)."""

    def __init__(self, model: ElectraForPretraining) -> None:
        self.per_token = electra_flops_per_token(model, 0)
        self.per_token_per_position = electra_flops_per_token(model, 1) - self.per_token
