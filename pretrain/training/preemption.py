"""Stopping on a signal: SIGUSR1 (Slurm's warning before the time limit,
``--signal=B:USR1@S``) or SIGTERM (what Slurm, Kubernetes and torchrun send before a kill)
makes the loop finish the step in progress, save a checkpoint and exit with code 75, which
``slurm/templates/train.sbatch.j2`` requeues; ``--resume`` goes on.

A time budget (``pretrain ablate --time-budget 2h``, ``time_budget``) stops a run the same
way once it is spent: the loop asks ``stop_requested`` at each step boundary, which counts a
spent budget as one more stop request, so the checkpoint, the ``Preempted`` exception and
exit code 75 are those of a signal."""

from __future__ import annotations

import re
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class Preempted(SystemExit):
    """Raised by ``pretrain.training.loop.train`` after SIGUSR1 or SIGTERM: the run saved a
    checkpoint at the end of the step in progress and stops. A SystemExit, so the process
    (a single run or a whole ablation) exits with code 75."""

    def __init__(self, run: Path, step: int, signal_name: str = "SIGUSR1") -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.run, self.step, self.signal_name = run, step, signal_name

    def __str__(self) -> str:
        return f"{self.run}: stopped on {self.signal_name} after step {self.step}, checkpoint saved; rerun with --resume"


@contextmanager
def stop_on_signals() -> Iterator[List[str]]:
    """A list that SIGUSR1/SIGTERM append their names to while the block runs; the
    previous handlers come back afterwards. The loop checks it at each step boundary."""
    received: List[str] = []
    if threading.current_thread() is not threading.main_thread():  # signals reach only the main thread
        yield received
        return
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signal.Signals(signum).name))
                for sig in STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# (time.monotonic() at which the budget is spent, its name for messages); None = no budget.
_deadline: Optional[Tuple[float, str]] = None
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[dhms])+")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``2h``, ``90m``, ``1h30m``, ``45s`` or ``1.5h`` (units
    d, h, m, s; each number needs one). Raises ValueError naming the text and the form."""
    t = text.strip().lower()
    seconds = (sum(float(n) * _UNIT_SECONDS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([dhms])", t))
               if _DURATION.fullmatch(t) else 0.0)
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration like 2h, 90m, 1h30m or 45s")
    return seconds


@contextmanager
def time_budget(seconds: Optional[float], label: str = "") -> Iterator[None]:
    """While the block runs, a training loop (``pretrain.training.loop.train``) stops at its
    first step boundary after ``seconds`` (wall clock, counted from entering the block) as on
    SIGTERM: checkpoint, ``Preempted``. ``seconds=None``: no budget. ``label`` names the budget
    in messages (e.g. the ``--time-budget`` text). The previous budget comes back afterwards."""
    global _deadline
    if seconds is None:
        yield
        return
    previous = _deadline
    _deadline = (time.monotonic() + seconds, f"the {label or f'{seconds:g}s'} time budget")
    try:
        yield
    finally:
        _deadline = previous


def budget_spent() -> Optional[str]:
    """The budget's name when a ``time_budget`` is spent, else None."""
    if _deadline is not None and time.monotonic() >= _deadline[0]:
        return _deadline[1]
    return None


def stop_requested(received: List[str]) -> bool:
    """Whether the loop should stop after this step: a stop signal arrived (``received``,
    from ``stop_on_signals``) or the time budget is spent, which is then appended to
    ``received`` as the reason ``Preempted`` names."""
    if not received:
        spent = budget_spent()
        if spent:
            received.append(spent)
    return bool(received)
