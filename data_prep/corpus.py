"""Reading a corpus spec into documents.

``read_documents(spec)`` turns one string into a stream of ``Document(id, text, source)``:

===========================  ==========================================================
spec                         documents
===========================  ==========================================================
``pydoc``                    the 79 topics of ``pydoc_data.topics`` (CPython's reference
                             docs, embedded in every Python: the offline default)
``hf:NAME[:CONFIG[:SPLIT]]`` rows of ``datasets.load_dataset`` (``text`` column)
``DIR``                      every file below it: ``.txt`` = one document per file;
                             ``.zip`` / ``.jsonl`` / ``.parquet`` = their own documents
``GLOB`` (``*``, ``?``, ``[``)  the matching files, read as in a directory
``FILE.txt``                 documents separated by blank lines, or by WikiText
                             ``" = Title = "`` lines when the file has any
``FILE.jsonl``/``.parquet``  one document per row (``text`` column; ``id`` if present)
``FILE.zip``                 one document per member (metadata members skipped)
===========================  ==========================================================

Why document ids matter: the train/validation split hashes them, so an id must not depend
on read order or on ``max_documents`` (``brown.zip:brown/ca01``, ``valid.txt:7``).

Several multi-document sources (the zips of ``nltk-corpora/``) are read round-robin, one
document from each in turn, so ``max_documents=N`` gives a sample of every source rather
than the first N documents of the first zip.

Counters (``ReadStats``): documents yielded, empty documents skipped, metadata members
and non-corpus files skipped, undecodable bytes replaced by U+FFFD (never a crash).
"""

from __future__ import annotations

import glob as globlib
import json
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from common.errors import UserError

# Members of corpus archives that describe the corpus rather than belong to it (NLTK's
# zips hold README, cats.txt, CONTENTS and stopwords next to the texts).
METADATA_NAMES = ("readme", "cats.txt", "contents", "stopwords", "license", "copying")
MULTI_DOC_SUFFIXES = (".zip", ".jsonl", ".parquet")
TEXT_SUFFIXES = ("", ".txt")

# A WikiText article heading: " = Title = " (sections are " = = Heading = = ").
WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")
_WIKITEXT_HEADING = re.compile(r"^ (?:= )+(.*?)(?: =)+ $")
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")


@dataclass(frozen=True)
class Document:
    """One document: ``id`` is stable across runs and read orders; ``text`` is str with
    newlines kept (sentence splitting reads them); ``source`` names where it came from
    (the zip or file stem, e.g. ``brown``)."""

    id: str
    text: str
    source: str


@dataclass
class ReadStats:
    """What reading saw. ``sources`` counts yielded documents per source name."""

    documents: int = 0
    empty_documents: int = 0
    skipped_members: int = 0
    replaced_characters: int = 0
    sources: Dict[str, int] = field(default_factory=Counter)


def is_metadata_member(name: str) -> bool:
    """True for corpus-description files (README*, cats.txt, CONTENTS, stopwords,
    LICENSE*, COPYING*) by their base name, case-insensitively."""
    base = name.rstrip("/").rsplit("/", 1)[-1].lower()
    return any(base == m or base.startswith(m + ".") or (m == "readme" and base.startswith(m)) for m in METADATA_NAMES)


def decode_bytes(raw: bytes, stats: ReadStats) -> str:
    """UTF-8 text of ``raw``; undecodable bytes become U+FFFD and are counted in
    ``stats.replaced_characters``. A leading byte-order mark is dropped."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        stats.replaced_characters += text.count("\ufffd") - raw.count("\ufffd".encode())
    return text[1:] if text.startswith("\ufeff") else text


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
) -> Iterator[Document]:
    """Documents of a corpus spec (see the module docstring for the spec forms).

    Args:
        spec: the corpus spec (``DataConfig.corpus``).
        strip_pos_tags: source names (zip or file stem, or the directory name for loose
            files) whose tokens are ``word/tag`` and get their tags stripped.
        max_documents: stop after this many non-empty documents; None = all.
        stats: filled in while iterating (pass your own to read the counters).
    Returns:
        An iterator of non-empty ``Document``; empty ones are skipped and counted.
    Raises:
        UserError: at call time for a missing path or unsupported file type; while
            iterating for an unreadable file, a row without ``text``, or a corpus that
            yields no non-empty document ("empty corpus").
    """
    stats = stats if stats is not None else ReadStats()
    sources = _resolve(spec, stats)
    strip = frozenset(strip_pos_tags)
    return _iterate(spec, sources, strip, max_documents, stats)


# A source is (name, thunk producing (id, text) pairs); thunks open files lazily.
_Source = Tuple[str, Callable[[], Iterable[Tuple[str, str]]]]


def _iterate(spec, sources, strip, max_documents, stats) -> Iterator[Document]:
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
            return
    if n == 0:
        raise UserError(f"empty corpus: {spec} yields no non-empty document; point corpus= at text files")


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


def _resolve(spec: str, stats: ReadStats) -> List[_Source]:
    if spec == "pydoc":
        return [("pydoc", _pydoc)]
    if spec.startswith("hf:"):
        return [(spec[3:].split(":")[0].rsplit("/", 1)[-1], lambda: _hf(spec))]
    path = Path(spec).expanduser()
    if any(c in spec for c in "*?[") and not path.exists():
        files = sorted(Path(p) for p in globlib.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"corpus glob {spec} matches no file")
        root = Path(spec.split("*")[0].split("?")[0].split("[")[0] or ".")
        root = root if root.is_dir() else root.parent
        return _files_as_sources(files, root, stats)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return _files_as_sources(files, path, stats)
    if path.is_file():
        return [_file_source(path, path.name, stats)]
    raise UserError(f"corpus not found: {spec} (a path, a glob, hf:NAME or pydoc)")


def _files_as_sources(files: List[Path], root: Path, stats: ReadStats) -> List[_Source]:
    """Multi-document files become sources of their own; loose text files form one source
    (one document per file); anything else (README, SOURCE.md, ...) is skipped and counted."""
    sources, loose = [], []
    for f in files:
        suffix = f.suffix.lower()
        if any(part.startswith(".") for part in _relname(f, root).split("/")):
            stats.skipped_members += 1
        elif suffix in MULTI_DOC_SUFFIXES:
            sources.append(_file_source(f, _relname(f, root), stats))
        elif suffix in TEXT_SUFFIXES and not is_metadata_member(f.name):
            loose.append(f)
        else:
            stats.skipped_members += 1
    if loose:
        name = root.resolve().name or "files"

        def loose_docs() -> Iterator[tuple]:
            for f in loose:
                yield _relname(f, root), decode_bytes(_read_bytes(f), stats)

        sources.insert(0, (name, loose_docs))
    if not sources:
        raise UserError(f"corpus {root}: no .txt, .zip, .jsonl or .parquet file found")
    return sources


def _relname(f: Path, root: Path) -> str:
    try:
        return f.relative_to(root).as_posix()
    except ValueError:
        return f.name


def _file_source(path: Path, label: str, stats: ReadStats) -> _Source:
    suffix = path.suffix.lower()
    readers: Dict[str, Callable[[], Iterable[tuple]]] = {
        ".zip": lambda: _zip(path, label, stats),
        ".jsonl": lambda: _jsonl(path, label, stats),
        ".parquet": lambda: _parquet(path, label),
        ".txt": lambda: _text_file(path, label, stats),
        "": lambda: _text_file(path, label, stats),
    }
    if suffix not in readers:
        raise UserError(f"corpus file {path} has an unsupported type {suffix!r}; use .txt, .jsonl, .parquet or .zip")
    return (path.stem, readers[suffix])


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read corpus file {path}: {e.strerror}") from None


def _zip(path: Path, label: str, stats: ReadStats) -> Iterator[tuple]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"cannot open corpus zip {path}: {e}") from None
    with zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir():
                continue
            if is_metadata_member(info.filename):
                stats.skipped_members += 1
                continue
            try:
                raw = zf.read(info)
            except (zipfile.BadZipFile, OSError) as e:
                raise UserError(f"corpus zip {path} member {info.filename} is unreadable: {e}") from None
            yield f"{label}:{info.filename}", decode_bytes(raw, stats)


def _text_file(path: Path, label: str, stats: ReadStats) -> Iterator[tuple]:
    text = decode_bytes(_read_bytes(path), stats).replace("\r\n", "\n")
    for i, doc in enumerate(split_text_file(text)):
        yield f"{label}:{i}", doc


def split_text_file(text: str) -> List[str]:
    """Documents of a single text file: WikiText articles (split before every
    ``" = Title = "`` line; heading markers dropped, text kept) when the file has such a
    line, else blank-line-separated blocks. Empty pieces are dropped."""
    lines = text.split("\n")
    if not any(WIKITEXT_TITLE.match(line) for line in lines):
        return [d for d in _BLANK_LINES.split(text) if d.strip()]
    docs: List[List[str]] = [[]]
    for line in lines:
        if WIKITEXT_TITLE.match(line):
            docs.append([])
        m = _WIKITEXT_HEADING.match(line)
        docs[-1].append(m.group(1) if m else line)
    return [d for d in ("\n".join(ls) for ls in docs) if d.strip()]


def _jsonl(path: Path, label: str, stats: ReadStats) -> Iterator[tuple]:
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"cannot read corpus file {path}: {e.strerror}") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            line = decode_bytes(raw, stats)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise UserError(f"{path}:{lineno} is not valid JSON; fix or remove that line") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise UserError(f"{path}:{lineno} has no string 'text' field; every line needs one")
            yield f"{label}:{row.get('id', lineno)}", row["text"]


def _parquet(path: Path, label: str) -> Iterator[tuple]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError variants: say which file
        raise UserError(f"cannot read parquet corpus {path}: {str(e).splitlines()[0]}") from None
    names = pf.schema_arrow.names
    if "text" not in names:
        raise UserError(f"{path} has no 'text' column (columns: {', '.join(names)})")
    cols = ["text", "id"] if "id" in names else ["text"]
    row = 0
    for batch in pf.iter_batches(columns=cols, batch_size=4096):
        d = batch.to_pydict()
        ids = d.get("id") or range(row, row + batch.num_rows)
        for i, text in zip(ids, d["text"], strict=True):
            yield f"{label}:{i}", text or ""
        row += batch.num_rows


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
