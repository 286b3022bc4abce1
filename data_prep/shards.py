"""Shard directories: Arrow IPC files of up to ``rows_per_shard`` sequences plus ``manifest.json``.

Layout of a shard directory::

    manifest.json           format version, resolved data config, tokenizer sha256,
                            every shard's rows/sha256/chunk, totals and data-prep counters,
                            ``read_report``: reading totals and every corpus file skipped
                            (binary, metadata), with undecodable bytes, or with lines or
                            documents cut (``data_prep.corpus.ReadStats.report``)
    tokenizer.json          the tokenizer the ids were made with
    train/shard-00000.arrow          dynamic masking: unmasked ``input_ids``
    train/copy-03/shard-00000.arrow  static masking: copy 3 of ``dupe_factor``
    validation/shard-00000.arrow     masked once (``masking.validation_seed``)
    <split>/documents.txt            ids of the split's documents in the order used

Shards are numbered per split in corpus order; each comes from one chunk of documents
(``data_prep.build``), so row counts vary from shard to shard (the manifest records each;
``SplitData`` indexes rows across them). Every copy of a split holds the same sequences
in the same order, so row ``i`` names one sequence whatever the copy — unless the split's
``copies_share_rows`` is false (static copies that reran instance creation,
``masking.copies=reference``): then each copy holds its own rows, and the reader serves
all copies' rows as one split (copy 0's rows first), as BERT's reference pools and
shuffles its ``dupe_factor`` copies. Columns:
``input_ids`` (list<int32>, always); ``labels`` (list<int32>, -100 where nothing is
predicted) in masked copies; ``word_starts`` (list<int8>, 1 where a token begins a word,
special tokens included; ``data_prep.words``) for whole-word and n-gram masking;
``token_type_ids`` (list<int8>: 0 for ``[CLS] A [SEP]``, 1 for ``B [SEP]``) and
``next_sentence_label`` / ``sentence_order_label`` (int8; 0 = IsNext / in order) for pair
formats. A row's length is the difference of its ``input_ids`` offsets
(``SplitData.lengths``).

Arrow IPC (uncompressed) is memory-mapped by the reader, so opening a corpus costs no
copy and random access is O(1). A directory is written under a temporary name and renamed
when complete; the reader checks each shard's row count and sha256 against the manifest
and refuses a mismatch with a one-line error naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa

from common.errors import UserError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def shard_relpath(split: str, copy: Optional[int], index: int) -> str:
    """Relative path of shard ``index`` of ``split`` (``copy`` None for unmasked data)."""
    sub = f"{split}/copy-{copy:02d}" if copy is not None else split
    return f"{sub}/shard-{index:05d}.arrow"


def write_shard(path: Path, columns: Dict[str, Any]) -> Dict[str, Any]:
    """Write one Arrow IPC shard atomically (temp name, then rename).

    Args:
        path: destination file.
        columns: column name → list of per-row values (list-of-int sequences for
            ``input_ids``/``labels``/``token_type_ids``, ints for sentence labels).
    Returns:
        The manifest entry ``{"file", "rows", "tokens", "bytes", "sha256"}`` (``file``
        filled by the caller); ``bytes`` lets the reader spot a truncated shard cheaply.
    """
    types = {
        "input_ids": pa.list_(pa.int32()),
        "labels": pa.list_(pa.int32()),
        "token_type_ids": pa.list_(pa.int8()),
        "word_starts": pa.list_(pa.int8()),
        "next_sentence_label": pa.int8(),
        "sentence_order_label": pa.int8(),
    }
    arrays = {}
    for name, values in columns.items():
        t = types.get(name)
        arrays[name] = _list_array(values, t) if t is not None and pa.types.is_list(t) else pa.array(values, type=t)
    table = pa.table(arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    os.replace(tmp, path)
    tokens = int(sum(len(x) for x in columns["input_ids"]))
    return {"rows": table.num_rows, "tokens": tokens, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _list_array(rows: Sequence[Any], t: pa.DataType) -> pa.Array:
    # Building from one flat numpy buffer is ~20x faster than pa.array(list of lists).
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    np_type = t.value_type.to_pandas_dtype()
    flat = np.concatenate([np.asarray(r, dtype=np_type) for r in rows]) if rows else np.zeros(0, np_type)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=t.value_type))


def write_manifest(directory: Path, manifest: Dict[str, Any]) -> None:
    """Write manifest.json atomically."""
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, directory / MANIFEST)


def read_manifest(directory: Path) -> Dict[str, Any]:
    """Load and sanity-check manifest.json. Raises UserError (missing, unreadable, other version)."""
    f = Path(directory) / MANIFEST
    if not f.is_file():
        raise UserError(f"{f} not found: {directory} is not a complete shard directory; build it with `data-prep build`")
    try:
        m = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{f} is not valid JSON ({e}); rebuild it with `data-prep build --force`") from None
    if m.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{f} has format_version {m.get('format_version')}, this code reads {FORMAT_VERSION}; rebuild with `data-prep build --force`"
        )
    return m


@dataclass
class _Shard:
    offsets: Dict[str, np.ndarray]  # list column → int32 [rows+1]
    values: Dict[str, np.ndarray]  # list column → flat values
    scalars: Dict[str, np.ndarray]  # scalar column → [rows]


class SplitData:
    """Random access to one split (all copies) of a shard directory.

    ``len(split)`` is the number of sequences; ``split.num_copies`` is ``dupe_factor`` for
    statically masked training data whose copies share their rows and 1 otherwise (copies
    with rows of their own, ``shared_rows`` False, are served as one pool of rows);
    ``split.masked`` tells whether the copies carry ``labels``.
    """

    def __init__(self, name: str, copies: List[List[_Shard]], masked: bool, columns: List[str], shared_rows: bool = True) -> None:
        self.name = name
        self.stored_copies = len(copies)
        self._copies = copies if shared_rows else [[s for c in copies for s in c]]
        self.masked = masked
        self.columns = columns
        rows = [s.offsets["input_ids"].size - 1 for s in self._copies[0]]
        self._starts = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        self.num_rows = int(self._starts[-1])
        self.num_tokens = int(sum(int(s.offsets["input_ids"][-1]) for s in self._copies[0]))

    def __len__(self) -> int:
        return self.num_rows

    @property
    def num_copies(self) -> int:
        return len(self._copies)

    def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
        """``split[i]`` = ``split.row(i)`` (copy 0), as in a ``datasets.Dataset``."""
        return self.row(index)

    def row(self, index: int, copy: int = 0) -> Dict[str, np.ndarray]:
        """Columns of sequence ``index`` in copy ``copy`` (list columns as numpy views
        ``[seq]``, scalar columns as 0-d values). Raises IndexError out of range."""
        if not 0 <= index < self.num_rows:
            raise IndexError(f"row {index} out of range for {self.name} ({self.num_rows} rows)")
        s = int(np.searchsorted(self._starts, index, side="right") - 1)
        local = index - int(self._starts[s])
        shard = self._copies[copy % len(self._copies)][s]
        out: Dict[str, Any] = {}
        for name, off in shard.offsets.items():
            out[name] = shard.values[name][off[local] : off[local + 1]]
        for name, col in shard.scalars.items():
            out[name] = col[local]
        return out

    def scalar_column(self, name: str, copy: int = 0) -> np.ndarray:
        """``[rows]`` values of per-row column ``name`` (e.g. ``next_sentence_label``, int8)
        over all shards of copy ``copy``. Raises KeyError if the split has no such column."""
        if not self._copies[0] or name not in self._copies[0][0].scalars:
            if name in self.columns and not self._copies[0]:
                return np.zeros(0, dtype=np.int8)
            raise KeyError(f"split {self.name!r} has no per-row column {name!r} (columns: {', '.join(self.columns)})")
        return np.concatenate([s.scalars[name] for s in self._copies[copy % len(self._copies)]])

    def token_counts(self, vocab_size: int, copy: int = 0) -> np.ndarray:
        """int64 ``[vocab_size]``: occurrences of every id in ``input_ids`` of copy ``copy``
        (``data_prep.token_counts``). Raises UserError for an id >= ``vocab_size``."""
        from tqdm import tqdm

        counts = np.zeros(int(vocab_size), dtype=np.int64)
        shards = self._copies[copy % len(self._copies)]
        # BERT-scale data is billions of ids: a bar per shard, shown when there are several.
        for s in tqdm(shards, desc=f"count tokens ({self.name})", unit="shard", disable=len(shards) < 2, leave=False):
            ids = s.values["input_ids"]
            if ids.size and int(ids.max()) >= vocab_size:
                raise UserError(f"split {self.name!r} holds token id {int(ids.max())}, outside the vocabulary of "
                                f"{vocab_size}; rebuild the data with this tokenizer")
            counts += np.bincount(ids, minlength=vocab_size).astype(np.int64)
        return counts

    def lengths(self) -> np.ndarray:
        """int64 ``[rows]``: token count of every sequence."""
        if not self._copies[0]:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.diff(s.offsets["input_ids"]) for s in self._copies[0]]).astype(np.int64)


class ShardSet:
    """A verified, memory-mapped shard directory.

    Args:
        directory: the shard directory.
        verify: check every shard's sha256 and row count against the manifest.
        expect_tokenizer_sha256: if given, refuse a directory made with another tokenizer.
    Raises:
        UserError: missing/invalid manifest, missing, truncated or modified shard,
            tokenizer mismatch — one line naming the file and the fix.
    """

    def __init__(self, directory: str | Path, verify: bool = True, expect_tokenizer_sha256: Optional[str] = None) -> None:
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        tok = self.directory / TOKENIZER_FILE
        recorded = self.manifest["tokenizer"]["sha256"]
        if not tok.is_file():
            raise UserError(f"{tok} is missing; rebuild {self.directory} with `data-prep build --force`")
        if verify and sha256_file(tok) != recorded:
            raise UserError(f"{tok} does not match the sha256 in {self.directory / MANIFEST}; rebuild with `data-prep build --force`")
        if expect_tokenizer_sha256 and expect_tokenizer_sha256 != recorded:
            raise UserError(
                f"{self.directory} was made with another tokenizer (sha256 {recorded[:12]}…, expected "
                f"{expect_tokenizer_sha256[:12]}…); rebuild it with this tokenizer or point to matching shards"
            )
        self.splits: Dict[str, SplitData] = {}
        for name, info in self.manifest["splits"].items():
            copies = [[self._open(e, verify) for e in entries] for entries in info["copies"]]
            self.splits[name] = SplitData(name, copies, bool(info["masked"]), list(info["columns"]), bool(info.get("copies_share_rows", True)))

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / TOKENIZER_FILE

    def __getitem__(self, split: str) -> SplitData:
        if split not in self.splits:
            raise UserError(f"{self.directory} has no split {split!r} (has: {', '.join(self.splits)})")
        return self.splits[split]

    def _open(self, entry: Dict[str, Any], verify: bool) -> _Shard:
        path = self.directory / entry["file"]
        if not path.is_file():
            raise UserError(f"shard {path} is missing; rebuild {self.directory} with `data-prep build --force`")
        # A size check is free, so a truncated file is named as such even with verify=False.
        size = path.stat().st_size
        if "bytes" in entry and size != entry["bytes"]:
            raise UserError(
                f"shard {path} is truncated or overwritten ({size} bytes, the manifest says {entry['bytes']}); rebuild {self.directory} with `data-prep build --force`"
            )
        if verify and sha256_file(path) != entry["sha256"]:
            raise UserError(f"shard {path} is corrupt (sha256 differs from the manifest); rebuild {self.directory} with `data-prep build --force`")
        try:
            table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        except (pa.ArrowInvalid, OSError) as e:
            raise UserError(f"shard {path} is unreadable ({str(e).splitlines()[0]}); rebuild {self.directory} with `data-prep build --force`") from None
        if table.num_rows != entry["rows"]:
            raise UserError(
                f"shard {path} has {table.num_rows} rows, the manifest says {entry['rows']}; rebuild {self.directory} with `data-prep build --force`"
            )
        offsets, values, scalars = {}, {}, {}
        for name in table.column_names:
            col = table.column(name).combine_chunks()
            if pa.types.is_list(col.type):
                offsets[name] = col.offsets.to_numpy()
                values[name] = col.values.to_numpy(zero_copy_only=False)
            else:
                scalars[name] = col.to_numpy(zero_copy_only=False)
        return _Shard(offsets, values, scalars)
