"""Every check of a run config that needs no data, in one place: ``check_run`` serves
``pretrain train`` (before the data is built), ``pretrain ablate`` (every arm before the
first trains) and ``pretrain submit`` (for the job's world size, before anything is queued).
What only this machine can answer (a GPU for fp16, CUDA for fused LAMB) is ``check_device``
(and ``device_warnings``: bf16 on a CPU that emulates it), called by the trainer alone, so a
GPU job can be checked on a login node without one.
Single choices (precision, optimizer, schedule, sharing, ...) are typed config fields and
fail earlier still, when the config loads (``pretrain.config``)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Type

import torch

from common.errors import UserError
from pretrain.tasks.base import Task
from pretrain.training.engine import deepspeed_config
from pretrain.training.hardware import cpu_bf16_native, cpu_features, cpu_name
from pretrain.training.optim import schedule_fn


def check_train_config(t) -> None:
    """Cadences and counts that must be positive. Raises UserError naming the key."""
    for key in ("max_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
        if int(getattr(t, key)) < 1:
            raise UserError(f"train.{key}={getattr(t, key)} must be >= 1")
    if t.eval_max_batches is not None and t.eval_max_batches < 1:
        raise UserError(f"train.eval_max_batches={t.eval_max_batches} must be >= 1 or null (the whole split)")
    if t.peak_flops is not None and not t.peak_flops > 0:
        raise UserError(f"train.peak_flops={t.peak_flops} must be > 0 (FLOP/s of one device) or null")
    if t.gradient_clipping < 0:
        raise UserError(f"train.gradient_clipping={t.gradient_clipping} must be >= 0 (0 = off)")


def check_device(t) -> None:
    """What this machine cannot run. Raises UserError: ``precision=fp16`` without a GPU
    (DeepSpeed's fp16 loss scaling is GPU-only), ``lamb_impl=fused`` without CUDA
    (DeepSpeed's FusedLamb is a CUDA kernel)."""
    if t.precision == "fp16" and not torch.cuda.is_available():
        raise UserError("train.precision=fp16 needs a GPU; use bf16 (or fp32) on CPU")
    if t.optimizer.name == "lamb" and t.optimizer.lamb_impl == "fused" and not torch.cuda.is_available():
        raise UserError("train.optimizer.lamb_impl=fused needs CUDA (DeepSpeed's FusedLamb has no CPU build); "
                        "use lamb_impl=torch (or auto)")


def device_warnings(t) -> List[str]:
    """What this machine runs, but slowly enough to be a mistake, as one-line warnings (the
    trainer prints them on rank 0 and goes on): ``precision=bf16`` on a CPU without bf16
    kernels, where torch emulates every bf16 matmul (``pretrain.training.hardware.
    cpu_bf16_native``; bench/train.md measures an AVX2-only CPU)."""
    if t.precision == "bf16" and not torch.cuda.is_available() and not cpu_bf16_native():
        return [f"warning: train.precision=bf16, but this CPU ({cpu_name()}; {cpu_features()}) has no bf16 matrix "
                "kernels, so torch emulates them and training runs many times slower than in fp32 (bench/train.md); "
                "add train.precision=fp32 to the command (for an ablation's fine-tuning stages also "
                "evaluate.overrides with train.precision=fp32)"]
    return []


def check_run(cfg: Any, world_size: int, task: Optional[Type[Task]] = None) -> Dict[str, Any]:
    """Check run config ``cfg`` for ``world_size`` data-parallel ranks without touching
    data: the training cadences, the optimizer, the lr schedule against ``max_steps``, the
    global batch against the ranks, and the task's own config checks
    (``Task.check_config``; default: the class of the config's ``task`` key,
    ``pretrain.tasks.task_class``).

    Returns the DeepSpeed config dict (``pretrain.training.engine.deepspeed_config``).
    Raises UserError (one line, naming the key) for the first problem found.
    """
    if task is None:
        from pretrain.tasks import task_class

        task = task_class(cfg)
    t = cfg.train
    check_train_config(t)
    ds_config = deepspeed_config(t, world_size)
    schedule_fn(t.schedule, t.max_steps)
    task.check_config(cfg)
    return ds_config
