"""Masked-LM corruption, shared by static masking (at data-prep time) and dynamic masking
(in the training collator), so both arms of the RoBERTa §4.1 ablation use one rule.

How many: ``min(max_predictions_per_seq, max(1, round(mlm_probability × n)))`` of the
``n`` maskable (non-special) tokens of a sequence, as in BERT's reference
``create_pretraining_data`` (Devlin et al. 2019, §3.1 "Task #1: Masked LM", appendix A.1).
The reference multiplies by the length *including* ``[CLS]``/``[SEP]``; counting only the
maskable tokens keeps the predicted share of text at ``mlm_probability`` for every format
(≤ 3 special tokens × 0.15 change the rounding rarely). ``round`` is Python's (half to
even), as in the reference under Python 3.

Which (``masking.unit``):

- ``token`` (BERT §3.1): that many tokens uniformly without replacement; or, given
  ``token_weights`` (``data.masking.smoothing`` > 0, DistilBERT's recipe,
  ``data_prep.token_counts``), without replacement with probability proportional to the
  weight of each token's id: Hugging Face's ``examples/research_projects/distillation``
  (``train.py`` ``main``: ``token_probs = max(counts, 1) ** -mlm_smoothing``, special
  tokens 0; ``distiller.py`` ``Distiller.prepare_batch_mlm``: ``torch.multinomial`` without
  replacement), after XLM. One difference: the reference draws
  ``ceil(mlm_mask_prop × tokens of the batch)`` positions over the whole batch, so a
  sequence of rare tokens gets more than its share of predictions; here each sequence
  keeps its own budget and only the choice within it is weighted, so a mask still depends
  only on (seed, epoch, row) and not on which sequences share its batch.
- ``whole_word`` (BERT's whole-word-masking release, README of google-research/bert,
  2019-05-31): words in random order; a word is taken whole if it still fits the budget,
  skipped if it would exceed it (the reference's ``continue``), until the budget is met —
  so a sequence may end with slightly fewer predictions than the budget, never more.
- ``ngram`` (ALBERT, Lan et al. 2020, §4.1, after SpanBERT, Joshi et al. 2019): "n-gram
  masking … with the length of each n-gram mask selected randomly. The probability for
  the length n is given by p(n) = (1/n) / Σ_{k=1}^{N} 1/k", N = ``max_ngram`` = 3. Our
  reading of ALBERT's ``create_pretraining_data.py`` (``do_whole_word_mask`` True by
  default, ``ngram`` 3, ``favor_shorter_ngram`` True): an n-gram is n consecutive whole
  WORDS; every word is a candidate start, visited in random order; n is drawn from p(n)
  and cut where the words run out; if the span exceeds the remaining budget, shorter
  n-grams from the same start are tried down to one word, else the start is skipped; a
  span overlapping an earlier one is skipped. One deliberate difference: ALBERT's
  candidates skip ``[CLS]``/``[SEP]`` and so let a span run from the end of segment A into
  segment B; here a span stops at a special token, so it is always contiguous text.
  (ALBERT draws n from NumPy's global, unseeded generator; here from the sequence's rng.)

Replacement: of the chosen tokens, each one independently is replaced by the mask token
with probability ``mask_replace_prob`` (0.8), by a random ordinary token with probability
``random_replace_prob`` (0.1), else kept; decided per TOKEN even when whole words or
n-grams are chosen, as both references do (a masked word may show some of its pieces).
``labels`` hold the original id at chosen positions and -100 elsewhere.

Words come from the ``word_starts`` shard column (``data_prep.words``); special tokens are
words of their own and never chosen.

Randomness: every sequence gets its own generator from ``sequence_rng(seed, stream, round,
index)``, so a mask depends only on (seed, epoch or copy, sample index) — never on batch
composition, worker count or how far a run got before it was resumed. The masker draws
from nothing else. The ``token`` unit draws exactly what it drew before units existed, so
earlier token-masked builds keep their bytes.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from common.errors import UserError
from common.schema import IGNORE_INDEX

UNITS = ("token", "whole_word", "ngram")

# Streams keep the static copies, dynamic epochs and the validation mask from ever sharing
# a generator even when their seeds coincide.
STREAM_STATIC = 1
STREAM_DYNAMIC = 2
STREAM_VALIDATION = 3


def sequence_rng(seed: int, stream: int, round_: int, index: int) -> np.random.Generator:
    """Generator for one sequence: ``round_`` is the epoch (dynamic) or copy (static),
    ``index`` the sequence's row index in its split. PCG64 seeded through SeedSequence."""
    return np.random.default_rng([seed, stream, round_, index])


def ngram_probabilities(max_ngram: int) -> np.ndarray:
    """float64 ``[max_ngram]``: p(n) ∝ 1/n for n = 1..max_ngram (ALBERT §4.1)."""
    p = 1.0 / np.arange(1, max_ngram + 1, dtype=np.float64)
    return p / p.sum()


class Masker:
    """Applies the masked-LM corruption rule (module docstring) to one sequence at a time.

    Args:
        vocab_size: size of the tokenizer's vocabulary (ids are in ``[0, vocab_size)``).
        mask_token_id: id of ``[MASK]`` / ``<mask>``.
        special_ids: ids never chosen for prediction and never drawn as random
            replacements (CLS/SEP/PAD/MASK/UNK and the like).
        mlm_probability, mask_replace_prob, random_replace_prob, unit, max_ngram,
            max_predictions_per_seq: see ``data_prep.config.MaskingConfig``.
        token_weights: float64 ``[vocab_size]``, >= 0, the unnormalised probability of
            choosing a token with that id (``data_prep.token_counts.smoothed_weights``);
            None = uniform. Unit ``token`` only.
    Raises:
        UserError: unknown unit, ``max_ngram`` < 1 or ``max_predictions_per_seq`` < 1,
            ``token_weights`` with another unit, of another length or negative.
    """

    def __init__(
        self,
        vocab_size: int,
        mask_token_id: int,
        special_ids: np.ndarray,
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        unit: str = "token",
        max_ngram: int = 3,
        max_predictions_per_seq: Optional[int] = None,
        token_weights: Optional[np.ndarray] = None,
    ) -> None:
        if unit not in UNITS:
            raise UserError(f"masking.unit={unit!r} is not one of: {', '.join(UNITS)}")
        if max_ngram < 1:
            raise UserError(f"masking.max_ngram={max_ngram} must be >= 1")
        if max_predictions_per_seq is not None and max_predictions_per_seq < 1:
            raise UserError(f"masking.max_predictions_per_seq={max_predictions_per_seq} must be >= 1 (or null)")
        self.vocab_size = int(vocab_size)
        self.mask_token_id = int(mask_token_id)
        self.mlm_probability = float(mlm_probability)
        self.mask_replace_prob = float(mask_replace_prob)
        self.random_replace_prob = float(random_replace_prob)
        self.unit = unit
        self.max_ngram = int(max_ngram)
        self.max_predictions_per_seq = None if max_predictions_per_seq is None else int(max_predictions_per_seq)
        self._ngram_p = ngram_probabilities(self.max_ngram)
        self.token_weights = None
        if token_weights is not None:
            w = np.asarray(token_weights, dtype=np.float64)
            if unit != "token":
                raise UserError(f"masking.smoothing weights the choice of single tokens; masking.unit={unit} needs "
                                "masking.smoothing=0")
            if w.shape != (self.vocab_size,) or not np.isfinite(w).all() or (w < 0).any():
                raise UserError(f"token weights must be {self.vocab_size} finite values >= 0, got shape {w.shape}")
            self.token_weights = w
        special = np.zeros(self.vocab_size, dtype=bool)
        special[np.asarray(special_ids, dtype=np.int64)] = True
        self._is_special = special
        # Random replacements come from ordinary tokens only: a random [CLS] or [PAD]
        # mid-sequence would teach the model nothing about language.
        self._random_pool = np.flatnonzero(~special).astype(np.int32)

    @classmethod
    def from_config(cls, masking_cfg, vocab_size: int, mask_token_id: int, special_ids,
                    token_weights: Optional[np.ndarray] = None) -> "Masker":
        """Build from a ``data_prep.config.MaskingConfig`` (a config without the unit keys,
        e.g. read from an older manifest, means token masking without a cap) and the
        trainer's ``token_weights`` (``data_prep.token_counts.masking_weights``; None at
        data-prep time, where static and validation masks stay uniform)."""
        return cls(
            vocab_size,
            mask_token_id,
            np.asarray(special_ids),
            masking_cfg.mlm_probability,
            masking_cfg.mask_replace_prob,
            masking_cfg.random_replace_prob,
            unit=getattr(masking_cfg, "unit", "token"),
            max_ngram=getattr(masking_cfg, "max_ngram", 3),
            max_predictions_per_seq=getattr(masking_cfg, "max_predictions_per_seq", None),
            token_weights=token_weights,
        )

    @property
    def needs_word_starts(self) -> bool:
        """True if ``__call__`` needs ``word_starts`` (unit ``whole_word`` or ``ngram``)."""
        return self.unit != "token"

    def maskable(self, input_ids: np.ndarray) -> np.ndarray:
        """Bool ``[seq]``: positions that may be chosen (not special tokens)."""
        return ~self._is_special[input_ids]

    def num_predictions(self, n_maskable: int) -> int:
        """Prediction budget of a sequence with ``n_maskable`` maskable tokens (0 if none)."""
        if n_maskable <= 0:
            return 0
        n = max(1, int(round(n_maskable * self.mlm_probability)))
        cap = self.max_predictions_per_seq
        return n if cap is None else min(cap, n)

    def __call__(
        self, input_ids: np.ndarray, rng: np.random.Generator, word_starts: Optional[np.ndarray] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Corrupt one sequence.

        Args:
            input_ids: int ``[seq]`` original token ids.
            rng: the sequence's generator (``sequence_rng``).
            word_starts: int8/bool ``[seq]``, 1 where a token begins a word (the
                ``word_starts`` shard column); required for units ``whole_word``/``ngram``,
                ignored for ``token``.
        Returns:
            ``(masked_ids, labels)``, both int32 ``[seq]``; labels are -100 where nothing
            is predicted.
        Raises:
            UserError: unit ``whole_word``/``ngram`` without ``word_starts``, or
                ``word_starts`` of another length.
        """
        ids = np.asarray(input_ids, dtype=np.int32)
        chosen, _ = self.select(ids, rng, word_starts)
        out = ids.copy()
        labels = np.full(ids.shape, IGNORE_INDEX, dtype=np.int32)
        n = chosen.size
        if n == 0:
            return out, labels
        labels[chosen] = ids[chosen]
        u = rng.random(n)
        to_mask = chosen[u < self.mask_replace_prob]
        to_random = chosen[(u >= self.mask_replace_prob) & (u < self.mask_replace_prob + self.random_replace_prob)]
        out[to_mask] = self.mask_token_id
        if to_random.size:
            out[to_random] = rng.choice(self._random_pool, size=to_random.size)
        return out, labels

    def select(
        self, input_ids: np.ndarray, rng: np.random.Generator, word_starts: Optional[np.ndarray] = None
    ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Choose the positions to predict (the first half of ``__call__``'s draws).

        Returns:
            ``(positions, span_words)``: int64 ``[k]`` positions in the order chosen, and for
            units ``whole_word``/``ngram`` int64 ``[m]`` the number of words of each chosen
            unit in order (all 1 for ``whole_word``; the n of each n-gram), None for
            ``token``. Raises like ``__call__``.
        """
        ids = np.asarray(input_ids)
        maskable = self.maskable(ids)
        if self.unit == "token":
            candidates = np.flatnonzero(maskable)
            n = self.num_predictions(candidates.size)
            if n == 0:
                return np.zeros(0, dtype=np.int64), None
            if self.token_weights is None:
                return rng.choice(candidates, size=n, replace=False), None
            p = self.token_weights[ids[candidates]]
            positive = int(np.count_nonzero(p))
            if positive < n:  # too few tokens with a weight: take them all (the budget is a cap)
                return rng.permutation(candidates[p > 0]), None
            return rng.choice(candidates, size=n, replace=False, p=p / p.sum()), None
        if word_starts is None:
            raise UserError(
                f"masking.unit={self.unit} needs the word_starts column; rebuild the data with this data-prep "
                "version or use masking.unit=token"
            )
        ws = np.asarray(word_starts)
        if ws.shape != ids.shape:
            raise UserError(f"word_starts has {ws.shape[0]} entries for {ids.shape[0]} tokens; rebuild the data")
        budget = self.num_predictions(int(maskable.sum()))
        if budget == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        first, length = _words(ws, maskable)
        if self.unit == "whole_word":
            order = rng.permutation(first.size)
            take = order[_fit_in_order(length[order], budget)]
            return _expand(first[take], length[take]), np.ones(take.size, dtype=np.int64)
        return self._ngrams(first, length, _run_ends(first, length), budget, rng)

    def _ngrams(
        self, first: np.ndarray, length: np.ndarray, run_end: np.ndarray, budget: int, rng: np.random.Generator
    ) -> Tuple[np.ndarray, np.ndarray]:
        """ALBERT's n-gram selection over words (module docstring); two vectorized draws,
        then one Python pass that stops once the budget is spent."""
        n_words = first.size
        order = rng.permutation(n_words)
        drawn = rng.choice(self.max_ngram, size=n_words, p=self._ngram_p) + 1
        ends = (first + length).tolist()
        starts = first.tolist()
        # A span from word w may use words w..run_end[w]-1: no special token in between.
        room = np.minimum(drawn, run_end[order] - order).tolist()
        covered = [False] * n_words
        spans_first: List[int] = []
        spans_len: List[int] = []
        spans_words: List[int] = []
        count = 0
        for w, n in zip(order.tolist(), room):
            if count >= budget:
                break
            while n > 0 and count + ends[w + n - 1] - starts[w] > budget:
                n -= 1  # try a shorter n-gram from the same start, as ALBERT does
            if n == 0 or any(covered[w : w + n]):
                continue
            covered[w : w + n] = [True] * n
            size = ends[w + n - 1] - starts[w]
            spans_first.append(starts[w])
            spans_len.append(size)
            spans_words.append(n)
            count += size
        return (
            _expand(np.asarray(spans_first, dtype=np.int64), np.asarray(spans_len, dtype=np.int64)),
            np.asarray(spans_words, dtype=np.int64),
        )


def _words(word_starts: np.ndarray, maskable: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Maskable words of one sequence: int64 ``[w]`` first positions and token lengths.

    A word starts where ``word_starts`` says, and also at every special token and the token
    after it (special tokens are words of their own and never inside a word).
    """
    starts = word_starts.astype(bool)
    special = ~maskable
    starts |= special
    starts[1:] |= special[:-1]
    starts[0] = True
    first_all = np.flatnonzero(starts)
    length_all = np.empty_like(first_all)
    length_all[:-1] = first_all[1:] - first_all[:-1]
    length_all[-1] = starts.size - first_all[-1]
    keep = maskable[first_all]
    return first_all[keep], length_all[keep]


def _run_ends(first: np.ndarray, length: np.ndarray) -> np.ndarray:
    """int64 ``[w]``: for each maskable word, the index (exclusive) of the end of its run of
    adjacent maskable words — where the next special token interrupts the text."""
    gap = np.flatnonzero(first[:-1] + length[:-1] != first[1:])  # last word before a special token
    run_last = np.append(gap, first.size - 1)
    return run_last[np.searchsorted(run_last, np.arange(first.size))] + 1


def _fit_in_order(lengths: np.ndarray, budget: int) -> np.ndarray:
    """Indices of ``lengths`` taken by walking them in order, taking each unit that still
    fits into ``budget`` and skipping one that does not (BERT's whole-word rule)."""
    cum = np.cumsum(lengths)
    k = int(np.searchsorted(cum, budget, side="right"))  # the first k units all fit
    taken = list(range(k))
    left = budget - (int(cum[k - 1]) if k else 0)
    i = k  # unit i does not fit (or does not exist)
    while left > 0:
        fits = np.flatnonzero(lengths[i + 1 :] <= left)
        if fits.size == 0:
            break
        i = i + 1 + int(fits[0])
        taken.append(i)
        left -= int(lengths[i])
    return np.asarray(taken, dtype=np.int64)


def _expand(first: np.ndarray, length: np.ndarray) -> np.ndarray:
    """int64 positions of the spans ``[first[i], first[i] + length[i])`` in span order."""
    if first.size == 0:
        return np.zeros(0, dtype=np.int64)
    total = int(length.sum())
    offsets = np.repeat(first - np.concatenate([[0], np.cumsum(length)[:-1]]), length)
    return offsets + np.arange(total, dtype=np.int64)
