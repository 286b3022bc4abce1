"""``manifest.json`` of a checkpoint directory: every file's size and sha256, written last.

The trainer writes a checkpoint under a temporary name, then the manifest, then renames the
directory; so a ``step-*`` directory without a valid manifest is incomplete or damaged (a
truncated or bit-flipped file, a file deleted or added afterwards). ``problem`` says which,
in a few words, before anything of the directory is unpickled.

It guards against accidents, not against someone who writes a whole checkpoint with a
matching manifest: that is what weights-only loading (``pretrain.training.safeload``) is for.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from common.atomic import write_json_atomic

MANIFEST = "manifest.json"
VERSION = 1
_BLOCK = 1 << 20


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def files(d: Path) -> List[str]:
    """Paths of every file under ``d`` (relative, sorted), the manifest excepted."""
    return sorted(str(p.relative_to(d)) for p in Path(d).rglob("*") if p.is_file() and p.name != MANIFEST)


def entries(d: Path, rels: List[str]) -> Dict[str, Dict[str, Any]]:
    """``{rel: {"bytes", "sha256"}}`` for the files ``rels`` of ``d``: a share of a
    manifest, so that the ranks of a job can hash a checkpoint's files in parallel."""
    return {rel: {"bytes": (Path(d) / rel).stat().st_size, "sha256": sha256(Path(d) / rel)} for rel in rels}


def write(d: Path, listed: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Write ``d/manifest.json`` (atomically, so a reader sees all of it or none) from
    ``listed`` (``entries`` of every file, gathered from the ranks) or, without it, by
    hashing every file under ``d`` here. Returns the manifest: ``{"version", "files":
    {relpath: {"bytes", "sha256"}}, "bytes"}`` (``bytes``: the total). Raises UserError on a
    full disk."""
    listed = entries(d, files(d)) if listed is None else listed
    manifest = {"version": VERSION, "files": dict(sorted(listed.items())),
                "bytes": sum(f["bytes"] for f in listed.values())}
    write_json_atomic(d / MANIFEST, manifest)
    return manifest


def read(d: Path) -> Optional[Dict[str, Any]]:
    """``d/manifest.json``, or None if it is missing or not a manifest."""
    try:
        m = json.loads((Path(d) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and isinstance(m.get("files"), dict) else None


def problem(d: Path, hashes: bool = True) -> Optional[str]:
    """What is wrong with checkpoint directory ``d`` in a few words, or None if every file
    the manifest lists is there with its size (and, with ``hashes``, its sha256) and no
    other file is. Reads every byte when ``hashes`` is set."""
    d = Path(d)
    if not d.is_dir():
        return "missing"
    m = read(d)
    if m is None:
        return f"no valid {MANIFEST} (incomplete, or not written by this trainer)"
    listed = m["files"]
    present = set(files(d))
    for rel in sorted(listed):
        if rel not in present:
            return f"{rel} is missing"
        have, want = (d / rel).stat().st_size, listed[rel].get("bytes")
        if have != want:
            return f"{rel} has {have} bytes, the manifest says {want}"
    extra = sorted(present - set(listed))
    if extra:
        return f"{extra[0]} is not in its {MANIFEST}"
    if hashes:
        for rel in sorted(listed):
            if sha256(d / rel) != listed[rel].get("sha256"):
                return f"{rel} does not match its sha256 in {MANIFEST}"
    return None
