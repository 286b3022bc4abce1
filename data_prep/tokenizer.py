"""Tokenizers: train one with the ``tokenizers`` library or load a tokenizer.json, and know
its special tokens.

Kinds (``tokenizer.kind``):
- ``bpe``: byte-level BPE with RoBERTa's special tokens ``<s> <pad> </s> <unk> <mask>``
  (Liu et al. 2019, §4.4; Radford et al. 2019). Trained with ``add_prefix_space``: every
  text is encoded as if a space preceded it, so a sentence-initial word gets the same
  ``Ġword`` token as mid-text — the pipeline encodes sentence by sentence, and without it
  every sentence start would use a different token and decoded sequences would lose the
  space between sentences. The setting is stored in tokenizer.json, so every user of the
  file (pretraining, fine-tuning) encodes the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List

import numpy as np
from tokenizers import Tokenizer

from data_prep.errors import UserError

# Role → token string for each kind; the order is the id order when training.
SPECIAL_TOKENS: Dict[str, Dict[str, str]] = {
    "bpe": {"cls": "<s>", "pad": "<pad>", "sep": "</s>", "unk": "<unk>", "mask": "<mask>"},
}


@dataclass(frozen=True)
class TokenizerInfo:
    """A loaded tokenizer and the ids the pipeline needs.

    ``cls_id``/``sep_id`` open and close a sequence (``<s>``/``</s>`` in RoBERTa); ``sep_id``
    also separates documents and segments; ``special_ids`` (int64 ``[k]``) are never masked.
    """

    tokenizer: Tokenizer
    kind: str
    vocab_size: int
    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    unk_id: int
    special_ids: np.ndarray

    def encode_batch(self, texts: List[str]) -> List[List[int]]:
        """Token ids of each text, without special tokens."""
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(map(int, ids)), skip_special_tokens=skip_special_tokens)


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int, min_frequency: int, out: Path) -> Path:
    """Train a tokenizer of ``kind`` on ``texts`` and write it to ``out`` (atomically).

    Args:
        texts: training text (str items; sentences or documents), consumed once.
        vocab_size: target size including special tokens; a small corpus may yield fewer.
        min_frequency: a pair needs this many occurrences to be merged.
    Raises UserError for an unknown kind.
    """
    if kind != "bpe":
        raise UserError(f"tokenizer.kind={kind!r} is not supported yet; use bpe")
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    specials = list(SPECIAL_TOKENS["bpe"].values())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tok.save(str(tmp))
    os.replace(tmp, out)
    return out


def load_tokenizer(path: str | Path, kind: str) -> TokenizerInfo:
    """Load ``path`` (a tokenizer.json) and resolve its special-token ids for ``kind``.

    Raises UserError if the file is missing/unreadable or lacks one of the kind's special tokens.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"tokenizer file not found: {p}")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise UserError(f"cannot load tokenizer {p}: {str(e).splitlines()[0]}") from None
    roles = SPECIAL_TOKENS.get(kind)
    if roles is None:
        raise UserError(f"tokenizer.kind={kind!r} is not one of: {', '.join(SPECIAL_TOKENS)}")
    ids = {}
    for role, token in roles.items():
        i = tok.token_to_id(token)
        if i is None:
            raise UserError(f"tokenizer {p} has no {token!r} token; it is not a {kind} tokenizer (set tokenizer.kind)")
        ids[role] = i
    special = sorted(set(ids.values()) | _added_special_ids(tok))
    return TokenizerInfo(
        tokenizer=tok,
        kind=kind,
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        cls_id=ids["cls"],
        sep_id=ids["sep"],
        pad_id=ids["pad"],
        mask_id=ids["mask"],
        unk_id=ids["unk"],
        special_ids=np.asarray(special, dtype=np.int64),
    )


def _added_special_ids(tok: Tokenizer) -> set:
    """Ids of tokens added as special (never masked, never drawn as random replacements)."""
    if not hasattr(tok, "get_added_tokens_decoder"):
        return set()
    return {int(i) for i, a in tok.get_added_tokens_decoder().items() if a.special}
