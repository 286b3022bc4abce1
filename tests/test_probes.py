"""Zero-shot probes: BLiMP by pseudo-log-likelihood and the shared held-out NSP/SOP sets, on
the real BLiMP files and the embedded pydoc corpus, with a tiny model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.errors import UserError
from pretrain.downstream import blimp, sentence_probe


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, data_dir):
    """A tiny random BERT with a wordpiece tokenizer trained on BLiMP sentences."""
    from common.configfile import merge_into
    from data_prep.tokenizer import load_tokenizer, train_tokenizer
    from pretrain.config import ModelConfig
    from pretrain.models.encoder import build_model

    pairs = blimp.load_pairs(data_dir / "blimp", limit=20)
    path = train_tokenizer("wordpiece", [p.good for p in pairs] + [p.bad for p in pairs], 800, 2,
                           tmp_path_factory.mktemp("tok") / "tokenizer.json")
    info = load_tokenizer(path, "wordpiece")
    cfg = merge_into(ModelConfig, {"vocab_size": info.vocab_size, "hidden_size": 32, "num_hidden_layers": 2,
                                   "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64})
    torch.manual_seed(0)
    return build_model(cfg, "nsp").eval(), info


def test_blimp_pairs_limit_per_phenomenon(data_dir):
    pairs = blimp.load_pairs(data_dir / "blimp", limit=3)
    assert len(pairs) == 67 * 3 and len({p.phenomenon for p in pairs}) == 67
    assert {p.field for p in pairs} == {"morphology", "syntax", "semantics", "syntax_semantics"}
    one = blimp.load_pairs(data_dir / "blimp", phenomena=["anaphor_gender_agreement"])
    assert len(one) == 1000 and one[0].good != one[0].bad
    with pytest.raises(UserError, match="unknown BLiMP phenomena nope"):
        blimp.load_pairs(data_dir / "blimp", phenomena=["nope"])


@pytest.mark.parametrize("content, msg", [
    ("", r"adjunct_island.jsonl: no minimal pairs; restore the file .* or leave the phenomenon out with --phenomena"),
    ('{"sentence_good": 5, "sentence_bad": "b", "field": "syntax"}\n',
     r"adjunct_island.jsonl:1: not a BLiMP record \(strings sentence_good, sentence_bad, field\)"),
    ('{"sentence_good": "a", "sentence_bad": "b", "field": 1}\n', r"adjunct_island.jsonl:1: not a BLiMP record"),
    (b'{"sentence_good": "caf\xe9", "sentence_bad": "b", "field": "syntax"}\n',
     r"adjunct_island.jsonl:1: not UTF-8 text \(byte 0xe9 at column 23\)"),
])
def test_damaged_blimp_file_is_one_line(data_dir, tmp_path, content, msg):
    import shutil

    shutil.copy(data_dir / "blimp" / "data" / "anaphor_gender_agreement.jsonl", tmp_path)
    f = tmp_path / "adjunct_island.jsonl"
    f.write_bytes(content) if isinstance(content, bytes) else f.write_text(content)
    with pytest.raises(UserError, match=msg):
        blimp.load_pairs(tmp_path, limit=3)


def test_pll_is_the_sum_of_masked_token_log_probabilities(tiny, monkeypatch):
    model, info = tiny
    sentences = ["Many girls insulted themselves.", "Who should Derek hug after shocking Richard?"]
    got = blimp.pseudo_log_likelihoods(model, info, sentences, 64, batch_rows=5)
    monkeypatch.setattr(blimp, "SENTENCES_PER_CHUNK", 1)  # one sentence per chunk: the same sums
    assert blimp.pseudo_log_likelihoods(model, info, sentences, 64, batch_rows=64) == pytest.approx(got, abs=1e-5)
    for s, value in zip(sentences, got):
        ids = [info.cls_id, *info.encode_batch([s])[0], info.sep_id]
        want = 0.0
        for i in range(1, len(ids) - 1):  # one forward pass per masked position, no batching or padding
            x = torch.tensor([ids])
            x[0, i] = info.mask_id
            logits = model.logits(x)["mlm_logits"][0, i]
            want += float(F.log_softmax(logits, -1)[ids[i]])
        assert value == pytest.approx(want, abs=1e-4)


def test_pll_resumes_after_its_last_saved_chunk_and_only_for_the_same_key(tiny, monkeypatch, tmp_path):
    import copy

    model, info = tiny
    sentences = ["Many girls insulted themselves.", "Who should Derek hug?", "The cat sat.", "A dog ran home."]
    want = blimp.pseudo_log_likelihoods(model, info, sentences, 64)
    monkeypatch.setattr(blimp, "SENTENCES_PER_CHUNK", 1)
    state = tmp_path / "eval" / "blimp.partial.npz"
    calls = {"n": 0}
    forward = type(model.encoder).forward

    def stop_in_third_chunk(self, *args, **kwargs):  # a kill during the third chunk
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model.encoder), "forward", stop_in_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        blimp.pseudo_log_likelihoods(model, info, sentences, 64, resume=state)
    monkeypatch.setattr(type(model.encoder), "forward", forward)
    import numpy as np

    with np.load(state) as z:
        assert int(z["chunks"]) == 2  # the first two sentences are saved
    seen = {"n": 0}
    monkeypatch.setattr(type(model.encoder), "forward", lambda self, *a, **k: (seen.__setitem__("n", seen["n"] + 1), forward(self, *a, **k))[1])
    got = blimp.pseudo_log_likelihoods(model, info, sentences, 64, resume=state)
    assert got == pytest.approx(want, abs=1e-5) and seen["n"] == 2 and not state.exists()  # only chunks 3 and 4 ran
    # saved for other weights: not reused
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.encoder.embeddings.word_embeddings.weight.add_(0.5)
    monkeypatch.setattr(type(model.encoder), "forward", stop_in_third_chunk)
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        blimp.pseudo_log_likelihoods(other, info, sentences, 64, resume=state)
    monkeypatch.setattr(type(model.encoder), "forward", forward)
    assert blimp.pseudo_log_likelihoods(model, info, sentences, 64, resume=state) == pytest.approx(want, abs=1e-5)
    state.write_bytes(b"damaged")  # a partial file that does not load: start over
    assert blimp.pseudo_log_likelihoods(model, info, sentences, 64, resume=state) == pytest.approx(want, abs=1e-5)


def test_blimp_accuracy_per_phenomenon_field_and_overall(tiny, data_dir):
    model, info = tiny
    pairs = blimp.load_pairs(data_dir / "blimp", limit=4)
    table = blimp.score_blimp(model, info, pairs, 64)
    assert table["pairs"] == len(pairs) and len(table["phenomena"]) == 67
    assert table["overall"] == pytest.approx(sum(table["phenomena"].values()) / 67)
    assert all(0.0 <= v <= 1.0 for v in table["fields"].values())
    t = blimp.accuracy_table(pairs[:3], [True, False, True])
    assert t["overall"] == pytest.approx(2 / 3)


def test_held_out_sentence_sets_come_from_validation_documents(tmp_path):
    from data_prep.corpus import read_documents
    from data_prep.instances import is_validation

    sets = sentence_probe.load_or_build(tmp_path, "pydoc", 0.1, max_words=48, max_pairs=60)
    held_out = " ".join(" ".join(d.text.split()) for d in read_documents("pydoc") if is_validation(d.id, 0.1))
    for task in ("nsp", "sop"):
        pairs = sets[task]
        assert 0 < len(pairs) <= 60 and {p.label for p in pairs} == {0, 1}
        for p in pairs[:20]:
            assert p.a in held_out and p.b in held_out
    for p in sets["sop"][:20]:  # in order: A comes before B in the document; swapped: after
        first, second = (p.a, p.b) if p.label == 0 else (p.b, p.a)
        # (a cut to max_words may drop words between them, so they need not touch)
        assert 0 < held_out.index(second) - held_out.index(first) < 2000
    again = sentence_probe.load_or_build(tmp_path, "pydoc", 0.1, max_words=48, max_pairs=60)
    assert again == sets  # read back from the cache, identical


def test_damaged_sentence_set_cache_is_built_again(tmp_path, capsys):
    sets = sentence_probe.load_or_build(tmp_path, "pydoc", 0.1, max_words=48, max_pairs=30)
    for f, cut in (("meta.json", 10), ("sop.jsonl", 50)):
        text = (tmp_path / f).read_text()
        (tmp_path / f).write_text(text[:cut])
        assert sentence_probe.load_or_build(tmp_path, "pydoc", 0.1, max_words=48, max_pairs=30) == sets
        assert f"held-out sets in {tmp_path} are damaged (JSONDecodeError" in capsys.readouterr().out
        assert (tmp_path / f).read_text() == text  # written whole again


@pytest.mark.parametrize("args, msg", [
    (["--pairs", "0"], "--pairs 0 must be >= 1"),
    (["--max-length", "2"], r"--max-length 2 must be >= 8: a pair is \[CLS\] A \[SEP\] B \[SEP\]"),
    (["--corpus", "pydoc", "--validation-fraction", "1.5"], r"--validation-fraction 1.5 must be in \(0, 1\)"),
])
def test_sentence_probe_options_out_of_range_are_one_line(tmp_path, capsys, args, msg):
    import re

    from pretrain.cli import main

    assert main(["probe", "sentence", str(tmp_path / "model"), "--runs", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert re.match(f"error: {msg}", err) and err.count("\n") == 1, err
    assert not (tmp_path / "probe").exists()


def test_sentence_probe_scores_every_task_with_any_head(tiny, tmp_path):
    model, info = tiny
    sets = sentence_probe.load_or_build(tmp_path, "pydoc", 0.1, max_words=40, max_pairs=40)
    out = sentence_probe.score_model(model, info, sets, 64, 2)
    assert set(out) == {"mlm", "nsp", "sop"}
    assert out["nsp"]["count"] == len(sets["nsp"]) and out["sop"]["count"] == len(sets["sop"])
    assert all(0.0 <= v["accuracy"] <= 1.0 for v in out.values()) and out["mlm"]["count"] > len(sets["nsp"])
    # deterministic: the same masks and pairs give the same numbers
    assert sentence_probe.score_model(model, info, sets, 64, 2) == out
