"""Word boundaries of token sequences, for whole-word and n-gram masking.

A word is what the tokenizer's pre-tokenizer cuts the normalized text into, read from
``Encoding.word_ids`` — never from token spellings such as ``##`` — so one rule serves all
three tokenizers:

- ``wordpiece``: ``BertPreTokenizer`` words: whitespace-separated, every punctuation
  character a word of its own (as BERT's ``BasicTokenizer``, which its whole-word masking
  release used: "don't" is the three words ``don ' t``);
- ``bpe``: byte-level words, each including its leading space (``Ġword``); a
  contraction or digit run split off by GPT-2's regex is its own word;
- ``unigram``: ``Metaspace`` words, starting at ``▁`` (punctuation inside a ``▁`` word
  stays in the word).

That is ``word_boundaries=pretokenizer``. ``word_boundaries=reference`` (the default of
``configs/data/bert.yaml`` and ``albert.yaml``) decides from each token's spelling, as the
reference code does (``reference_starts``): ALBERT's ``_is_start_piece_sp`` for unigram
(google-research/albert ``create_pretraining_data.py``: a piece starts a word if it starts
with ``▁`` or ``<``, is one punctuation character, or holds a character outside a-z and
ASCII punctuation — a digit, an apostrophe, a non-English letter), BERT's
``_is_start_piece_bert`` for wordpiece (no ``##``: the same words as the pre-tokenizer's),
fairseq's ``get_whole_word_mask`` for bpe (the piece begins with a space, ``Ġ``:
punctuation after a word stays in that word). On WikiText-2 the unigram rule gives 1.27
tokens per word where the ``Metaspace`` words give 1.57 (bench/fidelity.md).

Shard column ``word_starts`` (list<int8>, aligned with ``input_ids``): 1 where a token
begins a word, else 0. Special tokens (``[CLS]``, ``[SEP]``, document separators) are words
of their own and are never masked; ``masking.Masker`` also forces a word start at and
after every special token, so a pair truncated from the front (its first token a word's
continuation) still masks consistently.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from data_prep.tokenizer import TokenizerInfo


def word_starts_from_word_ids(word_ids: Sequence[Optional[int]]) -> np.ndarray:
    """int8 ``[n]``: 1 where the token's word index differs from the previous token's.

    ``word_ids`` is ``Encoding.word_ids``: the pre-tokenizer word of each token, None for a
    special token (each None is a word of its own). The first token always starts a word.
    """
    n = len(word_ids)
    if n == 0:
        return np.zeros(0, dtype=np.int8)
    if None in word_ids:
        # None (special tokens) → -1 - position: never equal to a neighbour, so a word alone.
        w = np.fromiter((-1 - i if x is None else x for i, x in enumerate(word_ids)), dtype=np.int64, count=n)
    else:  # the pipeline's case (no special tokens added): one C-level conversion
        w = np.array(word_ids, dtype=np.int64)
    starts = np.empty(n, dtype=np.int8)
    starts[0] = 1
    starts[1:] = w[1:] != w[:-1]
    return starts


# ALBERT's _is_start_piece_sp: ASCII punctuation (its set, which lacks the apostrophe)
# and the letters a-z are the characters that may continue a word.
_ALBERT_PUNCTUATION = frozenset('!"#$%&()*+,-./:;?@[\\]^_`{|}~')
_ALBERT_CONTINUING = _ALBERT_PUNCTUATION | frozenset("abcdefghijklmnopqrstuvwxyz")


def is_start_piece(kind: str, piece: str) -> bool:
    """True if token ``piece`` (its vocabulary spelling) begins a word by the reference
    rule of tokenizer ``kind`` (module docstring): ALBERT's ``_is_start_piece_sp``
    (unigram), BERT's ``_is_start_piece_bert`` (wordpiece), fairseq's ``Ġ`` rule (bpe).
    Raises ValueError for an unknown kind."""
    if kind == "unigram":
        return (
            piece.startswith("▁")
            or piece.startswith("<")
            or piece in _ALBERT_PUNCTUATION
            or not all(c.lower() in _ALBERT_CONTINUING for c in piece)
        )
    if kind == "wordpiece":
        return not piece.startswith("##")
    if kind == "bpe":
        return piece.startswith("Ġ")
    raise ValueError(f"no reference word rule for tokenizer kind {kind!r}")


def reference_starts(info: TokenizerInfo) -> np.ndarray:
    """bool ``[vocab_size]``: ``is_start_piece(info.kind, token)`` of every id (special
    tokens True)."""
    table = np.ones(info.vocab_size, dtype=bool)
    for token, i in info.tokenizer.get_vocab(with_added_tokens=True).items():
        table[i] = is_start_piece(info.kind, token)
    table[info.special_ids] = True
    return table


def encode_with_words(
    info: TokenizerInfo, texts: List[str], rule: str = "pretokenizer", table: Optional[np.ndarray] = None
) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Encode ``texts`` (no special tokens added) with their word starts.

    Args:
        info: the loaded tokenizer.
        texts: sentences (or any text); encoded in one ``encode_batch`` call (Rust threads).
        rule: ``pretokenizer`` (``Encoding.word_ids``) or ``reference`` (token spellings,
            ``is_start_piece``); ``DataConfig.word_boundaries``.
        table: ``reference_starts(info)``, to spare recomputing it per call (rule
            ``reference`` only).
    Returns:
        Per text ``(ids, word_starts)``: int32 ``[n]`` token ids and int8 ``[n]`` (1 where a
        token begins a word, the first token always). Concatenating the pairs of consecutive
        sentences keeps the words right: every sentence starts with a new word.
    """
    out = []
    if rule == "reference":
        table = reference_starts(info) if table is None else table
        for e in info.tokenizer.encode_batch(texts, add_special_tokens=False):
            ids = np.asarray(e.ids, dtype=np.int32)
            starts = table[ids].astype(np.int8)
            if starts.size:
                starts[0] = 1  # a sentence begins a word
            out.append((ids, starts))
        return out
    if rule != "pretokenizer":
        raise ValueError(f"word rule {rule!r} is not reference or pretokenizer")
    for e in info.tokenizer.encode_batch(texts, add_special_tokens=False):
        out.append((np.asarray(e.ids, dtype=np.int32), word_starts_from_word_ids(e.word_ids)))
    return out


def word_index(word_starts: np.ndarray) -> np.ndarray:
    """int64 ``[n]``: the word number of every token (0 for the first word), from int8/bool
    ``word_starts`` ``[n]``. A sequence that begins mid-word counts that part as word 0."""
    ws = np.asarray(word_starts).astype(bool)
    if ws.size == 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.cumsum(ws, dtype=np.int64) - 1
    return idx if ws[0] else idx + 1
