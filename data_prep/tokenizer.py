"""Tokenizers: train one (``tokenizers``' trainers; ``sentencepiece`` for unigram), or load
a tokenizer.json or a pretrained tokenizer by name, and know its special tokens.

Kinds (``tokenizer.kind``):

- ``wordpiece``: BERT's tokenizer (Devlin et al. 2019, §3 "We use WordPiece embeddings
  (Wu et al., 2016) with a 30,000 token vocabulary"; the released uncased vocabulary has
  30522 entries). Lower-cased with accents stripped (``BertNormalizer``), split on
  whitespace and punctuation (``BertPreTokenizer``), sub-words continued with ``##``.
  Special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]`` with ``[PAD]`` = 0 as in BERT's
  vocabulary; the saved post-processor adds ``[CLS] A [SEP] B [SEP]`` with segment ids
  0/0/0/1/1 for users of the file (the pipeline places special tokens itself).
- ``bpe``: byte-level BPE with RoBERTa's special tokens ``<s> <pad> </s> <unk> <mask>``
  (Liu et al. 2019, §4.4; Radford et al. 2019). Trained with ``add_prefix_space``: every
  text is encoded as if a space preceded it, so a sentence-initial word gets the same
  ``Ġword`` token as mid-text — the pipeline encodes sentence by sentence, and without it
  every sentence start would use a different token and decoded sequences would lose the
  space between sentences. The setting is stored in tokenizer.json, so every user of the
  file (pretraining, fine-tuning) encodes the same way.
- ``unigram``: ALBERT's SentencePiece-style tokenizer (Lan et al. 2020, §4.1: "a
  vocabulary size of 30,000 … tokenized using SentencePiece (Kudo & Richardson, 2018)"):
  a unigram language model trained by the ``sentencepiece`` library and stored as a
  ``tokenizers`` Unigram model; text normalized as ALBERT's ``preprocess_text`` does (```` `` ```` and ``''`` → ``"``, NFKD with combining marks
  removed, lower-cased, whitespace runs collapsed) and split into words at spaces, each
  space becoming ``▁`` at the start of the next word (``Metaspace``). Special tokens with
  ALBERT's ids: ``<pad>``=0 ``<unk>``=1 ``[CLS]``=2 ``[SEP]``=3 ``[MASK]``=4.

Training is reproducible for every kind: the same corpus and settings give a
byte-identical tokenizer.json with any number of threads or workers (``train_tokenizer``).
Special-token strings in text are text (``load_tokenizer`` sets
``encode_special_tokens``), as in BERT's and ALBERT's ``create_pretraining_data.py``.

Round trip: ``decode(encode(x)) == normalize(x)`` for text without unknown characters,
where ``TokenizerInfo.normalize`` is the text as the tokenizer sees it (see there).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List

import numpy as np
from tokenizers import Tokenizer

from common.errors import UserError

# Role → token string for each kind; the order is the id order when training.
SPECIAL_TOKENS: Dict[str, Dict[str, str]] = {
    "wordpiece": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
    "bpe": {"cls": "<s>", "pad": "<pad>", "sep": "</s>", "unk": "<unk>", "mask": "<mask>"},
    "unigram": {"pad": "<pad>", "unk": "<unk>", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
}

# ``tokenizer.path`` prefix naming a pretrained tokenizer on the Hugging Face hub.
HF_PREFIX = "hf:"


@dataclass(frozen=True)
class TokenizerInfo:
    """A loaded tokenizer and the ids the pipeline needs.

    ``cls_id``/``sep_id`` open and close a sequence (``[CLS]``/``[SEP]`` in BERT and ALBERT,
    ``<s>``/``</s>`` in RoBERTa); ``sep_id`` also separates documents and segments;
    ``special_ids`` (int64 ``[k]``, sorted) are never masked and never drawn as random
    replacements.
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
        """Token ids of each text, without special tokens (``data_prep.words.encode_with_words``
        also returns word starts)."""
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` through the tokenizer's decoder (``##`` joined for wordpiece,
        bytes for bpe, ``▁`` → space for unigram)."""
        return self.tokenizer.decode(list(map(int, ids)), skip_special_tokens=skip_special_tokens)

    def normalize(self, text: str) -> str:
        """``text`` as the tokenizer represents it: what ``decode(encode(text))`` returns
        when no character is unknown to the vocabulary.

        It is the normalizer's output cut into the pre-tokenizer's words and joined back by
        the decoder, so it depends on the normalizer, pre-tokenizer and decoder only, never
        on the learned vocabulary; per kind:

        - ``wordpiece``: lower-cased, accents stripped, words and punctuation joined by one
          space, then the WordPiece decoder's clean-up (no space before ``. , ! ?`` and in
          ``n't 's 've 're 'm``), as BERT's decoder does.
        - ``bpe``: ``text`` unchanged after the prefix space (byte-level BPE is lossless).
        - ``unigram``: ALBERT's normalization (see the module docstring) with whitespace
          runs collapsed to one space and stripped.
        """
        tok = self.tokenizer
        normalized = tok.normalizer.normalize_str(text) if tok.normalizer is not None else text
        if tok.pre_tokenizer is None:
            return normalized
        words = [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(normalized)]
        return tok.decoder.decode(words) if tok.decoder is not None else "".join(words)

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer to ``path`` as tokenizer.json, atomically (temp + rename)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        self.tokenizer.save(str(tmp))
        os.replace(tmp, out)
        return out


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int, min_frequency: int, out: Path) -> Path:
    """Train a tokenizer of ``kind`` on ``texts`` and write it to ``out`` (atomically).

    Training is reproducible: the same texts (in any order) give a byte-identical
    tokenizer.json for every kind, whatever the thread count (``tokenizers``' own WordPiece
    and Unigram trainers do not, huggingface/tokenizers#1794; see ``_train_wordpiece`` and
    ``_train_unigram`` for the deterministic routes taken here).

    Args:
        kind: ``wordpiece``, ``bpe`` or ``unigram`` (see the module docstring).
        texts: training text (str items; sentences or documents), consumed once.
        vocab_size: target size including special tokens; a small corpus may yield fewer.
        min_frequency: a pair needs this many occurrences to be merged (wordpiece, bpe;
            the unigram trainer prunes by likelihood instead and ignores it).
    Returns:
        ``out``.
    Raises:
        UserError: unknown kind, or ``vocab_size`` too small for the special tokens.
    """
    if kind not in SPECIAL_TOKENS:
        raise UserError(f"tokenizer.kind={kind!r} is not one of: {', '.join(SPECIAL_TOKENS)}")
    specials = list(SPECIAL_TOKENS[kind].values())
    if vocab_size <= len(specials):
        raise UserError(f"tokenizer.vocab_size={vocab_size} must exceed the {len(specials)} special tokens")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok = _TRAINERS[kind](texts, vocab_size, min_frequency, specials, out.parent)
    _set_post_processor(tok, kind)
    tmp = out.with_name(out.name + ".tmp")
    tok.save(str(tmp))
    os.replace(tmp, out)
    return out


def _word_counts(tok: Tokenizer, texts: Iterable[str]) -> Counter:
    """Counter of the words ``tok``'s normalizer and pre-tokenizer cut ``texts`` into: what
    every trainer here learns from (none of them lets a piece cross a word)."""
    norm = tok.normalizer.normalize_str if tok.normalizer is not None else (lambda x: x)
    pre = tok.pre_tokenizer.pre_tokenize_str
    counts: Counter = Counter()
    for text in texts:
        counts.update(w for w, _ in pre(norm(text)))
    return counts


def _repeat_words(counts: Counter, per_line: int = 4096) -> Iterator[str]:
    """Lines of space-separated words holding every word ``counts[word]`` times, in sorted
    word order: a trainer counting the words of these lines finds ``counts`` again."""
    for word in sorted(counts):
        left = counts[word]
        while left > 0:
            n = min(left, per_line)
            yield " ".join([word] * n)
            left -= n


def _wordpiece_base() -> Tokenizer:
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS["wordpiece"]["unk"], continuing_subword_prefix="##"))
    # strip_accents=None follows lowercase, as in BERT's uncased BasicTokenizer.
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return tok


def _train_wordpiece(texts: Iterable[str], vocab_size: int, min_frequency: int, specials: List[str], workdir: Path) -> Tokenizer:
    """WordPiece by ``tokenizers``' ``WordPieceTrainer`` (BPE merges over words whose
    non-initial characters carry ``##``, Wu et al. 2016 as BERT's released vocabulary),
    made reproducible.

    The trainer gives each ``##c`` token its id in the iteration order of a hash map, and
    ids break ties between merges of equal count, so two runs learn different vocabularies
    (huggingface/tokenizers#1794; measured on WikiText-2 valid+test: 17,361 vs 17,362
    tokens, also with one thread). Here the words are counted first and every ``##c`` the
    trainer would create is handed to it up front, in sorted order, so every id and every
    tie is fixed. The trainer then sees the counted words (sorted), which it counts back
    to the same numbers: the merges are those of training on the text itself. The
    ``##c`` tokens are ordinary vocabulary entries of the written file, not special.
    """
    from tokenizers import models, trainers

    tok = _wordpiece_base()
    counts = _word_counts(tok, texts)
    continuing = sorted({"##" + c for w in counts for c in w[1:]} - set(specials))
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials + continuing,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(_repeat_words(counts), trainer=trainer)
    vocab = tok.get_vocab(with_added_tokens=False)
    out = _wordpiece_base()
    out.model = models.WordPiece(vocab, unk_token=SPECIAL_TOKENS["wordpiece"]["unk"], continuing_subword_prefix="##")
    out.add_special_tokens(specials)
    return out


def _train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int, specials: List[str], workdir: Path) -> Tokenizer:
    """Byte-level BPE by ``tokenizers``' ``BpeTrainer``: its ids come from the sorted
    alphabet and merges, so it is reproducible as it is (checked by the tests)."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

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
    return tok


def _unigram_base() -> Tokenizer:
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.Unigram())
    # ALBERT's tokenization.preprocess_text (quotes, NFKD without combining marks,
    # lower case, whitespace collapsed) as one normalizer, so every user of the file
    # normalizes the same way without ALBERT's Python code.
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Replace("``", '"'),
            normalizers.Replace("''", '"'),
            normalizers.NFKD(),
            normalizers.StripAccents(),
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tok


# Threads of the SentencePiece trainer: fixed, because its result depends on the thread
# count (measured on WikiText-2: identical at a fixed count, different between 1 and 2).
SENTENCEPIECE_THREADS = 1
# Score of the special pieces in the unigram model: so low that no segmentation of text
# ever uses them, as SentencePiece never matches its control and unknown symbols in text
# (a literal "<unk>" or "[SEP]" in the corpus is text: "▁<", "unk", ">").
SPECIAL_PIECE_SCORE = -1.0e6
# Private-use characters standing in for <pad> <unk> [CLS] [SEP] [MASK] while SentencePiece trains.
_STAND_INS = ("\ue000", "\ue001", "\ue002", "\ue003", "\ue004")


def _train_unigram(texts: Iterable[str], vocab_size: int, min_frequency: int, specials: List[str], workdir: Path) -> Tokenizer:
    """A unigram language model trained by the ``sentencepiece`` library (Kudo &
    Richardson 2018), which ALBERT used (Lan et al. 2020, §4.1), written as a ``tokenizers``
    Unigram model.

    ``tokenizers``' own ``UnigramTrainer`` learns a different vocabulary on every run
    (measured on WikiText-2, also with one thread); SentencePiece's trainer is
    reproducible at a fixed thread count (``SENTENCEPIECE_THREADS``). It is given the
    normalized words with their counts (``input_format=tsv``), which is what it reduces
    sentences to when pieces may not cross whitespace (``split_by_whitespace``, its
    default), so memory grows with the corpus vocabulary, not its size; normalization is
    ours (``identity`` inside SentencePiece), so training and encoding see the same text.
    Special pieces keep ALBERT's ids 0-4 (``<pad> <unk> [CLS] [SEP] [MASK]``) with
    ``SPECIAL_PIECE_SCORE``. A small corpus may give fewer pieces than ``vocab_size``
    (``hard_vocab_limit=False``). SentencePiece's other settings are its defaults
    (``character_coverage`` 0.9995, pieces of at most 16 characters, split at digits and
    script changes).
    """
    import sentencepiece as spm
    from tokenizers import models

    tok = _unigram_base()
    norm = tok.normalizer.normalize_str
    counts: Counter = Counter()
    for text in texts:
        counts.update(norm(text).split(" "))
    counts.pop("", None)
    if not counts:
        raise UserError("no text to train the unigram tokenizer on; use a larger corpus")
    tsv = workdir / "unigram-words.tsv.tmp"
    prefix = workdir / "unigram-sp.tmp"
    try:
        with open(tsv, "w", encoding="utf-8") as f:
            for word in sorted(counts):
                f.write(f"{word}\t{counts[word]}\n")
        spm.SentencePieceTrainer.train(
            input=str(tsv), input_format="tsv", model_prefix=str(prefix), model_type="unigram",
            vocab_size=vocab_size, hard_vocab_limit=False,
            # Stand-ins for the special pieces: SentencePiece drops the words that contain its
            # unknown piece's spelling, and WikiText has 26,936 literal "<unk>" (text, here).
            pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, pad_piece=_STAND_INS[0], unk_piece=_STAND_INS[1],
            control_symbols=list(_STAND_INS[2:]),
            # The characters of the special tokens' spellings are always pieces, so their
            # literal strings in text are segmented as text, never as the special piece.
            required_chars="".join(sorted(set("".join(specials).lower()))),
            # Every character of the training text is a piece (SentencePiece's advice for
            # languages with a small character set; its default 0.9995 drops rare ones).
            character_coverage=1.0,
            normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
            num_threads=SENTENCEPIECE_THREADS, minloglevel=2,
        )
        sp = spm.SentencePieceProcessor(model_file=str(prefix) + ".model")
        pieces = [
            (sp.id_to_piece(i), SPECIAL_PIECE_SCORE if (sp.is_control(i) or sp.is_unknown(i)) else float(sp.get_score(i)))
            for i in range(sp.get_piece_size())
        ]
    finally:
        for f in (tsv, Path(str(prefix) + ".model"), Path(str(prefix) + ".vocab")):
            f.unlink(missing_ok=True)
    if [p for p, _ in pieces[: len(specials)]] != list(_STAND_INS):
        raise RuntimeError(f"sentencepiece put the special pieces at other ids: {pieces[:len(specials)]}")
    pieces[: len(specials)] = [(token, score) for token, (_, score) in zip(specials, pieces)]
    tok.model = models.Unigram(pieces, unk_id=1, byte_fallback=False)
    tok.add_special_tokens(specials)
    return tok


_TRAINERS = {"wordpiece": _train_wordpiece, "bpe": _train_bpe, "unigram": _train_unigram}


def _set_post_processor(tok: Tokenizer, kind: str) -> None:
    """The single/pair templates of the kind's model, for users of tokenizer.json."""
    from tokenizers import processors

    roles = SPECIAL_TOKENS[kind]
    cls, sep = roles["cls"], roles["sep"]
    if kind == "bpe":
        tok.post_processor = processors.RobertaProcessing((sep, tok.token_to_id(sep)), (cls, tok.token_to_id(cls)))
        return
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )


def load_tokenizer(path: str | Path, kind: str) -> TokenizerInfo:
    """Load a tokenizer and resolve its special-token ids for ``kind``.

    Args:
        path: a tokenizer.json file, or ``hf:NAME`` for a pretrained tokenizer from the
            Hugging Face hub (``tokenizers.Tokenizer.from_pretrained``, falling back to the
            fast tokenizer of ``transformers.AutoTokenizer``; needs internet).
        kind: ``wordpiece``, ``bpe`` or ``unigram``.
    Raises:
        UserError: unknown kind; file missing/unreadable; hub name not loadable; the
            tokenizer lacks one of the kind's special tokens.
    """
    roles = SPECIAL_TOKENS.get(kind)
    if roles is None:
        raise UserError(f"tokenizer.kind={kind!r} is not one of: {', '.join(SPECIAL_TOKENS)}")
    where = str(path)
    if where.startswith(HF_PREFIX):
        tok = _from_hub(where[len(HF_PREFIX):])
    else:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"tokenizer file not found: {p}; point tokenizer.path at a tokenizer.json (or hf:NAME)")
        try:
            tok = Tokenizer.from_file(str(p))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise UserError(f"cannot load tokenizer {p} ({str(e).splitlines()[0]}); pass a tokenizer.json of the "
                            "tokenizers library, such as the one data-prep writes beside the shards") from None
    ids = {}
    for role, token in roles.items():
        i = tok.token_to_id(token)
        if i is None:
            raise UserError(f"tokenizer {where} has no {token!r} token; it is not a {kind} tokenizer (set tokenizer.kind)")
        ids[role] = i
    # Text is text: a literal "[SEP]", "</s>" or "<unk>" in a document is encoded as the
    # characters it is made of, never as the special token (BERT's and ALBERT's
    # create_pretraining_data.py tokenize text without special-token matching; the
    # pipeline places every special token itself, by id). Not stored in tokenizer.json,
    # so set on every load.
    tok.encode_special_tokens = True
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


def _from_hub(name: str) -> Tokenizer:
    """``tokenizers.Tokenizer`` of hub model ``name``; UserError (one line) if unavailable."""
    if not name:
        raise UserError("tokenizer.path=hf: needs a model name, e.g. hf:bert-base-uncased")
    try:
        return Tokenizer.from_pretrained(name)
    except Exception as first:  # no tokenizer.json on the hub, or no network
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(name, use_fast=True).backend_tokenizer
        except Exception:
            msg = str(first).strip().splitlines()[0] if str(first).strip() else type(first).__name__
            raise UserError(f"cannot load tokenizer hf:{name}: {msg}; check the name and the network, or use a tokenizer.json") from None


def _added_special_ids(tok: Tokenizer) -> set:
    """Ids of tokens added as special (never masked, never drawn as random replacements)."""
    if not hasattr(tok, "get_added_tokens_decoder"):
        return set()
    return {int(i) for i, a in tok.get_added_tokens_decoder().items() if a.special}
