"""A full disk as a one-line error that names the path and the space needed.

Python reports a full disk as ``OSError(ENOSPC)`` (or ``EDQUOT`` for a quota); torch's
zip writer (``torch.save``) loses the errno and raises ``RuntimeError: [enforce fail at
inline_container.cc] ... file write failed``, so for that one the free space decides.
"""

from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from tqdm import tqdm

from common.errors import UserError

_FULL = (errno.ENOSPC, errno.EDQUOT)
# torch's PytorchStreamWriter messages when a write comes up short.
_TORCH_WRITE_FAILED = ("file write failed", "unexpected pos")
# Below this much free space a failed torch write is taken for a full disk.
_NEARLY_FULL = 64 * 2**20


def size(n: float) -> str:
    """``n`` bytes for people: ``'1.50GB'`` (powers of 1024)."""
    return tqdm.format_sizeof(max(0.0, float(n)), "B", 1024)


def free_bytes(path: Path) -> Optional[int]:
    """Free bytes on the file system of ``path`` (or of its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def is_disk_full(e: BaseException, path: Path, needed: Optional[int] = None) -> bool:
    """True if ``e``, raised while writing ``path``, means the disk (or quota) is full."""
    if isinstance(e, OSError):
        return e.errno in _FULL
    if isinstance(e, RuntimeError) and any(m in str(e) for m in _TORCH_WRITE_FAILED):
        free = free_bytes(path)
        return free is not None and free < max(needed or 0, _NEARLY_FULL)
    return False


def disk_full_error(path: Path, needed: Optional[int] = None, then: str = "") -> UserError:
    """The UserError for a write of ``path`` that ran out of space: free space now, the
    bytes the write needs (``needed``, when known), and what to do next (``then``)."""
    free = free_bytes(path)
    have = f"{size(free)} free" if free is not None else "free space unknown"
    need = f", about {size(needed)} needed" if needed else ""
    return UserError(f"no space left on the device of {path} ({have}{need}); free some space{then}")


@contextmanager
def disk_full_is_user_error(path: Path, needed: Optional[int] = None, then: str = "") -> Iterator[None]:
    """Turn a full disk inside the block into ``disk_full_error``; other errors pass."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if is_disk_full(e, path, needed):
            raise disk_full_error(path, needed, then) from None
        raise
