"""Sampler and collator: which rows each step reads, and the masks and padding they get."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import UserError
from common.schema import IGNORE_INDEX
from data_prep.build import build
from data_prep.masking import Masker
from data_prep.shards import ShardSet
from data_prep.tokenizer import load_tokenizer
from pretrain.config import load_run_config
from pretrain.training.batching import (
    Collator,
    GlobalBatchSampler,
    TokenBudgetSampler,
    micro_batches,
    rank_micro_batches,
    rank_slice,
)

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "recipe" / "roberta.yaml"


def _shards(out: Path, mode: str, *extra: str):
    cfg = load_run_config(
        RECIPE,
        "smoke",
        [f"data.masking.mode={mode}", "data.max_documents=12", "data.max_seq_length=64",
         "data.tokenizer.vocab_size=600", f"data.output_dir={out}", *extra],
    )
    s = ShardSet(build(cfg.data))
    tok = load_tokenizer(s.tokenizer_path, cfg.data.tokenizer.kind)
    return cfg, s, tok


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory):
    return _shards(tmp_path_factory.mktemp("dyn") / "shards", "dynamic")


@pytest.fixture(scope="module")
def static(tmp_path_factory):
    return _shards(tmp_path_factory.mktemp("static") / "shards", "static")


# ------------------------------------------------------------------ sampler


def test_each_row_at_most_once_per_epoch_and_epochs_differ():
    s = GlobalBatchSampler(num_rows=103, global_batch_size=8, seed=7)
    assert s.steps_per_epoch == 12  # 103 // 8: the remainder of each permutation is dropped
    epochs = []
    for e in range(3):
        rows = np.concatenate([s.global_batch(e * 12 + b)[1] for b in range(12)])
        assert all(s.global_batch(e * 12 + b)[0] == e for b in range(12))
        assert len(rows) == 96 and len(np.unique(rows)) == 96 and rows.min() >= 0 and rows.max() < 103
        epochs.append(rows)
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


def test_step_alone_determines_the_batch():
    a = GlobalBatchSampler(50, 4, seed=3)
    b = GlobalBatchSampler(50, 4, seed=3)
    # b jumps straight to late steps (as a resumed run does); a walks there in order.
    walked = {step: a.global_batch(step)[1] for step in range(40)}
    for step in (39, 13, 0, 25, 12):
        assert np.array_equal(b.global_batch(step)[1], walked[step])
    assert b.position(25) == (2, 1)
    other_seed = GlobalBatchSampler(50, 4, seed=4)
    assert not np.array_equal(other_seed.global_batch(0)[1], walked[0])


def test_rank_slices_are_disjoint_equal_and_cover_the_batch():
    rows = GlobalBatchSampler(64, 12, seed=0).global_batch(3)[1]
    slices = [rank_slice(rows, r, 3) for r in range(3)]
    assert [len(x) for x in slices] == [4, 4, 4]
    assert np.array_equal(np.concatenate(slices), rows)
    assert len(set(np.concatenate(slices).tolist())) == 12
    assert [m.tolist() for m in micro_batches(slices[1], 2)] == [slices[1][:2].tolist(), slices[1][2:].tolist()]
    with pytest.raises(ValueError):
        rank_slice(rows, 0, 5)


def test_rank_micro_batches_split_every_global_batch_into_equal_disjoint_pieces():
    rows = GlobalBatchSampler(200, 24, seed=1).global_batch(5)[1]
    # fixed batches: the same pieces as the rank's contiguous slice cut into micro batches
    for r in range(3):
        got = [m.tolist() for m in rank_micro_batches(rows, r, 3, accumulation=2)]
        assert got == [m.tolist() for m in micro_batches(rank_slice(rows, r, 3), 4)]
    # 1 rank accumulating 4 pieces reads what 4 ranks with 1 piece each read, in order
    one = rank_micro_batches(rows, 0, 1, accumulation=4)
    assert [m.tolist() for m in one] == [rank_micro_batches(rows, r, 4, 1)[0].tolist() for r in range(4)]
    # a variable-size batch (token budget): sizes differ by at most one row, nothing lost
    odd = np.arange(23)
    pieces = [p for r in range(2) for p in rank_micro_batches(odd, r, 2, 3)]
    assert np.array_equal(np.concatenate(pieces), odd) and {len(p) for p in pieces} == {3, 4}
    with pytest.raises(ValueError, match="5 rows cannot fill 6 micro batches"):
        rank_micro_batches(np.arange(5), 0, 2, 3)


def test_token_budget_batches_hold_about_the_same_tokens():
    rng = np.random.default_rng(0)
    max_len, g = 64, 8
    lengths = np.where(rng.random(1000) < 0.4, rng.integers(5, max_len, 1000), max_len)  # short document tails
    s = TokenBudgetSampler(lengths, g * max_len, seed=3)
    budget = g * max_len
    assert s.steps_per_epoch == lengths.sum() // budget
    for e in range(2):
        batches = [s.global_batch(e * s.steps_per_epoch + b) for b in range(s.steps_per_epoch)]
        assert all(epoch == e for epoch, _ in batches)
        rows = np.concatenate([r for _, r in batches])
        assert len(np.unique(rows)) == len(rows)  # each row at most once per epoch
        tokens = np.array([lengths[r].sum() for _, r in batches])
        sizes = np.array([len(r) for _, r in batches])
        assert tokens.min() > budget - max_len and tokens.max() < budget + max_len
        assert sizes.min() >= g and sizes.max() > sizes.min()  # row counts vary, never below G
        assert len(rows) > len(lengths) - 2 * budget / 5  # only the tail after the last budget is dropped
    # the step alone picks the batch: a resumed sampler jumps straight there
    late = s.steps_per_epoch + 7
    assert np.array_equal(TokenBudgetSampler(lengths, budget, seed=3).global_batch(late)[1], s.global_batch(late)[1])
    assert not np.array_equal(TokenBudgetSampler(lengths, budget, seed=4).global_batch(late)[1], s.global_batch(late)[1])
    assert s.epochs(s.steps_per_epoch) == pytest.approx(s.steps_per_epoch * budget / lengths.sum())
    with pytest.raises(UserError, match=r"has 300 tokens, fewer than one batch of 512 \(train.global_batch_size x "
                                        r"data.max_seq_length with data.doc_sentences_batching=tokens\)"):
        TokenBudgetSampler(np.full(10, 30), 512, seed=0)


def test_dataset_smaller_than_one_global_batch_is_refused():
    with pytest.raises(UserError, match=r"7 sequences, fewer than one global batch \(train.global_batch_size=8\)"):
        GlobalBatchSampler(7, 8, seed=0)


# ------------------------------------------------------------------ collator


def test_static_mask_repeats_in_epochs_reading_the_same_copy(static):
    cfg, s, tok = static
    train = s["train"]
    assert train.masked and train.num_copies == 2
    c = Collator(train, tok.pad_id)
    rows = np.arange(min(16, len(train)))
    e0, e1, e2, e3 = (c(rows, epoch=e) for e in range(4))
    # epochs 0 and 2 read copy 0, epochs 1 and 3 read copy 1 (epoch % dupe_factor)
    assert torch.equal(e0["input_ids"], e2["input_ids"]) and torch.equal(e0["labels"], e2["labels"])
    assert torch.equal(e1["labels"], e3["labels"])
    assert not torch.equal(e0["labels"], e1["labels"])
    # the copies hold the same sequence: labelled positions carry the original token
    def original(b, i, n):
        lab, ids = b["labels"][i, :n].numpy(), b["input_ids"][i, :n].numpy()
        return np.where(lab != IGNORE_INDEX, lab, ids)

    for i, r in enumerate(rows):
        n = len(train.row(int(r), 0)["input_ids"])
        assert np.array_equal(original(e0, i, n), original(e1, i, n))


def test_dynamic_masks_differ_across_epochs_and_repeat_for_same_seed_epoch_row(dynamic):
    cfg, s, tok = dynamic
    train = s["train"]
    assert not train.masked
    masker = Masker.from_config(cfg.data.masking, tok.vocab_size, tok.mask_id, tok.special_ids)
    c = Collator(train, tok.pad_id, masker, seed=11)
    rows = np.arange(min(12, len(train)))
    e0, e1 = c(rows, epoch=0), c(rows, epoch=1)
    assert not torch.equal(e0["labels"], e1["labels"])
    # same (seed, epoch, row) in another batch, another order, another collator → same mask
    again = Collator(train, tok.pad_id, masker, seed=11)
    solo = again(rows[[5]], epoch=1)
    n = int(solo["attention_mask"].sum())
    assert torch.equal(solo["labels"][0, :n], e1["labels"][5, :n])
    assert torch.equal(solo["input_ids"][0, :n], e1["input_ids"][5, :n])
    other_seed = Collator(train, tok.pad_id, masker, seed=12)(rows, epoch=1)
    assert not torch.equal(other_seed["labels"], e1["labels"])
    # ~15% of the non-special tokens are predicted, originals restored in labels
    labelled = (e0["labels"] != IGNORE_INDEX).sum().item()
    maskable = sum(int(masker.maskable(train.row(int(r))["input_ids"]).sum()) for r in rows)
    assert abs(labelled / maskable - cfg.data.masking.mlm_probability) < 0.03


def _words_cut(batch, split) -> int:
    """How many words have some but not all of their tokens labelled."""
    cut = 0
    for i in range(len(batch["labels"])):
        word_id = np.cumsum(split.row(i)["word_starts"].astype(bool))  # tokens of one word share an id
        chosen = (batch["labels"][i, : len(word_id)] != IGNORE_INDEX).numpy()
        cut += sum(int(not chosen[word_id == w].all()) for w in np.unique(word_id[chosen]))
    return cut


def test_dynamic_whole_word_masks_take_words_whole(tmp_path: Path):
    cfg, s, tok = _shards(tmp_path / "ww", "dynamic", "data.masking.unit=whole_word")
    train, rows = s["train"], np.arange(len(s["train"]))
    whole = Masker.from_config(cfg.data.masking, tok.vocab_size, tok.mask_id, tok.special_ids)
    b = Collator(train, tok.pad_id, whole, seed=5)(rows, epoch=3)
    assert (b["labels"] != IGNORE_INDEX).sum() > 0 and _words_cut(b, train) == 0
    # token masking of the same rows does cut words (so the check above can fail)
    token = Masker(tok.vocab_size, tok.mask_id, tok.special_ids)
    assert _words_cut(Collator(train, tok.pad_id, token, seed=5)(rows, epoch=3), train) > 0


def test_padding_attention_mask_and_dtypes(dynamic):
    cfg, s, tok = dynamic
    val = s["validation"]
    c = Collator(val, tok.pad_id)
    lengths = val.lengths()
    rows = np.argsort(lengths)[[0, -1, len(lengths) // 2]]  # shortest, longest, middle
    b = c(rows, epoch=0)
    seq = int(lengths[rows].max())
    assert set(b) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    for k, v in b.items():
        assert v.dtype == torch.int64 and tuple(v.shape) == (3, seq), k
    assert b["attention_mask"].sum(1).tolist() == lengths[rows].tolist()
    pad = b["attention_mask"] == 0
    assert pad.any()  # the shortest row is padded
    assert (b["input_ids"][pad] == tok.pad_id).all() and (b["labels"][pad] == IGNORE_INDEX).all()
    assert (b["token_type_ids"] == 0).all()
    for i, r in enumerate(rows):
        row = val.row(int(r))
        assert np.array_equal(b["input_ids"][i, : len(row["input_ids"])].numpy(), row["input_ids"])
        assert np.array_equal(b["labels"][i, : len(row["labels"])].numpy(), row["labels"])


def test_unmasked_split_without_masker_is_refused(dynamic):
    _, s, tok = dynamic
    with pytest.raises(UserError, match="no labels and no dynamic masker"):
        Collator(s["train"], tok.pad_id)
