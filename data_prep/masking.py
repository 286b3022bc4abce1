"""Masked-LM corruption, shared by static masking (at data-prep time) and dynamic masking
(in the training collator), so both arms of the RoBERTa §4.1 ablation use one rule.

Rule (Devlin et al. 2019, §3.1 "Task #1: Masked LM" and appendix A.1): choose
``round(mlm_probability × n)`` (at least one) of the ``n`` maskable tokens of a sequence,
uniformly without replacement, as in BERT's reference ``create_pretraining_data``; replace a
chosen token by the mask token with probability ``mask_replace_prob`` (0.8), by a random
token with probability ``random_replace_prob`` (0.1), else leave it; ``labels`` hold the
original id at chosen positions and -100 elsewhere.

Randomness: every sequence gets its own generator from ``sequence_rng(seed, stream, round,
index)``, so a mask depends only on (seed, epoch or copy, sample index) — never on batch
composition, worker count or how far a run got before it was resumed.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

IGNORE_INDEX = -100

# Streams keep the static copies, dynamic epochs and the validation mask from ever sharing
# a generator even when their seeds coincide.
STREAM_STATIC = 1
STREAM_DYNAMIC = 2
STREAM_VALIDATION = 3


def sequence_rng(seed: int, stream: int, round_: int, index: int) -> np.random.Generator:
    """Generator for one sequence: ``round_`` is the epoch (dynamic) or copy (static),
    ``index`` the sequence's row index in its split. PCG64 seeded through SeedSequence."""
    return np.random.default_rng([seed, stream, round_, index])


class Masker:
    """Applies the BERT corruption rule to one sequence at a time.

    Args:
        vocab_size: size of the tokenizer's vocabulary (ids are in ``[0, vocab_size)``).
        mask_token_id: id of ``[MASK]`` / ``<mask>``.
        special_ids: ids never chosen for prediction and never drawn as random
            replacements (CLS/SEP/PAD/MASK/UNK and the like).
        mlm_probability, mask_replace_prob, random_replace_prob: see ``MaskingConfig``.
    """

    def __init__(
        self,
        vocab_size: int,
        mask_token_id: int,
        special_ids: np.ndarray,
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
    ) -> None:
        self.vocab_size = int(vocab_size)
        self.mask_token_id = int(mask_token_id)
        self.mlm_probability = float(mlm_probability)
        self.mask_replace_prob = float(mask_replace_prob)
        self.random_replace_prob = float(random_replace_prob)
        special = np.zeros(self.vocab_size, dtype=bool)
        special[np.asarray(special_ids, dtype=np.int64)] = True
        self._is_special = special
        # Random replacements come from ordinary tokens only: a random [CLS] or [PAD]
        # mid-sequence would teach the model nothing about language.
        self._random_pool = np.flatnonzero(~special).astype(np.int32)

    @classmethod
    def from_config(cls, masking_cfg, vocab_size: int, mask_token_id: int, special_ids) -> "Masker":
        """Build from a ``data_prep.config.MaskingConfig``."""
        return cls(
            vocab_size,
            mask_token_id,
            np.asarray(special_ids),
            masking_cfg.mlm_probability,
            masking_cfg.mask_replace_prob,
            masking_cfg.random_replace_prob,
        )

    def maskable(self, input_ids: np.ndarray) -> np.ndarray:
        """Bool ``[seq]``: positions that may be chosen (not special tokens)."""
        return ~self._is_special[input_ids]

    def __call__(self, input_ids: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        """Corrupt one sequence.

        Args:
            input_ids: int ``[seq]`` original token ids.
            rng: the sequence's generator (``sequence_rng``).
        Returns:
            ``(masked_ids, labels)``, both int32 ``[seq]``; labels are -100 where nothing
            is predicted.
        """
        ids = np.asarray(input_ids, dtype=np.int32)
        candidates = np.flatnonzero(self.maskable(ids))
        out = ids.copy()
        labels = np.full(ids.shape, IGNORE_INDEX, dtype=np.int32)
        if candidates.size == 0:
            return out, labels
        n = max(1, int(round(candidates.size * self.mlm_probability)))
        chosen = rng.choice(candidates, size=n, replace=False)
        labels[chosen] = ids[chosen]
        u = rng.random(n)
        to_mask = chosen[u < self.mask_replace_prob]
        to_random = chosen[(u >= self.mask_replace_prob) & (u < self.mask_replace_prob + self.random_replace_prob)]
        out[to_mask] = self.mask_token_id
        if to_random.size:
            out[to_random] = rng.choice(self._random_pool, size=to_random.size)
        return out, labels
