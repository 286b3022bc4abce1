"""Training instances: which documents are held out, in which order documents are packed,
and FULL-SENTENCES packing (Liu et al. 2019, §4.2).

FULL-SENTENCES: "Each input is packed with full sentences sampled contiguously from one or
more documents, such that the total length is at most 512 tokens. Inputs may cross
document boundaries. When we reach the end of one document, we begin sampling sentences
from the next document and add an extra separator token between documents." A sequence
is ``<s> s1 s2 … </s>`` (RoBERTa's ``<s>``/``</s>`` = ``cls_id``/``sep_id``), with one more
``</s>`` wherever a document ends inside it. Its length, special tokens included, never
exceeds ``max_seq_length``; a sentence longer than ``max_seq_length - 2`` keeps its first
``max_seq_length - 2`` tokens (counted in ``PackStats``).

Everything here is a pure function of document ids, token ids and the seed, so a rerun,
another machine or a static and a dynamic build pack the same sequences.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Sequence

import numpy as np


def _unit_hash(text: str) -> float:
    """A float in [0, 1) from sha256 (Python's ``hash()`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0**64


def is_validation(doc_id: str, validation_fraction: float) -> bool:
    """True if document ``doc_id`` belongs to the validation split.

    Decided by a sha256 of the id alone: independent of read order, ``max_documents``,
    the seed and the machine, so every arm of an ablation holds out the same documents.
    """
    return _unit_hash("validation:" + doc_id) < validation_fraction


def document_order(doc_ids: Sequence[str], seed: int) -> List[int]:
    """Indices of ``doc_ids`` in packing order: sorted by sha256 of ``(seed, id)``.

    A deterministic shuffle that mixes sources (nltk zips come grouped) and does not depend
    on the order the ids came in. Ties (duplicate ids) keep their input order.
    """
    keys = [hashlib.sha256(f"{seed}:{d}".encode("utf-8")).digest() for d in doc_ids]
    return sorted(range(len(doc_ids)), key=keys.__getitem__)


@dataclass
class PackStats:
    """Counters of one packing run: documents and sentences consumed, sentences cut to
    ``max_seq_length - 2`` and the tokens that cut dropped, sequences and tokens emitted."""

    documents: int = 0
    sentences: int = 0
    truncated_sentences: int = 0
    truncated_tokens: int = 0
    sequences: int = 0
    tokens: int = 0


def pack_full_sentences(
    documents: Iterable[Sequence[np.ndarray]],
    max_seq_length: int,
    cls_id: int,
    sep_id: int,
    stats: PackStats | None = None,
) -> Iterator[np.ndarray]:
    """Pack tokenized documents into FULL-SENTENCES sequences.

    Args:
        documents: each document is a sequence of sentences, each an int ``[n]`` array of
            token ids without special tokens; documents are consumed in the given order.
        max_seq_length: upper bound on a sequence's length, special tokens included (>= 3).
        cls_id / sep_id: ids of ``<s>`` and ``</s>``.
        stats: filled in while iterating.
    Yields:
        int32 ``[len]`` arrays, ``3 <= len <= max_seq_length``, starting with ``cls_id`` and
        ending with ``sep_id``; an empty sentence is skipped.
    """
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length={max_seq_length} leaves no room for a token")
    stats = stats if stats is not None else PackStats()
    budget = max_seq_length - 2
    head = np.asarray([cls_id], dtype=np.int32)
    tail = np.asarray([sep_id], dtype=np.int32)
    pieces: List[np.ndarray] = []
    used = 0
    boundary = False  # a document ended inside the current sequence

    def emit() -> np.ndarray:
        seq = np.concatenate([head, *pieces, tail])
        stats.sequences += 1
        stats.tokens += int(seq.size)
        return seq

    for sentences in documents:
        stats.documents += 1
        for sent in sentences:
            n = int(len(sent))
            if n == 0:
                continue
            stats.sentences += 1
            if n > budget:
                stats.truncated_sentences += 1
                stats.truncated_tokens += n - budget
                sent, n = sent[:budget], budget
            extra = 1 if (boundary and pieces) else 0
            if pieces and used + extra + n > budget:
                yield emit()
                pieces, used, extra = [], 0, 0
            if extra:
                pieces.append(tail)
                used += 1
            pieces.append(np.asarray(sent, dtype=np.int32))
            used += n
            boundary = False
        boundary = True
    if pieces:
        yield emit()
