"""``data_prep.build`` at scale: pair formats end to end (label balance over >= 10k pairs,
layout, counters), output byte-identical for any ``num_workers`` and after a build killed
with SIGKILL and rerun (resume from chunk records), on real text."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from common.errors import UserError
from data_prep.build import build
from data_prep.config import DataConfig, MaskingConfig, TokenizerConfig
from data_prep.shards import MANIFEST, ShardSet

REPO = Path(__file__).resolve().parents[1]


def tree_digest(d: Path) -> dict:
    """sha256 of every file but manifest.json, by relative path."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file() and p.name != MANIFEST}


def manifest_without_run_details(d: Path) -> dict:
    m = json.loads((d / MANIFEST).read_text())
    m.pop("build")
    for key in ("num_workers", "output_dir"):
        m["data_config"].pop(key)
    return m


def pydoc_cfg(out: Path, reference: bool = False, **kw) -> DataConfig:
    """Pydoc in chunks of 6 documents (12 train chunks): small, but many chunks. With
    ``reference``: ALBERT's reference rules (unigram tokenizer trained by SentencePiece,
    per-document short targets, reference SOP labels and word starts, copies that rerun
    instance creation)."""
    base = dict(
        corpus="pydoc", tokenizer=TokenizerConfig(vocab_size=1024), max_seq_length=64, rows_per_shard=50,
        masking=MaskingConfig(mode="static", dupe_factor=2), validation_fraction=0.1, format="segment_pair",
        sentence_objective="sop", chunk_documents=6, output_dir=str(out),
    )
    if reference:
        base.update(
            tokenizer=TokenizerConfig(kind="unigram", vocab_size=1024), short_seq_rule="reference",
            sentence_labels="reference", word_boundaries="reference",
            masking=MaskingConfig(mode="static", dupe_factor=2, copies="reference", unit="ngram", max_predictions_per_seq=10),
        )
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture(scope="module")
def nsp_build(nltk_dir, tmp_path_factory):
    cfg = DataConfig(
        corpus=str(nltk_dir / "reuters.zip"), max_documents=2500, tokenizer=TokenizerConfig(vocab_size=2000),
        max_seq_length=32, format="segment_pair", sentence_objective="nsp", chunk_documents=500,
        masking=MaskingConfig(mode="dynamic"), output_dir=str(tmp_path_factory.mktemp("nsp") / "out"),
    )
    return ShardSet(build(cfg))


def test_nsp_build_label_balance_and_layout(nsp_build):
    train = nsp_build["train"]
    assert train.columns == ["input_ids", "word_starts", "token_type_ids", "next_sentence_label"]
    labels = np.asarray([int(train.row(i)["next_sentence_label"]) for i in range(len(train))])
    assert len(labels) >= 10_000
    assert abs(labels.mean() - 0.5) < 0.02, labels.mean()
    sep = nsp_build.manifest["tokenizer"]["special_tokens"]["sep"]["id"]
    cls = nsp_build.manifest["tokenizer"]["special_tokens"]["cls"]["id"]
    assert train.lengths().max() <= 32
    for i in range(0, len(train), 97):
        r = train.row(i)
        ids, types = r["input_ids"], r["token_type_ids"]
        seps = np.flatnonzero(ids == sep)
        assert ids[0] == cls and len(seps) == 2 and seps[1] == len(ids) - 1
        assert types.tolist() == [0] * (seps[0] + 1) + [1] * (len(ids) - seps[0] - 1)
        assert r["word_starts"].shape == ids.shape and r["word_starts"][[0, seps[0], -1]].all()
    inst = nsp_build.manifest["stats"]["instances"]["train"]
    assert inst["is_next"] + inst["not_next"] == len(train) and inst["is_next"] == int((labels == 0).sum())
    assert inst["short_targets"] > 0 and inst["truncated_pairs"] > 0
    assert nsp_build.manifest["chunks"]["train"] >= 4


def test_one_sentence_documents_are_counted(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    texts = {f"d{i:02d}.txt": " ".join(f"Sentence {k} of document {i} runs on." for k in range(6)) for i in range(24)}
    singles = ["d03.txt", "d10.txt", "d17.txt"]
    for name in singles:
        texts[name] = f"Only one sentence lives in {name}."
    for name, text in texts.items():
        (corpus / name).write_text(text)
    out = build(DataConfig(corpus=str(corpus), tokenizer=TokenizerConfig(vocab_size=300), max_seq_length=32,
                           validation_fraction=0.2, format="segment_pair", sentence_objective="nsp", output_dir=str(tmp_path / "o")))
    m = json.loads((out / MANIFEST).read_text())
    assert m["stats"]["one_sentence_documents"] == 3
    assert sum(m["stats"]["instances"][s]["one_sentence_documents"] for s in ("train", "validation")) == 3


def test_output_identical_for_any_num_workers(tmp_path):
    one = build(pydoc_cfg(tmp_path / "w1", num_workers=1))
    two = build(pydoc_cfg(tmp_path / "w2", num_workers=2))
    assert tree_digest(one) == tree_digest(two)
    assert manifest_without_run_details(one) == manifest_without_run_details(two)
    m = json.loads((one / MANIFEST).read_text())
    rows = [e["rows"] for e in m["splits"]["train"]["copies"][0]]
    assert m["chunks"]["train"] >= 10 and max(rows) <= 50 and len(set(rows)) > 1  # shards follow chunks


_CHILD = """
import sys
from data_prep.build import build
from data_prep.config import DataConfig, MaskingConfig, TokenizerConfig
from common.errors import UserError
sys.path.insert(0, sys.argv[1])
from test_build_scale import pydoc_cfg
build(pydoc_cfg(sys.argv[2], reference=sys.argv[3] == "reference", num_workers=1))
"""


@pytest.mark.parametrize("rules", ["variant", "reference"])
def test_killed_build_resumes_byte_identical(rules, tmp_path, capsys):
    reference = build(pydoc_cfg(tmp_path / "ref", reference=rules == "reference", num_workers=1))
    out = tmp_path / "killed"
    progress = tmp_path / "killed.partial" / ".progress"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(REPO / "tests"), str(out), rules], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while len(list(progress.glob("train-*.json"))) < 3 and child.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert not out.exists(), "the build finished before it could be killed"
    done = sorted(progress.glob("train-*.json"))
    assert len(done) >= 3
    kept = {}
    for rec in done:
        for part in json.loads(rec.read_text())["parts"]:
            for e in part["entries"]:
                kept[e["file"]] = (tmp_path / "killed.partial" / e["file"]).stat().st_mtime_ns
    capsys.readouterr()
    build(pydoc_cfg(out, reference=rules == "reference", num_workers=2))
    assert "resuming the interrupted build" in capsys.readouterr().err
    assert tree_digest(out) == tree_digest(reference)
    assert manifest_without_run_details(out) == manifest_without_run_details(reference)
    # The recorded chunks were reused, not redone.
    assert {f: (out / f).stat().st_mtime_ns for f in kept} == kept
    assert not (out / ".progress").exists() and not (tmp_path / "killed.partial").exists()


def test_partial_of_another_config_is_discarded(tmp_path, capsys):
    out = tmp_path / "d"
    (tmp_path / "d.partial" / ".progress").mkdir(parents=True)
    (tmp_path / "d.partial" / ".progress" / "build.json").write_text(json.dumps({"fingerprint": "0" * 16}))
    build(pydoc_cfg(out, format="doc_sentences", sentence_objective="none", masking=MaskingConfig(mode="dynamic")))
    assert "another config" in capsys.readouterr().err
    ds = ShardSet(out)
    sep = ds.manifest["tokenizer"]["special_tokens"]["sep"]["id"]
    # DOC-SENTENCES: no document separator inside a row, only the closing one.
    assert all((ds["train"].row(i)["input_ids"][:-1] != sep).all() for i in range(len(ds["train"])))


def test_inspect_shows_label_balance_layout_and_counters(nsp_build):
    import io

    from data_prep.inspect import inspect

    buf = io.StringIO()
    report = inspect(nsp_build.directory, num_examples=2, out=buf)
    labels = nsp_build["train"].scalar_column("next_sentence_label")
    assert labels.dtype == np.int8 and len(labels) == len(nsp_build["train"])
    assert report["train"]["next_sentence_label_share"] == pytest.approx(labels.mean())
    text = buf.getvalue()
    inst = nsp_build.manifest["stats"]["instances"]["train"]
    assert f"IsNext {inst['is_next']} / NotNext {inst['not_next']}" in text
    assert "next_sentence_label: 0 (IsNext)" in text and "layout: [CLS] A(" in text and "\n  B: " in text
    with pytest.raises(KeyError, match="sentence_order_label"):
        nsp_build["train"].scalar_column("sentence_order_label")


def test_interrupted_build_keeps_partial_and_refuses_a_changed_tokenizer(tmp_path, monkeypatch):
    import data_prep.build as b

    tok = tmp_path / "tok.json"
    tok.write_bytes((build(pydoc_cfg(tmp_path / "src", max_documents=30)) / "tokenizer.json").read_bytes())
    cfg = pydoc_cfg(tmp_path / "d", tokenizer=TokenizerConfig(path=str(tok)))
    finalize = b._SplitWriter.finalize

    def interrupt_after_first(self, result):
        finalize(self, result)
        raise KeyboardInterrupt  # Ctrl-C right after a chunk is recorded

    monkeypatch.setattr(b._SplitWriter, "finalize", interrupt_after_first)
    with pytest.raises(KeyboardInterrupt):
        build(cfg)
    monkeypatch.undo()
    partial = tmp_path / "d.partial"
    assert len(list((partial / ".progress").glob("train-*.json"))) == 1  # kept for a rerun
    data = json.loads(tok.read_text())
    data["added_tokens"][0]["content"] = "<S>"  # another tokenizer under the same path
    tok.write_text(json.dumps(data))
    with pytest.raises(UserError, match="changed since the interrupted build") as e:
        build(cfg)
    assert "\n" not in str(e.value) and not partial.exists()


def test_chunks_close_at_documents_or_characters_and_never_leave_a_lone_document(tmp_path, monkeypatch):
    import data_prep.build as b
    from data_prep.corpus import ReadStats

    corpus = tmp_path / "c"
    corpus.mkdir()
    # Characters per document; d00, d01 and d08 hash into validation at fraction 0.05.
    sizes = [50, 50, 900, 60, 60, 60, 60, 60, 2000, 40, 40, 40, 40, 70, 30]
    for i, n in enumerate(sizes):
        (corpus / f"d{i:02d}.txt").write_text("x" * n)
    monkeypatch.setattr(b, "CHUNK_CHARACTERS", 1000)
    cfg = DataConfig(corpus=str(corpus), chunk_documents=4, validation_fraction=0.05)
    got = [(c.split, c.index, [d.split(":")[0][:3] for d, _ in c.docs]) for c in b._chunks(cfg, ReadStats())]
    assert got == [
        ("train", 0, ["d02", "d03", "d04"]),  # 1020 characters: closed by the character budget
        ("train", 1, ["d05", "d06", "d07", "d09"]),  # closed at chunk_documents
        ("train", 2, ["d10", "d11", "d12", "d13", "d14"]),  # the lone last document joins
        ("validation", 0, ["d00", "d01", "d08"]),  # remainders go out at the end of the corpus
    ]
