"""Process-group setup for one process without a launcher, ``deepspeed`` or ``torchrun``.

A launcher exports ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``;
a plain ``pretrain train`` does not, so ``init()`` fills them in for a world of one with a
free port. ``init()`` is idempotent: the ablation runner calls ``train`` once per arm in one
process, and a process group can only be created once.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch

_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place in the job: global ``rank`` in ``[0, size)``, ``local_rank`` on
    its node, ``local_size`` processes on the node."""

    rank: int
    size: int
    local_rank: int
    local_size: int

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file of the run directory."""
        return self.rank == 0


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare_env() -> None:
    if not torch.cuda.is_available():
        # DeepSpeed picks its accelerator at import time; say CPU instead of letting it probe.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ["MASTER_PORT"] = str(free_port())
    for v in _LAUNCHER_VARS:
        if v not in os.environ:
            raise RuntimeError(f"launcher set RANK but not {v}; use `deepspeed` or `torchrun`")


def set_threads(local_size: int) -> None:
    """Intra-op threads: OMP_NUM_THREADS when set (torchrun sets 1 per rank), else the cores
    this process may use split evenly between the ``local_size`` ranks on the node."""
    pinned = os.environ.get("OMP_NUM_THREADS", "")
    if pinned.isdigit() and int(pinned) > 0:
        torch.set_num_threads(int(pinned))
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // max(1, local_size)))


def init() -> World:
    """Create the process group once (gloo on CPU, nccl on GPU) and return this process's
    World. Safe to call again: later calls return the existing world.

    Raises RuntimeError if a launcher exported only some of its variables.
    """
    _prepare_env()
    import deepspeed

    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    size = torch.distributed.get_world_size()
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
    world = World(torch.distributed.get_rank(), size, int(os.environ["LOCAL_RANK"]), local_size)
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
    return world


def barrier() -> None:
    """Wait for every rank (no-op before ``init``)."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum of the CPU tensor ``t`` (float64/int64) over ranks; returns ``t``.

    NCCL reduces only CUDA tensors, so on GPUs the values travel through the current device
    and back (a few numbers per step)."""
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        if torch.distributed.get_backend() == "nccl":
            on_device = t.to(torch.device("cuda", torch.cuda.current_device()))
            torch.distributed.all_reduce(on_device, op=torch.distributed.ReduceOp.SUM)
            t.copy_(on_device.cpu())
        else:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def broadcast_object(obj):
    """Rank 0's ``obj`` (any picklable value) on every rank; ``obj`` itself in a world of
    one or before ``init``. Every rank must call it."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
