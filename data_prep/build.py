"""``build(cfg)``: corpus → tokenizer → chunks of documents → instances → masked shards +
manifest, for every input format of RoBERTa §4.2 and BERT/ALBERT's sentence-pair tasks.

Two streaming passes over the corpus; memory is bounded by ``chunk_documents``, never by
the corpus size:

1. **Tokenizer** (skipped with ``tokenizer.path``): trained reproducibly
   (``data_prep.tokenizer.train_tokenizer``) on a stream of the training split's line units
   (``sentences.line_units``; validation documents never reach it), or taken from the
   cache of tokenizers trained on the same text (``_cached_tokenizer``: one file per
   training text, kind, vocabulary size and special tokens, in ``tokenizers/`` beside the
   shard directory), so the arms of an ablation share one tokenizer. The trainers keep
   word counts, not text, so memory grows with the vocabulary of the corpus, not its size.
   The pre-tokenizers of all three kinds cut text at whitespace before anything else, so
   line units give the same word counts as their sentences, without the splitter's cost.
2. **Chunks**: documents in read order go to train or validation by a sha256 of their id
   (``instances.is_validation``); each split's documents are cut into chunks of
   ``chunk_documents`` documents or ``CHUNK_CHARACTERS`` characters, whichever is reached
   first (a split's last chunk takes a lone remaining document, so every chunk of a split
   with two or more documents has two or more). A chunk is processed on
   its own, by ``num_workers`` processes in parallel: sentences
   (``sentences.split_sentences``), ids and word starts (``words.encode_with_words``),
   documents shuffled inside the chunk (``instances.document_order``), rows
   (``instances.make_rows``), masks, Arrow shards. Every random draw depends only on
   ``(seed, split, chunk, row)`` — never on the worker — so the output is byte-identical
   for any ``num_workers``. The main process renames each chunk's shards, in chunk order,
   to the global names of ``shards.shard_relpath``, so a split's rows keep corpus order.

Masks: validation masked once with ``masking.validation_seed``, row ``r`` of chunk ``c`` with
``sequence_rng(validation_seed, STREAM_VALIDATION, 0, row_key(c, r))`` (the same bytes for
every arm of an ablation: ``splits.validation.sha256``); training data ``static`` =
``dupe_factor`` copies of the same rows, copy ``k`` of row ``r`` of chunk ``c`` masked with
``sequence_rng(seed, STREAM_STATIC, k, row_key(c, r))`` (BERT, Devlin et al. 2019, §A.2). With
``masking.copies=reference`` every copy also reruns instance creation with its own
generator (``chunk_random(seed, split, chunk, k)``), as BERT's and ALBERT's
``create_pretraining_data.py`` do, so copies hold different rows (pooled by the reader);
with ``remask`` copies share rows, so row ``i`` is one sequence in every copy; ``dynamic`` = unmasked rows the trainer's collator masks every
epoch (RoBERTa §4.1). Every row carries ``word_starts`` so the collator can mask whole
words or n-grams.

Shards: a chunk's rows go to ``ceil(rows / rows_per_shard)`` shard files, so shards hold
up to ``rows_per_shard`` rows and their row counts vary (the manifest records each).

Resumability: the directory is built as ``<out>.partial`` and renamed when complete,
under an exclusive lock (``.<out>.lock`` beside it, ``common.lock``: a second build of the
same directory waits, naming the holder's host and pid, then finds it built; the file is
deleted when the build ends). The tokenizer and each finished chunk are recorded in
``<out>.partial/.progress/`` (a chunk's JSON record names its shards and a sha256 of its input documents). A build
that is killed or interrupted leaves the ``.partial`` directory; rerunning the same config
reuses the tokenizer and every recorded chunk whose input is unchanged, redoes the rest,
and ends byte-identical to an uninterrupted build (``manifest.json`` differs only in its
``build`` timings and ``data_config.num_workers``). A ``.partial`` of another config or
code version is deleted; a bad-input error (UserError) deletes it too.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Deque, Dict, Iterator, List, Optional, Tuple

import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from common.atomic import replace_dir
from common.errors import UserError
from common.lock import DirLock
from common.schema import LABEL_COLUMNS, PAIR_FORMATS
from data_prep import shards
from data_prep.config import (
    DataConfig,
    check_data_config,
    data_fingerprint,
    resolve_output_dir,
)
from data_prep.corpus import ReadOptions, ReadStats, read_documents, report_lines
from data_prep.instances import (
    InstanceStats,
    Row,
    chunk_random,
    document_order,
    is_validation,
    make_rows,
)
from data_prep.masking import STREAM_STATIC, STREAM_VALIDATION, Masker, sequence_rng
from data_prep.sentences import DEFAULT_BACKEND, line_units, split_sentences
from data_prep.tokenizer import (
    HF_PREFIX,
    SPECIAL_TOKENS,
    TokenizerInfo,
    load_tokenizer,
    train_tokenizer,
)
from data_prep.words import encode_with_words, reference_starts

# Bumped whenever the code changes the bytes a config builds (sentence rules, packing,
# tokenizer settings): the fingerprint covers the config only, so a directory built by
# other code is refused instead of being reported up to date.
# 4: one layout rule for text files, over-long lines cut (data_prep.corpus); 5: reproducible
# WordPiece/Unigram training, special-token strings encoded as text, reference pair rules.
PIPELINE_VERSION = 5

# Ids of a split's documents in the order they were used, one per line.
DOCUMENTS_FILE = "documents.txt"
PROGRESS_DIR = ".progress"  # inside <out>.partial: what a rerun may reuse
TOKENIZER_CACHE = "tokenizers"  # beside the shard directories: trained tokenizers by training text
ENCODE_BATCH = 8192  # sentences per encode_batch call: big enough to keep Rust threads busy
IN_FLIGHT_PER_WORKER = 2  # chunks queued per worker: keeps workers busy, bounds memory
# A chunk also closes at this many characters of text (about 1.5M words): documents vary
# from a 20-word review to a 1M-word book, and a worker's memory grows with its chunk's
# text (~8 bytes per character while it splits, encodes and packs; measured on nltk).
CHUNK_CHARACTERS = 8_000_000
SPLITS = ("train", "validation")


def row_key(chunk: int, row: int) -> int:
    """The ``index`` of ``masking.sequence_rng`` for row ``row`` of chunk ``chunk`` of a
    split: ``chunk · 2**32 + row``. Known to the worker that masks the row (its global row
    number is not, until earlier chunks are done), so a data-prep mask never depends on
    the worker count; in a one-chunk split it is the row number."""
    return (int(chunk) << 32) + int(row)


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
        UserError: invalid config; the output directory holds a build of another config
            (use --force or another output_dir) or something that is not a shard
            directory; missing, empty or too small corpus; a split with one document
            when NSP needs another; bad tokenizer file.
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
    for line in read_report_lines(manifest):
        print(f"data-prep: {line}", file=sys.stderr)
    return out


def read_options(cfg: DataConfig) -> ReadOptions:
    """How ``cfg``'s corpus is read: its encoding and layout keys, and over-long lines cut
    into pieces a row can hold (a token covers at least one byte; one more for the
    word-start marker a unigram tokenizer may add), so no token of them is truncated."""
    return ReadOptions(str(cfg.corpus_encoding), str(cfg.corpus_errors), str(cfg.corpus_layout),
                       max(16, int(cfg.max_seq_length) - 4))


def read_report_lines(manifest: Dict[str, Any]) -> List[str]:
    """The end-of-build report: ``corpus.report_lines`` of the manifest's ``read_report``
    (binary, undecodable and cut files) and the sentences truncated to fit a row."""
    dc, st = manifest["data_config"], manifest["stats"]
    lines = report_lines(manifest["read_report"], dc["corpus_encoding"], dc["corpus_errors"])
    if st["truncated_sentences"]:
        dropped = "" if dc["format"] in PAIR_FORMATS else f" ({st['truncated_tokens']} tokens dropped)"
        lines.append(f"{st['truncated_sentences']} sentences longer than max_seq_length={dc['max_seq_length']} were truncated{dropped}")
    return lines


def _build_locked(out: Path, cfg: DataConfig, fp: str, force: bool) -> Optional[Dict[str, Any]]:
    """Build ``out`` under its lock; None if another process completed it meanwhile."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        # Another process may have finished this directory while we waited for the lock.
        if _is_current(out, fp, cfg, force):
            return None
        tmp = out.with_name(out.name + ".partial")
        header = {"fingerprint": fp, "pipeline_version": PIPELINE_VERSION, "format_version": shards.FORMAT_VERSION}
        if tmp.exists() and _read_json(tmp / PROGRESS_DIR / "build.json") != header:
            print(f"data-prep: removing {tmp} left by an interrupted build of another config", file=sys.stderr)
            shutil.rmtree(tmp)
        elif tmp.exists():
            done = len(list((tmp / PROGRESS_DIR).glob("*-*.json")))
            print(f"data-prep: resuming the interrupted build in {tmp} ({done} chunks done)", file=sys.stderr)
        (tmp / PROGRESS_DIR).mkdir(parents=True, exist_ok=True)
        _write_json(tmp / PROGRESS_DIR / "build.json", header)
        try:
            manifest = _build_into(tmp, cfg, fp)
        except UserError:
            shutil.rmtree(tmp, ignore_errors=True)  # bad input: nothing worth resuming
            raise
        shutil.rmtree(tmp / PROGRESS_DIR)
        shards.write_manifest(tmp, manifest)
        replace_dir(tmp, out)  # an old out (--force) is never mixed with the new build
    return manifest


def _check_supported(cfg: DataConfig) -> None:
    if cfg.tokenizer.kind not in SPECIAL_TOKENS:
        raise UserError(f"tokenizer.kind={cfg.tokenizer.kind} is not implemented; use one of: {', '.join(SPECIAL_TOKENS)}")
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
    m = _read_json(mf) or {}
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
    if cfg.tokenizer.path and not str(cfg.tokenizer.path).startswith(HF_PREFIX):
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
    # One build per output directory: a second one waits (naming the holder), then finds
    # the directory complete. The lock file is deleted when the build ends, however it ends.
    with DirLock(out.with_name(f".{out.name}.lock"), f"the build of {out}", wait=True):
        yield


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, sort_keys=True))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- pipeline


def _build_into(tmp: Path, cfg: DataConfig, fp: str) -> Dict[str, Any]:
    t0 = time.time()
    stages: Dict[str, float] = {}  # wall seconds per step, for bench/ and profiling
    lap = _Lap(stages)
    shutil.rmtree(tmp / PROGRESS_DIR / "work", ignore_errors=True)  # files of chunks that never finished
    job = _Job.from_config(cfg, str(tmp), str(tmp / shards.TOKENIZER_FILE))
    writers = {s: _SplitWriter(tmp, s, job.copy_labels(s), job.columns(s), not job.rerun_copies(s)) for s in SPLITS}
    read_stats = ReadStats()
    worker_seconds: Dict[str, float] = {}
    with _Runner(cfg.num_workers, job) as runner:
        info, tok_source, split_docs = _tokenizer(tmp, cfg)
        lap("tokenizer")
        total = sum(split_docs.values()) if split_docs else cfg.max_documents
        _run_chunks(cfg, runner, writers, read_stats, worker_seconds, total)
    lap("chunks")

    for s in SPLITS:
        writers[s].write_documents_file()
    if writers["train"].rows == 0:
        raise UserError(f"corpus {cfg.corpus} is too small: the training split has no sequence; use a larger corpus")
    if writers["validation"].rows == 0:
        raise UserError(f"corpus {cfg.corpus}: the validation split has no sequence; raise validation_fraction or use a larger corpus")

    splits = {s: writers[s].summary() for s in SPLITS}
    static = cfg.masking.mode == "static"
    splits["train"]["masking"] = (
        {"mode": "static", "seed": cfg.seed, "stream": STREAM_STATIC, "copies": cfg.masking.dupe_factor, "index": "row_key(chunk, row in chunk)",
         "copy_rows": "instances recreated per copy, rows pooled" if cfg.masking.copies == "reference" else "shared, epoch e reads copy e % copies"}
        if static
        else {"mode": "dynamic", "note": "unmasked; the trainer's collator masks every epoch"}
    )
    splits["validation"]["masking"] = {"mode": "fixed", "seed": cfg.masking.validation_seed, "stream": STREAM_VALIDATION, "index": "row_key(chunk, row in chunk)"}
    inst = {s: writers[s].stats for s in SPLITS}
    both = InstanceStats()
    for s in SPLITS:
        both.add(inst[s])
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
            "sequences": both.sequences,
            "tokens": both.tokens,
            "stored_sequences": sum(sp["rows"] * (len(sp["copies"]) if sp["copies_share_rows"] else 1) for sp in splits.values()),
            "bytes": sum(e["bytes"] for sp in splits.values() for c in sp["copies"] for e in c),
        },
        "stats": {
            "documents": read_stats.documents,
            "train_documents": writers["train"].documents,
            "validation_documents": writers["validation"].documents,
            "sources": dict(sorted(read_stats.sources.items())),
            "sentences": both.sentences,
            "truncated_sentences": both.truncated_sentences,
            "truncated_tokens": both.truncated_tokens,
            "one_sentence_documents": both.one_sentence_documents,
            "empty_documents": read_stats.empty_documents + both.empty_documents,
            "replaced_characters": read_stats.replaced_characters,
            "skipped_members": read_stats.skipped_members,
            "instances": {s: inst[s].as_dict() for s in SPLITS},
        },
        "read_report": read_stats.report(),
        "chunks": {"documents_per_chunk": cfg.chunk_documents, **{s: writers[s].next_chunk for s in SPLITS}},
        "sentence_splitter": DEFAULT_BACKEND,
        "build": {
            "seconds": round(time.time() - t0, 2),
            "stage_seconds": {k: round(v, 2) for k, v in stages.items()},
            "worker_seconds": {k: round(v, 2) for k, v in sorted(worker_seconds.items())},
            "num_workers": cfg.num_workers,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    }


def _run_chunks(cfg: DataConfig, runner: "_Runner", writers: Dict[str, "_SplitWriter"], read_stats: ReadStats,
                worker_seconds: Dict[str, float], total: Optional[int]) -> None:
    """Pass 2: every chunk reused from an interrupted build or processed by ``runner``."""
    with tqdm(total=total, desc="build", unit="doc", dynamic_ncols=True) as bar:

        def finish(result: Dict[str, Any]) -> None:
            for k, v in result.pop("seconds").items():
                worker_seconds[k] = worker_seconds.get(k, 0.0) + v
            writers[result["split"]].finalize(result)
            bar.update(len(result["doc_ids"]))

        for chunk in _chunks(cfg, read_stats):
            if writers[chunk.split].reuse(chunk):
                bar.update(len(chunk.docs))
                continue
            for result in runner.submit(chunk):
                finish(result)
        for result in runner.drain():
            finish(result)


class _Lap:
    """Records the wall time since the previous call under a stage name."""

    def __init__(self, into: Dict[str, float]) -> None:
        self.into, self.t = into, time.time()

    def __call__(self, stage: str) -> None:
        now = time.time()
        self.into[stage] = now - self.t
        self.t = now


# --------------------------------------------------------------------------- tokenizer


def _tokenizer(tmp: Path, cfg: DataConfig) -> Tuple[TokenizerInfo, str, Optional[Dict[str, int]]]:
    """The tokenizer of the build, in ``tmp/tokenizer.json``: reused from an interrupted
    build, copied from ``tokenizer.path``, or trained on the training split (pass 1).

    Returns ``(info, source, documents per split or None)``; the counts come from pass 1
    (None when it did not run) and only size the progress bar.
    """
    dest = tmp / shards.TOKENIZER_FILE
    marker = tmp / PROGRESS_DIR / "tokenizer.json"
    t = cfg.tokenizer
    done = _read_json(marker)
    if done is not None and dest.is_file():
        src = Path(str(t.path)) if t.path and not str(t.path).startswith(HF_PREFIX) else None
        if src is not None and src.is_file() and shards.sha256_file(src) != shards.sha256_file(dest):
            # Chunks recorded so far were tokenized with the old file; UserError drops them.
            raise UserError(f"tokenizer.path {src} changed since the interrupted build in {tmp}; rerun to start over")
        return load_tokenizer(dest, t.kind), done["source"], done.get("documents")
    counts: Optional[Dict[str, int]] = None
    if t.path:
        src = str(t.path)
        if src.startswith(HF_PREFIX):
            load_tokenizer(src, t.kind).save(dest)
        else:
            if not Path(src).is_file():
                raise UserError(f"tokenizer.path {src} not found; point it at a tokenizer.json or unset it to train one")
            shutil.copyfile(src, dest)
        source = src
    else:
        counts = {s: 0 for s in SPLITS}
        cached = _cached_tokenizer(tmp, cfg, counts)
        _check_both_splits(cfg, counts, ReadStats(documents=sum(counts.values())))
        if not cached.is_file():
            train_tokenizer(t.kind, _training_text(cfg, {s: 0 for s in SPLITS}), t.vocab_size, t.min_frequency, dest)
            cached.parent.mkdir(parents=True, exist_ok=True)
            part = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
            shutil.copyfile(dest, part)
            os.replace(part, cached)
        else:
            shutil.copyfile(cached, dest)
        source = "trained"
    info = load_tokenizer(dest, t.kind)
    _write_json(marker, {"source": source, "documents": counts})
    return info, source, counts


def _cached_tokenizer(tmp: Path, cfg: DataConfig, counts: Dict[str, int]) -> Path:
    """Where the tokenizer trained on this build's training text is cached:
    ``<shard directory's parent>/tokenizers/<kind>-<vocab_size>-<key>.json``.

    The key is a sha256 of the training text itself (every line unit the trainer reads,
    so corpus, ``max_documents``, ``strip_pos_tags`` and ``validation_fraction`` are in it
    through the text they select), the kind, ``vocab_size``, ``min_frequency``, the special
    tokens and ``PIPELINE_VERSION``. Every arm of an ablation that differs in anything else
    (masking, format, objective, sequence length) thus finds the one tokenizer the first
    arm trained and uses its bytes, so all arms are scored on the same tokens; training is
    reproducible anyway (``data_prep.tokenizer``), the cache saves the time. Costs one
    streaming pass over the corpus; fills ``counts`` (documents per split).
    """
    t = cfg.tokenizer
    h = hashlib.sha256()
    h.update(json.dumps({"kind": t.kind, "vocab_size": t.vocab_size, "min_frequency": t.min_frequency,
                         "special_tokens": SPECIAL_TOKENS[t.kind], "pipeline": PIPELINE_VERSION}, sort_keys=True).encode())
    for unit in _training_text(cfg, counts):
        data = unit.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little") + data)
    return tmp.parent / TOKENIZER_CACHE / f"{t.kind}-{t.vocab_size}-{h.hexdigest()[:24]}.json"


def _training_text(cfg: DataConfig, counts: Dict[str, int]) -> Iterator[str]:
    """Line units of the training split's documents, streamed (counts documents per split)."""
    docs = read_documents(cfg.corpus, list(cfg.strip_pos_tags), cfg.max_documents, ReadStats(), read_options(cfg))
    for doc in tqdm(docs, desc="train tokenizer", unit="doc", total=cfg.max_documents, dynamic_ncols=True):
        if is_validation(doc.id, cfg.validation_fraction):
            counts["validation"] += 1
            continue
        counts["train"] += 1
        yield from line_units(doc.text)


def _check_both_splits(cfg: DataConfig, counts: Dict[str, int], stats: ReadStats) -> None:
    if counts["validation"] and counts["train"]:
        return
    which = "validation" if not counts["validation"] else "training"
    raise UserError(
        f"corpus {cfg.corpus} is too small: {stats.documents} documents leave no {which} document at "
        f"validation_fraction={cfg.validation_fraction}; use a larger corpus (or change validation_fraction)"
        + ("; a text file without ' = Title = ' headings is one document unless data.corpus_layout says how its "
           "documents are separated (blank_lines, lines; README: Corpus layouts)" if cfg.corpus_layout == "auto" and stats.documents < 10 else "")
    )


# --------------------------------------------------------------------------- chunks


@dataclass
class _Chunk:
    """Documents ``[(id, text)]`` of chunk ``index`` of ``split`` and a sha256 of them."""

    split: str
    index: int
    docs: List[Tuple[str, str]]
    sha256: str


def _chunks(cfg: DataConfig, stats: ReadStats) -> Iterator[_Chunk]:
    """The corpus as chunks, in read order (see the module docstring).

    A split's chunk closes at ``chunk_documents`` documents or ``CHUNK_CHARACTERS``
    characters, whichever comes first, and holds at least two documents. It is emitted
    once two more documents of its split have been read, so that a lone last document can
    join it: a chunk has one document only if its split has one.
    Raises UserError: no document in a split; a split of one document with NSP.
    """
    bufs: Dict[str, List[Tuple[str, str]]] = {s: [] for s in SPLITS}
    chars = {s: 0 for s in SPLITS}
    pending: Dict[str, Optional[List[Tuple[str, str]]]] = {s: None for s in SPLITS}
    index = {s: 0 for s in SPLITS}
    counts = {s: 0 for s in SPLITS}

    def emit(split: str, docs: List[Tuple[str, str]]) -> _Chunk:
        h = hashlib.sha256()
        for doc_id, text in docs:
            h.update(doc_id.encode("utf-8", "surrogatepass") + b"\0" + text.encode("utf-8", "surrogatepass") + b"\0")
        index[split] += 1
        return _Chunk(split, index[split] - 1, docs, h.hexdigest())

    for doc in read_documents(cfg.corpus, list(cfg.strip_pos_tags), cfg.max_documents, stats, read_options(cfg)):
        split = "validation" if is_validation(doc.id, cfg.validation_fraction) else "train"
        counts[split] += 1
        buf = bufs[split]
        buf.append((doc.id, doc.text))
        chars[split] += len(doc.text)
        if pending[split] is not None and len(buf) >= 2:
            yield emit(split, pending[split])
            pending[split] = None
        if len(buf) >= 2 and (len(buf) >= cfg.chunk_documents or chars[split] >= CHUNK_CHARACTERS):
            pending[split], bufs[split], chars[split] = buf, [], 0
    _check_both_splits(cfg, counts, stats)
    for split in SPLITS:
        if counts[split] == 1 and cfg.sentence_objective == "nsp":
            raise UserError(
                f"format={cfg.format} with sentence_objective=nsp needs two or more documents per split to draw "
                f"NotNext segments from another document, but the {split} split of {cfg.corpus} has 1; "
                "use a larger corpus or change validation_fraction"
            )
        rest = bufs[split]
        if pending[split] is not None:
            if len(rest) == 1:
                pending[split], rest = pending[split] + rest, []
            yield emit(split, pending[split])
        if rest:
            yield emit(split, rest)


# --------------------------------------------------------------------------- workers


@dataclass(frozen=True)
class _Job:
    """What a worker needs besides its chunk (picklable, sent once per process)."""

    root: str
    tokenizer_file: str
    kind: str
    format: str
    objective: str
    max_seq_length: int
    short_seq_prob: float
    seed: int
    rows_per_shard: int
    masking: Dict[str, Any]
    short_seq_rule: str
    sentence_labels: str
    word_boundaries: str
    sentence_separator: str

    @classmethod
    def from_config(cls, cfg: DataConfig, root: str, tokenizer_file: str) -> "_Job":
        return cls(
            root, tokenizer_file, cfg.tokenizer.kind, cfg.format, cfg.sentence_objective, int(cfg.max_seq_length),
            float(cfg.short_seq_prob), int(cfg.seed), int(cfg.rows_per_shard),
            OmegaConf.to_container(OmegaConf.structured(cfg.masking), resolve=True),
            cfg.short_seq_rule, cfg.sentence_labels, cfg.word_boundaries, cfg.sentence_separator,
        )

    def rerun_copies(self, split: str) -> bool:
        """True if ``split``'s copies are made by rerunning instance creation
        (``masking.copies=reference``, static training data), so their rows differ."""
        return split == "train" and self.masking["mode"] == "static" and self.masking["copies"] == "reference"

    def plans(self, split: str) -> List[Tuple[Optional[int], Optional[int], int, int]]:
        """Copies of ``split``: ``(copy label, mask seed or None = unmasked, stream, round)``."""
        if split == "validation":
            return [(None, int(self.masking["validation_seed"]), STREAM_VALIDATION, 0)]
        if self.masking["mode"] == "static":
            return [(k, self.seed, STREAM_STATIC, k) for k in range(int(self.masking["dupe_factor"]))]
        return [(None, None, 0, 0)]

    def copy_labels(self, split: str) -> List[Optional[int]]:
        return [p[0] for p in self.plans(split)]

    def columns(self, split: str) -> List[str]:
        """Column names of ``split``'s shards, in file order (``_write_parts``)."""
        cols = ["input_ids"] + (["labels"] if self.plans(split)[0][1] is not None else []) + ["word_starts"]
        if self.format in PAIR_FORMATS:
            cols += ["token_type_ids", LABEL_COLUMNS[self.objective]]
        return cols


class _Context:
    """A worker's loaded tokenizer and masker."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.info = load_tokenizer(job.tokenizer_file, job.kind)
        self.word_table = reference_starts(self.info) if job.word_boundaries == "reference" else None
        self.masker = Masker.from_config(SimpleNamespace(**job.masking), self.info.vocab_size, self.info.mask_id, self.info.special_ids)


_WORKER: Dict[str, _Context] = {}  # this process's context, keyed by its job


def _init_worker(parent: int) -> None:
    import ctypes
    import signal

    # Die with the main process: an orphaned worker would wait for work forever.
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (AttributeError, OSError):
        pass
    if os.getppid() != parent:
        os._exit(1)
    # Ctrl-C goes to the whole process group; the main process handles it and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _work(job: _Job, chunk: _Chunk) -> Dict[str, Any]:
    key = json.dumps(asdict(job), sort_keys=True)
    if key not in _WORKER:
        _WORKER.clear()
        _WORKER[key] = _Context(job)
    return _process(_WORKER[key], chunk)


class _Runner:
    """Processes chunks inline (``num_workers`` 1) or in a pool of worker processes, and
    hands results back in submission order, with at most ``IN_FLIGHT_PER_WORKER`` chunks
    per worker queued (memory stays bounded however fast the corpus is read).

    Workers are forked when the runner starts, before this build runs any tokenizer
    thread, with ``TOKENIZERS_PARALLELISM=false`` (one worker per core; a forked child must
    not use the Rust thread pool of its parent). Forking rather than spawning also spares
    the workers re-importing the caller's ``__main__`` (a script without a ``__main__``
    guard would build again inside every worker)."""

    def __init__(self, num_workers: int, job: _Job) -> None:
        self.num_workers = int(num_workers)
        self.job = job
        self.pool: Optional[ProcessPoolExecutor] = None
        self.pending: Deque[Future] = deque()

    def __enter__(self) -> "_Runner":
        if self.num_workers > 1:
            ctx = multiprocessing.get_context("fork")
            before = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            try:
                self.pool = ProcessPoolExecutor(self.num_workers, mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(),))
                self.pool.submit(int).result()  # forks every worker now
            finally:
                if before is None:
                    os.environ.pop("TOKENIZERS_PARALLELISM", None)
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = before
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=exc_type is None, cancel_futures=True)

    def submit(self, chunk: _Chunk) -> Iterator[Dict[str, Any]]:
        """Queue ``chunk``; yields the results that must be taken to stay within bounds."""
        if self.pool is None:
            yield _work(self.job, chunk)
            return
        self.pending.append(self.pool.submit(_work, self.job, chunk))
        while len(self.pending) >= IN_FLIGHT_PER_WORKER * self.num_workers:
            yield self.pending.popleft().result()

    def drain(self) -> Iterator[Dict[str, Any]]:
        while self.pending:
            yield self.pending.popleft().result()


def _process(ctx: _Context, chunk: _Chunk) -> Dict[str, Any]:
    """One chunk → shard files in ``.progress/work/`` and a result for ``_SplitWriter``."""
    job, info = ctx.job, ctx.info
    seconds: Dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        seconds[name] = seconds.get(name, 0.0) + now - t
        t = now

    per_doc = [split_sentences(text) for _, text in chunk.docs]
    lap("split")
    ids, starts = _encode(info, per_doc, job.word_boundaries, ctx.word_table)
    lap("encode")
    order = document_order([d for d, _ in chunk.docs], job.seed)
    stats = InstanceStats()
    # One row list per copy when copies rerun instance creation (BERT's dupe_factor loop),
    # else one list that every copy masks.
    copies = len(job.plans(chunk.split)) if job.rerun_copies(chunk.split) else 1
    try:
        rows = [
            list(
                make_rows(
                    job.format, job.objective, [ids[i] for i in order], job.max_seq_length, info.cls_id, info.sep_id,
                    chunk_random(job.seed, chunk.split, chunk.index, k), job.short_seq_prob, [starts[i] for i in order],
                    stats if k == 0 else InstanceStats(), job.short_seq_rule, job.sentence_labels,
                    job.sentence_separator,
                )
            )
            for k in range(copies)
        ]
    except ValueError as e:  # NSP without a second non-empty document in the chunk
        raise UserError(f"{chunk.split} chunk {chunk.index}: {e}; use a larger corpus") from None
    lap("instances")
    parts = _write_parts(ctx, chunk, rows)
    lap("mask_write")
    return {
        "split": chunk.split,
        "index": chunk.index,
        "sha256": chunk.sha256,
        "doc_ids": [chunk.docs[i][0] for i in order],
        "stats": stats.as_dict(),
        "parts": parts,
        "seconds": seconds,
    }


def _encode(
    info: TokenizerInfo, per_doc: List[List[str]], rule: str = "pretokenizer", table: Optional[np.ndarray] = None
) -> Tuple[List[List[np.ndarray]], List[List[np.ndarray]]]:
    """Token ids and word starts (``word_boundaries`` rule ``rule``) of every sentence, per
    document, ``ENCODE_BATCH`` sentences per call; sentences without tokens are dropped."""
    flat = [s for sents in per_doc for s in sents]
    encoded: List[Tuple[np.ndarray, np.ndarray]] = []
    for i in range(0, len(flat), ENCODE_BATCH):
        encoded.extend(encode_with_words(info, flat[i : i + ENCODE_BATCH], rule, table))
    ids: List[List[np.ndarray]] = []
    starts: List[List[np.ndarray]] = []
    pos = 0
    for sents in per_doc:
        pairs = [p for p in encoded[pos : pos + len(sents)] if p[0].size]
        pos += len(sents)
        ids.append([p[0] for p in pairs])
        starts.append([p[1] for p in pairs])
    return ids, starts


def _write_parts(ctx: _Context, chunk: _Chunk, rows: List[List[Row]]) -> List[Dict[str, Any]]:
    """Mask and write the chunk's rows as parts × copies into its work directory.

    ``rows`` holds one row list that every copy masks, or one list per copy (copies that
    rerun instance creation). A copy's rows go to ``ceil(most rows of a copy /
    rows_per_shard)`` parts, split as evenly as possible, so every copy has the same
    number of shard files. Returns per part ``{"rows", "tokens", "files": [[work path,
    manifest entry] per copy]}``; ``rows``/``tokens`` sum over the copies when they differ.
    """
    job = ctx.job
    work = Path(job.root) / PROGRESS_DIR / "work" / f"{chunk.split}-{chunk.index:05d}"
    pair = job.format in PAIR_FORMATS
    label_col = LABEL_COLUMNS.get(job.objective)
    plans = job.plans(chunk.split)
    per_copy = rows if len(rows) > 1 else rows * len(plans)
    n_parts = max(-(-len(r) // job.rows_per_shard) for r in per_copy)
    cuts = [np.linspace(0, len(r), n_parts + 1).round().astype(int).tolist() if len(rows) > 1
            else [min(p * job.rows_per_shard, len(r)) for p in range(n_parts + 1)] for r in per_copy]
    parts = []
    for p in range(n_parts):
        files = []
        counted: List[Row] = []
        for k, (copy, seed, stream, round_) in enumerate(plans):
            start = cuts[k][p]
            part = per_copy[k][start : cuts[k][p + 1]]
            if k == 0 or len(rows) > 1:
                counted.extend(part)
            cols: Dict[str, Any] = {}
            if seed is None:
                cols["input_ids"] = [r.input_ids for r in part]
            else:
                masked = [
                    ctx.masker(r.input_ids, sequence_rng(seed, stream, round_, row_key(chunk.index, start + j)), r.word_starts)
                    for j, r in enumerate(part)
                ]
                cols["input_ids"] = [m[0] for m in masked]
                cols["labels"] = [m[1] for m in masked]
            cols["word_starts"] = [r.word_starts for r in part]
            if pair:
                cols["token_type_ids"] = [r.token_type_ids for r in part]
                cols[label_col] = [r.label for r in part]
            path = work / f"copy-{0 if copy is None else copy:02d}-part-{p:04d}.arrow"
            files.append([str(path), shards.write_shard(path, cols)])
        parts.append({"rows": len(counted), "tokens": int(sum(r.input_ids.size for r in counted)), "files": files})
    return parts


# --------------------------------------------------------------------------- output


class _SplitWriter:
    """Puts one split's chunk results in place, in chunk order: renames their shards to
    the split's global shard names, records each chunk in ``.progress/`` and sums counts."""

    def __init__(self, root: Path, split: str, copy_labels: List[Optional[int]], columns: List[str], shared_rows: bool = True) -> None:
        self.root, self.split, self.copy_labels, self.columns = root, split, copy_labels, columns
        self.shared_rows = shared_rows  # False: every copy has its own rows (masking.copies=reference)
        self.copies: List[List[Dict[str, Any]]] = [[] for _ in copy_labels]
        self.stats = InstanceStats()
        self.next_chunk = 0
        self.next_shard = 0
        self.rows = 0
        self.documents = 0
        self.reusing = True  # records are reused only as an unbroken prefix of chunks

    def _record_path(self, index: int) -> Path:
        return self.root / PROGRESS_DIR / f"{self.split}-{index:05d}.json"

    def reuse(self, chunk: _Chunk) -> bool:
        """Take ``chunk`` from an interrupted build's record if there is one for the same
        input and every earlier chunk was reused too. False = it must be processed."""
        if self.reusing:
            rec = _read_json(self._record_path(chunk.index))
            files_ok = rec is not None and all(
                (self.root / e["file"]).is_file() and (self.root / e["file"]).stat().st_size == e["bytes"]
                for part in rec["parts"] for e in part["entries"]
            )
            if files_ok and rec["sha256"] == chunk.sha256 and rec["index"] == self.next_chunk:
                self._accept(rec)
                return True
            self.reusing = False
        return False

    def finalize(self, result: Dict[str, Any]) -> None:
        """Install the shards of the next chunk's ``result`` and record it."""
        assert result["index"] == self.next_chunk, (result["index"], self.next_chunk)
        parts = []
        for p, part in enumerate(result["parts"]):
            entries = []
            for label, (work, entry) in zip(self.copy_labels, part["files"], strict=True):
                rel = shards.shard_relpath(self.split, label, self.next_shard + p)
                (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(work, self.root / rel)
                entries.append(dict(entry, file=rel, chunk=result["index"]))
            parts.append({"rows": part["rows"], "tokens": part["tokens"], "entries": entries})
        rec = {k: result[k] for k in ("index", "sha256", "doc_ids", "stats")}
        rec["parts"] = parts
        shutil.rmtree(self.root / PROGRESS_DIR / "work" / f"{self.split}-{result['index']:05d}", ignore_errors=True)
        _write_json(self._record_path(result["index"]), rec)
        self._accept(rec)

    def _accept(self, rec: Dict[str, Any]) -> None:
        for part in rec["parts"]:
            for copy, entry in zip(self.copies, part["entries"], strict=True):
                copy.append(entry)
            self.rows += part["rows"]
        self.next_shard += len(rec["parts"])
        self.documents += len(rec["doc_ids"])
        self.stats.add(rec["stats"])
        self.next_chunk += 1

    def write_documents_file(self) -> None:
        """``<split>/documents.txt``: document ids in the order they were used."""
        path = self.root / self.split / DOCUMENTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for i in range(self.next_chunk):
                for doc_id in _read_json(self._record_path(i))["doc_ids"]:
                    f.write(doc_id.replace("\n", " ") + "\n")

    def summary(self) -> Dict[str, Any]:
        """The split's manifest entry (``shards`` module docstring); ``rows``/``tokens``
        count what the reader serves: one copy's when the copies share their rows, all
        copies' when they do not."""
        digest = hashlib.sha256("".join(e["sha256"] for c in self.copies for e in c).encode()).hexdigest()
        counted = self.copies[:1] if self.shared_rows else self.copies
        return {
            "copies": self.copies,
            "copies_share_rows": self.shared_rows,
            "masked": "labels" in self.columns,
            "columns": self.columns,
            "rows": self.rows,
            "tokens": int(sum(e["tokens"] for c in counted for e in c)),
            "sha256": digest,
            "documents": self.documents,
            "documents_file": f"{self.split}/{DOCUMENTS_FILE}",
            "chunks": self.next_chunk,
        }
