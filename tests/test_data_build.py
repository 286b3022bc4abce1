"""``data_prep.build``: FULL-SENTENCES packing, the shard directory and its manifest,
caching and resuming, refusing bad input and damaged shards, and the ``data-prep`` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.errors import UserError
from data_prep.build import build
from data_prep.cli import main
from data_prep.config import (
    DataConfig,
    MaskingConfig,
    TokenizerConfig,
    data_fingerprint,
)
from data_prep.instances import InstanceStats, is_validation, pack_full_sentences
from data_prep.shards import MANIFEST, ShardSet
from data_prep.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
CLS, SEP = 0, 2


def small_cfg(out: Path, corpus: str = "pydoc", mode: str = "static", **kw) -> DataConfig:
    kw.setdefault("validation_fraction", 0.1)
    return DataConfig(
        corpus=corpus,
        tokenizer=kw.pop("tokenizer", TokenizerConfig(vocab_size=2048)),
        max_seq_length=64,
        rows_per_shard=200,
        masking=MaskingConfig(mode=mode, dupe_factor=2),
        output_dir=str(out),
        **kw,
    )


@pytest.fixture(scope="module")
def pydoc_dir(tmp_path_factory) -> Path:
    return build(small_cfg(tmp_path_factory.getbasetemp() / "build-pydoc"))


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------- packing


def docs_of(lengths, start=10):
    """Documents of sentences with distinct ids so the packed output can be traced."""
    out, nxt = [], start
    for doc in lengths:
        sents = []
        for n in doc:
            sents.append(np.arange(nxt, nxt + n, dtype=np.int32))
            nxt += n
        out.append(sents)
    return out


def test_pack_full_sentences_layout():
    docs = docs_of([[3, 4], [5], [6, 2]])
    st = InstanceStats()
    seqs = list(pack_full_sentences(docs, 15, CLS, SEP, st))
    # <s> [3] [4] </s> [5] </s> | <s> [6] [2] </s>: a document ending inside a sequence adds
    # one separator; a sentence that does not fit starts the next sequence.
    assert [s.tolist() for s in seqs] == [
        [CLS, *range(10, 17), SEP, *range(17, 22), SEP],
        [CLS, *range(22, 30), SEP],
    ]
    assert (st.documents, st.sentences, st.sequences, st.truncated_sentences) == (3, 5, 2, 0)
    assert st.tokens == sum(len(s) for s in seqs)


def test_eos_separator_layout_and_its_own_build(tmp_path):
    """sentence_separator=eos: fairseq's layout, </s> after every sentence and one </s> unit
    between documents that opens the next row when the current one is full; a directory
    built with it is another config's (refused without --force), never reported current."""
    from data_prep.instances import pack_sentences

    docs = docs_of([[3, 4], [5], [6, 2]])
    rows = [r.input_ids.tolist() for r in pack_sentences(docs, 15, CLS, SEP, True, sentence_separator="eos")]
    # blocks of <= 14 tokens: [3]</s>[4]</s> = 9, + </s> = 10 | [5]</s> would make 16
    assert rows == [
        [CLS, 10, 11, 12, SEP, 13, 14, 15, 16, SEP, SEP],
        [CLS, *range(17, 22), SEP, SEP, *range(22, 28), SEP],
        [CLS, 28, 29, SEP],
    ]
    out = tmp_path / "d"
    build(small_cfg(out, max_documents=30, mode="dynamic"))
    with pytest.raises(UserError, match="another config"):
        build(small_cfg(out, max_documents=30, mode="dynamic", sentence_separator="eos"))
    ds = ShardSet(build(small_cfg(tmp_path / "e", max_documents=30, mode="dynamic", sentence_separator="eos")))
    assert ds.manifest["data_config"]["sentence_separator"] == "eos"
    first = np.asarray(ds["train"].row(0)["input_ids"])
    assert first[0] == CLS and first[-1] == SEP and (first == SEP).sum() >= 2


def test_pack_full_sentences_truncates_long_sentences_and_keeps_order():
    docs = docs_of([[2, 20, 3], [1, 1]])
    st = InstanceStats()
    seqs = list(pack_full_sentences(docs, 10, CLS, SEP, st))
    assert all(len(s) <= 10 and s[0] == CLS and s[-1] == SEP for s in seqs)
    assert st.truncated_sentences == 1 and st.truncated_tokens == 20 - 8
    body = np.concatenate([s[1:-1] for s in seqs])
    body = body[body != SEP]
    expected = np.concatenate([docs[0][0], docs[0][1][:8], docs[0][2], docs[1][0], docs[1][1]])
    assert np.array_equal(body, expected)
    # The separator between documents is never the last body token of a sequence.
    assert not any(len(s) > 2 and s[-2] == SEP for s in seqs)


# --------------------------------------------------------------------------- build


def test_manifest_and_splits(pydoc_dir):
    ds = ShardSet(pydoc_dir)
    m = ds.manifest
    for key in ("format_version", "data_config", "fingerprint", "tokenizer", "splits", "totals", "stats"):
        assert key in m
    assert m["fingerprint"] == data_fingerprint(small_cfg(pydoc_dir))
    assert set(m["tokenizer"]) >= {"file", "sha256", "kind", "vocab_size", "special_tokens"}
    assert m["tokenizer"]["special_tokens"]["mask"]["token"] == "<mask>"
    st = m["stats"]
    assert st["documents"] == 79 == st["train_documents"] + st["validation_documents"]
    assert st["sentences"] > 1000 and st["truncated_sentences"] > 0
    assert m["totals"]["sequences"] == len(ds["train"]) + len(ds["validation"])
    assert m["totals"]["tokens"] == ds["train"].num_tokens + ds["validation"].num_tokens
    assert m["splits"]["train"]["copies"][1][0]["file"] == "train/copy-01/shard-00000.arrow"
    assert len(m["splits"]["train"]["copies"][0]) == -(-len(ds["train"]) // 200)
    lengths = np.concatenate([ds[s].lengths() for s in ds.splits])
    assert lengths.max() <= 64 and lengths.mean() > 50  # packed close to max_seq_length
    train_ids = (pydoc_dir / "train" / "documents.txt").read_text().split("\n")[:-1]
    val_ids = (pydoc_dir / "validation" / "documents.txt").read_text().split("\n")[:-1]
    assert not set(train_ids) & set(val_ids) and len(train_ids) + len(val_ids) == 79
    assert all(is_validation(i, 0.1) for i in val_ids) and not any(is_validation(i, 0.1) for i in train_ids)
    assert not list(pydoc_dir.parent.glob("*.partial"))


def test_tokenizer_is_trained_on_the_training_split_only(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    ids = [f"d{i:03d}.txt" for i in range(60)]
    held_out = [i for i in ids if is_validation(i, 0.2)]
    assert held_out and len(held_out) < len(ids)
    filler = "The river runs past the old mill and the children play by the water. " * 3
    for name in ids:
        special = "zqxvwk zqxvwk zqxvwk. " * 20 if name in held_out else "plorbix plorbix plorbix. " * 20
        (corpus / name).write_text(filler + special)
    out = build(small_cfg(tmp_path / "out", str(corpus), validation_fraction=0.2, tokenizer=TokenizerConfig(vocab_size=400)))
    info = load_tokenizer(out / "tokenizer.json", "bpe")
    assert len(info.encode_batch(["plorbix"])[0]) == 1  # frequent in training text: one token
    assert len(info.encode_batch(["zqxvwk"])[0]) > 1  # only in validation text: never merged


def test_rerun_is_up_to_date_without_rewriting(pydoc_dir, capsys):
    before = {p: p.stat().st_mtime_ns for p in pydoc_dir.rglob("*")}
    assert build(small_cfg(pydoc_dir)) == pydoc_dir
    assert "up to date" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in pydoc_dir.rglob("*")} == before


def test_other_config_in_same_dir_refused_then_forced(tmp_path):
    out = tmp_path / "d"
    build(small_cfg(out, max_documents=40))
    other = small_cfg(out, max_documents=50)
    with pytest.raises(UserError, match="--force") as e:
        build(other)
    one_line_error(e)
    m = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps(dict(m, pipeline_version=0)))
    with pytest.raises(UserError, match="another data-prep version"):
        build(small_cfg(out, max_documents=40))  # same config, built by older code
    assert build(other, force=True) == out
    assert json.loads((out / MANIFEST).read_text())["fingerprint"] == data_fingerprint(other)
    assert not (tmp_path / "d.old").exists() and not (tmp_path / "d.partial").exists()


def test_stale_partial_directory_is_replaced(tmp_path, capsys):
    out = tmp_path / "d"
    partial = tmp_path / "d.partial"
    (partial / "train").mkdir(parents=True)
    (partial / "train" / "shard-00000.arrow").write_bytes(b"half written")
    build(small_cfg(out, max_documents=30))
    assert "interrupted build" in capsys.readouterr().err
    assert not partial.exists() and ShardSet(out)["train"].num_rows > 0


def test_output_dir_that_is_not_a_shard_directory_is_refused(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(UserError, match="not a shard directory"):
            build(small_cfg(out), force=force)
    assert (out / "precious.txt").read_text() == "keep me"


def test_bad_corpora_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="corpus not found") as e:
        build(small_cfg(tmp_path / "a", str(tmp_path / "missing-dir")))
    one_line_error(e)
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(UserError, match="empty corpus"):
        build(small_cfg(tmp_path / "b", str(tmp_path / "empty.txt")))
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("Just one short document.")
    with pytest.raises(UserError, match="too small") as e:
        build(small_cfg(tmp_path / "c", str(tiny)))
    one_line_error(e)
    two = tmp_path / "two.txt"
    two.write_text("First document. It has two sentences.\n\nSecond document. Also two sentences.")
    with pytest.raises(UserError, match="needs two or more documents per split") as e:
        # validation_fraction 0.5 leaves one document per split: no other document for NotNext
        build(small_cfg(tmp_path / "d", str(two), format="sentence_pair", sentence_objective="nsp", validation_fraction=0.5,
                        corpus_layout="blank_lines"))
    one_line_error(e)
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_existing_tokenizer_is_copied(pydoc_dir, tmp_path):
    tok = pydoc_dir / "tokenizer.json"
    out = build(small_cfg(tmp_path / "t", max_documents=30, tokenizer=TokenizerConfig(path=str(tok))))
    m = json.loads((out / MANIFEST).read_text())
    assert m["tokenizer"]["sha256"] == json.loads((pydoc_dir / MANIFEST).read_text())["tokenizer"]["sha256"]
    assert m["tokenizer"]["source"] == str(tok)
    with pytest.raises(UserError, match="tokenizer.path .*not found"):
        build(small_cfg(tmp_path / "u", tokenizer=TokenizerConfig(path=str(tmp_path / "no.json"))))


# --------------------------------------------------------------------------- damaged shards


def test_corrupt_truncated_and_foreign_shards_are_refused(pydoc_dir, tmp_path):
    import shutil

    for damage in ("flip", "truncate"):
        d = tmp_path / damage
        shutil.copytree(pydoc_dir, d)
        shard = d / "train" / "copy-01" / "shard-00000.arrow"
        data = bytearray(shard.read_bytes())
        if damage == "flip":
            data[len(data) // 2] ^= 0xFF
        else:
            data = data[: len(data) // 2]
        shard.write_bytes(bytes(data))
        with pytest.raises(UserError, match=str(shard)) as e:
            ShardSet(d)
        one_line_error(e)
    with pytest.raises(UserError, match="another tokenizer") as e:
        ShardSet(pydoc_dir, expect_tokenizer_sha256="0" * 64)
    one_line_error(e)
    sha = json.loads((pydoc_dir / MANIFEST).read_text())["tokenizer"]["sha256"]
    assert len(ShardSet(pydoc_dir, expect_tokenizer_sha256=sha)["validation"]) > 0


# --------------------------------------------------------------------------- CLI


def test_cli_build_and_inspect(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["build", str(REPO / "configs/data/roberta.yaml"), "corpus=pydoc", "tokenizer.vocab_size=2048",
            "max_seq_length=64", "masking.mode=static", "masking.dupe_factor=2", f"output_dir={out}"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert main(["inspect", str(out), "--examples", "2"]) == 0
    report = capsys.readouterr().out
    assert "[train]" in report and "[validation]" in report and "[MASK:" in report
    assert "% of non-special tokens predicted" in report and "documents 79" in report
    assert main(["inspect", str(out), "--split", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cases = [
        ["build", str(REPO / "configs/data/roberta.yaml"), f"corpus={tmp_path / 'missing'}", f"output_dir={tmp_path / 'o'}"],
        ["build", str(REPO / "configs/data/roberta.yaml"), "corpus=pydoc", "masking.modee=static"],
        ["inspect", str(tmp_path)],
    ]
    for args in cases:
        p = subprocess.run([sys.executable, "-m", "data_prep.cli", *args], capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 2, p.stderr
        lines = [line for line in p.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr


def test_unwritable_output_dir_is_a_user_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match="cannot write .*a-file") as e:
        build(small_cfg(blocker / "out", max_documents=30))  # even root cannot mkdir below a file
    one_line_error(e)


def test_rerun_rebuilds_a_directory_with_a_missing_or_cut_shard(tmp_path, capsys):
    out = build(small_cfg(tmp_path / "d", max_documents=30))
    shard = out / "validation" / "shard-00000.arrow"
    good = shard.read_bytes()
    shard.write_bytes(good[:100])
    assert build(small_cfg(tmp_path / "d", max_documents=30)) == out
    assert "damaged" in capsys.readouterr().err
    assert shard.read_bytes() == good and len(ShardSet(out)["validation"]) > 0


def test_arms_share_one_cached_tokenizer(tmp_path, monkeypatch):
    """A second build on the same training text with the same tokenizer settings but other
    data settings (here masking and format) takes the tokenizer from the cache beside the
    shard directories instead of training again: every arm of an ablation gets the same
    tokenizer bytes. Other tokenizer settings train anew."""
    import data_prep.build as build_mod

    first = build(small_cfg(tmp_path / "a", mode="static", tokenizer=TokenizerConfig(kind="wordpiece", vocab_size=600)))
    cached = list((tmp_path / "tokenizers").glob("wordpiece-600-*.json"))
    assert len(cached) == 1 and cached[0].read_bytes() == (first / "tokenizer.json").read_bytes()

    def refuse(*args, **kwargs):
        raise AssertionError("trained again although the cache holds this tokenizer")

    monkeypatch.setattr(build_mod, "train_tokenizer", refuse)
    second = build(small_cfg(tmp_path / "b", mode="dynamic", format="doc_sentences",
                             tokenizer=TokenizerConfig(kind="wordpiece", vocab_size=600)))
    assert (second / "tokenizer.json").read_bytes() == (first / "tokenizer.json").read_bytes()
    with pytest.raises(AssertionError, match="trained again"):
        build(small_cfg(tmp_path / "c", tokenizer=TokenizerConfig(kind="wordpiece", vocab_size=700)))
