"""``build(cfg)``: corpus → sentences → tokenizer → FULL-SENTENCES sequences → masked
shards + manifest, for the RoBERTa static-vs-dynamic masking ablation (Liu et al. 2019,
§4.1, Table 1).

Steps (each module named after its step):

1. ``corpus.read_documents``: documents with stable ids; ``sentences.split_sentences``.
2. ``instances.is_validation``: documents held out by a sha256 of their id.
3. ``tokenizer``: trained on the training split only (or ``tokenizer.path`` copied in).
4. Sentences tokenized in batches (``encode_batch``: Rust, multi-threaded).
5. ``instances.pack_full_sentences`` over documents in ``instances.document_order(seed)``.
6. ``masking.Masker``: validation masked once with ``masking.validation_seed`` (the same
   bytes for every arm of the ablation: ``splits.validation.sha256`` in the manifest);
   training data ``static`` = ``dupe_factor`` copies, copy ``k`` masked with
   ``sequence_rng(seed, STREAM_STATIC, k, row)`` (BERT, Devlin et al. 2019, §A.2);
   ``dynamic`` = unmasked ``input_ids`` that the trainer's collator masks each epoch.
7. ``shards``: Arrow shards and ``manifest.json``; ``<split>/documents.txt`` lists the
   document ids of each split in packing order.

Resumability: the directory is built as ``<out>.partial`` next to ``<out>`` and renamed
when complete, under an exclusive lock (``.<out>.lock``) so concurrent builds of one
directory (several ranks, several ablation arms) build it once. A rerun finds a complete
directory with the same fingerprint and returns at once; a ``.partial`` left by a killed
build is deleted and redone.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from data_prep import shards
from data_prep.config import DataConfig, check_data_config, data_fingerprint, resolve_output_dir
from data_prep.corpus import ReadStats, read_documents
from data_prep.errors import UserError
from data_prep.instances import PackStats, document_order, is_validation, pack_full_sentences
from data_prep.masking import STREAM_STATIC, STREAM_VALIDATION, Masker, sequence_rng
from data_prep.sentences import DEFAULT_BACKEND, split_sentences
from data_prep.tokenizer import SPECIAL_TOKENS, TokenizerInfo, load_tokenizer, train_tokenizer

# Bumped whenever the code changes the bytes a config builds (sentence rules, packing,
# tokenizer settings): the fingerprint covers the config only, so a directory built by
# other code is refused instead of being reported up to date.
PIPELINE_VERSION = 1

# Formats this module can pack; the pair formats (BERT's NSP, ALBERT's SOP) come later.
SUPPORTED_FORMATS = ("full_sentences",)
# Ids of a split's documents in packing order, one per line: which text went where.
DOCUMENTS_FILE = "documents.txt"
ENCODE_BATCH = 8192  # sentences per encode_batch call: big enough to keep Rust threads busy

# (doc id, sentences) for one split; sentences become int32 arrays once tokenized.
_Docs = List[Tuple[str, list]]


def build(cfg: DataConfig, force: bool = False) -> Path:
    """Build the shard directory of ``cfg`` (or find it built) and return its path.

    Cheap when the directory is complete with the same fingerprint: reads manifest.json
    and returns, printing one "up to date" line to stderr.

    Args:
        cfg: a ``DataConfig`` (dataclass or the typed DictConfig from ``load_data_config``).
        force: rebuild even if a complete directory exists (replaced only once the new one
            is complete).
    Returns:
        The shard directory (``resolve_output_dir(cfg)``).
    Raises:
        UserError: invalid or unsupported config; the output directory holds a build of
            another config (use --force or another output_dir) or something that is not a
            shard directory; missing, empty or too small corpus; bad tokenizer file.
    """
    check_data_config(cfg)
    _check_supported(cfg)
    out = resolve_output_dir(cfg)
    fp = data_fingerprint(cfg)
    if _is_current(out, fp, cfg, force):
        return out
    try:
        manifest = _build_locked(out, cfg, fp, force)
    except OSError as e:  # unwritable output_dir, disk full: name the file, no traceback
        raise UserError(f"cannot write {e.filename or out}: {e.strerror or e}; check output_dir and free disk space") from None
    if manifest is None:
        return out
    t = manifest["totals"]
    print(
        f"data-prep: built {out}: {manifest['stats']['documents']} documents, {t['sequences']} sequences, "
        f"{t['tokens']} tokens in {manifest['build']['seconds']:.1f} s",
        file=sys.stderr,
    )
    return out


def _build_locked(out: Path, cfg: DataConfig, fp: str, force: bool) -> Optional[Dict[str, Any]]:
    """Build ``out`` under its lock; None if another process completed it meanwhile."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        # Another process may have finished this directory while we waited for the lock.
        if _is_current(out, fp, cfg, force):
            return None
        tmp = out.with_name(out.name + ".partial")
        if tmp.exists():
            print(f"data-prep: removing {tmp} left by an interrupted build", file=sys.stderr)
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            manifest = _build_into(tmp, cfg, fp)
            shards.write_manifest(tmp, manifest)
            _install(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return manifest


def _check_supported(cfg: DataConfig) -> None:
    if cfg.format not in SUPPORTED_FORMATS:
        raise UserError(f"format={cfg.format} is not implemented yet; use format=full_sentences sentence_objective=none")
    if cfg.tokenizer.kind not in SPECIAL_TOKENS:
        raise UserError(f"tokenizer.kind={cfg.tokenizer.kind} is not implemented yet; use one of: {', '.join(SPECIAL_TOKENS)}")
    if cfg.rows_per_shard < 1:
        raise UserError(f"rows_per_shard={cfg.rows_per_shard} must be >= 1")
    if cfg.max_documents is not None and cfg.max_documents < 1:
        raise UserError(f"max_documents={cfg.max_documents} must be >= 1 (or null for all)")


def _is_current(out: Path, fp: str, cfg: DataConfig, force: bool) -> bool:
    """True if ``out`` is a complete build of fingerprint ``fp`` (and not ``force``);
    False if it does not exist, is empty, or is a shard directory ``force`` may replace.
    UserError if it holds anything else: never delete what data-prep did not write."""
    if not out.exists():
        return False
    mf = out / shards.MANIFEST
    if not mf.is_file():
        if out.is_dir() and not any(out.iterdir()):
            return False
        raise UserError(f"output_dir {out} exists and is not a shard directory (no {shards.MANIFEST}); choose another output_dir")
    if force:
        return False
    try:
        m = json.loads(mf.read_text())
    except (OSError, ValueError):
        m = {}
    if m.get("fingerprint") != fp or m.get("format_version") != shards.FORMAT_VERSION:
        raise UserError(
            f"{out} holds data of another config (fingerprint {m.get('fingerprint')}, this config {fp}); "
            "rebuild with --force or set another output_dir"
        )
    if m.get("pipeline_version") != PIPELINE_VERSION:
        raise UserError(
            f"{out} was built by another data-prep version (pipeline {m.get('pipeline_version')}, this is "
            f"{PIPELINE_VERSION}); rebuild with --force or set another output_dir"
        )
    if cfg.tokenizer.path:
        src = Path(cfg.tokenizer.path)
        if src.is_file() and shards.sha256_file(src) != m["tokenizer"]["sha256"]:
            raise UserError(f"tokenizer.path {src} changed since {out} was built; rebuild with --force")
    damaged = _first_damaged(out, m)
    if damaged:
        print(f"data-prep: {out} is damaged ({damaged}); rebuilding it", file=sys.stderr)
        return False
    print(f"data-prep: {out} is up to date (fingerprint {fp})", file=sys.stderr)
    return True


def _first_damaged(out: Path, manifest: Dict[str, Any]) -> Optional[str]:
    """The first file of ``manifest`` that is missing or has another size, else None.
    Costs one stat per file; content is checked (sha256) by ``shards.ShardSet``."""
    entries = [e for sp in manifest.get("splits", {}).values() for c in sp.get("copies", []) for e in c]
    for e in entries:
        f = out / e["file"]
        if not f.is_file():
            return f"{e['file']} missing"
        if "bytes" in e and f.stat().st_size != e["bytes"]:
            return f"{e['file']} has {f.stat().st_size} bytes, not {e['bytes']}"
    if not (out / shards.TOKENIZER_FILE).is_file():
        return f"{shards.TOKENIZER_FILE} missing"
    return None


@contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    lock = out.with_name(f".{out.name}.lock")
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"data-prep: waiting for another build of {out} to finish", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _install(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``; an old ``out`` (--force) is moved aside first
    and deleted after, so ``out`` is never a mix of two builds."""
    old = None
    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- pipeline


def _build_into(tmp: Path, cfg: DataConfig, fp: str) -> Dict[str, Any]:
    t0 = time.time()
    stages: Dict[str, float] = {}  # wall seconds per step, for bench/ and profiling
    lap = _Lap(stages)
    read_stats = ReadStats()
    train_docs, val_docs = _read_and_split(cfg, read_stats)
    lap("read_split")
    info, tok_source = _tokenizer(tmp, cfg, train_docs)
    lap("tokenizer")
    n_sent = sum(len(s) for _, s in train_docs) + sum(len(s) for _, s in val_docs)
    with tqdm(total=n_sent, desc="tokenize", unit="sent", dynamic_ncols=True) as bar:
        for docs in (train_docs, val_docs):
            _tokenize(docs, info, bar)
    lap("tokenize")
    packed: Dict[str, Tuple[List[np.ndarray], PackStats]] = {}
    for split, docs in (("train", train_docs), ("validation", val_docs)):
        order = document_order([d for d, _ in docs], cfg.seed)
        _write_lines(tmp / split / DOCUMENTS_FILE, (docs[i][0] for i in order))
        stats = PackStats()
        seqs = list(pack_full_sentences((docs[i][1] for i in order), cfg.max_seq_length, info.cls_id, info.sep_id, stats))
        packed[split] = (seqs, stats)
    if not packed["train"][0]:
        raise UserError(f"corpus {cfg.corpus} is too small: the training split has no sequence; use a larger corpus")

    lap("pack")
    masker = Masker.from_config(cfg.masking, info.vocab_size, info.mask_id, info.special_ids)
    static = cfg.masking.mode == "static"
    copies = cfg.masking.dupe_factor if static else 1
    total_rows = len(packed["train"][0]) * copies + len(packed["validation"][0])
    splits: Dict[str, Any] = {}
    with tqdm(total=total_rows, desc="mask+write", unit="seq", dynamic_ncols=True) as bar:
        splits["validation"] = _write_split(
            tmp, "validation", packed["validation"][0], masker, cfg.rows_per_shard, bar,
            plans=[(None, cfg.masking.validation_seed, STREAM_VALIDATION, 0)],
        )
        plans = [(k, cfg.seed, STREAM_STATIC, k) for k in range(copies)] if static else [(None, None, None, None)]
        splits["train"] = _write_split(tmp, "train", packed["train"][0], masker, cfg.rows_per_shard, bar, plans=plans)
    for split, docs in (("train", train_docs), ("validation", val_docs)):
        splits[split]["documents"] = len(docs)
        splits[split]["documents_file"] = f"{split}/{DOCUMENTS_FILE}"
    lap("mask_write")
    splits["train"]["masking"] = (
        {"mode": "static", "seed": cfg.seed, "stream": STREAM_STATIC, "copies": copies}
        if static
        else {"mode": "dynamic", "note": "unmasked; the trainer's collator masks every epoch"}
    )
    splits["validation"]["masking"] = {"mode": "fixed", "seed": cfg.masking.validation_seed, "stream": STREAM_VALIDATION}

    pstats = [packed[s][1] for s in ("train", "validation")]
    tok_file = tmp / shards.TOKENIZER_FILE
    return {
        "format_version": shards.FORMAT_VERSION,
        "pipeline_version": PIPELINE_VERSION,
        "fingerprint": fp,
        "data_config": OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True),
        "tokenizer": {
            "file": shards.TOKENIZER_FILE,
            "sha256": shards.sha256_file(tok_file),
            "kind": info.kind,
            "vocab_size": info.vocab_size,
            "source": tok_source,
            "special_tokens": {
                role: {"token": token, "id": int(info.tokenizer.token_to_id(token))}
                for role, token in SPECIAL_TOKENS[info.kind].items()
            },
        },
        "splits": splits,
        "totals": {
            "sequences": sum(s.sequences for s in pstats),
            "tokens": sum(s.tokens for s in pstats),
            "stored_sequences": total_rows,
            "bytes": sum(e["bytes"] for sp in splits.values() for c in sp["copies"] for e in c),
        },
        "stats": {
            "documents": read_stats.documents,
            "train_documents": len(train_docs),
            "validation_documents": len(val_docs),
            "sources": dict(sorted(read_stats.sources.items())),
            "sentences": sum(s.sentences for s in pstats),
            "truncated_sentences": sum(s.truncated_sentences for s in pstats),
            "truncated_tokens": sum(s.truncated_tokens for s in pstats),
            "empty_documents": read_stats.empty_documents,
            "replaced_characters": read_stats.replaced_characters,
            "skipped_members": read_stats.skipped_members,
        },
        "sentence_splitter": DEFAULT_BACKEND,
        "build": {
            "seconds": round(time.time() - t0, 2),
            "stage_seconds": {k: round(v, 2) for k, v in stages.items()},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    }


class _Lap:
    """Records the wall time since the previous call under a stage name."""

    def __init__(self, into: Dict[str, float]) -> None:
        self.into, self.t = into, time.time()

    def __call__(self, stage: str) -> None:
        now = time.time()
        self.into[stage] = now - self.t
        self.t = now


def _read_and_split(cfg: DataConfig, stats: ReadStats) -> Tuple[_Docs, _Docs]:
    """Read, split into sentences, and assign each document to train or validation."""
    train: _Docs = []
    val: _Docs = []
    docs = read_documents(cfg.corpus, list(cfg.strip_pos_tags), cfg.max_documents, stats)
    for doc in tqdm(docs, desc="read+split", unit="doc", total=cfg.max_documents, dynamic_ncols=True):
        sents = split_sentences(doc.text)
        (val if is_validation(doc.id, cfg.validation_fraction) else train).append((doc.id, sents))
    if not val or not train:
        which = "validation" if not val else "training"
        raise UserError(
            f"corpus {cfg.corpus} is too small: {stats.documents} documents leave no {which} document at "
            f"validation_fraction={cfg.validation_fraction}; use a larger corpus (or change validation_fraction)"
        )
    return train, val


def _tokenizer(tmp: Path, cfg: DataConfig, train_docs: _Docs) -> Tuple[TokenizerInfo, str]:
    """Train on the training split (never on validation text) or copy ``tokenizer.path``."""
    dest = tmp / shards.TOKENIZER_FILE
    t = cfg.tokenizer
    if t.path:
        src = Path(t.path)
        if not src.is_file():
            raise UserError(f"tokenizer.path {src} not found; point it at a tokenizer.json or unset it to train one")
        shutil.copyfile(src, dest)
        return load_tokenizer(dest, t.kind), str(src)
    n = sum(len(s) for _, s in train_docs)
    feed = (s for _, sents in train_docs for s in sents)
    train_tokenizer(
        t.kind, tqdm(feed, total=n, desc="train tokenizer", unit="sent", dynamic_ncols=True), t.vocab_size, t.min_frequency, dest
    )
    return load_tokenizer(dest, t.kind), "trained"


def _tokenize(docs: _Docs, info: TokenizerInfo, bar: tqdm) -> None:
    """Replace each document's sentences (str) by int32 token arrays, in place, calling
    ``encode_batch`` on ~``ENCODE_BATCH`` sentences at a time."""
    batch: List[str] = []
    owners: List[int] = []  # document index of each sentence in ``batch``

    def flush() -> None:
        encoded = info.encode_batch(batch)
        pos = 0
        while pos < len(owners):
            d = owners[pos]
            end = pos
            while end < len(owners) and owners[end] == d:
                end += 1
            docs[d][1].extend(np.asarray(ids, dtype=np.int32) for ids in encoded[pos:end])
            pos = end
        bar.update(len(batch))
        batch.clear()
        owners.clear()

    for i, (_, sents) in enumerate(docs):
        texts = list(sents)
        sents.clear()  # refilled with token arrays by flush()
        for s in texts:
            batch.append(s)
            owners.append(i)
            if len(batch) >= ENCODE_BATCH:
                flush()
    if batch:
        flush()


def _write_lines(path: Path, lines: Iterator[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line.replace("\n", " ") + "\n")


def _write_split(
    root: Path,
    split: str,
    seqs: Sequence[np.ndarray],
    masker: Masker,
    rows_per_shard: int,
    bar: tqdm,
    plans: Sequence[Tuple[Optional[int], Optional[int], Optional[int], Optional[int]]],
) -> Dict[str, Any]:
    """Write every copy of one split. A plan is ``(copy, seed, stream, round)``: ``copy``
    None = a single copy at ``<split>/``; ``seed`` None = unmasked (dynamic training data)."""
    copies: List[List[Dict[str, Any]]] = []
    masked = plans[0][1] is not None
    for copy, seed, stream, round_ in plans:
        entries = []
        for index, start in enumerate(range(0, len(seqs), rows_per_shard)):
            rows = seqs[start : start + rows_per_shard]
            if masked:
                pairs = [masker(ids, sequence_rng(seed, stream, round_, start + j)) for j, ids in enumerate(rows)]
                cols = {"input_ids": [p[0] for p in pairs], "labels": [p[1] for p in pairs]}
            else:
                cols = {"input_ids": list(rows)}
            rel = shards.shard_relpath(split, copy, index)
            entry = shards.write_shard(root / rel, cols)
            entry["file"] = rel
            entries.append(entry)
            bar.update(len(rows))
        copies.append(entries)
    digest = hashlib.sha256("".join(e["sha256"] for c in copies for e in c).encode()).hexdigest()
    return {
        "copies": copies,
        "masked": masked,
        "columns": ["input_ids", "labels"] if masked else ["input_ids"],
        "rows": len(seqs),
        "tokens": int(sum(int(s.size) for s in seqs)),
        "sha256": digest,
    }
