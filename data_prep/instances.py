"""Training instances: which documents are held out, in which order documents are used,
and the four input formats of RoBERTa's §4.2 comparison (Liu et al. 2019).

Input to every format is one *chunk* of tokenized documents (``data_prep.build`` cuts the
corpus into chunks of ``chunk_documents`` documents): a document is a list of sentences,
each an int ``[n]`` array of token ids without special tokens, with an optional parallel
list of int8 word-start arrays (``data_prep.words``). Output rows (``Row``) carry
``input_ids`` and ``word_starts`` (special tokens are word starts) and, for pairs,
``token_type_ids`` and the sentence label. Every row is at most ``max_seq_length`` tokens.

FULL-SENTENCES (RoBERTa §4.2): "Each input is packed with full sentences sampled
contiguously from one or more documents, such that the total length is at most 512
tokens. Inputs may cross document boundaries. When we reach the end of one document, we
begin sampling sentences from the next document and add an extra separator token between
documents." A row is ``<s> s1 s2 … </s>`` with one more ``</s>`` wherever a document ends
inside it. Documents are crossed within a chunk only: the last row of a chunk is shorter.

DOC-SENTENCES (RoBERTa §4.2): the same packing, but a row never crosses a document
boundary; the short last row of every document is kept (the trainer varies the batch
size, see ``DataConfig.doc_sentences_batching``).

A sentence longer than ``max_seq_length - 2`` keeps its first tokens (counted).

``sentence_separator=eos`` (``DataConfig.sentence_separator``) gives both packed formats
fairseq's layout instead: RoBERTa's released preprocessing writes one sentence per line
and fairseq's binarizer ends every line with ``</s>``; the masked_lm task cuts that stream
with ``TokenBlockDataset(break_mode="complete")`` (fairseq/data/token_block_dataset.py)
into blocks of at most ``tokens_per_sample - 1`` tokens and prepends ``<s>``. A row is
``<s> s1 </s> s2 </s> … sk </s>``; between two documents (a blank line, which fairseq
binarizes as a lone ``</s>``) FULL-SENTENCES adds one ``</s>`` unit, placed like a sentence
(in the current row if it fits, else it opens the next one: §4.2's "extra separator
token between documents"). ``_pack_eos`` makes these rows.

SEGMENT-PAIR (BERT, Devlin et al. 2019, §3.1 and appendix A.2; RoBERTa §4.2) and SOP
pairs (ALBERT, Lan et al. 2020, §3.2 "Inter-sentence coherence loss") come in two rule
sets, chosen by two ``DataConfig`` keys:

- ``sentence_labels=reference`` with ``short_seq_rule=reference`` (the defaults of
  ``configs/data/bert.yaml`` and ``albert.yaml``): ``reference_pairs``, the rules of
  ``create_instances_from_document`` in google-research/bert's and google-research/
  albert's ``create_pretraining_data.py``: the short target is drawn once per document;
  a one-sentence chunk always gets a B from a random document (NSP: NotNext; SOP: label
  1), so one-sentence documents give pairs too; the random document is drawn from all
  documents of the chunk with up to 10 tries to avoid the current one. NotNext thus
  comes out a little above 50% (53-54% on WikiText-2, as the reference's).
- ``sentence_labels=balanced`` with ``short_seq_rule=per_chunk`` (today's variant, the
  ``DataConfig`` defaults): the target length is ``max_seq_length - 3``, or with
  probability ``short_seq_prob`` a uniform random length in ``[2, max_seq_length - 3]``,
  drawn for every chunk, so the share of short chunks is ``short_seq_prob`` whatever the
  document lengths; sentences of a document are gathered into a chunk until the target
  is reached, and a chunk always holds two or more sentences (a chunk that reached its
  target with one sentence takes the next one too, and a single sentence that would be
  left at the end of a document joins the chunk before it); segment A is the first
  1..m-1 of the chunk's m sentences (uniform), B the rest (IsNext, 50%) or, for NotNext
  (50%), sentences from a random start in a uniformly drawn *other* document of the
  chunk until B reaches the target (the chunk's unused sentences go back to the
  stream). Every label is a fair coin (nltk-corpora: 50.1% NotNext at length 128, the
  reference rule 54.7%; ``python bench/bench_data_prep.py --nsp-balance``); a lone
  sentence left by a put-back at a document's end is dropped (``unpaired_sentences``);
  one-sentence documents give no pair (``one_sentence_documents``). SOP pairs here are
  always two consecutive segments of one document, swapped with probability 0.5.
  ``short_seq_rule`` may also be set alone (``reference`` = per document with balanced
  labels, ``per_chunk`` with reference labels).

In both, the pair is cut to ``max_seq_length - 3`` tokens one token at a time from its
longer side, front or back at random (BERT's ``truncate_seq_pair``). Layout ``[CLS] A
[SEP] B [SEP]``, ``token_type_ids`` 0 up to and including the first ``[SEP]``, 1 after.
``next_sentence_label``: 0 = IsNext, 1 = NotNext (the Hugging Face convention
``pretrain.criterions.pretraining`` expects); ``sentence_order_label``: 0 = in order, 1 =
swapped (or, reference rule, B from another document). The document pool is the chunk
(``chunk_documents`` documents, bounded memory, independent of the worker count); the
reference draws from the whole corpus, which is the same when the corpus fits in one
chunk (WikiText-2's 122 articles do).

SENTENCE-PAIR (RoBERTa §4.2): the balanced rules with exactly one sentence in A and one
in B (two consecutive sentences, or a sentence and one random sentence of another
document); no short targets.

Every random draw comes from the ``random.Random`` passed in (``data_prep.build`` seeds one
per chunk from ``(seed, split, chunk)``), and documents are visited in the given order,
so rows are a pure function of the chunk's documents and its seed.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field, fields
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from common.schema import LABEL_COLUMNS, PACKED_FORMATS, PAIR_FORMATS

# ``DataConfig.short_seq_rule`` and ``DataConfig.sentence_labels`` (see there and ``create_pairs``).
SHORT_SEQ_RULES: Tuple[str, ...] = ("reference", "per_chunk")
SENTENCE_LABEL_RULES: Tuple[str, ...] = ("reference", "balanced")
# ``DataConfig.sentence_separator`` (packed formats; see ``pack_sentences``).
SENTENCE_SEPARATORS: Tuple[str, ...] = ("none", "eos")

# Ids of a document's sentences: one int array of token ids per sentence.
Document = Sequence[np.ndarray]



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
    """Indices of ``doc_ids`` in the order they are used: sorted by sha256 of ``(seed, id)``.

    A deterministic shuffle (of one chunk's documents, in the build) that does not depend
    on the order the ids came in. Ties (duplicate ids) keep their input order.
    """
    keys = [hashlib.sha256(f"{seed}:{d}".encode("utf-8")).digest() for d in doc_ids]
    return sorted(range(len(doc_ids)), key=keys.__getitem__)


def chunk_random(seed: int, split: str, chunk: int, copy: int = 0) -> random.Random:
    """The generator of instance creation for one chunk: seeded by a sha256 of
    ``(seed, split, chunk)`` and, for static copies made anew (``masking.copies=reference``),
    the copy number ``copy`` >= 1; the same in any process and Python version. Copy 0 is
    the generator of the unduplicated data, so the first copy and the validation split
    are the rows a dynamic build makes."""
    tag = f"instances:{seed}:{split}:{chunk}" + (f":copy{copy}" if copy else "")
    digest = hashlib.sha256(tag.encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


@dataclass
class InstanceStats:
    """Counters of instance creation (all ints; summed over chunks into the manifest).

    documents: documents seen (with at least one token); empty_documents: documents whose
    sentences had no token. sentences: non-empty sentences seen. truncated_sentences: those
    longer than a row allows (``max_seq_length - 2`` packed, ``- 3`` in a pair);
    truncated_tokens: tokens those cuts (packing) or pair truncation dropped. sequences /
    tokens: rows and their tokens (special tokens included). Pairs only:
    one_sentence_documents (no pair of their own), is_next / not_next / in_order / swapped
    (labels written), short_targets (chunks, or with ``short_seq_rule=reference``
    documents, given a short target), truncated_pairs (pairs cut to fit),
    unpaired_sentences (lone sentences dropped, see the module docstring), random_b (pairs
    whose B comes from another document: NSP NotNext, and SOP pairs of a one-sentence
    chunk under ``sentence_labels=reference``). When static copies rerun instance
    creation (``masking.copies=reference``) the counters describe copy 0, the rows a
    dynamic build of the same config makes.
    """

    documents: int = 0
    empty_documents: int = 0
    sentences: int = 0
    truncated_sentences: int = 0
    truncated_tokens: int = 0
    sequences: int = 0
    tokens: int = 0
    one_sentence_documents: int = 0
    is_next: int = 0
    not_next: int = 0
    in_order: int = 0
    swapped: int = 0
    short_targets: int = 0
    truncated_pairs: int = 0
    unpaired_sentences: int = 0
    random_b: int = 0

    def add(self, other: "InstanceStats | Dict[str, int]") -> None:
        """Add ``other``'s counters (an InstanceStats or its ``as_dict``) to these."""
        d = other if isinstance(other, dict) else other.as_dict()
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + int(d.get(f.name, 0)))

    def as_dict(self) -> Dict[str, int]:
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}


@dataclass
class Row:
    """One training sequence.

    input_ids: int32 ``[n]``; word_starts: int8 ``[n]`` (1 = a token starting a word,
    special tokens included) or None when no word starts were given; token_type_ids: int8
    ``[n]`` for pairs, else None; label: the pair's sentence label (0/1) or None.
    source: where the text came from, for checks and debugging — per piece
    ``(document, first_sentence, end_sentence, token_lo, token_hi)``: sentences
    ``[first, end)`` of chunk document ``document``, of whose concatenation tokens
    ``[token_lo, token_hi)`` are in the row. A pair has two pieces (A then B as they appear
    in the row); a packed row one per document it touches.
    """

    input_ids: np.ndarray
    word_starts: Optional[np.ndarray]
    token_type_ids: Optional[np.ndarray] = None
    label: Optional[int] = None
    source: Tuple[Tuple[int, int, int, int, int], ...] = field(default=())


# --------------------------------------------------------------------------- packing


def pack_sentences(
    documents: Sequence[Document],
    max_seq_length: int,
    cls_id: int,
    sep_id: int,
    cross_documents: bool,
    word_starts: Optional[Sequence[Sequence[np.ndarray]]] = None,
    stats: Optional[InstanceStats] = None,
    sentence_separator: str = "none",
) -> Iterator[Row]:
    """FULL-SENTENCES (``cross_documents``) or DOC-SENTENCES rows of ``documents``.

    Args:
        documents: tokenized documents in the order to use them (module docstring).
        max_seq_length: upper bound on a row's length, special tokens included (>= 3).
        cls_id / sep_id: ids opening / closing a row (``<s>``/``</s>``, ``[CLS]``/``[SEP]``);
            ``sep_id`` also separates documents in FULL-SENTENCES.
        cross_documents: True = FULL-SENTENCES, False = DOC-SENTENCES.
        word_starts: int8 arrays parallel to ``documents`` (None: rows get no word starts).
        stats: counters, filled in while iterating.
        sentence_separator: ``none`` = ``<s> s1 s2 … </s>`` (one more ``</s>`` where a
            document ends inside a FULL-SENTENCES row); ``eos`` = fairseq's layout, every
            sentence followed by ``</s>`` (module docstring, ``_pack_eos``).
    Yields:
        ``Row`` with int32 ``input_ids`` ``[3 <= n <= max_seq_length]`` starting with
        ``cls_id`` and ending with ``sep_id`` (``eos``: ``[2 <= n]``, a row may be the lone
        separator unit ``<s> </s>`` between two documents); empty sentences are skipped.
    Raises:
        ValueError: ``max_seq_length`` < 3, or an unknown ``sentence_separator``.
    """
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length={max_seq_length} leaves no room for a token")
    if sentence_separator not in SENTENCE_SEPARATORS:
        raise ValueError(f"sentence_separator={sentence_separator!r}: use one of {SENTENCE_SEPARATORS}")
    stats = stats if stats is not None else InstanceStats()
    if sentence_separator == "eos":
        yield from _pack_eos(documents, max_seq_length, cls_id, sep_id, cross_documents, word_starts, stats)
        return
    budget = max_seq_length - 2
    special = np.asarray([1], dtype=np.int8)
    head = np.asarray([cls_id], dtype=np.int32)
    tail = np.asarray([sep_id], dtype=np.int32)
    with_starts = word_starts is not None
    pieces: List[np.ndarray] = []
    piece_starts: List[np.ndarray] = []
    source: List[List[int]] = []  # [doc, first, end, 0, tokens] per document touched
    used = 0
    boundary = False  # a document ended inside the current row

    def emit() -> Row:
        ids = np.concatenate([head, *pieces, tail])
        ws = np.concatenate([special, *piece_starts, special]) if with_starts else None
        stats.sequences += 1
        stats.tokens += int(ids.size)
        return Row(ids, ws, source=tuple(tuple(s) for s in source))

    for d, sentences in enumerate(documents):
        if not any(len(s) for s in sentences):
            stats.empty_documents += 1
            continue
        stats.documents += 1
        if not cross_documents and pieces:
            yield emit()
            pieces, piece_starts, source, used = [], [], [], 0
        for k, sent in enumerate(sentences):
            n = int(len(sent))
            if n == 0:
                continue
            stats.sentences += 1
            ws = word_starts[d][k] if with_starts else None
            if n > budget:
                stats.truncated_sentences += 1
                stats.truncated_tokens += n - budget
                sent, n = sent[:budget], budget
                ws = ws[:budget] if with_starts else None
            extra = 1 if (boundary and pieces) else 0
            if pieces and used + extra + n > budget:
                yield emit()
                pieces, piece_starts, source, used, extra = [], [], [], 0, 0
            if extra:
                pieces.append(tail)
                if with_starts:
                    piece_starts.append(special)
                used += 1
            pieces.append(np.asarray(sent, dtype=np.int32))
            if with_starts:
                piece_starts.append(np.asarray(ws, dtype=np.int8))
            if source and source[-1][0] == d and source[-1][2] == k:
                source[-1][2] = k + 1
                source[-1][4] += n
            else:
                source.append([d, k, k + 1, 0, n])
            used += n
            boundary = False
        boundary = True
    if pieces:
        yield emit()


def _pack_eos(documents, max_seq_length, cls_id, sep_id, cross_documents, word_starts, stats) -> Iterator[Row]:
    """Rows of ``pack_sentences(sentence_separator="eos")``: fairseq's
    ``TokenBlockDataset(break_mode="complete")`` over units "sentence + ``</s>``" (and, for
    FULL-SENTENCES, one ``</s>`` unit between documents), blocks of at most
    ``max_seq_length - 1`` tokens, each prepended with ``<s>``. A unit joins the current
    block if it fits or the block is empty, as fairseq's rule; unlike fairseq (which lets
    an over-long sentence exceed the block and its trainer then skips the sample), a
    sentence longer than ``max_seq_length - 2`` tokens keeps its first tokens (counted in
    ``truncated_sentences``/``truncated_tokens``). DOC-SENTENCES closes the block at every
    document end and has no separator unit."""
    block = max_seq_length - 1
    special = np.asarray([1], dtype=np.int8)
    head = np.asarray([cls_id], dtype=np.int32)
    tail = np.asarray([sep_id], dtype=np.int32)
    with_starts = word_starts is not None
    pieces: List[np.ndarray] = [head]
    piece_starts: List[np.ndarray] = [special]
    source: List[List[int]] = []
    used = 0

    def emit() -> Row:
        ids = np.concatenate(pieces)
        stats.sequences += 1
        stats.tokens += int(ids.size)
        return Row(ids, np.concatenate(piece_starts) if with_starts else None, source=tuple(tuple(x) for x in source))

    def add(ids: np.ndarray, starts: Optional[np.ndarray]) -> Iterator[Row]:
        nonlocal pieces, piece_starts, source, used
        if used and used + ids.size > block:
            yield emit()
            pieces, piece_starts, source, used = [head], [special], [], 0
        pieces.append(ids)
        if with_starts:
            piece_starts.append(starts)
        used += int(ids.size)

    seen_document = False
    for d, sentences in enumerate(documents):
        if not any(len(x) for x in sentences):
            stats.empty_documents += 1
            continue
        stats.documents += 1
        if seen_document:
            if cross_documents:  # fairseq's blank line between documents: a lone </s>
                yield from add(tail, special)
            elif used:
                yield emit()
                pieces, piece_starts, source, used = [head], [special], [], 0
        seen_document = True
        for k, sent in enumerate(sentences):
            n = int(len(sent))
            if n == 0:
                continue
            stats.sentences += 1
            ws = np.asarray(word_starts[d][k], dtype=np.int8) if with_starts else None
            if n > block - 1:
                stats.truncated_sentences += 1
                stats.truncated_tokens += n - (block - 1)
                n = block - 1
            unit = np.concatenate([np.asarray(sent[:n], dtype=np.int32), tail])
            yield from add(unit, np.concatenate([ws[:n], special]) if with_starts else None)
            if source and source[-1][0] == d and source[-1][2] == k:
                source[-1][2] = k + 1
                source[-1][4] += n
            else:
                source.append([d, k, k + 1, 0, n])
    if used:
        yield emit()


def pack_full_sentences(
    documents: Sequence[Document], max_seq_length: int, cls_id: int, sep_id: int, stats: Optional[InstanceStats] = None
) -> Iterator[np.ndarray]:
    """FULL-SENTENCES rows of ``documents`` as int32 ``[n]`` id arrays only (see
    ``pack_sentences`` with ``cross_documents=True``)."""
    for row in pack_sentences(documents, max_seq_length, cls_id, sep_id, True, None, stats):
        yield row.input_ids


# --------------------------------------------------------------------------- pairs


def create_pairs(
    documents: Sequence[Document],
    max_seq_length: int,
    cls_id: int,
    sep_id: int,
    objective: str,
    rng: random.Random,
    sentence_pairs: bool = False,
    short_seq_prob: float = 0.1,
    word_starts: Optional[Sequence[Sequence[np.ndarray]]] = None,
    stats: Optional[InstanceStats] = None,
    short_seq_rule: str = "per_chunk",
    sentence_labels: str = "balanced",
) -> Iterator[Row]:
    """SEGMENT-PAIR (or, with ``sentence_pairs``, SENTENCE-PAIR) rows for NSP or SOP.

    Args:
        documents: one chunk's tokenized documents, in the order to use them.
        max_seq_length: a row's length bound, ``[CLS]``/``[SEP]``/``[SEP]`` included (>= 5).
        cls_id / sep_id: the tokenizer's classification and separator ids.
        objective: ``nsp`` (B follows A, or comes from another document) or ``sop`` (A and
            B consecutive, possibly swapped).
        rng: the chunk's generator (``chunk_random``); every draw comes from it.
        sentence_pairs: A and B are single sentences (SENTENCE-PAIR).
        short_seq_prob: chance of a short target per chunk (SEGMENT-PAIR only).
        word_starts: int8 arrays parallel to ``documents`` (None: rows get none).
        stats: counters, filled in while iterating.
        short_seq_rule / sentence_labels: ``DataConfig`` keys of the same names; both
            ``reference`` = ``reference_pairs`` (SEGMENT-PAIR only); ``per_chunk`` with
            ``balanced`` = the rules of the module docstring. Other mixes are refused.
    Yields:
        ``Row`` with ``token_type_ids`` and ``label`` (module docstring for semantics);
        ``source`` holds A's and B's pieces in row order.
    Raises:
        ValueError: ``objective`` not nsp/sop, ``max_seq_length`` < 5, NSP with fewer
            than two non-empty documents (no other document to draw NotNext from), or a
            mix of rules this function does not make.
    """
    if short_seq_rule not in SHORT_SEQ_RULES or sentence_labels not in SENTENCE_LABEL_RULES:
        raise ValueError(f"short_seq_rule={short_seq_rule!r} / sentence_labels={sentence_labels!r}: use one of "
                         f"{SHORT_SEQ_RULES} / {SENTENCE_LABEL_RULES}")
    if sentence_labels == "reference":
        if sentence_pairs:
            raise ValueError("sentence_labels=reference is BERT's and ALBERT's segment_pair rule; sentence_pair uses balanced")
        yield from reference_pairs(
            documents, max_seq_length, cls_id, sep_id, objective, rng, short_seq_prob, word_starts, stats, short_seq_rule
        )
        return
    stats = stats if stats is not None else InstanceStats()
    max_tokens, sizes, kept, usable = _pair_layout(documents, objective, max_seq_length)
    position = {d: i for i, d in enumerate(usable)}
    pair = _PairMaker(documents, word_starts, max_tokens, cls_id, sep_id, rng, stats)
    for d, ks in enumerate(kept):
        if not ks:
            stats.empty_documents += 1
            continue
        stats.documents += 1
        stats.sentences += len(ks)
        stats.truncated_sentences += sum(1 for k in ks if sizes[d][k] > max_tokens)
        if len(ks) < 2:
            stats.one_sentence_documents += 1
            continue
        n = len(ks)
        i = 0
        per_document = short_seq_rule == "reference" and not sentence_pairs
        if per_document:
            target = _draw_target(rng, short_seq_prob, max_tokens, stats)
        while i < n:
            if sentence_pairs:
                target = max_tokens
            elif not per_document:
                target = _draw_target(rng, short_seq_prob, max_tokens, stats)
            j = _chunk_end(sizes[d], ks, i, target, sentence_pairs)
            if j is None:  # a lone last sentence (or one put back after a NotNext): nothing to pair it with
                stats.unpaired_sentences += 1
                break
            m = j - i
            a_end = 1 if m == 2 else rng.randint(1, m - 1)
            a = (d, ks[i], ks[i + a_end - 1] + 1)
            if objective == "sop":
                b = (d, ks[i + a_end - 1] + 1, ks[j - 1] + 1)
                swapped = rng.random() < 0.5
                yield pair.make(b, a, 1) if swapped else pair.make(a, b, 0)
                stats.swapped += int(swapped)
                stats.in_order += int(not swapped)
                i = j
                continue
            if rng.random() < 0.5:
                # NotNext: B from another document of the chunk; unused sentences go back.
                k = rng.randrange(len(usable) - 1)
                other = usable[k + 1] if k >= position[d] else usable[k]
                oks = kept[other]
                start = rng.randrange(len(oks))
                end = start + 1 if sentence_pairs else _fill_end(sizes[other], oks, start, target - pair.length(a))
                yield pair.make(a, (other, oks[start], oks[end - 1] + 1), 1)
                stats.not_next += 1
                stats.random_b += 1
                i += a_end
            else:
                yield pair.make(a, (d, ks[i + a_end - 1] + 1, ks[j - 1] + 1), 0)
                stats.is_next += 1
                i = j


def _pair_layout(documents: Sequence[Document], objective: str, max_seq_length: int):
    """What both pair rules start from: ``max_tokens`` (the length bound less [CLS] and two
    [SEP]), each document's sentence sizes, each document's non-empty sentence indices and
    the indices of documents that have any. Raises ValueError as ``create_pairs``."""
    if objective not in LABEL_COLUMNS:
        raise ValueError(f"objective={objective!r} is not nsp or sop")
    if max_seq_length < 5:
        raise ValueError(f"max_seq_length={max_seq_length} leaves no room for a pair")
    sizes = [[int(len(s)) for s in doc] for doc in documents]
    kept = [[k for k, n in enumerate(sz) if n] for sz in sizes]
    usable = [d for d, ks in enumerate(kept) if ks]
    if objective == "nsp" and len(usable) < 2:
        raise ValueError(f"NSP needs at least two non-empty documents to draw NotNext from, got {len(usable)}")
    return max_seq_length - 3, sizes, kept, usable


def _fill_end(sizes: Sequence[int], ks: Sequence[int], start: int, want: int) -> int:
    """End (exclusive, an index into ``ks``) of the sentences from ``start`` on that first
    reach ``want`` tokens, or of the document: a random B's span (BERT's
    ``create_instances_from_document``: "random_document" sentences until target_b_length)."""
    end, got = start, 0
    while end < len(ks):
        got += sizes[ks[end]]
        end += 1
        if got >= want:
            break
    return end


def _chunk_end(sizes: Sequence[int], ks: Sequence[int], i: int, target: int, sentence_pairs: bool) -> Optional[int]:
    """End (exclusive) of the chunk starting at sentence ``i`` of ``ks``: two sentences for
    SENTENCE-PAIR, else sentences until ``target`` tokens (at least two), taking a single
    sentence left after it along. None when fewer than two sentences remain."""
    n = len(ks)
    if sentence_pairs:
        return i + 2 if i + 2 <= n else None
    j, length = i, 0
    while j < n:
        length += sizes[ks[j]]
        j += 1
        if length >= target and j - i >= 2:
            break
    if n - j == 1:
        j = n  # do not leave a single sentence behind
    return j if j - i >= 2 else None


def reference_pairs(
    documents: Sequence[Document],
    max_seq_length: int,
    cls_id: int,
    sep_id: int,
    objective: str,
    rng: random.Random,
    short_seq_prob: float = 0.1,
    word_starts: Optional[Sequence[Sequence[np.ndarray]]] = None,
    stats: Optional[InstanceStats] = None,
    short_seq_rule: str = "reference",
) -> Iterator[Row]:
    """SEGMENT-PAIR rows by the reference rules (``short_seq_rule=reference``,
    ``sentence_labels=reference``): ``create_instances_from_document`` of
    google-research/bert's ``create_pretraining_data.py`` for NSP (Devlin et al. 2019,
    §3.1, appendix A.2) and of google-research/albert's for SOP (Lan et al. 2020, §3.2,
    its default ``random_next_sentence=False``), with the chunk's documents as the
    reference's ``all_documents``.

    Per document (empty sentences and documents dropped, as the reference reads them):
    ``target_seq_length`` is ``max_seq_length - 3``, or with probability
    ``short_seq_prob`` a uniform length in ``[2, max_seq_length - 3]``, drawn ONCE and kept
    for all of the document's pairs. Sentences gather into a chunk until its length
    reaches the target or the document ends; A = the first ``a_end`` sentences (uniform in
    ``1..m-1``; 1 if the chunk has one sentence). B is taken from a random document —
    drawn from all documents, up to 10 tries to avoid this one — starting at a random
    sentence, until B reaches ``target - len(A)``, and the chunk's unused sentences are
    put back, when

    - NSP: the chunk has one sentence (so a one-sentence chunk is always NotNext, and a
      one-sentence document gives a pair), or with probability 0.5 otherwise; label 1
      (NotNext), else B = the rest of the chunk, label 0 (IsNext).
    - SOP: the chunk has one sentence; label 1. Otherwise B = the rest of the chunk,
      and with probability 0.5 A and B are swapped (label 1), else kept (label 0).

    The pair is cut by ``truncate_seq_pair`` (``_PairMaker.make``). Every draw is the
    reference's, in its order, from ``rng``. With ``short_seq_rule=per_chunk`` the target
    is drawn anew for every chunk instead (the variant). Args, yields and raises as
    ``create_pairs`` (NSP needs two non-empty documents).
    """
    stats = stats if stats is not None else InstanceStats()
    max_tokens, sizes, kept, usable = _pair_layout(documents, objective, max_seq_length)
    pair = _PairMaker(documents, word_starts, max_tokens, cls_id, sep_id, rng, stats)
    stats.empty_documents += len(documents) - len(usable)
    for pos, d in enumerate(usable):
        ks = kept[d]
        n = len(ks)
        stats.documents += 1
        stats.sentences += n
        stats.truncated_sentences += sum(1 for k in ks if sizes[d][k] > max_tokens)
        stats.one_sentence_documents += int(n == 1)
        per_document = short_seq_rule == "reference"
        if per_document:
            target = _draw_target(rng, short_seq_prob, max_tokens, stats)
        first, length, i = 0, 0, 0  # the chunk is sentences [first, i] of the document
        while i < n:
            if i == first and not per_document:
                target = _draw_target(rng, short_seq_prob, max_tokens, stats)
            length += sizes[d][ks[i]]
            if i == n - 1 or length >= target:
                m = i + 1 - first
                a_end = rng.randint(1, m - 1) if m >= 2 else 1
                a = (d, ks[first], ks[first + a_end - 1] + 1)
                rest = (d, ks[first + a_end - 1] + 1, ks[i] + 1)
                if m == 1 or (objective == "nsp" and rng.random() < 0.5):
                    for _ in range(10):
                        other = rng.randint(0, len(usable) - 1)
                        if other != pos:
                            break
                    oks = kept[usable[other]]
                    osz = sizes[usable[other]]
                    start = rng.randint(0, len(oks) - 1)
                    end = _fill_end(osz, oks, start, target - pair.length(a))
                    yield pair.make(a, (usable[other], oks[start], oks[end - 1] + 1), 1)
                    stats.random_b += 1
                    if objective == "nsp":
                        stats.not_next += 1
                    else:
                        stats.swapped += 1
                    i -= m - a_end  # the unused sentences go back to the stream
                elif objective == "sop" and rng.random() < 0.5:
                    yield pair.make(rest, a, 1)
                    stats.swapped += 1
                else:
                    yield pair.make(a, rest, 0)
                    if objective == "nsp":
                        stats.is_next += 1
                    else:
                        stats.in_order += 1
                first, length = i + 1, 0
            i += 1


def _draw_target(rng: random.Random, short_seq_prob: float, max_tokens: int, stats: InstanceStats) -> int:
    """BERT's ``target_seq_length``: ``max_tokens``, or with probability ``short_seq_prob``
    a uniform length in ``[2, max_tokens]`` (the reference's two draws, in its order)."""
    if rng.random() < short_seq_prob:
        stats.short_targets += 1
        return rng.randint(2, max_tokens)
    return max_tokens


class _PairMaker:
    """Assembles, truncates and counts pair rows for ``create_pairs``."""

    def __init__(self, documents, word_starts, max_tokens, cls_id, sep_id, rng, stats) -> None:
        self.documents, self.word_starts = documents, word_starts
        self.max_tokens, self.cls_id, self.sep_id = max_tokens, cls_id, sep_id
        self.rng, self.stats = rng, stats

    def length(self, seg: Tuple[int, int, int]) -> int:
        d, first, end = seg
        return sum(int(len(s)) for s in self.documents[d][first:end])

    def _tokens(self, seg: Tuple[int, int, int]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        d, first, end = seg
        ids = np.concatenate([np.asarray(s, dtype=np.int32) for s in self.documents[d][first:end]])
        ws = None
        if self.word_starts is not None:
            ws = np.concatenate([np.asarray(s, dtype=np.int8) for s in self.word_starts[d][first:end]])
        return ids, ws

    def make(self, a: Tuple[int, int, int], b: Tuple[int, int, int], label: int) -> Row:
        """The row ``[CLS] A [SEP] B [SEP]`` of segments ``a``/``b`` (doc, first, end)."""
        a_ids, a_ws = self._tokens(a)
        b_ids, b_ws = self._tokens(b)
        # BERT's truncate_seq_pair: one token at a time from the longer side (B on a
        # tie), from its front or back with equal chance.
        a_lo, a_hi, b_lo, b_hi = 0, a_ids.size, 0, b_ids.size
        excess = a_hi + b_hi - self.max_tokens
        if excess > 0:
            self.stats.truncated_pairs += 1
            self.stats.truncated_tokens += excess
            rand = self.rng.random
            for _ in range(excess):
                if a_hi - a_lo > b_hi - b_lo:
                    if rand() < 0.5:
                        a_lo += 1
                    else:
                        a_hi -= 1
                elif rand() < 0.5:
                    b_lo += 1
                else:
                    b_hi -= 1
        la, lb = a_hi - a_lo, b_hi - b_lo
        n = la + lb + 3
        ids = np.empty(n, dtype=np.int32)
        ids[0] = self.cls_id
        ids[1 : 1 + la] = a_ids[a_lo:a_hi]
        ids[1 + la] = self.sep_id
        ids[2 + la : 2 + la + lb] = b_ids[b_lo:b_hi]
        ids[n - 1] = self.sep_id
        types = np.zeros(n, dtype=np.int8)
        types[2 + la :] = 1
        ws = None
        if a_ws is not None:
            ws = np.ones(n, dtype=np.int8)
            ws[1 : 1 + la] = a_ws[a_lo:a_hi]
            ws[2 + la : 2 + la + lb] = b_ws[b_lo:b_hi]
        self.stats.sequences += 1
        self.stats.tokens += n
        return Row(ids, ws, types, label, ((*a, a_lo, a_hi), (*b, b_lo, b_hi)))


# --------------------------------------------------------------------------- dispatch


def make_rows(
    format: str,
    sentence_objective: str,
    documents: Sequence[Document],
    max_seq_length: int,
    cls_id: int,
    sep_id: int,
    rng: random.Random,
    short_seq_prob: float = 0.1,
    word_starts: Optional[Sequence[Sequence[np.ndarray]]] = None,
    stats: Optional[InstanceStats] = None,
    short_seq_rule: str = "per_chunk",
    sentence_labels: str = "balanced",
    sentence_separator: str = "none",
) -> Iterator[Row]:
    """Rows of one chunk in ``format`` (``DataConfig.format``; pairs with
    ``sentence_objective`` nsp or sop and the rules ``short_seq_rule`` /
    ``sentence_labels``; packed rows with ``sentence_separator``). See ``pack_sentences``
    and ``create_pairs``. Raises ValueError for an unknown format, or a
    ``sentence_separator`` other than ``none`` for pairs (the config check refuses both first)."""
    if format in PACKED_FORMATS:
        return pack_sentences(documents, max_seq_length, cls_id, sep_id, format == "full_sentences", word_starts, stats,
                              sentence_separator)
    if sentence_separator != "none":
        raise ValueError(f"sentence_separator={sentence_separator!r} applies to the packed formats {PACKED_FORMATS} only")
    if format in PAIR_FORMATS:
        return create_pairs(
            documents, max_seq_length, cls_id, sep_id, sentence_objective, rng,
            sentence_pairs=format == "sentence_pair", short_seq_prob=short_seq_prob, word_starts=word_starts, stats=stats,
            short_seq_rule=short_seq_rule, sentence_labels=sentence_labels,
        )
    raise ValueError(f"format={format!r} is not one of: {', '.join(PACKED_FORMATS + PAIR_FORMATS)}")
