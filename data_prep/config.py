"""Typed data configuration (OmegaConf structured configs).

Every recipe choice of the data pipeline lives in exactly one key here; the module that
acts on a key is named next to it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Literal, Optional, Sequence, get_args

from omegaconf import OmegaConf

from common.configfile import merge_into, parse_overrides, read_yaml
from common.errors import UserError
from common.schema import Format, SentenceObjective
from data_prep.corpus import DECODE_ERRORS, LAYOUTS, check_encoding
from data_prep.instances import SENTENCE_LABEL_RULES, SENTENCE_SEPARATORS, SHORT_SEQ_RULES

# Typed choices: a value outside them fails when the config loads, naming the valid ones.
TokenizerKind = Literal["bpe", "wordpiece", "unigram"]
MaskingMode = Literal["static", "dynamic"]
MaskingUnit = Literal["token", "whole_word", "ngram"]
# Rule sets of the pair and word data (see DataConfig); "reference" = the reference code's.
WordBoundaries = Literal["reference", "pretokenizer"]
StaticCopies = Literal["reference", "remask"]
ShortSeqRule = Literal[SHORT_SEQ_RULES]
SentenceLabelRule = Literal[SENTENCE_LABEL_RULES]
SentenceSeparator = Literal[SENTENCE_SEPARATORS]
# How the trainer batches DOC-SENTENCES rows (read by pretrain.training.batching; data bytes unchanged).
DocSentencesBatching = Literal["tokens", "sequences"]
CorpusLayout = Literal[LAYOUTS]
CorpusErrors = Literal[DECODE_ERRORS]
TOKENIZER_KINDS = get_args(TokenizerKind)
MASKING_MODES = get_args(MaskingMode)
MASKING_UNITS = get_args(MaskingUnit)
DOC_SENTENCES_BATCHING = get_args(DocSentencesBatching)


@dataclass
class TokenizerConfig:
    """Tokenizer choice (read by ``data_prep.tokenizer``).

    kind: ``bpe`` = byte-level BPE with RoBERTa's special tokens (Liu et al. 2019, §4.4);
        ``wordpiece`` = lower-cased WordPiece with BERT's (Devlin et al. 2019, §3);
        ``unigram`` = SentencePiece-style unigram with ALBERT's (Lan et al. 2020, §4.1).
    vocab_size: target vocabulary size when training, special tokens included (paper
        scale: 30522 BERT, 50265 RoBERTa, 30000 ALBERT).
    path: an existing tokenizer.json to use instead of training one, or ``hf:NAME`` for a
        pretrained tokenizer from the Hugging Face hub (needs internet; its special tokens
        must be the kind's).
    min_frequency: minimum pair/token count for a merge when training.
    """

    kind: TokenizerKind = "bpe"
    vocab_size: int = 8192
    path: Optional[str] = None
    min_frequency: int = 2


@dataclass
class MaskingConfig:
    """Masked-LM corruption (read by ``data_prep.masking``).

    mode: ``static`` = masks drawn once at data-prep time, ``dupe_factor`` copies each with
        its own mask (Devlin et al. 2019, appendix A.2); ``dynamic`` = a fresh mask each time
        a sequence is drawn (Liu et al. 2019, §4.1).
    dupe_factor: number of differently-masked copies written in static mode (BERT: 10).
    mlm_probability: share of non-special tokens selected for prediction (BERT §3.1: 0.15).
    mask_replace_prob / random_replace_prob: of the selected tokens, the share replaced by
        the mask token / by a random token; the rest stay unchanged (BERT §3.1: 0.8 / 0.1).
    validation_seed: seed of the single fixed mask of the validation split, shared by
        every arm of an ablation so all arms are scored on the same positions.
    unit: what is chosen for prediction: ``token`` = single tokens (BERT §3.1);
        ``whole_word`` = all tokens of a word together (BERT's later whole-word-masking
        release); ``ngram`` = spans of 1..``max_ngram`` whole words, length n drawn with
        p(n) ∝ 1/n (ALBERT, Lan et al. 2020, §4.1). Words come from the tokenizer's
        pre-tokenizer (``data_prep.words``).
    max_ngram: longest n-gram for ``unit=ngram`` (ALBERT: 3).
    max_predictions_per_seq: cap on predicted tokens per sequence (BERT's reference: 20 at
        length 128, 80 at 512; ALBERT: 20 at 512); None = no cap.
    copies: what the ``dupe_factor`` static copies share (``data_prep.build``):
        ``reference`` = instance creation is rerun for every copy — new A/B splits,
        NotNext partners, short targets and truncation, then a new mask — as the
        ``for _ in range(dupe_factor)`` loop of ``create_training_instances`` in
        google-research/bert's and google-research/albert's ``create_pretraining_data.py``
        (BERT appendix A.2); the training split is then all copies' rows together, one
        pool the trainer shuffles, as the reference's one shuffled instance list.
        ``remask`` = every copy holds the same rows, only the mask differs, and epoch
        ``e`` reads copy ``e % dupe_factor``: RoBERTa's static baseline, "each sequence is
        masked in 10 different ways over the 40 epochs" (Liu et al. 2019, §4.1).
    smoothing: 0 = every maskable token equally likely to be chosen (BERT §3.1); s > 0 =
        a token is chosen with probability proportional to its training-split frequency
        to the power -s, so rare tokens are predicted more often: DistilBERT's released
        recipe (Hugging Face ``examples/research_projects/distillation``, ``train.py``
        ``--mlm_smoothing``, default 0.7, after XLM; ``data_prep.token_counts``). Applies
        to the dynamically drawn training masks of ``unit: token`` only; the validation
        mask stays uniform (every arm scored on the same positions), so the key never
        changes the shards' bytes and is left out of the fingerprint. Read by
        ``data_prep.token_counts.masking_weights``.
    """

    mode: MaskingMode = "dynamic"
    dupe_factor: int = 10
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    validation_seed: int = 4242
    unit: MaskingUnit = "token"
    max_ngram: int = 3
    max_predictions_per_seq: Optional[int] = None
    copies: StaticCopies = "remask"
    smoothing: float = 0.0


@dataclass
class DataConfig:
    """Everything that determines the bytes of a shard directory.

    corpus: a path (directory, glob, .txt, .jsonl, .parquet, .zip or a directory of zips),
        ``hf:NAME[:CONFIG]`` for ``datasets.load_dataset``, or ``pydoc`` (the CPython
        reference documentation embedded in every Python; the offline default).
    corpus_layout: how a text file (named directly, found in a folder, or a zip member)
        is cut into documents, the same rule for all (``data_prep.corpus``): ``auto`` =
        WikiText articles if the file has `` = Title = `` headings, else one document per
        file; ``file``; ``headings``; ``blank_lines`` (BERT's input format: a blank line
        between documents); ``lines`` (one document per line).
    corpus_encoding: the text encoding of the corpus files (a Python codec name:
        ``utf-8``, ``latin-1``, ``cp1252``, ...).
    corpus_errors: undecodable bytes: ``replace`` (U+FFFD, counted and reported per
        file), ``ignore`` (dropped, counted), ``strict`` (a one-line error naming the file).
    strip_pos_tags: corpus sources (zip or file stem, e.g. ``brown``) whose whitespace tokens
        are ``word/tag`` and get their tags stripped.
    max_documents: read only the first N documents (for quick tests); None = all.
    validation_fraction: share of documents (by a stable hash of the document id) held out.
    format / sentence_objective: input format and sentence-level task (RoBERTa §4.2).
    max_seq_length: tokens per sequence including special tokens (BERT/RoBERTa: 512).
    short_seq_prob: chance of a random shorter target length in [2, max_seq_length - 3]
        for SEGMENT-PAIR data (Devlin et al. 2019, appendix A.2; BERT's reference: 0.1);
        read by ``data_prep.instances``.
    short_seq_rule: when that chance is taken (``data_prep.instances``): ``reference`` =
        once per document, the target kept for all of the document's pairs
        (``create_instances_from_document`` of google-research/bert's
        ``create_pretraining_data.py``; fewer, longer documents thus give more short
        pairs); ``per_chunk`` = anew for every chunk of sentences, so about
        ``short_seq_prob`` of the pairs get a short target (the variant).
    sentence_labels: how SEGMENT-PAIR pairs are labelled (``data_prep.instances``):
        ``reference`` = ``create_instances_from_document`` of google-research/bert (NSP,
        BERT §3.1: a one-sentence chunk is always NotNext, the random document drawn with
        up to 10 tries to avoid the current one) and of google-research/albert (SOP,
        ALBERT §3.2: a one-sentence chunk gets a random-document B labelled 1, the others
        are swapped with probability 0.5); ``balanced`` = every pair two or more
        sentences, its label a fair coin, SOP always two consecutive segments (the
        variant). SENTENCE-PAIR data has only ``balanced``.
    word_boundaries: the ``word_starts`` column that whole-word and n-gram masking read
        (``data_prep.words``): ``reference`` = the reference's rule per tokenizer kind —
        ALBERT's ``_is_start_piece_sp`` for unigram (a word starts at every ``▁`` piece,
        at pieces starting with ``<``, at punctuation pieces and at pieces with a digit or
        a non-English character; google-research/albert ``create_pretraining_data.py``,
        ALBERT §4.1 n-gram masking), BERT's ``_is_start_piece_bert`` for wordpiece (no
        ``##``), fairseq's ``get_whole_word_mask`` for bpe (a ``Ġ`` piece); ``pretokenizer``
        = the tokenizer's pre-tokenizer words (the variant; the same as ``reference`` for
        wordpiece).
    sentence_separator: the layout of packed rows (``full_sentences``, ``doc_sentences``;
        ``data_prep.instances.pack_sentences``): ``none`` = ``<s> s1 s2 … </s>``, one more
        ``</s>`` where a document ends inside a FULL-SENTENCES row; ``eos`` = fairseq's
        layout of RoBERTa's data, ``</s>`` after every sentence and one more ``</s>`` unit
        between documents (fairseq ``fairseq/data/token_block_dataset.py``,
        ``TokenBlockDataset`` with ``break_mode="complete"`` over lines that each end in
        ``</s>``; Liu et al. 2019, §4.2: "add an extra separator token between
        documents"). Pair formats take ``none`` only.
    rows_per_shard: most sequences per shard file; a chunk with more rows writes several.
    chunk_documents: documents per chunk (``data_prep.build``): the unit of streaming,
        parallel work and resuming, the window in which documents are shuffled and
        FULL-SENTENCES crosses documents, and the pool NotNext segments are drawn from.
        A chunk also closes at ``data_prep.build.CHUNK_CHARACTERS`` characters, so memory
        is bounded by the chunk size, not by the corpus size. A split's last chunk takes a
        lone remaining document, so every chunk of a split with >= 2 documents has >= 2.
    doc_sentences_batching: how the trainer batches ``format=doc_sentences`` rows, whose
        lengths vary: ``tokens`` = a variable number of rows with about
        ``global_batch_size x max_seq_length`` tokens per step (RoBERTa, Liu et al. 2019,
        §4.2); ``sequences`` = ``global_batch_size`` rows padded to the longest. Packing
        short rows together is FULL-SENTENCES (use that format). Does not change the data.
    seed: seed of everything random in data prep except the validation mask.
    output_dir: where shards go; None = ``data-cache/<fingerprint>`` in the working dir.
    """

    corpus: str = "pydoc"
    corpus_layout: CorpusLayout = "auto"
    corpus_encoding: str = "utf-8"
    corpus_errors: CorpusErrors = "replace"
    strip_pos_tags: List[str] = field(default_factory=lambda: ["brown"])
    max_documents: Optional[int] = None
    validation_fraction: float = 0.05
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    format: Format = "full_sentences"
    sentence_objective: SentenceObjective = "none"
    max_seq_length: int = 128
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    rows_per_shard: int = 16384
    short_seq_prob: float = 0.1
    short_seq_rule: ShortSeqRule = "per_chunk"
    sentence_labels: SentenceLabelRule = "balanced"
    word_boundaries: WordBoundaries = "pretokenizer"
    sentence_separator: SentenceSeparator = "none"
    chunk_documents: int = 1000
    doc_sentences_batching: DocSentencesBatching = "tokens"
    num_workers: int = 1
    seed: int = 12345
    output_dir: Optional[str] = None


def check_data_config(cfg: DataConfig) -> None:
    """Reject value combinations the pipeline cannot build. Raises UserError (one line).
    Single choices (format, tokenizer.kind, masking.mode, corpus_layout ...) are typed: a bad
    one fails earlier, when the config loads."""
    check_encoding(cfg.corpus_encoding)
    m = cfg.masking
    if m.max_ngram < 1:
        raise UserError(f"masking.max_ngram={m.max_ngram} must be >= 1")
    if m.max_predictions_per_seq is not None and m.max_predictions_per_seq < 1:
        raise UserError(f"masking.max_predictions_per_seq={m.max_predictions_per_seq} must be >= 1 (or null for no cap)")
    if not 0.0 < m.mlm_probability < 1.0:
        raise UserError(f"masking.mlm_probability={m.mlm_probability} must be in (0, 1)")
    if m.mask_replace_prob < 0 or m.random_replace_prob < 0 or m.mask_replace_prob + m.random_replace_prob > 1:
        raise UserError("masking.mask_replace_prob + masking.random_replace_prob must be within [0, 1]")
    if m.dupe_factor < 1:
        raise UserError(f"masking.dupe_factor={m.dupe_factor} must be >= 1")
    if m.smoothing < 0:
        raise UserError(f"masking.smoothing={m.smoothing} must be >= 0 (0 = uniform, DistilBERT: 0.7)")
    if m.smoothing > 0 and (m.mode != "dynamic" or m.unit != "token"):
        raise UserError(f"masking.smoothing={m.smoothing} weights the dynamically drawn choice of single tokens; it "
                        f"needs masking.mode=dynamic and masking.unit=token (got mode={m.mode}, unit={m.unit}), "
                        "or set masking.smoothing=0")
    if cfg.max_seq_length < 8:
        raise UserError(f"max_seq_length={cfg.max_seq_length} is too short; use at least 8")
    if not 0.0 < cfg.validation_fraction < 1.0:
        raise UserError(f"validation_fraction={cfg.validation_fraction} must be in (0, 1)")
    pair = cfg.format in ("segment_pair", "sentence_pair")
    if pair != (cfg.sentence_objective != "none"):
        need = "nsp or sop" if pair else "none"
        raise UserError(
            f"format={cfg.format} needs sentence_objective={need}, got {cfg.sentence_objective}"
        )
    if cfg.format == "sentence_pair" and cfg.sentence_labels == "reference":
        raise UserError("format=sentence_pair has no reference labelling rule (it is RoBERTa's §4.2 variant); set sentence_labels=balanced")
    if pair and cfg.sentence_separator != "none":
        raise UserError(f"sentence_separator={cfg.sentence_separator} is a layout of the packed formats "
                        f"(full_sentences, doc_sentences); format={cfg.format} needs sentence_separator=none")
    if not 0.0 <= cfg.short_seq_prob <= 1.0:
        raise UserError(f"short_seq_prob={cfg.short_seq_prob} must be in [0, 1]")
    if cfg.chunk_documents < 2:
        raise UserError(f"chunk_documents={cfg.chunk_documents} must be >= 2 (NotNext segments come from another document of the chunk)")
    if cfg.num_workers < 1:
        raise UserError(f"num_workers={cfg.num_workers} must be >= 1")
    t = cfg.tokenizer
    if t.path is None:  # a tokenizer to train: too small a vocabulary fails only after reading the corpus
        from data_prep.tokenizer import SPECIAL_TOKENS

        # byte-level BPE starts from all 256 bytes (Liu et al. 2019 §4.4), so it never has fewer ids
        least = len(SPECIAL_TOKENS[t.kind]) + (256 if t.kind == "bpe" else 0) + 1
        if t.vocab_size < least:
            raise UserError(f"tokenizer.vocab_size={t.vocab_size} is too small for a {t.kind} tokenizer: it needs at least "
                            f"{least} ({len(SPECIAL_TOKENS[t.kind])} special tokens{', 256 bytes' if t.kind == 'bpe' else ''}"
                            " and one more)")
        if t.min_frequency < 1:
            raise UserError(f"tokenizer.min_frequency={t.min_frequency} must be >= 1")


# Keys added after shard directories were built, with the value those builds had: left out
# of the fingerprint at that value, so a directory built before the key existed stays
# current, while any other value gives other data a fingerprint of its own.
KEYS_ADDED_LATER = {"sentence_separator": "none"}


def data_fingerprint(cfg: DataConfig) -> str:
    """16 hex digits identifying the data a config builds (``output_dir``, ``num_workers``,
    ``doc_sentences_batching`` and ``masking.smoothing`` excluded: they do not change the bytes; a key of
    ``KEYS_ADDED_LATER`` counts only when it is not at its earlier value)."""
    d = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    for key in ("output_dir", "num_workers", "doc_sentences_batching"):
        d.pop(key, None)
    for key, earlier in KEYS_ADDED_LATER.items():
        if d.get(key) == earlier:
            d.pop(key)
    # Dynamic training masks are drawn by the trainer and the validation mask ignores it.
    d["masking"].pop("smoothing", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def resolve_output_dir(cfg: DataConfig) -> Path:
    """The shard directory of ``cfg``: ``output_dir`` or ``data-cache/<fingerprint>``."""
    if cfg.output_dir:
        return Path(cfg.output_dir)
    return Path("data-cache") / data_fingerprint(cfg)


def load_data_config(path: Optional[str], overrides: Sequence[str] = ()) -> DataConfig:
    """Data config from an optional YAML file plus ``key=value`` overrides; validated."""
    layers = [read_yaml(path)] if path else []
    cfg = merge_into(DataConfig, *layers, parse_overrides(overrides), where=path or "data config")
    check_data_config(cfg)
    return cfg
