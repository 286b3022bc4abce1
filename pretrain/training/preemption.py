"""Stopping on a signal: SIGUSR1 (Slurm's warning before the time limit,
``--signal=B:USR1@S``) or SIGTERM (what Slurm, Kubernetes and torchrun send before a kill)
makes the loop finish the step in progress, save a checkpoint and exit with code 75, which
``slurm/templates/train.sbatch.j2`` requeues; ``--resume`` goes on."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

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
