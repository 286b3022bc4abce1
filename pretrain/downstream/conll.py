"""CoNLL-2003 English NER (Tjong Kim Sang & De Meulder 2003): sentences of words with their
entity tags.

Files hold one token per line, ``WORD POS CHUNK NER`` separated by spaces, a blank line
between sentences, and ``-DOCSTART- -X- -X- O`` opening each document (skipped; it also ends
a sentence). The original release tags in IOB1 (``B-`` only where two entities of one type
touch); copies converted to IOB2 read the same way. Scoring (``pretrain.downstream.metrics``)
is entity-level, with conlleval's chunk rules, so either scheme is scored as conlleval does.

Splits: ``train`` = eng.train, ``dev`` = eng.testa, ``test`` = eng.testb (the split the
papers report), or the common ``train.txt``/``valid.txt``/``test.txt`` names.
``hf:NAME`` (e.g. ``hf:eriktks/conll2003``) reads the hub dataset (``tokens``,
``ner_tags``) instead; it needs the network or a populated hub cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from common.errors import UserError, not_utf8
from pretrain.downstream.glue import HF_PREFIX, default_root

# Classifier order: the Hugging Face conll2003 dataset's ``ner_tags`` names, so hub tag ids
# and file tags index the same rows.
LABELS: Tuple[str, ...] = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
FILES = {"train": ("eng.train", "train.txt"), "dev": ("eng.testa", "valid.txt"), "test": ("eng.testb", "test.txt")}
HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}
DOCSTART = "-DOCSTART-"


@dataclass(frozen=True)
class NerSentence:
    """One sentence: ``words`` and their ``tags`` (strings from ``LABELS``), same length."""

    words: Tuple[str, ...]
    tags: Tuple[str, ...]


def split_file(split: str, source: Optional[str | Path] = None) -> Path:
    """The file of ``split`` in directory ``source`` (None = ``default_root()/conll2003``).
    UserError for an unknown split or a missing file."""
    if split not in FILES:
        raise UserError(f"CoNLL-2003 has no split {split!r}; valid: {', '.join(FILES)}")
    d = Path(source) if source is not None else default_root() / "conll2003"
    for name in FILES[split]:
        if (d / name).is_file():
            return d / name
    raise UserError(f"CoNLL-2003 {split} file not found in {d} (looked for {' or '.join(FILES[split])})")


def read_conll(path: Path) -> List[NerSentence]:
    """Sentences of a CoNLL-2003 file. UserError naming file and line for a line without a
    tag column, with another number of columns than the file's first token line, or with a
    tag outside ``LABELS``; or for a file that is not UTF-8."""
    out: List[NerSentence] = []
    words: List[str] = []
    tags: List[str] = []

    def close() -> None:
        if words:
            out.append(NerSentence(tuple(words), tuple(tags)))
            words.clear()
            tags.clear()

    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    width = first = None  # every token line has as many columns as the first one
    for n, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            close()
            continue
        if fields[0] == DOCSTART:
            close()
            continue
        if len(fields) < 2:
            raise UserError(f"{path}:{n}: expected 'WORD ... TAG', got {line.strip()!r}")
        if width is None:
            width, first = len(fields), n
        elif len(fields) != width:
            # a lost or extra column: its last field is not the tag, whatever it looks like
            raise UserError(f"{path}:{n}: {len(fields)} space-separated columns, but line {first} has {width} "
                            f"(CoNLL-2003: WORD POS CHUNK TAG); got {line.strip()!r}")
        if fields[-1] not in LABELS:
            raise UserError(f"{path}:{n}: tag {fields[-1]!r} is not one of {', '.join(LABELS)}")
        words.append(fields[0])
        tags.append(fields[-1])
    close()
    if not out:
        raise UserError(f"{path}: no sentences")
    return out


def load_sentences(split: str, source: Optional[str | Path] = None) -> List[NerSentence]:
    """Sentences of ``split`` (train | dev | test) from a directory or ``hf:NAME``."""
    src = str(source) if source is not None else None
    if src is not None and src.startswith(HF_PREFIX):
        return _from_hub(split, src[len(HF_PREFIX):])
    return read_conll(split_file(split, src))


def _from_hub(split: str, name: str) -> List[NerSentence]:
    if split not in HUB_SPLITS:
        raise UserError(f"CoNLL-2003 has no split {split!r}; valid: {', '.join(HUB_SPLITS)}")
    try:
        import datasets

        ds = datasets.load_dataset(name, split=HUB_SPLITS[split])
    except Exception as e:  # network, unknown name: one line for the user
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load hf:{name} ({HUB_SPLITS[split]}): {msg}") from None
    names = ds.features["ner_tags"].feature.names
    unknown = sorted(set(names) - set(LABELS))
    if unknown:
        raise UserError(f"hf:{name}: tags {unknown} are not CoNLL-2003's ({', '.join(LABELS)})")
    return [NerSentence(tuple(r["tokens"]), tuple(names[t] for t in r["ner_tags"])) for r in ds if r["tokens"]]
