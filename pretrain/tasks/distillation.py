"""DistilBERT (Sanh et al. 2019) as a ``Task``: a student distilled from a frozen teacher
under the triple loss, through the unchanged loop (``pretrain.training.loop``).

What it supplies beyond masked-LM pretraining (``pretrain.tasks.pretraining``, whose data,
sampler, dynamic-masking collator and validation split it reuses):
- the teacher (``distillation.teacher``, ``pretrain.models.distil.load_teacher``), a frozen
  module: the loop moves it to the device in eval mode with gradients off, outside the
  DeepSpeed engine and its checkpoints; in bf16/fp16 runs it computes in that dtype;
- the trainable student (``model``, written from the teacher when the config loads):
  BertForPretraining without a sentence head, initialised from the teacher's layers of
  ``distillation.layer_selection`` (or randomly, ``student_init: random``), its position
  embeddings frozen with ``distillation.freeze_position_embeddings``;
- the criterion: ``pretrain.criterions.distillation.DistillationCriterion``;
- FLOPs: the student's training pass plus the teacher's forward pass (one third of its
  6N + 12·L·H·T training FLOPs per token), so MFU counts the teacher's work;
- evaluation on the validation split (masked once at data-prep time): the student's
  ``mlm_loss``, ``perplexity``, ``mlm_accuracy``, the teacher's ``teacher_mlm_loss`` and
  ``teacher_mlm_accuracy`` on the same masks, and the distillation terms ``ce_loss`` and
  ``cos_loss``.
"""

from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np
import torch
from torch import nn

from common.errors import UserError
from pretrain.criterions.distillation import DistillationCriterion
from pretrain.models.distil import (apply_freezing, check_distillation_config, init_student, load_teacher, select_layers,
                                    student_model_config)
from pretrain.models.encoder import build_model
from pretrain.tasks.pretraining import PretrainingTask
from pretrain.training import distributed
from pretrain.training.mfu import ModelFlops


class DistillationTask(PretrainingTask):
    """A ``task: distillation`` RunConfig (``pretrain.config.DistillationConfig``)."""

    summary_keys = ("mlm_loss", "perplexity", "mlm_accuracy", "teacher_mlm_loss", "teacher_mlm_accuracy", "ce_loss",
                    "cos_loss")
    primary_metric = "mlm_loss"

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Pretraining's checks on the student, and the distillation section's values.
        Raises UserError."""
        if cfg.task != "distillation" or cfg.distillation is None or not cfg.distillation.teacher:
            raise UserError("the distillation task needs task=distillation and distillation.teacher=PATH")
        check_distillation_config(cfg.distillation)
        super().check_config(cfg)

    def prepare(self, world: distributed.World) -> None:
        super().prepare(world)
        cfg, d = self.cfg, self.cfg.distillation
        teacher_cfg, self.teacher = load_teacher(d.teacher)
        self.layers = select_layers(teacher_cfg.num_hidden_layers, d.layer_selection, list(d.student_layers))
        # The student's shape was written from the teacher when the config loaded; a teacher
        # replaced since (a resumed run pointing at a retrained one) would not match it.
        if student_model_config(teacher_cfg, self.layers) != cfg.model:
            raise UserError(f"distillation.teacher={d.teacher} no longer has the shape this run's student was derived from "
                            "(model section of its config); point it at the original teacher or start a new run_dir")
        if cfg.train.precision != "fp32":
            self.teacher.to({"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.precision])
        self.teacher_flops = ModelFlops(self.teacher)
        self._criterion = DistillationCriterion(self.teacher, d.temperature, d.alpha_ce, d.alpha_mlm, d.alpha_cos,
                                                d.restrict_ce_to_mask)

    def build_model(self) -> nn.Module:
        student = build_model(self.cfg.model, "none")
        if self.cfg.distillation.student_init == "teacher":
            init_student(student, self.teacher, self.layers)
        apply_freezing(student, self.cfg.distillation)
        self.model_flops = ModelFlops(student)  # before ZeRO-3 partitions the weights away
        return student

    def frozen_modules(self) -> Dict[str, nn.Module]:
        return {"teacher": self.teacher}

    def flops(self, rows: np.ndarray) -> float:
        lengths = self.lengths[rows]
        return self.model_flops(lengths) + self.teacher_flops(lengths) / 3.0  # teacher: forward only

    def evaluate(self, model: nn.Module, world: distributed.World) -> Dict[str, float]:
        s, count = self.score_masked_validation(model, world)
        loss, logs = s["loss_sum"]["mlm"] / count, s["logs"]
        return {
            "mlm_loss": loss,
            "perplexity": math.exp(min(loss, 700.0)),
            "mlm_accuracy": logs["mlm_correct"] / count,
            "teacher_mlm_loss": logs["teacher_mlm_nll"] / count,
            "teacher_mlm_accuracy": logs["teacher_mlm_correct"] / count,
            "ce_loss": s["loss_sum"]["ce"] / max(1.0, s["sample_size"]["ce"]),
            "cos_loss": s["loss_sum"]["cos"] / max(1.0, s["sample_size"]["cos"]),
            "num_tokens": int(count),
        }

    def summary_fields(self) -> Dict[str, Any]:
        return {**super().summary_fields(), "teacher": str(self.cfg.distillation.teacher), "student_layers": self.layers,
                "teacher_parameters": sum(p.numel() for p in self.teacher.parameters())}
