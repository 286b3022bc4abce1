"""The three tokenizers (BERT's WordPiece, RoBERTa's byte-level BPE, ALBERT's unigram):
special-token ids, round trips on real text, normalization, and word starts taken from the
pre-tokenizer (data_prep.words)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from common.errors import UserError
from data_prep.corpus import read_documents
from data_prep.sentences import split_sentences
from data_prep.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_tokenizer
from data_prep.words import encode_with_words, word_index, word_starts_from_word_ids

KINDS = ("wordpiece", "bpe", "unigram")


def pydoc_texts():
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    """Each kind trained on the pydoc topics with a 2000-token vocabulary (~2 s in all)."""
    root = tmp_path_factory.mktemp("tokenizers")
    return {k: load_tokenizer(train_tokenizer(k, pydoc_texts(), 2000, 2, root / f"{k}.json"), k) for k in KINDS}


@pytest.fixture(scope="module")
def nltk_sentences(nltk_dir):
    """~1200 real sentences from four nltk corpora (news, fiction, web text, radio transcripts)."""
    out = []
    for src in ("gutenberg.zip", "reuters.zip", "webtext.zip", "abc.zip"):
        for doc in read_documents(str(nltk_dir / src), max_documents=3):
            out.extend(split_sentences(doc.text)[:150])
    assert len(out) > 1000
    return out


def test_special_token_ids_per_kind(toks):
    expected = {
        # BERT's vocabulary has [PAD] first; ALBERT's SentencePiece model <pad> <unk> [CLS] [SEP] [MASK].
        "wordpiece": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4},
        "bpe": {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4},
        "unigram": {"<pad>": 0, "<unk>": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4},
    }
    for kind, info in toks.items():
        assert {t: info.tokenizer.token_to_id(t) for t in expected[kind]} == expected[kind]
        roles = SPECIAL_TOKENS[kind]
        assert info.cls_id == expected[kind][roles["cls"]] and info.sep_id == expected[kind][roles["sep"]]
        assert info.pad_id == expected[kind][roles["pad"]] and info.mask_id == expected[kind][roles["mask"]]
        assert info.unk_id == expected[kind][roles["unk"]]
        assert info.special_ids.tolist() == [0, 1, 2, 3, 4]
        assert 1500 < info.vocab_size <= 2000


@pytest.mark.parametrize("kind", ["wordpiece", "unigram"])
def test_pair_template_for_users_of_the_file(toks, kind):
    """BERT and ALBERT: [CLS] A [SEP] B [SEP] with token types 0 0 0 1 1."""
    info = toks[kind]
    enc = info.tokenizer.encode("alpha", "beta")
    ids, types = enc.ids, enc.type_ids
    assert ids[0] == info.cls_id and ids[-1] == info.sep_id and ids.count(info.sep_id) == 2
    first_sep = ids.index(info.sep_id)
    assert set(types[: first_sep + 1]) == {0} and set(types[first_sep + 1 :]) == {1}


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_on_nltk_sentences(toks, nltk_sentences, kind):
    """decode(encode(x)) == normalize(x) for every sentence without an unknown character."""
    info = toks[kind]
    encoded = encode_with_words(info, nltk_sentences)
    known = [(s, ids) for s, (ids, _) in zip(nltk_sentences, encoded) if info.unk_id not in ids]
    # Unknown characters (absent from the pydoc training text) must stay rare; bpe has none.
    assert len(known) >= 0.97 * len(nltk_sentences)
    if kind == "bpe":
        assert len(known) == len(nltk_sentences)
    bad = [(s, info.decode(ids)) for s, ids in known if info.decode(ids) != info.normalize(s)]
    assert not bad, bad[:3]


def test_normalize_per_kind(toks):
    text = "Café Déjà-Vu,  OK?\tYes ``quoted'' don't"
    # BERT: lower case, accents stripped, punctuation split off into words.
    assert toks["wordpiece"].normalize(text) == "cafe deja - vu, ok? yes ` ` quoted ' ' don ' t"
    # RoBERTa: lossless bytes after the prefix space.
    assert toks["bpe"].normalize(text) == " " + text
    # ALBERT: quotes as in its preprocess_text, NFKD without accents, lower case, spaces collapsed.
    assert toks["unigram"].normalize(text) == "cafe deja-vu, ok? yes \"quoted\" don't"
    assert toks["unigram"].normalize("\ufb01ne") == "fine"  # NFKD: the ligature decomposes


@pytest.mark.parametrize("kind", KINDS)
def test_word_starts_match_whitespace_words(toks, nltk_sentences, kind):
    """On letters-only text every whitespace word is exactly one pre-tokenizer word."""
    info = toks[kind]
    plain = [" ".join(w for w in s.split() if w.isascii() and w.isalpha()) for s in nltk_sentences]
    plain = [p for p in plain if p]
    for text, (ids, starts) in zip(plain, encode_with_words(info, plain)):
        words = text.split()
        assert starts.dtype == np.int8 and starts.shape == ids.shape and starts[0] == 1
        assert int(starts.sum()) == len(words), text
        pieces = np.split(ids, np.flatnonzero(starts)[1:])
        assert [info.decode(p).strip() for p in pieces] == [info.normalize(w).strip() for w in words]
    # Not vacuous: with 2000 entries most sentences have a word of several tokens.
    multi = sum(int(len(ids) > starts.sum()) for ids, starts in encode_with_words(info, plain))
    assert multi > len(plain) // 2


def test_word_starts_with_punctuation_follow_the_pre_tokenizer(toks):
    """BERT's words split off punctuation; byte-level BPE words carry their leading space;
    Metaspace words start at ▁ and keep their punctuation."""
    text = "Hello, world! It's fine."
    got = {}
    for kind, info in toks.items():
        [(ids, starts)] = encode_with_words(info, [text])
        pieces = np.split(ids, np.flatnonzero(starts)[1:])
        got[kind] = [info.decode(p) for p in pieces]
    assert got["wordpiece"] == ["hello", ",", "world", "!", "it", "'", "s", "fine", "."]
    assert got["bpe"] == [" Hello", ",", " world", "!", " It", "'s", " fine", "."]
    assert got["unigram"] == ["hello,", "world!", "it's", "fine."]


def test_word_starts_from_word_ids_and_word_index():
    starts = word_starts_from_word_ids([0, 0, 1, None, None, 2, 2, 2])
    assert starts.tolist() == [1, 0, 1, 1, 1, 1, 0, 0]
    assert word_starts_from_word_ids([]).tolist() == []
    assert word_index(starts).tolist() == [0, 0, 1, 2, 3, 4, 4, 4]
    # A sequence cut in the middle of a word counts the cut part as word 0.
    assert word_index(np.array([0, 0, 1, 0], np.int8)).tolist() == [0, 0, 1, 1]


def test_saved_file_reloads_identically(toks, tmp_path):
    info = toks["unigram"]
    again = load_tokenizer(info.save(tmp_path / "t.json"), "unigram")
    text = "The quick brown fox."
    assert again.encode_batch([text]) == info.encode_batch([text])
    assert not (tmp_path / "t.json.tmp").exists()


def test_load_and_train_errors(toks, tmp_path):
    path = tmp_path / "wp.json"
    toks["wordpiece"].save(path)
    with pytest.raises(UserError, match="not a bpe tokenizer"):
        load_tokenizer(path, "bpe")
    with pytest.raises(UserError, match="not one of"):
        load_tokenizer(path, "sentencepiece")
    with pytest.raises(UserError, match="not found"):
        load_tokenizer(tmp_path / "missing.json", "wordpiece")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot load"):
        load_tokenizer(tmp_path / "bad.json", "wordpiece")
    with pytest.raises(UserError, match="needs a model name"):
        load_tokenizer("hf:", "wordpiece")
    with pytest.raises(UserError, match="not one of"):
        train_tokenizer("sentencepiece", ["a"], 100, 1, tmp_path / "x.json")
    with pytest.raises(UserError, match="must exceed"):
        train_tokenizer("unigram", ["a"], 5, 1, tmp_path / "x.json")
    assert not Path(tmp_path / "x.json").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_training_twice_gives_identical_bytes(kind, tmp_path):
    """Reproducible training for every kind (tokenizers' own WordPiece and Unigram trainers
    are not, huggingface/tokenizers#1794)."""
    a = train_tokenizer(kind, pydoc_texts(), 2000, 2, tmp_path / "a.json").read_bytes()
    b = train_tokenizer(kind, iter(pydoc_texts()), 2000, 2, tmp_path / "b.json").read_bytes()
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()


def test_special_token_strings_in_text_are_text(toks):
    """A literal "[SEP]", "</s>", "<unk>" or "[MASK]" in a document is encoded as its
    characters, never as a special id (BERT's and ALBERT's create_pretraining_data.py)."""
    text = "a <unk> b [SEP] c </s> d [MASK] e <s> f [CLS] g <pad> h <mask>"
    for kind, info in toks.items():
        (ids, _), = encode_with_words(info, [text])
        assert not set(ids.tolist()) & set(info.special_ids.tolist()), (kind, info.tokenizer.decode(ids.tolist()))


def test_reference_word_starts_follow_the_reference_rules(toks):
    """word_boundaries=reference: ALBERT's _is_start_piece_sp for unigram (a word starts at
    "▁", "<", punctuation, digits and non-English characters), BERT's "##" rule for
    wordpiece (= the pre-tokenizer's words), fairseq's "Ġ" rule for bpe."""
    from data_prep.words import is_start_piece

    sp = {"▁the": True, "s": False, "ing": False, ",": True, ".": True, "1990": True, "'s": True, "é": True,
          "<": True, "▁": True, "x2": True, "ab-c": False}
    assert {p: is_start_piece("unigram", p) for p in sp} == sp
    assert [is_start_piece("wordpiece", p) for p in ("the", "##s", ",")] == [True, False, True]
    assert [is_start_piece("bpe", p) for p in ("Ġthe", "s", ",")] == [True, False, False]
    text = ["The 1990s, in Zürich: well-known."]
    for kind, info in toks.items():
        (ids, ref), = encode_with_words(info, text, "reference")
        (_, pre), = encode_with_words(info, text)
        pieces = [info.tokenizer.id_to_token(int(i)) for i in ids]
        assert ref[0] == 1 and ref[1:].tolist() == [int(is_start_piece(kind, p)) for p in pieces[1:]]
        if kind == "wordpiece":
            assert ref.tolist() == pre.tolist()
        if kind == "unigram":  # digits and punctuation start words inside a Metaspace word
            assert ref.sum() > pre.sum()
