"""The BERT 80/10/10 corruption (Devlin et al. 2019, §3.1) as applied at data-prep time:
rates, special tokens, determinism of static copies, and the validation mask shared by
static and dynamic builds (Liu et al. 2019, §4.1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.schema import IGNORE_INDEX
from data_prep.build import build
from data_prep.config import DataConfig, MaskingConfig, TokenizerConfig
from data_prep.masking import STREAM_STATIC, STREAM_VALIDATION, Masker, sequence_rng
from data_prep.shards import ShardSet
from data_prep.tokenizer import load_tokenizer


def pydoc_cfg(out: Path, mode: str, **kw) -> DataConfig:
    """The smoke preset's data settings on the embedded pydoc corpus (~100k tokens)."""
    return DataConfig(
        corpus="pydoc",
        tokenizer=TokenizerConfig(vocab_size=4096),
        max_seq_length=128,
        validation_fraction=0.1,
        rows_per_shard=256,
        masking=MaskingConfig(mode=mode, dupe_factor=2),
        output_dir=str(out),
        **kw,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "pydoc-builds"
    static = build(pydoc_cfg(root / "static", "static"))
    dynamic = build(pydoc_cfg(root / "dynamic", "dynamic"))
    return {"static": ShardSet(static), "dynamic": ShardSet(dynamic), "root": root}


def rates(input_ids: np.ndarray, labels: np.ndarray, special: np.ndarray, mask_id: int):
    """(predicted share of non-special tokens, mask share, random share, keep share)."""
    sel = labels != IGNORE_INDEX
    originals = np.where(sel, labels, input_ids)
    maskable = int((~special[originals]).sum())
    n = int(sel.sum())
    masked = int((input_ids[sel] == mask_id).sum())
    kept = int((input_ids[sel] == labels[sel]).sum())
    return n / maskable, masked / n, (n - masked - kept) / n, kept / n


def concat(split, copy=0):
    rows = [split.row(i, copy) for i in range(len(split))]
    return np.concatenate([r["input_ids"] for r in rows]), np.concatenate([r["labels"] for r in rows])


def originals(split, copy=0):
    """Unmasked ids of every row (labels put back where a position was predicted)."""
    out = []
    for i in range(len(split)):
        r = split.row(i, copy)
        ids = r["input_ids"]
        out.append(np.where(r["labels"] != IGNORE_INDEX, r["labels"], ids) if "labels" in r else ids.copy())
    return out


def test_masker_rates_on_synthetic_tokens():
    vocab, special_ids, mask_id = 1000, np.array([0, 1, 2, 3, 4]), 4
    masker = Masker(vocab, mask_id, special_ids)
    gen = np.random.default_rng(0)
    ids_all, lab_all = [], []
    for row in range(1200):  # 1200 x 126 ≈ 151k maskable tokens
        ids = np.concatenate([[0], gen.integers(5, vocab, 126), [2]]).astype(np.int32)
        out, labels = masker(ids, sequence_rng(1, STREAM_STATIC, 0, row))
        assert labels[0] == labels[-1] == IGNORE_INDEX and out[0] == 0 and out[-1] == 2
        ids_all.append(out)
        lab_all.append(labels)
    special = np.zeros(vocab, bool)
    special[special_ids] = True
    p, m, r, k = rates(np.concatenate(ids_all), np.concatenate(lab_all), special, mask_id)
    assert abs(p - 0.15) < 0.01 and abs(m - 0.8) < 0.01 and abs(r - 0.1) < 0.01 and abs(k - 0.1) < 0.01
    random_repl = np.concatenate(ids_all)[(np.concatenate(lab_all) != IGNORE_INDEX)]
    assert not np.isin(random_repl[random_repl != mask_id], special_ids[:4]).any()


def test_masker_is_a_function_of_seed_stream_round_index():
    masker = Masker(500, 4, np.arange(5))
    ids = np.arange(5, 205, dtype=np.int32)
    a = masker(ids, sequence_rng(3, STREAM_STATIC, 1, 9))
    b = masker(ids, sequence_rng(3, STREAM_STATIC, 1, 9))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    for other in (sequence_rng(3, STREAM_STATIC, 2, 9), sequence_rng(3, STREAM_VALIDATION, 1, 9), sequence_rng(3, STREAM_STATIC, 1, 10)):
        assert not np.array_equal(a[1], masker(ids, other)[1])


def test_build_mask_rates_over_100k_tokens_and_specials_never_masked(built):
    ds = built["static"]
    info = load_tokenizer(ds.tokenizer_path, "bpe")
    special = np.zeros(info.vocab_size, bool)
    special[info.special_ids] = True
    parts = [concat(ds["train"], 0), concat(ds["train"], 1), concat(ds["validation"])]
    ids = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    sel = labels != IGNORE_INDEX
    assert int((~special[np.where(sel, labels, ids)]).sum()) >= 100_000
    p, m, r, k = rates(ids, labels, special, info.mask_id)
    assert abs(p - 0.15) < 0.01, p
    assert abs(m - 0.8) < 0.01 and abs(r - 0.1) < 0.01 and abs(k - 0.1) < 0.01, (m, r, k)
    assert not special[labels[sel]].any()  # no special token is ever a prediction target
    assert not special[ids[sel & (ids != info.mask_id)]].any()  # nor a random replacement
    assert (ids[~sel] != info.mask_id).all()


def test_static_copies_follow_the_recorded_rng_and_differ(built):
    ds = built["static"]
    info = load_tokenizer(ds.tokenizer_path, "bpe")
    masker = Masker.from_config(MaskingConfig(), info.vocab_size, info.mask_id, info.special_ids)
    train = ds["train"]
    assert train.num_copies == 2 and train.masked
    o0, o1 = originals(train, 0), originals(train, 1)
    assert all(np.array_equal(a, b) for a, b in zip(o0, o1, strict=True))  # same sequences in every copy
    differ = sum(not np.array_equal(train.row(i, 0)["labels"], train.row(i, 1)["labels"]) for i in range(len(train)))
    assert differ > 0.95 * len(train)
    seed = ds.manifest["data_config"]["seed"]
    for copy in (0, 1):
        for i in (0, len(train) // 2, len(train) - 1):
            ids, labels = masker(o0[i], sequence_rng(seed, STREAM_STATIC, copy, i))
            assert np.array_equal(ids, train.row(i, copy)["input_ids"]) and np.array_equal(labels, train.row(i, copy)["labels"])
    val = ds["validation"]
    vseed = ds.manifest["data_config"]["masking"]["validation_seed"]
    for i, orig in enumerate(originals(val)[:5]):
        ids, _ = masker(orig, sequence_rng(vseed, STREAM_VALIDATION, 0, i))
        assert np.array_equal(ids, val.row(i)["input_ids"])


def test_static_build_is_deterministic(built, tmp_path):
    again = ShardSet(build(pydoc_cfg(tmp_path / "static-again", "static")))
    first = built["static"]
    assert again.manifest["tokenizer"]["sha256"] == first.manifest["tokenizer"]["sha256"]
    for split in ("train", "validation"):
        assert again.manifest["splits"][split]["sha256"] == first.manifest["splits"][split]["sha256"]


def test_validation_identical_between_static_and_dynamic(built):
    s, d = built["static"], built["dynamic"]
    sv, dv = s.manifest["splits"]["validation"], d.manifest["splits"]["validation"]
    assert sv["sha256"] == dv["sha256"]
    assert s.manifest["fingerprint"] != d.manifest["fingerprint"]
    files = [e["file"] for e in sv["copies"][0]]
    assert files == [e["file"] for e in dv["copies"][0]] and files
    for f in files:
        assert (s.directory / f).read_bytes() == (d.directory / f).read_bytes()


def test_dynamic_training_data_is_unmasked_same_sequences(built):
    s, d = built["static"]["train"], built["dynamic"]["train"]
    assert not d.masked and d.num_copies == 1 and d.columns == ["input_ids", "word_starts"]
    info = load_tokenizer(built["dynamic"].tokenizer_path, "bpe")
    dyn = originals(d)
    assert not any((row == info.mask_id).any() for row in dyn)
    assert all(np.array_equal(a, b) for a, b in zip(dyn, originals(s, 0), strict=True))


def test_inspect_reports_rates_of_masked_splits_only(built):
    import io
    import math

    from data_prep.inspect import inspect

    buf = io.StringIO()
    report = inspect(built["dynamic"].directory, num_examples=1, out=buf)
    assert math.isnan(report["train"]["mask_rate"]) and report["train"]["copies"] == 1
    assert abs(report["validation"]["mask_rate"] - 0.15) < 0.02
    text = buf.getvalue()
    assert "unmasked (masked by the trainer's collator)" in text and "[MASK:" not in text.split("examples from")[1]
    static = inspect(built["static"].directory, num_examples=0, out=io.StringIO())
    assert static["validation"] == report["validation"]
