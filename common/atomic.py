"""Writes a reader never sees half of: write to ``<name>.tmp`` beside the target, then
``os.replace`` (atomic on POSIX within one file system). A write that fails (a full disk)
removes its temporary file and leaves the target as it was."""

import json
import os
from pathlib import Path
from typing import Any

from common.diskspace import disk_full_is_user_error


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename.

    Raises UserError naming ``path`` and the space needed if the disk is full."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    data = text.encode()
    try:
        with disk_full_is_user_error(path, len(data)):
            tmp.write_bytes(data)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path``, atomically (see
    ``write_text_atomic``)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
