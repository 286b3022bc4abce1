"""Masking units (data_prep.masking): BERT's token and whole-word masking, ALBERT's n-gram
masking (p(n) ∝ 1/n, Lan et al. 2020 §4.1), max_predictions_per_seq, special tokens,
determinism, and the token unit's draws staying those of the rule before units existed."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import UserError
from common.schema import IGNORE_INDEX
from data_prep.config import DataConfig, MaskingConfig, check_data_config
from data_prep.corpus import read_documents
from data_prep.masking import Masker, ngram_probabilities, sequence_rng
from data_prep.sentences import split_sentences
from data_prep.tokenizer import load_tokenizer, train_tokenizer
from data_prep.words import encode_with_words, word_index

VOCAB, MASK, CLS, SEP = 1000, 4, 2, 3
SPECIAL = np.arange(5)
UNITS = ("token", "whole_word", "ngram")


def synthetic(gen: np.random.Generator, seq: int):
    """``[CLS] A [SEP] B [SEP]`` of ``seq`` tokens with words of 1-4 tokens (mostly 1, as
    in English WordPiece text); returns (ids int32, word_starts int8)."""
    lengths, total = [], 0
    while total < seq - 3:
        n = min(int(gen.choice([1, 1, 1, 1, 2, 2, 3, 4])), seq - 3 - total)
        lengths.append(n)
        total += n
    ws = np.zeros(total, np.int8)
    ws[np.cumsum([0] + lengths[:-1])] = 1
    cut = int(np.flatnonzero(ws)[len(lengths) // 2])  # segment B starts at a word
    body = gen.integers(5, VOCAB, total).astype(np.int32)
    ids = np.concatenate([[CLS], body[:cut], [SEP], body[cut:], [SEP]]).astype(np.int32)
    starts = np.concatenate([[1], ws[:cut], [1], ws[cut:], [1]]).astype(np.int8)
    return ids, starts


def run(masker: Masker, rows, seed: int = 7):
    return [masker(ids, sequence_rng(seed, 1, 0, i), ws) for i, (ids, ws) in enumerate(rows)]


@pytest.fixture(scope="module")
def rows128():
    gen = np.random.default_rng(0)
    return [synthetic(gen, 128) for _ in range(1000)]  # 125k maskable tokens


@pytest.fixture(scope="module")
def wordpiece_rows(tmp_path_factory, nltk_dir):
    """Real word boundaries: BERT-style sequences of nltk sentences, WordPiece (2000 entries,
    so many words have several pieces) trained on the pydoc topics."""
    from pydoc_data.topics import topics

    path = train_tokenizer("wordpiece", [topics[k] for k in sorted(topics)], 2000, 2, tmp_path_factory.mktemp("wp") / "t.json")
    info = load_tokenizer(path, "wordpiece")
    sents = [s for doc in read_documents(str(nltk_dir / "gutenberg.zip"), max_documents=2) for s in split_sentences(doc.text)]
    rows, ids, ws = [], [info.cls_id], [1]
    for sid, sws in encode_with_words(info, sents[:4000]):
        if len(ids) + sid.size + 1 > 128:
            rows.append((np.asarray(ids + [info.sep_id], np.int32), np.asarray(ws + [1], np.int8)))
            ids, ws = [info.cls_id], [1]
        ids += sid[: 126].tolist()
        ws += sws[: 126].tolist()
    assert len(rows) >= 1000
    return info, rows


def assert_rates(results, rows, rate=0.15, tol=0.01):
    labels = np.concatenate([lab for _, lab in results])
    out = np.concatenate([o for o, _ in results])
    ids = np.concatenate([i for i, _ in rows])
    maskable = ~np.isin(ids, SPECIAL)
    sel = labels != IGNORE_INDEX
    assert maskable.sum() >= 100_000
    assert (labels[sel] == ids[sel]).all()
    n = sel.sum()
    assert abs(n / maskable.sum() - rate) < tol
    masked = (out[sel] == MASK).mean()
    kept = (out[sel] == ids[sel]).mean()
    assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and abs(1 - masked - kept - 0.1) < 0.01


@pytest.mark.parametrize("unit", UNITS)
def test_rates_and_80_10_10_per_token(rows128, unit):
    """15% of the maskable tokens are predicted; each predicted token, whatever the unit,
    is masked/replaced/kept 80/10/10 (decided per token, as BERT's and ALBERT's code)."""
    assert_rates(run(Masker(VOCAB, MASK, SPECIAL, unit=unit), rows128), rows128)


def test_token_unit_draws_what_the_rule_before_units_drew(rows128):
    """The token unit is the issue #2 rule draw for draw, so earlier builds keep their bytes."""
    masker = Masker(VOCAB, MASK, SPECIAL)
    pool = np.arange(5, VOCAB, dtype=np.int32)
    for i, (ids, ws) in enumerate(rows128[:300]):
        rng = sequence_rng(3, 2, 1, i)
        cand = np.flatnonzero(~np.isin(ids, SPECIAL))
        n = max(1, int(round(cand.size * 0.15)))
        chosen = rng.choice(cand, size=n, replace=False)
        u = rng.random(n)
        out = ids.copy()
        out[chosen[u < 0.8]] = MASK
        rnd = chosen[(u >= 0.8) & (u < 0.9)]
        if rnd.size:
            out[rnd] = rng.choice(pool, size=rnd.size)
        labels = np.full(ids.shape, IGNORE_INDEX, np.int32)
        labels[chosen] = ids[chosen]
        got = masker(ids, sequence_rng(3, 2, 1, i), ws)
        assert (got[0] == out).all() and (got[1] == labels).all()


@pytest.mark.parametrize("unit", ["whole_word", "ngram"])
def test_words_are_never_split_on_real_text(wordpiece_rows, unit):
    info, rows = wordpiece_rows
    masker = Masker(info.vocab_size, info.mask_id, info.special_ids, unit=unit)
    multi_piece_words_labelled = 0
    for i, (ids, ws) in enumerate(rows):
        out, labels = masker(ids, sequence_rng(1, 2, 0, i), ws)
        words = word_index(ws)
        sel = labels != IGNORE_INDEX
        per_word = np.bincount(words, weights=sel, minlength=words.max() + 1)
        size = np.bincount(words)
        assert ((per_word == 0) | (per_word == size)).all(), (i, unit)
        multi_piece_words_labelled += int(((per_word == size) & (size > 1)).sum())
        assert not np.isin(ids[sel], info.special_ids).any()
    assert multi_piece_words_labelled > 1000  # the check saw many split words


def test_ngram_lengths_follow_one_over_n():
    """ALBERT §4.1: p(n) = (1/n) / Σ_{k≤3} 1/k. The first span of a sequence is drawn before
    any budget or overlap constraint can bend it: its word count must follow p(n) (±1.5
    points, > 3 standard errors over 12k spans). All spans together lean shorter — a span
    overlapping an earlier one is skipped and one exceeding the budget shortened, as in
    ALBERT's create_pretraining_data — so for them only the order p1 > p2 > p3 and a looser
    bound (8 points; 6 measured with these word lengths) are required."""
    masker = Masker(VOCAB, MASK, SPECIAL, unit="ngram", max_ngram=3)
    # The rng, not the layout, draws the spans: 200 layouts serve 12k sequences.
    layouts = [synthetic(np.random.default_rng(100 + j), 256) for j in range(200)]
    firsts, allspans = [], []
    for i in range(12_000):
        ids, ws = layouts[i % len(layouts)]
        _, span_words = masker.select(ids, sequence_rng(5, 1, 0, i), ws)
        firsts.append(int(span_words[0]))
        allspans.append(span_words)
    p = ngram_probabilities(3)
    assert np.allclose(p, [6 / 11, 3 / 11, 2 / 11])
    first = np.bincount(firsts, minlength=4)[1:] / len(firsts)
    assert np.abs(first - p).max() < 0.015, first
    spans = np.concatenate(allspans)
    assert spans.size >= 10_000
    share = np.bincount(spans, minlength=4)[1:] / spans.size
    assert share[0] > share[1] > share[2] and np.abs(share - p).max() < 0.08, share


def test_ngram_spans_are_consecutive_whole_words(rows128):
    masker = Masker(VOCAB, MASK, SPECIAL, unit="ngram")
    for i, (ids, ws) in enumerate(rows128[:300]):
        positions, span_words = masker.select(ids, sequence_rng(9, 1, 0, i), ws)
        words = word_index(ws)
        starts = np.flatnonzero(ws)
        pos = 0
        for n in span_words.tolist():
            w0 = words[positions[pos]]
            want = np.arange(starts[w0], starts[w0 + n])  # n whole words, contiguous
            assert (positions[pos : pos + want.size] == want).all()
            assert not np.isin(ids[want], SPECIAL).any()  # never across [SEP]
            pos += want.size
        assert pos == positions.size and np.unique(positions).size == positions.size


@pytest.mark.parametrize("unit", UNITS)
def test_max_predictions_per_seq_caps(rows128, unit):
    cap = 7  # 15% of 125 = 19 would be predicted without the cap
    results = run(Masker(VOCAB, MASK, SPECIAL, unit=unit, max_predictions_per_seq=cap), rows128[:300])
    counts = np.array([(lab != IGNORE_INDEX).sum() for _, lab in results])
    assert counts.max() == cap and counts.min() >= 1
    if unit == "token":
        assert (counts == cap).all()
    else:  # whole units that would exceed the budget are skipped, never cut
        assert counts.mean() > cap - 1


@pytest.mark.parametrize("unit", UNITS)
def test_special_tokens_never_masked_nor_drawn(rows128, unit):
    masker = Masker(VOCAB, MASK, SPECIAL, unit=unit, mlm_probability=0.5, mask_replace_prob=0.0, random_replace_prob=1.0)
    for (ids, _), (out, labels) in zip(rows128[:200], run(masker, rows128[:200])):
        special = np.isin(ids, SPECIAL)
        assert (labels[special] == IGNORE_INDEX).all() and (out[special] == ids[special]).all()
        assert not np.isin(out[~special], SPECIAL).any()  # random replacements are ordinary tokens


@pytest.mark.parametrize("unit", UNITS)
def test_deterministic_per_sequence_rng(rows128, unit):
    masker = Masker(VOCAB, MASK, SPECIAL, unit=unit)
    a, b, c = run(masker, rows128[:50], seed=1), run(masker, rows128[:50], seed=1), run(masker, rows128[:50], seed=2)
    assert all((x[0] == y[0]).all() and (x[1] == y[1]).all() for x, y in zip(a, b))
    assert sum(int((x[1] != y[1]).any()) for x, y in zip(a, c)) > 45


def test_word_units_need_word_starts(rows128):
    ids, ws = rows128[0]
    for unit in ("whole_word", "ngram"):
        masker = Masker(VOCAB, MASK, SPECIAL, unit=unit)
        assert masker.needs_word_starts
        with pytest.raises(UserError, match="needs the word_starts column"):
            masker(ids, sequence_rng(0, 1, 0, 0))
        with pytest.raises(UserError, match="word_starts has"):
            masker(ids, sequence_rng(0, 1, 0, 0), ws[:-1])
    assert not Masker(VOCAB, MASK, SPECIAL).needs_word_starts


def test_word_starts_after_special_tokens_are_forced():
    """A pair truncated from the front may begin with a word's continuation: the masker
    starts a word after every special token, so such a piece is a unit of its own."""
    ids = np.array([CLS, 10, 11, 12, SEP, 13, 14, SEP], np.int32)
    ws = np.array([1, 0, 1, 0, 0, 0, 1, 0], np.int8)  # continuation after CLS and after SEP
    masker = Masker(VOCAB, MASK, SPECIAL, unit="whole_word", mlm_probability=0.99)
    positions, span_words = masker.select(ids, sequence_rng(0, 1, 0, 0), ws)
    assert sorted(positions.tolist()) == [1, 2, 3, 5, 6] and span_words.size == 4


def test_config_checks_masking_keys():
    check_data_config(DataConfig(masking=MaskingConfig(unit="ngram", max_ngram=3, max_predictions_per_seq=20)))
    from data_prep.config import load_data_config

    with pytest.raises(UserError, match="masking.unit='span' is not one of: token, whole_word, ngram"):
        load_data_config(None, ["masking.unit=span"])  # a typed choice: refused when the config loads
    for bad, msg in (
        (MaskingConfig(unit="ngram", max_ngram=0), "masking.max_ngram"),
        (MaskingConfig(max_predictions_per_seq=0), "masking.max_predictions_per_seq"),
    ):
        with pytest.raises(UserError, match=msg):
            check_data_config(DataConfig(masking=bad))
    masker = Masker.from_config(MaskingConfig(unit="ngram", max_ngram=2, max_predictions_per_seq=20), VOCAB, MASK, SPECIAL)
    assert (masker.unit, masker.max_ngram, masker.max_predictions_per_seq) == ("ngram", 2, 20)


def test_recipe_data_configs(configs_dir):
    """configs/data/{bert,albert}.yaml load, validate, and hold each paper's choices."""
    from data_prep.config import load_data_config

    bert = load_data_config(configs_dir / "data" / "bert.yaml")
    assert (bert.tokenizer.kind, bert.tokenizer.vocab_size, bert.format, bert.sentence_objective) == ("wordpiece", 30522, "segment_pair", "nsp")
    assert (bert.max_seq_length, bert.short_seq_prob, bert.masking.mode, bert.masking.dupe_factor) == (512, 0.1, "static", 10)
    assert (bert.masking.unit, bert.masking.max_predictions_per_seq) == ("token", 80)
    albert = load_data_config(configs_dir / "data" / "albert.yaml")
    assert (albert.tokenizer.kind, albert.tokenizer.vocab_size, albert.format, albert.sentence_objective) == ("unigram", 30000, "segment_pair", "sop")
    assert (albert.max_seq_length, albert.masking.unit, albert.masking.max_ngram, albert.masking.max_predictions_per_seq) == (512, "ngram", 3, 20)
