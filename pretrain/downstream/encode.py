"""Fine-tuning inputs: GLUE sentences and pairs, and CoNLL words with labels on first
sub-tokens, encoded with the tokenizer a model was pretrained with.

Layouts, by the model the tokenizer belongs to:

- BERT and ALBERT (``wordpiece``, ``unigram``): ``[CLS] A [SEP]`` and ``[CLS] A [SEP] B
  [SEP]`` with token types 0 up to and including the first ``[SEP]``, 1 after (Devlin et
  al. 2019, §3 and Figure 2; BERT ``run_classifier.py`` ``convert_single_example``).
- RoBERTa (``bpe``): ``<s> A </s>`` and ``<s> A </s></s> B </s>`` (fairseq's RoBERTa GLUE
  preprocessing; Hugging Face's ``RobertaTokenizer`` pair template), every token type 0
  (RoBERTa has one token type).

A pair longer than ``max_length`` is cut as BERT's ``_truncate_seq_pair`` does: one token at
a time from the end of the longer segment. A single sentence keeps its first tokens.

NER (Devlin et al. 2019, §5.3: "we use the representation of the first sub-token as the
input to the token-level classifier"): the words are encoded pre-tokenized (each word as if
preceded by a space, which byte-level BPE and Metaspace mark), the first sub-token of every
word carries its tag id, every other position -100 (``IGNORE_INDEX``). A word the tokenizer
turns into no token (e.g. a lone control character), and words beyond ``max_length``, get no
position; ``word_positions`` records -1 for them and the evaluation predicts ``O`` there, so
the score is still over every gold entity of the split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from common.errors import UserError
from common.schema import IGNORE_INDEX
from data_prep.tokenizer import TokenizerInfo, load_tokenizer

# Tokenizer kind of each model family's released tokenizers (for Hugging Face directories).
# ELECTRA (Clark et al. 2020) released BERT's uncased WordPiece vocabulary with its models.
FAMILY_TOKENIZER = {"bert": "wordpiece", "roberta": "bpe", "albert": "unigram", "distilbert": "wordpiece", "electra": "wordpiece"}


@dataclass
class Encoded:
    """Encoded examples of one split, rows aligned.

    input_ids: int32 ``[n_tokens]`` arrays per example (special tokens included).
    token_type_ids: int8 arrays, same lengths.
    labels: classification: int64 ``[n]`` class ids; regression: float32 ``[n]`` scores;
        NER: per example an int64 array as long as ``input_ids`` (tag id at first
        sub-tokens, -100 elsewhere).
    word_positions: NER only: per example an int64 ``[n_words]`` array, the position of
        each word's first sub-token, or -1 when the word got no position.
    """

    input_ids: List[np.ndarray]
    token_type_ids: List[np.ndarray]
    labels: object
    word_positions: Optional[List[np.ndarray]] = None

    def __len__(self) -> int:
        return len(self.input_ids)


def _pair_types(info: TokenizerInfo, type_vocab_size: int) -> bool:
    return info.kind != "bpe" and type_vocab_size >= 2


def truncate_pair(a: List[int], b: List[int], max_tokens: int) -> None:
    """Cut ``a`` and ``b`` in place to ``len(a) + len(b) <= max_tokens``, one token at a time
    from the end of the longer (``b`` on a tie), as BERT's ``_truncate_seq_pair``."""
    while len(a) + len(b) > max_tokens:
        (a if len(a) > len(b) else b).pop()


def assemble(info: TokenizerInfo, a: List[int], b: Optional[List[int]], max_length: int, type_vocab_size: int):
    """``(input_ids int32 [n], token_type_ids int8 [n])`` of segment ids ``a`` (and ``b``) in
    the tokenizer's model layout (module docstring), truncated to ``max_length``."""
    a = list(a)
    roberta = info.kind == "bpe"
    if b is None:
        a = a[: max_length - 2]
        ids = [info.cls_id, *a, info.sep_id]
        return np.asarray(ids, dtype=np.int32), np.zeros(len(ids), dtype=np.int8)
    b = list(b)
    truncate_pair(a, b, max_length - (4 if roberta else 3))
    first = [info.cls_id, *a, info.sep_id] + ([info.sep_id] if roberta else [])
    ids = first + [*b, info.sep_id]
    types = np.zeros(len(ids), dtype=np.int8)
    if _pair_types(info, type_vocab_size):
        types[len(first):] = 1
    return np.asarray(ids, dtype=np.int32), types


def encode_pairs(
    info: TokenizerInfo,
    texts_a: Sequence[str],
    texts_b: Optional[Sequence[Optional[str]]],
    max_length: int,
    type_vocab_size: int = 2,
) -> List[tuple]:
    """Encode single sentences (``texts_b`` None) or pairs.

    Args:
        info: the model's tokenizer (``load_tokenizer`` or ``tokenizer_for_hf_dir``).
        max_length: tokens per example, special tokens included (>= 5).
        type_vocab_size: the model's; with 1 every token type is 0.
    Returns:
        Per example ``(input_ids int32 [n], token_type_ids int8 [n])``.
    """
    if max_length < 5:
        raise UserError(f"max_length={max_length} leaves no room for a pair; use >= 5")
    enc_a = info.encode_batch(list(texts_a))
    enc_b = info.encode_batch([t or "" for t in texts_b]) if texts_b is not None else [None] * len(enc_a)
    return [assemble(info, a, b, max_length, type_vocab_size) for a, b in zip(enc_a, enc_b)]


def encode_words(info: TokenizerInfo, sentences: Sequence[Sequence[str]], tags: Sequence[Sequence[int]], max_length: int):
    """Encode pre-split words with word-level tag ids on first sub-tokens.

    Args:
        sentences: words per sentence. tags: tag id per word (same shape).
        max_length: tokens per example including ``[CLS]``/``[SEP]``.
    Returns:
        ``(input_ids, token_type_ids, labels, word_positions)`` lists as in ``Encoded``.
    """
    encs = info.tokenizer.encode_batch([list(s) for s in sentences], is_pretokenized=True, add_special_tokens=False)
    ids_out, types_out, labels_out, pos_out = [], [], [], []
    room = max_length - 2
    for enc, words, word_tags in zip(encs, sentences, tags):
        ids = enc.ids[:room]
        wids = enc.word_ids[:room]
        labels = np.full(len(ids) + 2, IGNORE_INDEX, dtype=np.int64)
        positions = np.full(len(words), -1, dtype=np.int64)
        prev = None
        for i, w in enumerate(wids):
            if w is not None and w != prev:
                labels[i + 1] = word_tags[w]
                positions[w] = i + 1
            prev = w
        full = np.asarray([info.cls_id, *ids, info.sep_id], dtype=np.int32)
        ids_out.append(full)
        types_out.append(np.zeros(len(full), dtype=np.int8))
        labels_out.append(labels)
        pos_out.append(positions)
    return ids_out, types_out, labels_out, pos_out


def tokenizer_for_hf_dir(directory: str | Path, family: str) -> TokenizerInfo:
    """The tokenizer of a Hugging Face model directory: its tokenizer.json, else the fast
    tokenizer ``transformers.AutoTokenizer`` builds from its vocabulary files, with the
    special tokens of the family's kind (``FAMILY_TOKENIZER``). UserError if neither loads."""
    d = Path(directory)
    kind = FAMILY_TOKENIZER[family]
    if (d / "tokenizer.json").is_file():
        return load_tokenizer(d / "tokenizer.json", kind)
    try:
        from transformers import AutoTokenizer

        backend = AutoTokenizer.from_pretrained(str(d), use_fast=True).backend_tokenizer
    except Exception as e:  # missing vocabulary files, sentencepiece absent, ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{d}: no tokenizer.json and no tokenizer transformers can load ({msg})") from None
    import tempfile

    # load_tokenizer reads a file; write the converted tokenizer beside nothing of the user's
    # (and remove it: the loaded tokenizer keeps no reference to its file).
    with tempfile.TemporaryDirectory(prefix="hf-tokenizer-") as tmp:
        backend.save(str(Path(tmp) / "tokenizer.json"))
        return load_tokenizer(Path(tmp) / "tokenizer.json", kind)
