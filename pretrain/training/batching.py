"""Which sequences each optimizer step reads, and how they become tensors.

Sampler: epoch ``e`` visits the training rows in a permutation seeded by ``(seed, e)``;
each epoch has ``rows // global_batch`` steps (the remainder of the permutation is dropped,
so every step sees a full global batch). Step ``s`` (0-based) reads global batch
``s % steps_per_epoch`` of epoch ``s // steps_per_epoch`` — a pure function of ``s``, so a
resumed run reads exactly the batches an uninterrupted run would, without iterating over
the ones it skips. Rank ``r`` of ``W`` takes the ``r``-th contiguous equal slice of the
global batch and splits it into micro batches (``rank_micro_batches``), so the ranks read
disjoint parts of equal size.

DOC-SENTENCES rows (RoBERTa §4.2) are often shorter than ``max_seq_length``: a document's
last row is cut where the document ends. With ``data.doc_sentences_batching=tokens`` the
sampler keeps the *tokens* per step about constant instead (``TokenBudgetSampler``), as
RoBERTa did ("we dynamically increase the batch size to achieve a similar number of total
tokens as FULL-SENTENCES"): a step reads a variable number of rows holding about
``global_batch_size × max_seq_length`` tokens, still a pure function of the step.

Collator: statically masked data (BERT, Devlin et al. 2019 §A.2: ``dupe_factor`` copies,
each with its own mask) reads copy ``epoch % num_copies``, so a sequence shows the same
mask in every epoch that reads the same copy — with 40 epochs and dupe_factor 10, each mask
is seen 4 times, as in RoBERTa's description of BERT (Liu et al. 2019, §4.1). Dynamically
masked data (RoBERTa §4.1) is masked here with ``sequence_rng(seed, STREAM_DYNAMIC, epoch,
row)``: a fresh mask every epoch, identical for the same (seed, epoch, row), in the unit
``data.masking.unit`` asks for (the shards' ``word_starts`` column marks the words).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from common.errors import UserError
from common.schema import IGNORE_INDEX, SENTENCE_LABELS
from data_prep.masking import STREAM_DYNAMIC, Masker, sequence_rng
from data_prep.shards import SplitData

# Keeps the epoch permutations apart from every masking stream even with equal seeds.
_ORDER_STREAM = 0x5A4D


class GlobalBatchSampler:
    """Deterministic global batches over ``num_rows`` training rows.

    Args:
        num_rows: sequences in the training split.
        global_batch_size: sequences per optimizer step over all ranks.
        seed: ``train.seed``.
    Raises:
        UserError: fewer rows than one global batch.
    """

    def __init__(self, num_rows: int, global_batch_size: int, seed: int) -> None:
        if num_rows < global_batch_size:
            raise UserError(
                f"the training split has {num_rows} sequences, fewer than one global batch "
                f"(train.global_batch_size={global_batch_size}); lower the batch size or use more data"
            )
        self.num_rows = int(num_rows)
        self.global_batch_size = int(global_batch_size)
        self.seed = int(seed)
        self.steps_per_epoch = self.num_rows // self.global_batch_size
        self._cached: Tuple[int, Optional[np.ndarray]] = (-1, None)

    def position(self, step: int) -> Tuple[int, int]:
        """``(epoch, batch index within the epoch)`` read by 0-based optimizer step ``step``."""
        return divmod(int(step), self.steps_per_epoch)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """int64 ``[num_rows]``: the permutation of row indices of ``epoch``."""
        if self._cached[0] != epoch:
            rng = np.random.default_rng([self.seed, _ORDER_STREAM, int(epoch)])
            self._cached = (epoch, rng.permutation(self.num_rows).astype(np.int64))
        return self._cached[1]

    def global_batch(self, step: int) -> Tuple[int, np.ndarray]:
        """``(epoch, rows)`` of 0-based step ``step``; rows int64 ``[global_batch_size]``."""
        epoch, b = self.position(step)
        g = self.global_batch_size
        return epoch, self.epoch_order(epoch)[b * g : (b + 1) * g]

    def epochs(self, step: int) -> float:
        """Passes over the split's rows after ``step`` steps (the ``epoch`` metric)."""
        return step * self.global_batch_size / self.num_rows


class TokenBudgetSampler:
    """Deterministic global batches of about ``tokens_per_batch`` tokens each (a variable
    number of rows), for DOC-SENTENCES data (``data.doc_sentences_batching=tokens``).

    Epoch ``e`` lays the rows out in the permutation seeded by ``(seed, e)`` (the same
    permutations as ``GlobalBatchSampler``) and numbers their tokens consecutively; batch
    ``b`` holds the rows whose first token falls in ``[b·T, (b+1)·T)``, T =
    ``tokens_per_batch``. Each epoch has ``total_tokens // T`` batches (rows starting after
    the last full budget are dropped), so step → (epoch, batch) is arithmetic and a resumed
    run jumps straight to its step. A batch holds between ``T - max_row + 1`` and
    ``T + max_row - 1`` tokens; with ``T = G × max_row`` that is at least G rows, so it
    always splits into G micro batches or fewer without an empty one.

    Args:
        lengths: int ``[num_rows]`` tokens per training row (``SplitData.lengths()``).
        tokens_per_batch: T, tokens per optimizer step over all ranks.
        seed: ``train.seed``.
    Raises:
        UserError: fewer tokens in the split than one batch.
    """

    def __init__(self, lengths: np.ndarray, tokens_per_batch: int, seed: int) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.num_rows = len(self.lengths)
        self.total_tokens = int(self.lengths.sum())
        self.tokens_per_batch = int(tokens_per_batch)
        if self.total_tokens < self.tokens_per_batch:
            raise UserError(
                f"the training split has {self.total_tokens} tokens, fewer than one batch of "
                f"{self.tokens_per_batch} (train.global_batch_size x data.max_seq_length with "
                f"data.doc_sentences_batching=tokens); lower the batch size or use more data"
            )
        self.seed = int(seed)
        self.steps_per_epoch = self.total_tokens // self.tokens_per_batch
        self._order = GlobalBatchSampler(self.num_rows, 1, seed)  # the same epoch permutations
        self._cached: Tuple[int, Optional[np.ndarray]] = (-1, None)

    def position(self, step: int) -> Tuple[int, int]:
        """``(epoch, batch index within the epoch)`` read by 0-based optimizer step ``step``."""
        return divmod(int(step), self.steps_per_epoch)

    def _starts(self, epoch: int) -> np.ndarray:
        # Offset of each row's first token in the epoch's layout (exclusive prefix sum).
        if self._cached[0] != epoch:
            laid_out = self.lengths[self._order.epoch_order(epoch)]
            self._cached = (epoch, np.cumsum(laid_out) - laid_out)
        return self._cached[1]

    def global_batch(self, step: int) -> Tuple[int, np.ndarray]:
        """``(epoch, rows)`` of 0-based step ``step``; rows int64 ``[n]``, n varies."""
        epoch, b = self.position(step)
        starts = self._starts(epoch)
        t = self.tokens_per_batch
        lo, hi = np.searchsorted(starts, [b * t, (b + 1) * t], side="left")
        return epoch, self._order.epoch_order(epoch)[lo:hi]

    def epochs(self, step: int) -> float:
        """Passes over the split's tokens after ``step`` steps (the ``epoch`` metric)."""
        return step * self.tokens_per_batch / self.total_tokens


def make_sampler(data_cfg, lengths: np.ndarray, global_batch_size: int, seed: int):
    """The sampler of a run: ``TokenBudgetSampler`` with ``global_batch_size ×
    data.max_seq_length`` tokens per step for ``data.format=doc_sentences`` with
    ``data.doc_sentences_batching=tokens``, else ``GlobalBatchSampler`` over
    ``global_batch_size`` rows. Raises UserError if the split is smaller than one batch."""
    if data_cfg.format == "doc_sentences" and data_cfg.doc_sentences_batching == "tokens":
        return TokenBudgetSampler(lengths, global_batch_size * data_cfg.max_seq_length, seed)
    return GlobalBatchSampler(len(lengths), global_batch_size, seed)


def rank_micro_batches(rows: np.ndarray, rank: int, world_size: int, accumulation: int) -> List[np.ndarray]:
    """Rank ``rank``'s micro batches of one global batch: ``rows`` cut into ``world_size ×
    accumulation`` consecutive pieces whose sizes differ by at most one, of which the rank
    takes pieces ``rank·accumulation`` to ``(rank+1)·accumulation - 1``.

    With ``len(rows) = world_size × accumulation × micro`` (fixed batches) these are the
    rank's contiguous slice cut into micro batches of ``micro``; 1 rank accumulating W
    pieces reads the same pieces as W ranks with one each. Raises ValueError when there
    are fewer rows than pieces (a micro batch would be empty).
    """
    pieces = world_size * accumulation
    if len(rows) < pieces:
        raise ValueError(f"{len(rows)} rows cannot fill {pieces} micro batches ({world_size} ranks x {accumulation})")
    return np.array_split(rows, pieces)[rank * accumulation : (rank + 1) * accumulation]


def rank_slice(rows: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The ``rank``-th of ``world_size`` contiguous equal slices of ``rows`` (its length
    must divide evenly; the trainer checks that before the first step)."""
    per = len(rows) // world_size
    if per * world_size != len(rows):
        raise ValueError(f"{len(rows)} rows do not split evenly over {world_size} ranks")
    return rows[rank * per : (rank + 1) * per]


def micro_batches(rows: np.ndarray, micro_batch_size: int) -> List[np.ndarray]:
    """``rows`` cut into consecutive pieces of ``micro_batch_size`` (the last may be shorter)."""
    return [rows[i : i + micro_batch_size] for i in range(0, len(rows), micro_batch_size)]


class Collator:
    """Turns row indices of one split into padded model inputs.

    Args:
        split: the split to read (``SplitData``).
        pad_id: the tokenizer's padding id.
        masker: required when ``split.masked`` is False (dynamic masking); ignored otherwise.
        seed: ``train.seed``, the seed of dynamic masks.
    Raises:
        UserError: unmasked data without a masker.
    """

    def __init__(self, split: SplitData, pad_id: int, masker: Optional[Masker] = None, seed: int = 0) -> None:
        if not split.masked and masker is None:
            raise UserError(f"split {split.name!r} has no labels and no dynamic masker was given")
        self.split = split
        self.pad_id = int(pad_id)
        self.masker = None if split.masked else masker
        self.seed = int(seed)
        # Per-sequence labels passed through for the criterion (NSP, BERT §3.1; SOP, ALBERT §3.2).
        self.sentence_labels = [c for c in SENTENCE_LABELS if c in split.columns]

    def example(self, row: int, epoch: int) -> Dict[str, np.ndarray]:
        """One sequence as numpy arrays: ``input_ids``/``labels`` int32 ``[seq]``, plus
        ``token_type_ids`` int8 ``[seq]`` and sentence labels if the split has them."""
        if self.masker is None:
            r = self.split.row(int(row), epoch % self.split.num_copies)
            out = {"input_ids": r["input_ids"], "labels": r["labels"]}
        else:
            r = self.split.row(int(row))
            rng = sequence_rng(self.seed, STREAM_DYNAMIC, int(epoch), int(row))
            # word_starts (if the shards have it) lets whole-word / n-gram units find words
            ids, labels = self.masker(r["input_ids"], rng, r.get("word_starts"))
            out = {"input_ids": ids, "labels": labels}
        if "token_type_ids" in r:
            out["token_type_ids"] = r["token_type_ids"]
        for c in self.sentence_labels:
            out[c] = r[c]
        return out

    def __call__(self, rows: Sequence[int], epoch: int) -> Dict[str, torch.Tensor]:
        """Collate ``rows`` read in ``epoch``.

        Returns int64 tensors: ``input_ids`` ``[batch, seq]`` padded with ``pad_id`` to the
        longest row, ``attention_mask`` ``[batch, seq]`` (1 = token, 0 = padding),
        ``token_type_ids`` ``[batch, seq]`` (zeros when the split has none), ``labels``
        ``[batch, seq]`` (-100 = not predicted, including padding), and each sentence-label
        column ``[batch]``.
        """
        examples = [self.example(r, epoch) for r in rows]
        seq = max(len(e["input_ids"]) for e in examples)
        b = len(examples)
        input_ids = np.full((b, seq), self.pad_id, dtype=np.int64)
        labels = np.full((b, seq), IGNORE_INDEX, dtype=np.int64)
        attention = np.zeros((b, seq), dtype=np.int64)
        types = np.zeros((b, seq), dtype=np.int64)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            input_ids[i, :n] = e["input_ids"]
            labels[i, :n] = e["labels"]
            attention[i, :n] = 1
            if "token_type_ids" in e:
                types[i, :n] = e["token_type_ids"]
        out = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention),
            "token_type_ids": torch.from_numpy(types),
            "labels": torch.from_numpy(labels),
        }
        for c in self.sentence_labels:
            out[c] = torch.tensor([int(e[c]) for e in examples], dtype=torch.int64)
        return out
