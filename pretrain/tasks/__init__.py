"""Tasks: what a run trains (modules, batches, criterion, metrics), plugged into the one loop in ``pretrain.training.loop``."""

from __future__ import annotations

from typing import Any, Type


def task_class(cfg: Any) -> Type:
    """The ``Task`` class of a run config's ``task`` key (``pretrain.config.TaskName``):
    ``pretraining`` → ``pretrain.tasks.pretraining.PretrainingTask``, ``distillation`` →
    ``pretrain.tasks.distillation.DistillationTask``. A config without the key (another
    task's own config passed with its class) is pretraining. The key is typed, so nothing
    else reaches here from a loaded config."""
    if getattr(cfg, "task", "pretraining") == "distillation":
        from pretrain.tasks.distillation import DistillationTask

        return DistillationTask
    from pretrain.tasks.pretraining import PretrainingTask

    return PretrainingTask
