"""Optimizers, parameter groups and learning-rate schedules.

Weight decay skips biases and LayerNorm gains/shifts, as BERT's reference optimizer does
(``AdamWeightDecayOptimizer`` excludes "LayerNorm" and "bias"; decay 0.01 per Devlin et al.
2019, §A.2). RoBERTa's paper gives the decay (0.01) but not the exclusion; this toolkit
applies BERT's rule to every recipe so that arms differ only in what they ablate. ALBERT's
LAMB excludes the same parameters.

The optimizer is ``train.optimizer.name``: AdamW runs as ``torch.optim.AdamW`` built by
DeepSpeed from its config (``pretrain.training.engine.deepspeed_config``); LAMB (You et al. 2020)
runs either as DeepSpeed's FusedLamb (CUDA only, built from the DeepSpeed config) or as
``pretrain.training.lamb.Lamb`` handed to ``deepspeed.initialize`` (``build_optimizer``), chosen by
``train.optimizer.lamb_impl``.

A schedule is a function from the optimizer step to a multiplier of the peak lr, picked by
``train.schedule.name`` (a typed choice, ``pretrain.config.ScheduleName``); it runs as a ``torch.optim.lr_scheduler.LambdaLR``
that DeepSpeed steps once per optimizer step and saves in its checkpoints.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from common.errors import UserError

def param_groups(model: nn.Module, weight_decay: float) -> List[Dict]:
    """Two optimizer groups: ``{"params": decayed, "weight_decay": weight_decay}`` (weight
    matrices and embeddings) and ``{"params": rest, "weight_decay": 0.0}`` (every
    parameter named ``bias`` and every parameter of a ``nn.LayerNorm``).

    A parameter shared by several modules (the tied word embeddings / MLM decoder) is
    listed once. Frozen parameters (``requires_grad=False``) are left out.
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            if isinstance(module, nn.LayerNorm) or name == "bias":
                no_decay.append(p)
            else:
                decay.append(p)
    return [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]


def lamb_impl(opt_cfg, cuda_available: bool) -> str:
    """``fused`` or ``torch``: the LAMB that ``train.optimizer.lamb_impl`` selects on a
    machine with or without CUDA (``auto`` = fused with CUDA, torch without).

    Does not check that ``fused`` can run here (``pretrain.training.checks.check_device``
    does, so a GPU job can be checked on a login node without one).
    """
    impl = opt_cfg.lamb_impl
    if impl == "auto":
        return "fused" if cuda_available else "torch"
    return impl


def check_optimizer(opt_cfg) -> None:
    """Raise UserError for a value outside its range (lr < 0, betas outside [0, 1),
    eps <= 0, weight decay < 0); ``name`` and ``lamb_impl`` are typed choices, checked
    when the config loads."""
    if not opt_cfg.lr >= 0:
        raise UserError(f"train.optimizer.lr={opt_cfg.lr} must be >= 0")
    if len(opt_cfg.betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in opt_cfg.betas):
        raise UserError(f"train.optimizer.betas={list(opt_cfg.betas)} must be two values in [0, 1)")
    if not opt_cfg.eps > 0:
        raise UserError(f"train.optimizer.eps={opt_cfg.eps} must be > 0")
    if not opt_cfg.weight_decay >= 0:
        raise UserError(f"train.optimizer.weight_decay={opt_cfg.weight_decay} must be >= 0")


def build_optimizer(opt_cfg, groups: List[Dict], cuda_available: bool) -> Optional[torch.optim.Optimizer]:
    """The optimizer the trainer hands to ``deepspeed.initialize``, or None when DeepSpeed
    builds it from its config (AdamW; FusedLamb).

    Args:
        opt_cfg: ``train.optimizer`` (an OptimizerConfig).
        groups: ``param_groups(model, weight_decay)``.
        cuda_available: whether this process trains on a GPU.
    Returns:
        ``pretrain.training.lamb.Lamb`` over ``groups`` (lr, betas, eps and weight decay from the
        config; BERT-style bias correction; trust bounds φ = min(‖w‖, 10)) when the config
        selects the torch LAMB, else None.
    """
    if opt_cfg.name != "lamb" or lamb_impl(opt_cfg, cuda_available) != "torch":
        return None
    from pretrain.training.lamb import Lamb

    return Lamb(groups, lr=float(opt_cfg.lr), betas=tuple(float(b) for b in opt_cfg.betas), eps=float(opt_cfg.eps),
                weight_decay=float(opt_cfg.weight_decay))


def linear_schedule(warmup_steps: int, max_steps: int) -> Callable[[int], float]:
    """Linear warmup from 0 to the peak over ``warmup_steps``, then linear decay to 0 at
    ``max_steps`` (RoBERTa §3.1: warmup, then linear decay; warmup 24K/30K steps for
    base/large per its Table 9).

    Returns ``f(step) -> multiplier`` with ``step`` the number of optimizer steps already
    taken (0 for the first update, as in Hugging Face's ``get_linear_schedule_with_warmup``).
    """

    def f(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup_steps))

    return f


def polynomial_schedule(warmup_steps: int, max_steps: int, power: float) -> Callable[[int], float]:
    """BERT's schedule (reference ``optimization.py``, ``polynomial_decay`` to 0 with the
    given power, warmup overriding it while ``step < warmup_steps``): linear warmup to the
    peak, then ``(1 - step / max_steps) ** power``. The decay runs over the whole run, so
    the first step after warmup is already below the peak (BERT §A.2: warmup over the
    first 10K of 1M steps, "linear decay" = power 1.0).
    """

    def f(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        return max(0.0, 1.0 - step / max_steps) ** power

    return f


def wsd_schedule(warmup_steps: int, max_steps: int, decay_steps: int) -> Callable[[int], float]:
    """Warmup-stable-decay: linear warmup, the peak lr until ``max_steps - decay_steps``,
    then linear decay to 0 at ``max_steps`` (Hu et al. 2024, MiniCPM; linear cooldown as in
    Hägele et al. 2024)."""
    stable_end = max_steps - decay_steps

    def f(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        if step < stable_end:
            return 1.0
        return max(0.0, (max_steps - step) / max(1, decay_steps))

    return f


def _wsd_decay_steps(s, max_steps: int, warmup: int) -> int:
    if (s.decay_steps is None) == (s.decay_fraction is None):
        raise UserError("train.schedule.name=wsd needs exactly one of train.schedule.decay_steps or decay_fraction")
    if s.decay_fraction is not None:
        if not 0.0 < s.decay_fraction <= 1.0:
            raise UserError(f"train.schedule.decay_fraction={s.decay_fraction} must be in (0, 1]")
        d = int(round(s.decay_fraction * max_steps))
    else:
        d = int(s.decay_steps)
    if d < 1 or d > max_steps - warmup:
        raise UserError(
            f"train.schedule: the wsd decay of {d} steps must be in [1, max_steps - warmup_steps = {max_steps - warmup}]"
        )
    return d


def schedule_fn(schedule_cfg, max_steps: int) -> Callable[[int], float]:
    """The multiplier function of ``train.schedule`` (a ScheduleConfig) for a run of
    ``max_steps`` optimizer steps.

    Raises UserError for a warmup that is negative or not shorter than the run, a non-positive ``power``, or a wsd decay
    length that is missing, doubly given or does not fit after the warmup.
    """
    s = schedule_cfg
    w = int(s.warmup_steps)
    if w < 0 or w >= max_steps:
        raise UserError(
            f"train.schedule.warmup_steps={w} must be in [0, train.max_steps={max_steps}); lower it or train longer"
        )
    if s.name == "linear":
        return linear_schedule(w, max_steps)
    if s.name == "polynomial":
        if not s.power > 0:
            raise UserError(f"train.schedule.power={s.power} must be > 0")
        return polynomial_schedule(w, max_steps, float(s.power))
    return wsd_schedule(w, max_steps, _wsd_decay_steps(s, max_steps, w))


def build_scheduler(optimizer: torch.optim.Optimizer, schedule_cfg, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR scaling every param group's lr by ``schedule_fn(schedule_cfg, max_steps)``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_fn(schedule_cfg, max_steps))
