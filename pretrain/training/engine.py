"""The DeepSpeed engine of a run: how a global batch splits over ranks and micro batches,
the DeepSpeed config of a TrainConfig, and building the engine around a task's module.

Batch sizes: ``train.global_batch_size`` is the number of sequences per optimizer step over
all ranks; ``train.micro_batch_size`` is the MOST one rank runs in one forward pass (what
fits in memory). The loop runs the largest divisor of ``global / world`` not above it and
derives the accumulation, so one config fits 1 GPU or 64; only a global batch that does
not split over the ranks at all is refused (``split_batch``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from common.errors import UserError
from pretrain.training.optim import build_optimizer, build_scheduler, check_optimizer, lamb_impl, param_groups


def split_batch(global_batch: int, micro_batch: int, world_size: int) -> Tuple[int, int]:
    """``(micro, accumulation)`` for ``global_batch`` sequences per step over ``world_size``
    ranks: ``micro`` is the largest divisor of ``global_batch / world_size`` that is at
    most ``micro_batch`` (``train.micro_batch_size``), and ``micro × accumulation ×
    world_size = global_batch``.

    Raises UserError if a size is < 1 or ``global_batch`` is not a multiple of
    ``world_size``.
    """
    if global_batch < 1 or micro_batch < 1:
        raise UserError(f"train.global_batch_size={global_batch} and train.micro_batch_size={micro_batch} must be >= 1")
    if global_batch % world_size:
        raise UserError(
            f"train.global_batch_size={global_batch} does not split over {world_size} ranks; use a multiple of {world_size}"
        )
    per_rank = global_batch // world_size
    micro = max(m for m in range(1, min(micro_batch, per_rank) + 1) if per_rank % m == 0)
    return micro, per_rank // micro


def accumulation_steps(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Gradient accumulation steps of ``split_batch`` (same arguments, same errors)."""
    return split_batch(global_batch, micro_batch, world_size)[1]


def deepspeed_config(train_cfg, world_size: int) -> Dict[str, Any]:
    """The DeepSpeed config dict of a TrainConfig for ``world_size`` data-parallel ranks.

    AdamW runs as ``torch.optim.AdamW`` (``torch_adam``): DeepSpeed's fused CPU Adam keeps
    step counters process-wide, which breaks bit-exact resume. LAMB runs as DeepSpeed's
    FusedLamb (an ``optimizer`` section here) or, with ``lamb_impl`` torch (the default
    without CUDA), as ``pretrain.training.lamb.Lamb`` passed to ``deepspeed.initialize`` (no
    section here; ``pretrain.training.optim.build_optimizer``). The weight decay here is a
    default; the param groups set it per group. fp16 uses dynamic loss scaling (start 2^16,
    halve on overflow). Machine-independent except for ``lamb_impl: auto``, so a GPU job can
    be checked on a login node.

    Raises UserError for optimizer values out of range, LAMB with ZeRO (stages 1-3 hand the
    optimizer flat partitions of many tensors, so LAMB's per-tensor trust ratio, You et al.
    2020 §3, would be computed over slices), or a batch that does not split over the ranks
    (``split_batch``). Precision, optimizer name and ZeRO stage are typed config choices.
    """
    t = train_cfg
    check_optimizer(t.optimizer)
    opt = t.optimizer
    if opt.name == "lamb" and t.zero_stage > 0:
        raise UserError(
            f"train.optimizer.name=lamb does not work with train.zero_stage={t.zero_stage}: ZeRO hands the optimizer "
            "flat partitions, so LAMB's per-tensor trust ratio would be wrong; use zero_stage=0"
        )
    micro, accumulation = split_batch(t.global_batch_size, t.micro_batch_size, world_size)
    params = {"lr": float(opt.lr), "betas": [float(b) for b in opt.betas], "eps": float(opt.eps),
              "weight_decay": float(opt.weight_decay)}
    ds: Dict[str, Any] = {
        "train_batch_size": int(t.global_batch_size),
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": float(t.gradient_clipping),
        # ZeRO-3's "memory efficient linear" replaces torch.nn.functional.linear for the whole
        # process and never restores it: later runs in the process (ablation arms) would
        # compute with other rounding. Plain linear works under ZeRO-3 as well.
        "zero_optimization": {"stage": int(t.zero_stage),
                              **({"memory_efficient_linear": False} if t.zero_stage == 3 else {})},
        "bf16": {"enabled": t.precision == "bf16"},
        "fp16": {"enabled": t.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if opt.name == "adamw":
        ds["optimizer"] = {"type": "AdamW", "params": {**params, "torch_adam": True}}
    elif lamb_impl(opt, torch.cuda.is_available()) == "fused":
        # FusedLamb bounds the trust ratio itself to [min_coeff, max_coeff]; these are its defaults.
        ds["optimizer"] = {"type": "Lamb", "params": {**params, "max_coeff": 10.0, "min_coeff": 0.01}}
    return ds


def build_engine(module: nn.Module, train_cfg, ds_config: Dict[str, Any]):
    """``deepspeed.initialize`` around ``module`` with the run's optimizer (no decay on
    biases and LayerNorm, ``pretrain.training.optim``) and lr schedule; returns the engine."""
    import deepspeed

    t = train_cfg
    groups: List[Dict] = param_groups(module, t.optimizer.weight_decay)
    optimizer = build_optimizer(t.optimizer, groups, torch.cuda.is_available())
    engine, _, _, _ = deepspeed.initialize(
        model=module,
        model_parameters=groups if optimizer is None else None,
        optimizer=optimizer,
        config=ds_config,
        lr_scheduler=lambda opt: build_scheduler(opt, t.schedule, t.max_steps),
    )
    _undo_state_allocation_step(engine)
    return engine


def _undo_state_allocation_step(engine) -> None:
    """DeepSpeed's bf16/fp16 optimizer without ZeRO (``FP16_UnfusedOptimizer``) allocates
    the optimizer state by taking one step with zero gradients at the peak lr. That step is
    not harmless: decoupled weight decay shrinks the fp32 master weights (LAMB's trust ratio
    makes it ``w ← (1 - lr)·w``) and the bias-correction clock starts at 1. Put the masters
    back to the module's weights (from which DeepSpeed made them) and let the optimizer
    allocate its state lazily at the first real step, as it does in fp32."""
    opt = engine.optimizer
    if type(opt).__name__ != "FP16_UnfusedOptimizer":
        return
    with torch.no_grad():
        for low, masters in zip(opt.fp16_groups, opt.fp32_groups):
            for p, master in zip(low, masters):
                master.copy_(p.float())
    opt.optimizer.state.clear()
