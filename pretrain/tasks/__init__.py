"""Tasks: what a run trains (modules, batches, criterion, metrics), plugged into the one loop in ``pretrain.training.loop``.

``task_class(cfg)`` picks a run config's Task from its one typed key ``task``; the
loop, ``check_run``, ``pretrain train``, ``pretrain ablate`` and ``pretrain submit`` all go
through it, so an objective is chosen in one place.
"""

from __future__ import annotations

from typing import Any, Type


def task_class(cfg: Any) -> Type:
    """The ``pretrain.tasks.base.Task`` subclass of run config ``cfg``'s ``task`` key
    (``pretrain.config.TaskName``): ``pretraining`` → ``PretrainingTask``, ``distillation``
    → ``DistillationTask``, ``electra`` → ``ElectraTask``. A config without the key (another
    task's own config type, passed to ``train(cfg, task=...)`` with its class) is
    pretraining. The key is typed, checked when the config loads."""
    name = getattr(cfg, "task", "pretraining")
    if name == "distillation":
        from pretrain.tasks.distillation import DistillationTask

        return DistillationTask
    if name == "electra":
        from pretrain.tasks.electra import ElectraTask

        return ElectraTask
    from pretrain.tasks.pretraining import PretrainingTask

    return PretrainingTask


def build_trainable(cfg: Any):
    """The trainable module of run config ``cfg`` (its ``model`` with vocab_size set), as
    its task builds it: ``BertForPretraining`` (MLM, or a distillation student) or
    ``ElectraForPretraining``. Used by
    checkpoint readers (export) that must rebuild what a run trained. Build under
    ``torch.device("meta")`` to count without allocating."""
    if getattr(cfg, "task", "pretraining") == "electra":
        from pretrain.models.electra import ElectraForPretraining

        return ElectraForPretraining(cfg.model, cfg.electra)
    from pretrain.models.encoder import build_model

    model = build_model(cfg.model, cfg.objective.sentence)
    if getattr(cfg, "task", "pretraining") == "distillation":
        from pretrain.models.distil import apply_freezing

        apply_freezing(model, cfg.distillation)  # frozen weights are outside the optimizer groups
    return model


def train_flops_per_sequence(cfg: Any) -> float:
    """Training FLOPs (forward + backward, ``pretrain.training.mfu``'s count) of one full
    ``data.max_seq_length`` sequence for run config ``cfg``, from its model built on the
    meta device (no memory): ``flops_per_token`` of the MLM model, or
    ``electra_flops_per_token`` of generator + discriminator. ``model.vocab_size`` null
    counts at ``data.tokenizer.vocab_size``. Used to put ablation arms at equal compute
    (``pretrain.ablations.runner.equalize_train_flops``)."""
    import copy

    import torch

    c = copy.deepcopy(cfg)
    if c.model.vocab_size is None:
        c.model.vocab_size = c.data.tokenizer.vocab_size
    seq = int(c.data.max_seq_length)
    with torch.device("meta"):
        model = build_trainable(c)
    if getattr(c, "task", "pretraining") == "electra":
        from pretrain.models.electra import electra_flops_per_token

        return electra_flops_per_token(model, seq) * seq
    from pretrain.models.encoder import flops_per_token

    return flops_per_token(model, seq) * seq
