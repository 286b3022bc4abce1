"""Sentence splitting for FULL-SENTENCES packing (Liu et al. 2019, §4.2).

Two steps:

1. **Line breaks.** Corpora use newlines in two ways: hard-wrapped prose (gutenberg,
   reuters, pydoc: a newline is just a space) and one sentence or paragraph per line
   (brown, movie_reviews, abc, state_union, webtext, wikitext). Blank lines always end a
   paragraph. Inside a paragraph a line is joined to the next one only when it does not
   end a clause (no ``. ! ? : ;`` at its end), is not an all-caps headline, and the next
   line looks like its continuation (starts in lower case, or this line is as long as a
   wrapped line, ``WRAPPED_LINE_CHARS``). Lower-cased one-sentence-per-line text
   (movie_reviews) thus keeps its line boundaries, which a splitter alone cannot see.
2. **Sentences** inside each joined unit, by a maintained library splitter (``BACKENDS``):
   ``blingfire`` (the default; C++) or ``pysbd`` (rule-based, pure Python). Measured on
   556k words of reuters + gutenberg (bench/data_prep.md, ``python
   bench/bench_data_prep.py --sentences``): blingfire ~33x faster (536k vs 16k words/s;
   pysbd would add ~7 minutes to the 7M-word nltk build), 90% identical sentences, 17/20
   vs 19/20 hand-checked tricky cases. blingfire's misses (a split after a quoted
   question, none before a lower-case sentence or after "data.txt.") cost little here:
   packing joins contiguous sentences anyway, and lower-cased one-sentence-per-line text
   keeps its line boundaries from step 1.

Erring towards more boundaries is cheap for packing (contiguous sentences are packed
together anyway) while a missed boundary can make a "sentence" longer than a sequence,
which gets truncated; hence the rules above lean towards splitting.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List

# Lines at least this long (characters, after stripping) are taken as hard-wrapped prose;
# Gutenberg and Reuters wrap at 65-75 columns. Measured on nltk-corpora: 50 keeps 2% of
# webtext (one item per line) in >90-word run-ons; 60 keeps 0.7%.
WRAPPED_LINE_CHARS = 60
DEFAULT_BACKEND = "blingfire"

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")
_ENDS_CLAUSE = re.compile(r"""[.!?:;]["'”’)\]]*$""")


def _blingfire(text: str) -> List[str]:
    import blingfire

    out = blingfire.text_to_sentences(text)
    return [s for s in out.split("\n") if s.strip()] if out else []


_pysbd_segmenter = None


def _pysbd(text: str) -> List[str]:
    global _pysbd_segmenter
    if _pysbd_segmenter is None:
        import pysbd

        _pysbd_segmenter = pysbd.Segmenter(language="en", clean=False)
    return [s.strip() for s in _pysbd_segmenter.segment(text) if s.strip()]


BACKENDS: Dict[str, Callable[[str], List[str]]] = {"blingfire": _blingfire, "pysbd": _pysbd}


def line_units(text: str) -> List[str]:
    """The text cut at paragraph breaks and at line breaks that end a unit (see the module
    docstring), inner whitespace of each unit collapsed. Returns non-empty str units."""
    units: List[str] = []
    for para in _PARAGRAPH_BREAK.split(text):
        lines = [" ".join(line.split()) for line in para.split("\n")]
        lines = [line for line in lines if line]
        current: List[str] = []
        for i, line in enumerate(lines):
            current.append(line)
            nxt = lines[i + 1] if i + 1 < len(lines) else None
            joins = (
                nxt is not None
                and not _ENDS_CLAUSE.search(line)
                and not (line.isupper())
                and (nxt[0].islower() or len(line) >= WRAPPED_LINE_CHARS)
            )
            if not joins:
                units.append(" ".join(current))
                current = []
    return units


def split_sentences(text: str, backend: str = DEFAULT_BACKEND) -> List[str]:
    """Sentences of one document, in order, as stripped non-empty str.

    Raises KeyError for an unknown ``backend`` (one of ``BACKENDS``).
    """
    split = BACKENDS[backend]
    out: List[str] = []
    for unit in line_units(text):
        out.extend(split(unit))
    return out
