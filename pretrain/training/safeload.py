"""Loading checkpoint files without running code from them.

A ``.pt`` file is a pickle, and unpickling can call any function the file names (a
``__reduce__`` that runs a shell command). Checkpoints are shared and downloaded, so every
``.pt`` this project opens goes through ``torch.load(weights_only=True)``: torch's
restricted unpickler, which builds tensors, plain containers and numbers and refuses any
other global. ``_allowed()`` adds the few DeepSpeed classes its own checkpoints hold (checked
with ``torch.serialization.get_unsafe_globals_in_checkpoint`` on fp32, bf16, LAMB and ZeRO
1-3 checkpoints); each is plain data — an enum, a dataclass of two ints, the loss scaler's
attributes — whose construction runs no code of the file's choosing. torch >= 2.6 (earlier
weights-only unpicklers had a code-execution bug, CVE-2025-32434).

DeepSpeed 0.19's own loader (``TorchCheckpointEngine.load``, and ``zero_to_fp32``) turns
torch's weights-only mode off. ``secure_engine`` swaps the engine's checkpoint engine for
one whose ``load`` is ``load_tensors``; ``module_loads_tensors_only(zero_to_fp32)`` points
that one module's ``torch.load`` at ``load_tensors``; ``tensors_only()`` covers library code
(transformers' import) by setting torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` for the block.
"""

from __future__ import annotations

import functools
import os
import pickle
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import torch

from common.errors import UserError


def _allowed() -> List[Any]:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


_FORCE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_env_lock = threading.Lock()


class UnsafeCheckpoint(UserError):
    """A checkpoint file holds objects other than tensors and plain data (a pickle that
    would run code when loaded); it was not loaded."""


def _refuse(path: Any, e: BaseException) -> UnsafeCheckpoint:
    # torch names the refused global: "Unsupported global: GLOBAL posix.system ...".
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    why = f"it would call {found.group(1)}" if found else "it holds objects other than tensors"
    return UnsafeCheckpoint(
        f"refusing to load {path}: {why}, code could run on loading; use only checkpoints written by "
        "`pretrain train` (or safetensors files) from a source you trust"
    )


@contextmanager
def tensors_only(what: Any = "a checkpoint file") -> Iterator[None]:
    """Within the block every ``torch.load`` in the process is weights-only (whatever its
    caller passed), with the DeepSpeed classes of ``_allowed()``; a file holding anything else
    raises ``UnsafeCheckpoint`` naming ``what``. Nested use is fine."""
    with _env_lock:
        previous = os.environ.get(_FORCE)
        os.environ[_FORCE] = "1"
    try:
        with torch.serialization.safe_globals(_allowed()):
            yield
    except pickle.UnpicklingError as e:
        raise _refuse(what, e) from None
    finally:
        with _env_lock:
            if previous is None:
                os.environ.pop(_FORCE, None)
            else:
                os.environ[_FORCE] = previous


class _TorchWithSafeLoad:
    """``torch`` as seen by one third-party module, but with ``load`` = ``load_tensors``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def load(f, map_location=None, mmap: bool = False, **_ignored: Any) -> Any:
        # A caller's request to turn weights-only mode off arrives among the ignored keywords
        # and is never honoured: this load is always load_tensors.
        return load_tensors(f, mmap=mmap)


@contextmanager
def module_loads_tensors_only(module: Any) -> Iterator[None]:
    """Within the block, ``module``'s own ``torch.load`` calls (e.g. DeepSpeed's
    ``zero_to_fp32``, which turns weights-only mode off) go through ``load_tensors``; the
    rest of the process is untouched. Raises UnsafeCheckpoint for a file holding anything
    but tensors and DeepSpeed's plain-data classes."""
    original = module.torch
    module.torch = _TorchWithSafeLoad()
    try:
        yield
    finally:
        module.torch = original


def load_tensors(path: str | Path, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` to CPU, DeepSpeed's plain-data classes
    allowed. Raises UnsafeCheckpoint (naming ``path``) if the file holds anything else, and
    UserError if it is not a readable torch file."""
    try:
        with torch.serialization.safe_globals(_allowed()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise _refuse(path, e) from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        msg = str(e).strip().splitlines()
        raise UserError(f"cannot read {path}: {msg[0] if msg else type(e).__name__}") from None


@functools.lru_cache(maxsize=None)
def tensors_only_engine_class() -> type:
    """DeepSpeed's ``TorchCheckpointEngine`` with ``load`` = ``load_tensors``; ``save``
    records a failed write in ``failures`` instead of raising. Built on first use, so importing this module does not import DeepSpeed."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class TensorsOnlyCheckpointEngine(TorchCheckpointEngine):
        def __init__(self, config_params=None) -> None:
            super().__init__(config_params)
            # (path, error) of writes that failed (a full disk): collected instead of raised,
            # so this rank still takes part in DeepSpeed's collectives of the save;
            # pretrain.training.checkpoint.save raises after them, on every rank.
            self.failures: List[Tuple[Path, BaseException]] = []

        def save(self, state_dict, path: str) -> None:
            try:
                super().save(state_dict, path)
            except (OSError, RuntimeError) as e:
                # A copy without traceback or context: their frames would keep torch's writer,
                # and with it the open file and its disk space, alive.
                copy = OSError(e.errno, e.strerror, e.filename) if isinstance(e, OSError) else RuntimeError(str(e))
                self.failures.append((Path(path), copy))

        def load(self, path: str, map_location=None):
            return load_tensors(path)  # to CPU, as DeepSpeed asks for its own files

    return TensorsOnlyCheckpointEngine


def secure_engine(engine) -> None:
    """Make a DeepSpeed engine read checkpoints with ``load_tensors``. Idempotent.

    Raises UserError if the engine uses a checkpoint engine other than DeepSpeed's default
    (``TorchCheckpointEngine``), whose loading this cannot vouch for."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    safe = tensors_only_engine_class()
    current = engine.checkpoint_engine
    if isinstance(current, safe):
        return
    if type(current) is not TorchCheckpointEngine:
        raise UserError(f"DeepSpeed checkpoint engine {type(current).__name__} is not supported; "
                        "remove the checkpoint writer settings")
    engine.checkpoint_engine = safe(engine._config)
