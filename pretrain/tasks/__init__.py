"""Tasks: what a run trains (modules, batches, criterion, metrics), plugged into the one loop in ``pretrain.training.loop``.

``task_class(cfg)`` picks a run config's Task from its one typed key ``objective.name``; the
loop, ``check_run``, ``pretrain train``, ``pretrain ablate`` and ``pretrain submit`` all go
through it, so an objective is chosen in one place.
"""

from __future__ import annotations

from typing import Any, Type

from omegaconf import OmegaConf


def task_class(cfg: Any) -> Type:
    """The ``pretrain.tasks.base.Task`` subclass for run config ``cfg``: ``objective.name``
    ``mlm`` → ``PretrainingTask``, ``electra`` → ``ElectraTask``. A config without an
    ``objective.name`` (another task's own config type) gets ``PretrainingTask``; pass
    such tasks to ``train(cfg, task=...)`` explicitly. The name is a typed choice, checked
    when the config loads."""
    name = OmegaConf.select(cfg, "objective.name", default="mlm") if OmegaConf.is_config(cfg) else "mlm"
    if name == "electra":
        from pretrain.tasks.electra import ElectraTask

        return ElectraTask
    from pretrain.tasks.pretraining import PretrainingTask

    return PretrainingTask


def build_trainable(cfg: Any):
    """The trainable module of run config ``cfg`` (its ``model`` with vocab_size set), as
    its task builds it: ``BertForPretraining`` or ``ElectraForPretraining``. Used by
    checkpoint readers (export) that must rebuild what a run trained. Build under
    ``torch.device("meta")`` to count without allocating."""
    if OmegaConf.select(cfg, "objective.name", default="mlm") == "electra":
        from pretrain.models.electra import ElectraForPretraining

        return ElectraForPretraining(cfg.model, cfg.objective.electra)
    from pretrain.models.encoder import build_model

    return build_model(cfg.model, cfg.objective.sentence)
