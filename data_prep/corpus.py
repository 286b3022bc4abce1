"""Reading a corpus spec into documents, in bounded memory.

``read_documents(spec)`` turns one string into a stream of ``Document(id, text, source)``:

===========================  ==========================================================
spec                         documents
===========================  ==========================================================
``pydoc``                    the 79 topics of ``pydoc_data.topics`` (CPython's reference
                             docs, embedded in every Python: the offline default)
``hf:NAME[:CONFIG[:SPLIT]]`` rows of ``datasets.load_dataset`` (``text`` column)
``DIR``                      every file below it, each read as if named on its own
                             (folders this toolkit wrote, ``is_output_dir``, skipped)
``GLOB`` (``*``, ``?``, ``[``)  the matching files, read as in a directory
``FILE.txt`` (or no suffix)  a text file: documents by the layout rule below
``FILE.jsonl``/``.parquet``  one document per row (``text`` column; ``id`` if present)
``FILE.zip``                 its members, each a text file read by the layout rule
                             (metadata members skipped)
``FILE.txt.gz`` ...          a ``.txt``, no-suffix or ``.jsonl`` file compressed by gzip,
                             bzip2 or xz (``.gz``, ``.bz2``, ``.xz``), read as the file
                             it holds, decompressed while streaming
===========================  ==========================================================

**One layout rule for every text file** — named directly, matched by a glob, found in a
folder or a member of a zip — set by ``ReadOptions.layout`` (``data.corpus_layout``):

- ``auto`` (default): ``headings`` if the file's first ``LAYOUT_PROBE_BYTES`` hold a
  WikiText article title, else ``file``;
- ``file``: the whole file is one document (a book, an article, an NLTK member);
- ``headings``: WikiText articles, split before every ``" = Title = "`` line that stands
  between blank lines (as WikiText lays titles out; a formula line such as
  ``" = 1 <unk> / s and ... = "`` inside a paragraph is not a title); heading markers are
  dropped, the heading text kept;
- ``blank_lines``: blocks separated by blank lines (BERT's ``create_pretraining_data.py``
  input: one sentence per line, a blank line between documents);
- ``lines``: every non-blank line is a document (``datasets``' ``text`` loader).

A file that is one document has the id of its name (``a.txt``, ``brown.zip:brown/ca01``);
a file split into several numbers them (``valid.txt:7``). Ids must not depend on read
order or ``max_documents``: the train/validation split hashes them.

Several multi-document sources (the zips of ``nltk-corpora/``) are read round-robin, one
document from each in turn, so ``max_documents=N`` gives a sample of every source rather
than the first N documents of the first zip.

**Bounded memory.** Files are streamed, never read whole. A line is read at most
``LONG_LINE_CHARS`` characters at a time; a longer line (no natural text has one: the
longest in nltk-corpora is 5,775 characters, in WikiText-2 2,538) is cut into pieces of
at most ``ReadOptions.piece_bytes`` UTF-8 bytes — after the last sentence end in the
budget, else at the last whitespace, else at the budget — each piece a paragraph of its
own (a blank line between), so sentence splitting keeps them apart. The build sets the
budget to what one row holds (a token covers at least one byte), so every piece fits a
row and no token of an over-long line is lost. A document longer than
``MAX_DOCUMENT_CHARS`` is cut at a line boundary into parts ``<id>``, ``<id>#1``, ...
Memory is thus bounded by ``MAX_DOCUMENT_CHARS`` whatever the line lengths and file sizes
(a jsonl line, parquet cell or hf row is read whole, then cut the same way).

**Decoding.** ``ReadOptions.encoding`` (any Python codec, ``data.corpus_encoding``) and
``errors`` (``data.corpus_errors``): ``replace`` = undecodable bytes become U+FFFD,
``ignore`` = dropped, both counted per file; ``strict`` = a one-line error naming the
file. A file whose first ``PROBE_BYTES`` hold a NUL byte or more than
``BINARY_CONTROL_SHARE`` control characters is binary: skipped and reported (not for
UTF-16/32, where NUL bytes are text). A read in which undecodable characters and binary
files make up more than ``MOSTLY_UNDECODABLE`` of what was read is refused.

Counters and the per-file report: ``ReadStats`` (documents, empty documents, skipped
files, replaced characters, cut lines and documents, binary files; ``files`` names every
file with something to report).
"""

from __future__ import annotations

import bz2
import codecs
import glob as globlib
import gzip
import io
import json
import lzma
import re
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from common.errors import UserError

# Members of corpus archives that describe the corpus rather than belong to it (NLTK's
# zips hold README, cats.txt, CONTENTS and stopwords next to the texts).
METADATA_NAMES = ("readme", "cats.txt", "contents", "stopwords", "license", "copying")
MULTI_DOC_SUFFIXES = (".zip", ".jsonl", ".parquet")
TEXT_SUFFIXES = ("", ".txt")
# Compression wrapping a text or jsonl file (HF datasets' loaders read these transparently).
COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# What a damaged compressed stream raises besides OSError / EOFError.
_STREAM_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error, lzma.LZMAError)

LAYOUTS = ("auto", "file", "headings", "blank_lines", "lines")
DECODE_ERRORS = ("replace", "ignore", "strict")
LONG_LINE_CHARS = 100_000
# = data_prep.build.CHUNK_CHARACTERS: the largest nltk document (the KJV bible, 4.3M
# characters) stays whole, and a chunk never holds much more than its budget.
MAX_DOCUMENT_CHARS = 8_000_000
DEFAULT_PIECE_BYTES = 509  # what a 512-token row holds besides [CLS] A [SEP] B [SEP]
PROBE_BYTES = 8192
LAYOUT_PROBE_BYTES = 65536
BINARY_CONTROL_SHARE = 0.10
MOSTLY_UNDECODABLE = 0.5

# A WikiText article heading: " = Title = " (sections are " = = Heading = = ").
WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")
_WIKITEXT_HEADING = re.compile(r"^ (?:= )+(.*?)(?: =)+ $")
_SENTENCE_END = re.compile(r"""[.!?]["'”’)\]]*\s""")
_WHITESPACE = " \t\r\f\v\u00a0"
# Bytes that do not occur in text: C0 controls except tab, newlines, form feed,
# backspace and escape (terminal logs, man pages), and DEL.
_CONTROL_BYTES = frozenset(b for b in range(32) if b not in b"\t\n\v\f\r\b\x1b") | {0x7F}


@dataclass(frozen=True)
class Document:
    """One document: ``id`` is stable across runs and read orders; ``text`` is str with
    newlines kept (sentence splitting reads them); ``source`` names where it came from
    (the zip or file stem, e.g. ``brown``)."""

    id: str
    text: str
    source: str


@dataclass(frozen=True)
class ReadOptions:
    """How text files are decoded and cut into documents (module docstring).

    encoding: a Python codec name (``utf-8``, ``latin-1``, ``cp1252``, ...).
    errors: ``replace`` / ``ignore`` / ``strict`` (``DECODE_ERRORS``).
    layout: one of ``LAYOUTS``.
    piece_bytes: the most UTF-8 bytes in one piece of an over-long line (>= 16).
    Raises UserError (one line) for an unknown codec, errors or layout value.
    """

    encoding: str = "utf-8"
    errors: str = "replace"
    layout: str = "auto"
    piece_bytes: int = DEFAULT_PIECE_BYTES

    def __post_init__(self) -> None:
        check_encoding(self.encoding)
        if self.errors not in DECODE_ERRORS:
            raise UserError(f"corpus_errors={self.errors!r} is not one of: {', '.join(DECODE_ERRORS)}")
        if self.layout not in LAYOUTS:
            raise UserError(f"corpus_layout={self.layout!r} is not one of: {', '.join(LAYOUTS)}")
        if self.piece_bytes < 16:
            raise UserError(f"piece_bytes={self.piece_bytes} must be >= 16")


def check_encoding(name: str) -> None:
    """UserError unless ``name`` is a Python text codec."""
    try:
        info = codecs.lookup(name)
    except (LookupError, TypeError):
        info = None
    if info is None or not getattr(info, "_is_text_encoding", True):
        raise UserError(f"corpus_encoding={name!r} is not a text encoding Python knows; use e.g. utf-8, latin-1 or cp1252")


@dataclass
class FileReport:
    """What reading one file (or zip member, jsonl, parquet) saw. ``characters`` read;
    ``replaced``: undecodable byte sequences replaced by U+FFFD or dropped; ``cut_lines``:
    lines over ``LONG_LINE_CHARS`` cut into ``pieces``; ``cut_documents``: documents over
    ``MAX_DOCUMENT_CHARS`` cut into ``parts`` more; ``skipped``: why the file was not read
    (binary, metadata, not a corpus file); ``bytes``: its size when skipped as binary."""

    characters: int = 0
    replaced: int = 0
    cut_lines: int = 0
    pieces: int = 0
    cut_documents: int = 0
    parts: int = 0
    skipped: str = ""
    bytes: int = 0

    def notable(self) -> bool:
        return bool(self.replaced or self.cut_lines or self.cut_documents or self.skipped)

    def as_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}


@dataclass
class ReadStats:
    """What reading saw. ``sources`` counts yielded documents per source name; ``files``
    holds the ``FileReport.as_dict`` of every file with something to report, by id."""

    documents: int = 0
    empty_documents: int = 0
    skipped_members: int = 0
    replaced_characters: int = 0
    characters: int = 0
    cut_lines: int = 0
    cut_documents: int = 0
    binary_files: int = 0
    binary_bytes: int = 0
    sources: Dict[str, int] = field(default_factory=Counter)
    files: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def note(self, name: str, rep: FileReport) -> None:
        """Add one file's report to the totals (and to ``files`` if notable)."""
        self.characters += rep.characters
        self.replaced_characters += rep.replaced
        self.cut_lines += rep.cut_lines
        self.cut_documents += rep.cut_documents
        if rep.skipped:
            self.skipped_members += 1
        if rep.skipped.startswith("binary"):
            self.binary_files += 1
            self.binary_bytes += rep.bytes
        if rep.notable():
            self.files[name] = rep.as_dict()

    def undecodable_share(self) -> float:
        """(replaced characters + binary files' bytes) / (characters + binary bytes)."""
        total = self.characters + self.binary_bytes
        return (self.replaced_characters + self.binary_bytes) / total if total else 0.0

    def report(self) -> Dict[str, Any]:
        """The manifest's ``read_report``: totals and the notable files."""
        keys = ("documents", "empty_documents", "skipped_members", "replaced_characters", "characters",
                "cut_lines", "cut_documents", "binary_files", "binary_bytes")
        return {"totals": {k: getattr(self, k) for k in keys}, "files": dict(sorted(self.files.items()))}


def report_lines(report: Dict[str, Any], encoding: str = "utf-8", errors: str = "replace", limit: int = 20) -> List[str]:
    """Lines to print at the end of a build from ``ReadStats.report()``: a warning per
    binary file skipped and per file with undecodable bytes, a line per file with lines
    or documents cut (at most ``limit`` lines, then a count), and a count of skipped
    metadata / non-corpus files. The manifest's ``read_report`` keeps them all."""
    how = "dropped" if errors == "ignore" else "replaced by U+FFFD"
    lines, skipped = [], 0
    for name, f in report["files"].items():
        if f.get("skipped", "").startswith("binary"):
            lines.append(f"warning: {name}: skipped, {f['skipped']}")
        elif f.get("skipped"):
            skipped += 1
        if f.get("replaced"):
            lines.append(
                f"warning: {name}: {f['replaced']} undecodable byte sequences {how} in {f.get('characters', 0)} "
                f"characters (not {encoding}? set data.corpus_encoding, e.g. latin-1)"
            )
        if f.get("cut_lines"):
            lines.append(f"{name}: {f['cut_lines']} line(s) over {LONG_LINE_CHARS} characters cut into {f.get('pieces', 0)} pieces")
        if f.get("cut_documents"):
            lines.append(f"{name}: {f['cut_documents']} document(s) over {MAX_DOCUMENT_CHARS} characters cut into {f.get('parts', 0)} more parts")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more files (manifest.json read_report)"]
    if skipped:
        lines.append(f"{skipped} metadata or non-corpus files skipped (manifest.json read_report)")
    return lines


def is_metadata_member(name: str) -> bool:
    """True for corpus-description files (README*, cats.txt, CONTENTS, stopwords,
    LICENSE*, COPYING*) by their base name, case-insensitively."""
    base = name.rstrip("/").rsplit("/", 1)[-1].lower()
    return any(base == m or base.startswith(m + ".") or (m == "readme" and base.startswith(m)) for m in METADATA_NAMES)


def strip_tags(text: str) -> str:
    """``The/at jury/nn ./.`` → ``The jury .``: drop the ``/tag`` of every whitespace token
    (Brown corpus form C), keeping line breaks, which mark its sentences."""
    out = []
    for line in text.split("\n"):
        toks = line.split()
        out.append(" ".join(t.rsplit("/", 1)[0] if "/" in t[1:] else t for t in toks))
    return "\n".join(out)


def read_documents(
    spec: str,
    strip_pos_tags: Sequence[str] = (),
    max_documents: Optional[int] = None,
    stats: Optional[ReadStats] = None,
    options: Optional[ReadOptions] = None,
) -> Iterator[Document]:
    """Documents of a corpus spec (see the module docstring for the spec forms).

    Args:
        spec: the corpus spec (``DataConfig.corpus``).
        strip_pos_tags: source names (zip or file stem, or the directory name for loose
            files) whose tokens are ``word/tag`` and get their tags stripped.
        max_documents: stop after this many non-empty documents; None = all.
        stats: filled in while iterating (pass your own to read the counters).
        options: decoding, layout and piece budget; None = ``ReadOptions()``.
    Returns:
        An iterator of non-empty ``Document``; empty ones are skipped and counted.
    Raises:
        UserError: at call time for a missing path or unsupported file type; while
            iterating for an unreadable file, a row without ``text``, an undecodable
            byte with ``errors=strict``, a corpus that is mostly undecodable or binary,
            or one that yields no non-empty document ("empty corpus").
    """
    stats = stats if stats is not None else ReadStats()
    opts = options if options is not None else ReadOptions()
    sources = _resolve(spec, stats, opts)
    strip = frozenset(strip_pos_tags)
    return _iterate(spec, sources, strip, max_documents, stats, opts)


# A source is (name, thunk producing (id, text) pairs); thunks open files lazily.
_Source = Tuple[str, Callable[[], Iterable[Tuple[str, str]]]]


def _iterate(spec, sources, strip, max_documents, stats, opts) -> Iterator[Document]:
    n = 0
    for name, doc_id, text in _round_robin(sources) if max_documents != 0 else ():
        if name in strip:
            text = strip_tags(text)
        if not text.strip():
            stats.empty_documents += 1
            continue
        n += 1
        stats.documents += 1
        stats.sources[name] += 1
        yield Document(doc_id, text, name)
        if max_documents is not None and n >= max_documents:
            _check_decodable(spec, stats, opts)
            return
    _check_decodable(spec, stats, opts)
    if n == 0:
        raise UserError(f"empty corpus: {spec} yields no non-empty document; point corpus= at text files")


def _check_decodable(spec: str, stats: ReadStats, opts: ReadOptions) -> None:
    share = stats.undecodable_share()
    if share <= MOSTLY_UNDECODABLE:
        return
    bad = [kv for kv in stats.files.items() if kv[1].get("replaced") or kv[1].get("bytes")]
    worst = sorted(bad, key=lambda kv: -(kv[1].get("replaced", 0) + kv[1].get("bytes", 0)))[:3]
    names = ", ".join(f"{k} ({v['skipped']})" if v.get("skipped") else f"{k} ({v.get('replaced', 0)} undecodable)" for k, v in worst)
    raise UserError(
        f"corpus {spec} is mostly undecodable: {share:.0%} of what was read is binary or not {opts.encoding} text "
        f"(e.g. {names}); set data.corpus_encoding to the files' encoding (e.g. latin-1) or remove the binary files"
    )


def _round_robin(sources: List[_Source]) -> Iterator[tuple]:
    iters = [(name, iter(make())) for name, make in sources]
    while iters:
        alive = []
        for name, it in iters:
            item = next(it, None)
            if item is not None:
                yield (name, *item)
                alive.append((name, it))
        iters = alive


def _resolve(spec: str, stats: ReadStats, opts: ReadOptions) -> List[_Source]:
    if spec == "pydoc":
        return [("pydoc", lambda: _rows_bounded("pydoc", _pydoc(), opts, stats))]
    if spec.startswith("hf:"):
        return [(spec[3:].split(":")[0].rsplit("/", 1)[-1], lambda: _rows_bounded(spec, _hf(spec), opts, stats))]
    path = Path(spec).expanduser()
    if any(c in spec for c in "*?[") and not path.exists():
        files = sorted(Path(p) for p in globlib.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"corpus glob {spec} matches no file")
        root = Path(spec.split("*")[0].split("?")[0].split("[")[0] or ".")
        root = root if root.is_dir() else root.parent
        return _files_as_sources(files, root, stats, opts)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return _files_as_sources(files, path, stats, opts)
    if path.is_file():
        return [_file_source(path, path.name, stats, opts)]
    raise UserError(f"corpus not found: {spec} (a path, a glob, hf:NAME or pydoc)")


# Files that mark a directory this toolkit wrote: a shard directory (finished, or being built:
# ``.progress/build.json``), a run, an ablation's runs, a fine-tuning job. A user who runs
# from inside the corpus folder gets ``data-cache/`` and ``runs/`` there; their
# documents.txt and metrics.jsonl must not become corpus text on the next read.
OUTPUT_MARKERS = (("manifest.json", "train"), (".progress/build.json",), ("config.yaml", "metrics.jsonl"),
                  ("ablation.yaml",), ("finetune.yaml",))


def is_output_dir(d: Path) -> bool:
    """True if ``d`` holds every file of one of ``OUTPUT_MARKERS``."""
    return any(all((d / name).exists() for name in marker) for marker in OUTPUT_MARKERS)


def _output_ancestor(f: Path, root: Path, seen: Dict[Path, bool]) -> Optional[Path]:
    """The outermost directory below ``root`` and above ``f`` that is an output of this
    toolkit (``is_output_dir``), else None (``root`` itself is what the user named: read).
    ``seen`` caches the answer per directory."""
    try:
        parts = f.parent.relative_to(root).parts
    except ValueError:
        return None
    d = root
    for part in parts:
        d = d / part
        if d not in seen:
            seen[d] = is_output_dir(d)
        if seen[d]:
            return d
    return None


def _files_as_sources(files: List[Path], root: Path, stats: ReadStats, opts: ReadOptions) -> List[_Source]:
    """Multi-document files become sources of their own; loose text files form one source
    (read one after the other, each by the layout rule); anything else (README,
    SOURCE.md, ...) and the directories this toolkit wrote (``is_output_dir``: shards,
    runs, fine-tuning jobs) are skipped and reported."""
    sources, loose = [], []
    seen: Dict[Path, bool] = {}
    outputs = set()
    for f in files:
        suffix = _inner_suffix(f)
        rel = _relname(f, root)
        out = _output_ancestor(f, root, seen)
        if out is not None:
            if out not in outputs:
                outputs.add(out)
                stats.note(_relname(out, root) + "/", FileReport(skipped="written by this toolkit (shards, a run or a job)"))
        elif any(part.startswith(".") for part in rel.split("/")):
            stats.skipped_members += 1  # counted, not listed: a .git/ would flood the report
        elif suffix in MULTI_DOC_SUFFIXES:
            sources.append(_file_source(f, rel, stats, opts))
        elif suffix in TEXT_SUFFIXES and not is_metadata_member(f.name):
            loose.append(f)
        else:
            stats.note(rel, FileReport(skipped="metadata" if is_metadata_member(f.name) else "not a corpus file"))
    if loose:
        name = root.resolve().name or "files"

        def loose_docs() -> Iterator[tuple]:
            for f in loose:
                yield from _text_file(f, _relname(f, root), stats, opts)

        sources.insert(0, (name, loose_docs))
    if not sources:
        raise UserError(f"corpus {root}: no .txt, .zip, .jsonl or .parquet file found")
    return sources


def _relname(f: Path, root: Path) -> str:
    try:
        return f.relative_to(root).as_posix()
    except ValueError:
        return f.name


def _inner_suffix(path: Path) -> str:
    """The suffix that says how to read ``path``: ``.txt`` for ``a.txt``, ``a.txt.gz`` and
    ``a.txt.xz``; ``""`` for ``a`` and ``a.gz``; ``.jsonl`` for ``a.jsonl.bz2``. A compressed
    zip or parquet (``a.zip.gz``) gives ``.zip.gz``, which no reader takes (both are
    compressed inside already)."""
    suffix = path.suffix.lower()
    if suffix not in COMPRESSED:
        return suffix
    inner = Path(path.stem).suffix.lower()
    return inner if inner in (".txt", ".jsonl", "") else inner + suffix


def _open_bytes(path: Path) -> IO[bytes]:
    """``path`` opened for reading bytes, decompressed if its suffix names a compression.
    UserError naming the file when it cannot be opened."""
    opener = COMPRESSED.get(path.suffix.lower(), open)
    try:
        return opener(path, "rb")
    except OSError as e:
        raise UserError(f"cannot read corpus file {path}: {e.strerror or e}") from None


def _file_source(path: Path, label: str, stats: ReadStats, opts: ReadOptions) -> _Source:
    suffix = _inner_suffix(path)
    readers: Dict[str, Callable[[], Iterable[tuple]]] = {
        ".zip": lambda: _zip(path, label, stats, opts),
        ".jsonl": lambda: _jsonl(path, label, stats, opts),
        ".parquet": lambda: _parquet(path, label, stats, opts),
        ".txt": lambda: _text_file(path, label, stats, opts),
        "": lambda: _text_file(path, label, stats, opts),
    }
    if suffix not in readers:
        raise UserError(f"corpus file {path} has an unsupported type {suffix!r}; use .txt, .jsonl, .parquet or .zip "
                        "(.txt and .jsonl may be compressed: .gz, .bz2, .xz)")
    stem = path.stem if path.suffix.lower() not in COMPRESSED else Path(path.stem).stem
    return (stem, readers[suffix])


# --------------------------------------------------------------------------- text files


def _text_file(path: Path, label: str, stats: ReadStats, opts: ReadOptions) -> Iterator[tuple]:
    def opener() -> IO[bytes]:
        return _open_bytes(path)

    try:
        size = path.stat().st_size
    except OSError as e:
        raise UserError(f"cannot read corpus file {path}: {e.strerror}") from None
    yield from _text_documents(opener, label, str(path), size, stats, opts)


def _zip(path: Path, label: str, stats: ReadStats, opts: ReadOptions) -> Iterator[tuple]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"cannot open corpus zip {path}: {e}") from None
    with zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir():
                continue
            member = f"{label}:{info.filename}"
            if is_metadata_member(info.filename):
                stats.note(member, FileReport(skipped="metadata"))
                continue
            yield from _text_documents(lambda info=info: zf.open(info), member, f"{path} member {info.filename}", info.file_size, stats, opts)


def _text_documents(opener: Callable[[], IO[bytes]], base: str, where: str, size: int,
                    stats: ReadStats, opts: ReadOptions) -> Iterator[tuple]:
    """``(id, text)`` of one text file or zip member: binary probe, layout, streaming."""
    rep = FileReport()
    try:
        with opener() as raw:
            head = raw.read(LAYOUT_PROBE_BYTES)
        why = binary_reason(head[:PROBE_BYTES], opts.encoding)
        if why:
            rep.skipped, rep.bytes = f"binary: {why}", size
            stats.note(base, rep)
            return
        layout = opts.layout if opts.layout != "auto" else detect_layout(head, opts.encoding)
        with opener() as raw:
            stream = io.TextIOWrapper(raw, encoding=opts.encoding, errors=_HANDLERS[opts.errors], newline="\n")
            yield from _assemble(_units(stream, opts.piece_bytes, rep), layout, base, rep)
    except _Undecodable as e:
        exc = e.args[0]
        bad = exc.object[exc.start : exc.start + 1]
        raise UserError(
            f"corpus file {where} is not valid {opts.encoding} (byte 0x{bad.hex()}: {exc.reason}); "
            "set data.corpus_encoding to its encoding (e.g. latin-1) or data.corpus_errors=replace"
        ) from None
    except _STREAM_ERRORS as e:
        raise UserError(f"cannot read corpus file {where}: {getattr(e, 'strerror', None) or e}") from None
    stats.note(base, rep)


def binary_reason(block: bytes, encoding: str) -> str:
    """Why ``block`` (a file's first bytes) is not text, or "" if it looks like text:
    a NUL byte, or more than ``BINARY_CONTROL_SHARE`` control bytes. UTF-16/32 text
    holds NUL bytes, so only the control share is checked for those encodings."""
    wide = codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))
    if not wide and b"\0" in block:
        return f"NUL bytes in the first {len(block)} bytes"
    if block and not wide:
        share = sum(1 for b in block if b in _CONTROL_BYTES) / len(block)
        if share > BINARY_CONTROL_SHARE:
            return f"{share:.0%} control characters in the first {len(block)} bytes"
    return ""


def detect_layout(head: bytes, encoding: str) -> str:
    """``auto``'s choice for a file starting with ``head``: ``headings`` if it holds a
    WikiText title between blank lines, else ``file``."""
    lines = head.decode(encoding, errors="replace").split("\n")[:-1]  # the last may be cut
    for i in range(len(lines)):
        if _is_title(lines, i):
            return "headings"
    return "file"


def _is_title(lines: List[str], i: int) -> bool:
    def blank(j: int) -> bool:
        return j < 0 or j >= len(lines) or not lines[j].strip()

    return bool(WIKITEXT_TITLE.match(lines[i].rstrip("\r"))) and blank(i - 1) and blank(i + 1)


def split_text_file(text: str, layout: str = "auto") -> List[str]:
    """Documents of one text file held in memory (``layout`` as in ``ReadOptions``; for
    ``auto`` the whole text is probed). Empty pieces of splitting layouts are dropped."""
    if layout == "auto":
        layout = detect_layout(text.encode("utf-8") + b"\n", "utf-8")
    rep = FileReport()
    return [t for _, t in _assemble(_units(io.StringIO(text, newline="\n"), DEFAULT_PIECE_BYTES, rep), layout, "", rep)]


# --------------------------------------------------------------------------- decoding


class _Undecodable(Exception):
    """Raised by the ``strict`` handler: carries the UnicodeDecodeError."""


_DECODE_ERRORS_SEEN = [0]  # bumped by the handlers; read around each synchronous read


def _counting_replace(exc: UnicodeError) -> Tuple[str, int]:
    _DECODE_ERRORS_SEEN[0] += 1
    return "\ufffd", exc.end


def _counting_ignore(exc: UnicodeError) -> Tuple[str, int]:
    _DECODE_ERRORS_SEEN[0] += 1
    return "", exc.end


def _naming_strict(exc: UnicodeError) -> Tuple[str, int]:
    raise _Undecodable(exc)


codecs.register_error("data_prep.replace", _counting_replace)
codecs.register_error("data_prep.ignore", _counting_ignore)
codecs.register_error("data_prep.strict", _naming_strict)
_HANDLERS = {"replace": "data_prep.replace", "ignore": "data_prep.ignore", "strict": "data_prep.strict"}


def _decode(raw: bytes, opts: ReadOptions, rep: FileReport) -> str:
    before = _DECODE_ERRORS_SEEN[0]
    text = raw.decode(opts.encoding, errors=_HANDLERS[opts.errors])
    rep.replaced += _DECODE_ERRORS_SEEN[0] - before
    return text


# --------------------------------------------------------------------------- lines and pieces


def _units(stream: IO[str], piece_bytes: int, rep: FileReport) -> Iterator[Tuple[str, bool]]:
    """The lines of ``stream`` without their ``\\n`` as ``(text, False)``, as
    ``str.split("\\n")`` gives them (a final ``""`` after a closing newline), except that a
    line of ``LONG_LINE_CHARS`` or more characters comes as ``(piece, True)`` pieces of at
    most ``piece_bytes`` UTF-8 bytes (``cut_pieces``). Holds one read of at most
    ``LONG_LINE_CHARS`` characters at a time. A leading byte-order mark is dropped."""
    carry, long_line, ended, first = "", False, True, True
    while True:
        before = _DECODE_ERRORS_SEEN[0]
        seg = stream.readline(LONG_LINE_CHARS)
        rep.replaced += _DECODE_ERRORS_SEEN[0] - before
        if not seg:
            break
        rep.characters += len(seg)
        if first:
            seg, first = seg.removeprefix("\ufeff"), False
        ended = seg.endswith("\n")
        if ended:
            seg = seg[:-1]
        if not long_line and (ended or len(seg) < LONG_LINE_CHARS - 1):
            yield seg, False
            continue
        if not long_line:
            long_line = True
            rep.cut_lines += 1
        pieces, carry = cut_pieces(carry + seg, piece_bytes, final=ended)
        rep.pieces += len(pieces)
        for p in pieces:
            yield p, True
        if ended:
            long_line = False
    if long_line:
        pieces, _ = cut_pieces(carry, piece_bytes, final=True)
        rep.pieces += len(pieces)
        for p in pieces:
            yield p, True
    elif ended:
        yield "", False


def cut_pieces(text: str, piece_bytes: int, final: bool) -> Tuple[List[str], str]:
    """Cut ``text`` into pieces of at most ``piece_bytes`` UTF-8 bytes: after the last
    sentence end (``. ! ?`` and closing quotes, then whitespace) within the budget, else at
    the last whitespace, else at the budget (on a character boundary). Returns ``(pieces,
    rest)``: unless ``final``, the last at most ``piece_bytes`` bytes are held back as
    ``rest`` (the line goes on). Pieces are stripped; whitespace-only ones are dropped."""
    pieces: List[str] = []
    pos = 0
    while True:
        remaining = len(text) - pos
        if remaining <= piece_bytes and len(text[pos:].encode("utf-8", "surrogatepass")) <= piece_bytes:
            break  # the rest fits one piece
        window = text[pos : pos + piece_bytes]
        encoded = window.encode("utf-8", "surrogatepass")
        if len(encoded) > piece_bytes:
            window = encoded[:piece_bytes].decode("utf-8", "ignore")
        cut = 0
        for m in _SENTENCE_END.finditer(window):
            cut = m.end()
        if not cut:
            cut = max(window.rfind(c) for c in _WHITESPACE) + 1
        if cut <= 0:
            cut = len(window)
        piece = window[:cut].strip()
        if piece:
            pieces.append(piece)
        pos += cut
    rest = text[pos:]
    if final:
        if rest.strip():
            pieces.append(rest.strip())
        rest = ""
    return pieces, rest


class _Assembler:
    """Lines and pieces → ``(id, text)`` documents of one file under one layout (module
    docstring): pieces are separated from their neighbours by a blank line, and a
    document is cut into parts at ``MAX_DOCUMENT_CHARS``."""

    def __init__(self, layout: str, base: str, rep: FileReport) -> None:
        self.layout, self.base, self.rep = layout, base, rep
        self.lines: List[str] = []
        self.chars = 0
        self.last_piece = False
        self.index = 0  # documents emitted (splitting layouts)
        self.part = 0  # parts of the current document emitted
        self.had_text = False

    def _id(self) -> str:
        doc = self.base if self.layout == "file" else f"{self.base}:{self.index}"
        return doc if self.part == 0 else f"{doc}#{self.part}"

    def _flush(self, end_of_document: bool) -> Iterator[tuple]:
        text = "\n".join(self.lines)
        keep = bool(text.strip()) or (self.layout == "file" and self.part == 0 and end_of_document)
        if keep:
            yield self._id(), text
            self.had_text = self.had_text or bool(text.strip())
        if end_of_document:
            if self.part and not keep:  # the last cut left nothing behind
                self.rep.parts -= 1
                self.rep.cut_documents -= self.part == 1
            if self.layout != "file" and self.had_text:
                self.index += 1
            self.part, self.had_text = 0, False
        elif keep:
            if self.part == 0:
                self.rep.cut_documents += 1
            self.part += 1
            self.rep.parts += 1
        self.lines, self.chars, self.last_piece = [], 0, False

    def close(self) -> Iterator[tuple]:
        if self.lines or (self.layout == "file" and self.part == 0):
            yield from self._flush(True)
        else:
            self.part, self.had_text = 0, False

    def add(self, text: str, piece: bool) -> Iterator[tuple]:
        if self.lines and self.chars + len(text) + 2 > MAX_DOCUMENT_CHARS:
            yield from self._flush(False)
        if self.lines and (piece or self.last_piece):
            self.lines.append("")
            self.chars += 1
        self.lines.append(text)
        self.chars += len(text) + 1
        self.last_piece = piece


def _assemble(units: Iterable[Tuple[str, bool]], layout: str, base: str, rep: FileReport) -> Iterator[tuple]:
    asm = _Assembler(layout, base, rep)
    prev_blank = True
    it = iter(units)
    cur = next(it, None)
    while cur is not None:
        nxt = next(it, None)
        text, piece = cur
        if piece:
            yield from asm.add(text, True)
            prev_blank = False
        else:
            line = text.rstrip("\r")
            blank = not line.strip()
            if layout == "headings":
                around = prev_blank and (nxt is None or (not nxt[1] and not nxt[0].strip()))
                heading = _WIKITEXT_HEADING.match(line) if around else None
                if heading and WIKITEXT_TITLE.match(line):
                    yield from asm.close()
                yield from asm.add(heading.group(1) if heading else text, False)
            elif layout == "blank_lines" and blank:
                yield from asm.close()
            elif layout == "lines":
                yield from asm.close()
                if not blank:
                    yield from asm.add(text, False)
            else:
                yield from asm.add(text, False)
            prev_blank = blank
        cur = nxt
    yield from asm.close()


# --------------------------------------------------------------------------- rows


def _rows_bounded(name: str, rows: Iterable[Tuple[str, str]], opts: ReadOptions, stats: ReadStats) -> Iterator[tuple]:
    """Rows of a source held in memory anyway (pydoc, hf), cut like a text file's lines."""
    rep = FileReport()
    for doc_id, text in rows:
        yield from _bounded(doc_id, text, opts, rep)
    stats.note(name, rep)


def _bounded(doc_id: str, text: str, opts: ReadOptions, rep: FileReport) -> Iterator[tuple]:
    """One row's text as it is, or — when it could hold an over-long line or exceed
    ``MAX_DOCUMENT_CHARS`` — cut like a ``file``-layout text file (ids ``doc_id#k``)."""
    if len(text) < LONG_LINE_CHARS - 1:
        rep.characters += len(text)
        yield doc_id, text
        return
    yield from _assemble(_units(io.StringIO(text, newline="\n"), opts.piece_bytes, rep), "file", doc_id, rep)


def _jsonl(path: Path, label: str, stats: ReadStats, opts: ReadOptions) -> Iterator[tuple]:
    rep = FileReport()
    with _open_bytes(path) as f:
        for lineno, raw in _numbered_lines(f, path):
            try:
                line = _decode(raw, opts, rep)
            except _Undecodable:
                raise UserError(
                    f"{path}:{lineno} is not valid {opts.encoding}; set data.corpus_encoding to its encoding "
                    "or data.corpus_errors=replace"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise UserError(f"{path}:{lineno} is not valid JSON; fix or remove that line") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise UserError(f"{path}:{lineno} has no string 'text' field; every line needs one")
            yield from _bounded(f"{label}:{row.get('id', lineno)}", row["text"], opts, rep)
    stats.note(label, rep)


def _numbered_lines(f: IO[bytes], path: Path) -> Iterator[Tuple[int, bytes]]:
    """``(line number, raw line)`` of ``f``; a damaged (e.g. truncated gzip) stream is a
    UserError naming the file and the line reached, not a zlib traceback."""
    lineno = 0
    it = iter(f)
    while True:
        try:
            raw = next(it)
        except StopIteration:
            return
        except _STREAM_ERRORS as e:
            raise UserError(f"cannot read corpus file {path} after line {lineno}: {getattr(e, 'strerror', None) or e}") from None
        lineno += 1
        yield lineno, raw


def _parquet(path: Path, label: str, stats: ReadStats, opts: ReadOptions) -> Iterator[tuple]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError variants: say which file
        raise UserError(f"cannot read parquet corpus {path}: {str(e).splitlines()[0]}") from None
    names = pf.schema_arrow.names
    if "text" not in names:
        raise UserError(f"{path} has no 'text' column (columns: {', '.join(names)})")
    cols = ["text", "id"] if "id" in names else ["text"]
    rep = FileReport()
    row = 0
    for batch in pf.iter_batches(columns=cols, batch_size=4096):
        d = batch.to_pydict()
        ids = d.get("id") or range(row, row + batch.num_rows)
        for i, text in zip(ids, d["text"], strict=True):
            yield from _bounded(f"{label}:{i}", text or "", opts, rep)
        row += batch.num_rows
    stats.note(label, rep)


def _pydoc() -> Iterator[tuple]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield f"pydoc:{key}", topics[key]


def _hf(spec: str) -> Iterator[tuple]:
    parts = spec[3:].split(":")
    if not parts[0] or len(parts) > 3:
        raise UserError(f"corpus={spec!r}: use hf:NAME[:CONFIG[:SPLIT]]")
    name, config, split = parts[0], (parts[1] if len(parts) > 1 and parts[1] else None), (parts[2] if len(parts) > 2 else "train")
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:  # hub/network/config errors come in many types
        raise UserError(f"cannot load {spec}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    for i, row in enumerate(ds):
        if "text" not in row:
            raise UserError(f"{spec} has no 'text' column (columns: {', '.join(row)})")
        yield f"hf:{name}:{split}:{row.get('id', i)}", row["text"] or ""
