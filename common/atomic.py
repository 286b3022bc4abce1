"""Writes a reader never sees half of: write to ``<name>.tmp`` beside the target, then
``os.replace`` (atomic on POSIX within one file system). A write that fails (a full disk)
removes its temporary file and leaves the target as it was."""

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from common.diskspace import disk_full_is_user_error


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield the temporary path to write ``path``'s content to (by any writer: a figure's
    ``savefig``, a library's ``save``); on success it is renamed to ``path``, on an
    exception removed, leaving any previous ``path`` untouched."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename.

    Raises UserError naming ``path`` and the space needed if the disk is full."""
    data = text.encode()
    with disk_full_is_user_error(path, len(data)), atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path``, atomically (see
    ``write_text_atomic``)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def replace_dir(new: Path, out: Path) -> None:
    """Move the finished directory ``new`` to ``out`` (same file system). An existing ``out``
    is renamed aside to ``<out>.old`` first and deleted after, so ``out`` is never a mix of
    the two: a reader sees the old directory or the new one."""
    new, out = Path(new), Path(out)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)  # left by a replace that was killed midway
    if out.exists():
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)
