"""Optimizer parameter groups and learning-rate schedules.

Weight decay skips biases and LayerNorm gains/shifts, as BERT's reference optimizer does
(``AdamWeightDecayOptimizer`` excludes "LayerNorm" and "bias"; decay 0.01 per Devlin et al.
2019, §A.2). RoBERTa's paper gives the decay (0.01) but not the exclusion; this toolkit
applies BERT's rule to every recipe so that arms differ only in what they ablate. A schedule is a function from the optimizer step
to a multiplier of the peak lr, picked by ``train.schedule.name`` in ``SCHEDULES``; it runs
as a ``torch.optim.lr_scheduler.LambdaLR`` that DeepSpeed steps once per optimizer step and
saves in its checkpoints.
"""

from __future__ import annotations

from typing import Callable, Dict, List

import torch
from torch import nn

from data_prep.errors import UserError


def param_groups(model: nn.Module, weight_decay: float) -> List[Dict]:
    """Two AdamW groups: ``{"params": decayed, "weight_decay": weight_decay}`` (weight
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


def linear_schedule(warmup_steps: int, max_steps: int) -> Callable[[int], float]:
    """Linear warmup from 0 to the peak over ``warmup_steps``, then linear decay to 0 at
    ``max_steps`` (BERT §A.2: warmup over the first 10K steps, then linear decay; RoBERTa
    §3.1: the same shape, warmup 24K/30K steps for base/large per its appendix).

    Returns ``f(step) -> multiplier`` with ``step`` the number of optimizer steps already
    taken (0 for the first update, as in Hugging Face's ``get_linear_schedule_with_warmup``).
    """

    def f(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup_steps))

    return f


SCHEDULES: Dict[str, Callable[[int, int], Callable[[int], float]]] = {
    "linear": linear_schedule,
}


def schedule_fn(schedule_cfg, max_steps: int) -> Callable[[int], float]:
    """The multiplier function of ``train.schedule`` (a ScheduleConfig) for a run of
    ``max_steps`` optimizer steps.

    Raises UserError for an unknown ``schedule.name`` (listing the known ones) or a
    warmup that is negative or not shorter than the run.
    """
    name = schedule_cfg.name
    if name not in SCHEDULES:
        raise UserError(f"train.schedule.name={name!r} is not one of: {', '.join(SCHEDULES)}")
    w = int(schedule_cfg.warmup_steps)
    if w < 0 or w >= max_steps:
        raise UserError(
            f"train.schedule.warmup_steps={w} must be in [0, train.max_steps={max_steps}); lower it or train longer"
        )
    return SCHEDULES[name](w, max_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule_cfg, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR scaling every param group's lr by ``schedule_fn(schedule_cfg, max_steps)``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_fn(schedule_cfg, max_steps))
