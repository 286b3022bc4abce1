"""Token frequencies of a shard directory's training split, and the masking weights
DistilBERT derives from them (``data.masking.smoothing``).

Hugging Face's DistilBERT recipe (``examples/research_projects/distillation``) counts every
token id of its binarized training data once (``scripts/token_counts.py``, stored as a
pickle) and chooses the tokens to mask with probability proportional to
``max(count, 1) ** -mlm_smoothing``, special tokens never (``train.py`` ``main``; the
choice in ``distiller.py`` ``Distiller.prepare_batch_mlm``); ``--mlm_smoothing`` defaults to
0.7, XLM's value ("emphasize more rare tokens, similar to word2vec").

Here the counts are taken from the shards' ``input_ids`` (the unmasked ids of dynamically
masked data) and cached as JSON beside the manifest, ``token_counts-<split>.json``, with
the split's token total, the directory's fingerprint and tokenizer hash so a stale file is recounted
rather than trusted. JSON, never pickle: reading it executes nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np

from common.atomic import write_json_atomic
from common.errors import UserError


def cache_path(directory: Path, split: str) -> Path:
    """Where the counts of ``split`` of the shard directory ``directory`` are cached."""
    return Path(directory) / f"token_counts-{split}.json"


def load_or_count(shards, split: str, vocab_size: int, write: bool = True) -> np.ndarray:
    """int64 ``[vocab_size]``: occurrences of every token id in ``split`` of ``shards`` (a
    ``data_prep.shards.ShardSet``), from the cache file when it matches, else counted
    (``SplitData.token_counts``) and, with ``write``, cached atomically (a directory that
    cannot be written to only loses the cache: a warning, the counts are still returned).

    Raises:
        UserError: an id >= ``vocab_size`` in the split (shards of another tokenizer).
    """
    data = shards[split]
    path = cache_path(shards.directory, split)
    stamp = {"split": split, "vocab_size": int(vocab_size), "num_tokens": int(data.num_tokens),
             "fingerprint": shards.manifest.get("fingerprint"), "tokenizer_sha256": shards.manifest["tokenizer"]["sha256"]}
    cached = _read(path)
    if cached is not None and all(cached.get(k) == v for k, v in stamp.items()) and len(cached.get("counts", ())) == vocab_size:
        return np.asarray(cached["counts"], dtype=np.int64)
    counts = data.token_counts(vocab_size)
    if write:
        try:
            write_json_atomic(path, {**stamp, "counts": counts.tolist()})
        except (OSError, UserError) as e:
            print(f"warning: could not cache token counts in {path}: {e}", file=sys.stderr)
    return counts


def _read(path: Path) -> Optional[dict[str, Any]]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def smoothed_weights(counts: np.ndarray, smoothing: float, special_ids) -> np.ndarray:
    """float64 ``[vocab]``: ``max(count, 1) ** -smoothing`` per id, 0 for ``special_ids``
    (``train.py`` ``main`` of Hugging Face's distillation example). A token seen once
    weighs ``n ** smoothing`` times one seen ``n`` times; an id never seen counts as once.

    Args:
        counts: int ``[vocab]`` occurrences (``load_or_count``).
        smoothing: ``data.masking.smoothing`` (> 0; 0 would be uniform).
        special_ids: ids never chosen (CLS/SEP/PAD/MASK/UNK ...).
    """
    w = np.maximum(np.asarray(counts, dtype=np.float64), 1.0) ** -float(smoothing)
    w[np.asarray(special_ids, dtype=np.int64)] = 0.0
    return w


def masking_weights(masking_cfg, shards, vocab_size: int, special_ids, is_main: bool = True) -> Optional[np.ndarray]:
    """The ``token_weights`` of the training masker (``data_prep.masking.Masker``) for
    ``data.masking`` (the one reader of ``masking.smoothing``): None when it is 0 (uniform
    choice), else ``smoothed_weights`` of the training split's counts (``load_or_count``;
    only ``is_main`` writes the cache, so ranks never write the same file at once).

    Raises:
        UserError: as ``load_or_count``.
    """
    smoothing = float(getattr(masking_cfg, "smoothing", 0.0))
    if smoothing == 0.0:
        return None
    counts = load_or_count(shards, "train", vocab_size, write=is_main)
    return smoothed_weights(counts, smoothing, special_ids)
