"""Corpus readers (every spec kind on tiny files, plus the real nltk / wikitext data),
sentence splitting and the document-level train/validation split."""

from __future__ import annotations

import json
import random
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.errors import UserError
from data_prep.corpus import ReadOptions, ReadStats, read_documents, split_text_file, strip_tags
from data_prep.instances import document_order, is_validation
from data_prep.sentences import BACKENDS, line_units, split_sentences

NLTK_SOURCES = {"abc", "brown", "gutenberg", "inaugural", "movie_reviews", "reuters", "state_union", "webtext"}


def read(spec, **kw):
    stats = ReadStats()
    docs = list(read_documents(str(spec), stats=stats, **kw))
    return docs, stats


# --------------------------------------------------------------------------- readers


def test_directory_of_txt_one_document_per_file(tmp_path):
    d = tmp_path / "mycorpus"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("First doc.\n\nStill first doc.")
    (d / "sub" / "b.txt").write_text("Second doc.")
    (d / "empty.txt").write_text("  \n\n ")
    (d / "README").write_text("about this corpus")
    (d / "notes.md").write_text("not corpus text")
    docs, st = read(d)
    assert [x.id for x in docs] == ["a.txt", "sub/b.txt"]
    assert docs[0].text == "First doc.\n\nStill first doc."
    assert {x.source for x in docs} == {"mycorpus"}
    assert (st.documents, st.empty_documents, st.skipped_members) == (2, 1, 2)


def test_glob_selects_files(tmp_path):
    for name in ("x1.txt", "x2.txt", "y.txt"):
        (tmp_path / name).write_text(f"text of {name}")
    docs, _ = read(tmp_path / "x*.txt")
    assert [x.id for x in docs] == ["x1.txt", "x2.txt"]
    with pytest.raises(UserError, match="matches no file"):
        read(tmp_path / "z*.txt")


def test_single_txt_split_on_blank_lines(tmp_path):
    f = tmp_path / "docs.txt"
    f.write_text("Doc one line one.\nDoc one line two.\n\n\n \nDoc two.\n\nDoc three.\n")
    # The layout rule is the same for a file named directly and one found in a folder:
    # without headings a file is one document unless corpus_layout says otherwise.
    assert [x.id for x in read(f)[0]] == ["docs.txt"]
    docs, _ = read(f, options=ReadOptions(layout="blank_lines"))
    assert [x.id for x in docs] == ["docs.txt:0", "docs.txt:1", "docs.txt:2"]
    assert docs[0].text == "Doc one line one.\nDoc one line two."
    assert docs[2].text.strip() == "Doc three."


def test_single_txt_split_on_wikitext_titles(tmp_path):
    text = " \n = Alpha = \n \n Alpha is a letter . \n \n = = History = = \n \n It is old . \n \n = Beta = \n \n Beta follows . \n"
    docs = split_text_file(text)
    assert len(docs) == 2
    assert docs[0].split("\n")[0] == "Alpha"  # title kept as text, markers dropped
    assert "History" in docs[0] and "= =" not in docs[0] and "It is old" in docs[0]
    assert "Beta follows" in docs[1] and "Alpha" not in docs[1]


def test_jsonl_rows_and_errors(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"text": "one", "id": "a"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    docs, _ = read(f)
    assert [(x.id, x.text) for x in docs] == [("c.jsonl:a", "one"), ("c.jsonl:3", "two")]
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"text": "caf\xe9"}\n')
    docs, st = read(latin)
    assert docs[0].text == "caf\ufffd" and st.replaced_characters == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl:1 has no string 'text'"):
        read(bad)
    bad.write_text("{not json\n")
    with pytest.raises(UserError, match=r"bad.jsonl:1 is not valid JSON"):
        read(bad)


def test_compressed_txt_and_jsonl_read_as_the_file_inside(tmp_path):
    import bz2, gzip, lzma

    text = "First doc.\n\nSecond doc.\n"
    rows = json.dumps({"text": "one", "id": "a"}) + "\n" + json.dumps({"text": "two"}) + "\n"
    d = tmp_path / "packed"
    d.mkdir()
    with gzip.open(d / "a.txt.gz", "wt") as f:
        f.write(text)
    with bz2.open(d / "b.bz2", "wt") as f:  # no inner suffix: a text file, as a bare name is
        f.write(text)
    with lzma.open(d / "c.jsonl.xz", "wt") as f:
        f.write(rows)
    (d / "model.pt.gz").write_bytes(gzip.compress(b"\x00" * 10))  # not a corpus file: skipped
    plain, _ = read(d / "a.txt.gz", options=ReadOptions(layout="blank_lines"))
    assert [(x.id, x.text.strip()) for x in plain] == [("a.txt.gz:0", "First doc."), ("a.txt.gz:1", "Second doc.")]
    assert {x.source for x in plain} == {"a"}
    docs, st = read(d)
    assert sorted(x.id for x in docs) == ["a.txt.gz", "b.bz2", "c.jsonl.xz:2", "c.jsonl.xz:a"]
    assert st.files["model.pt.gz"]["skipped"] == "not a corpus file"
    # A damaged stream is one line naming the file (and for jsonl the line reached).
    whole = gzip.compress(("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(20000))).encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match=r"cannot read corpus file .*cut.jsonl.gz after line \d+: Compressed file ended"):
        read(tmp_path / "cut.jsonl.gz")
    (tmp_path / "fake.txt.gz").write_bytes(b"plain text, not gzip")
    with pytest.raises(UserError, match=r"cannot read corpus file .*fake.txt.gz: Not a gzipped file"):
        read(tmp_path / "fake.txt.gz")
    (tmp_path / "x.zip.gz").write_bytes(gzip.compress(b"PK"))
    with pytest.raises(UserError, match=r"unsupported type '.zip.gz'"):
        read(tmp_path / "x.zip.gz")


def test_parquet_rows_and_missing_column(tmp_path):
    f = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["alpha beta", "", "gamma"]}), f)
    docs, st = read(f)
    assert [(x.id, x.text) for x in docs] == [("c.parquet:0", "alpha beta"), ("c.parquet:2", "gamma")]
    assert st.empty_documents == 1
    g = tmp_path / "g.parquet"
    pq.write_table(pa.table({"body": ["x"]}), g)
    with pytest.raises(UserError, match=r"g.parquet has no 'text' column \(columns: body\)"):
        read(g)


def _zip(path: Path, members: dict) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_zip_one_document_per_member_skips_metadata(tmp_path):
    z = _zip(
        tmp_path / "corp.zip",
        {
            "corp/": b"",
            "corp/README": b"readme",
            "corp/cats.txt": b"d1 news",
            "corp/CONTENTS": b"contents",
            "corp/stopwords": b"a\nthe",
            "corp/LICENSE.txt": b"license",
            "corp/d2": b"Second member.",
            "corp/d1": b"First member.",
            "corp/empty": b"\n",
        },
    )
    docs, st = read(z)
    assert [x.id for x in docs] == ["corp.zip:corp/d1", "corp.zip:corp/d2"]
    assert {x.source for x in docs} == {"corp"}
    assert (st.skipped_members, st.empty_documents) == (5, 1)


def test_directory_of_zips_round_robin_and_max_documents(tmp_path):
    _zip(tmp_path / "a.zip", {f"a/{i}": f"a doc {i}" for i in range(5)})
    _zip(tmp_path / "b.zip", {f"b/{i}": f"b doc {i}" for i in range(2)})
    docs, _ = read(tmp_path)
    assert [x.id for x in docs][:5] == ["a.zip:a/0", "b.zip:b/0", "a.zip:a/1", "b.zip:b/1", "a.zip:a/2"]
    assert len(docs) == 7
    docs, st = read(tmp_path, max_documents=3)
    assert [x.source for x in docs] == ["a", "b", "a"] and st.documents == 3


def test_non_utf8_bytes_replaced_and_counted(tmp_path):
    (tmp_path / "d.txt").write_bytes(b"caf\xe9 and na\xefve \xef\xbf\xbd ok")
    docs, st = read(tmp_path)
    assert docs[0].text == "caf\ufffd and na\ufffdve \ufffd ok"
    assert st.replaced_characters == 2  # the genuine U+FFFD in the input is not counted


def test_pydoc_default_corpus():
    docs, st = read("pydoc")
    assert len(docs) == 79 and st.documents == 79
    assert docs[0].id.startswith("pydoc:") and len({x.id for x in docs}) == 79


def test_missing_empty_and_unsupported_corpus(tmp_path):
    with pytest.raises(UserError, match=r"corpus not found: .*nope"):
        read(tmp_path / "nope")
    (tmp_path / "blank.txt").write_text("\n\n   \n")
    with pytest.raises(UserError, match="empty corpus"):
        read(tmp_path / "blank.txt")
    (tmp_path / "x.csv").write_text("text\nhello\n")
    with pytest.raises(UserError, match=r"unsupported type '.csv'"):
        read(tmp_path / "x.csv")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(UserError, match="no .txt, .zip"):
        read(empty_dir)


def test_strip_tags_keeps_lines():
    assert strip_tags("\tThe/at jury/nn ./.\n\n1/2/cd ``/`` ok") == "The jury .\n\n1/2 `` ok"


# --------------------------------------------------------------------------- real data


def test_brown_tags_stripped_on_real_zip(nltk_dir):
    brown = nltk_dir / "brown.zip"
    docs, _ = read(brown, strip_pos_tags=["brown"], max_documents=3)
    assert docs[0].id == "brown.zip:brown/ca01"
    assert "The Fulton County Grand Jury said Friday an investigation" in docs[0].text
    words = [w for d in docs for w in d.text.split()]
    assert len(words) > 5000
    assert not [w for w in words if "/" in w[1:] and w.rsplit("/", 1)[1].isalpha() and w.rsplit("/", 1)[1].islower()]
    raw, _ = read(brown, max_documents=1)
    assert "The/at Fulton/np-tl" in raw[0].text


def test_wikitext_valid_has_60_articles(data_dir):
    docs, _ = read(data_dir / "wikitext-2" / "valid.txt")
    assert len(docs) == 60
    assert docs[0].id == "valid.txt:0" and docs[0].text.split("\n")[0] == "Homarus gammarus"
    assert all(not d.text.lstrip().startswith("=") for d in docs)


def test_directory_of_nltk_zips_reads_all_eight(nltk_dir):
    docs, st = read(nltk_dir, strip_pos_tags=["brown"], max_documents=16)
    assert len(docs) == 16
    assert {d.source for d in docs} == NLTK_SOURCES
    assert len({d.id for d in docs}) == 16
    assert st.skipped_members >= 1  # nltk-corpora/SOURCE.md next to the zips


def test_split_by_document_disjoint_stable_and_order_free(nltk_dir):
    ids = [d.id for d in read_documents(str(nltk_dir), max_documents=3000)]
    val = {i for i in ids if is_validation(i, 0.05)}
    train = set(ids) - val
    assert val and train and not (val & train)
    assert 0.03 < len(val) / len(ids) < 0.07
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    assert {i for i in shuffled if is_validation(i, 0.05)} == val  # order does not matter
    # A larger fraction only adds documents: held-out sets nest.
    assert val <= {i for i in ids if is_validation(i, 0.10)}
    # Packing order: a deterministic shuffle that depends on the seed, not the input order.
    order = [ids[i] for i in document_order(ids, 7)]
    assert [shuffled[i] for i in document_order(shuffled, 7)] == order
    assert order != ids and [ids[i] for i in document_order(ids, 8)] != order


# --------------------------------------------------------------------------- sentences


def test_line_units_join_wrapped_prose_keep_sentence_lines():
    wrapped = "Emma Woodhouse, handsome, clever, and rich, with a comfortable home\nand happy disposition, seemed to unite some of the best blessings\nof existence."
    assert line_units(wrapped) == [" ".join(wrapped.split())]
    per_line = "what's the deal ?\nwatch the movie and find out .\nit is bad"
    assert line_units(per_line) == ["what's the deal ?", "watch the movie and find out .", "it is bad"]
    headline = "ASIAN EXPORTERS FEAR DAMAGE\n  Mounting trade friction between the\n  U.S. And Japan has raised fears."
    assert line_units(headline)[0] == "ASIAN EXPORTERS FEAR DAMAGE"
    assert line_units("One para.\n\nTwo\n \nThree") == ["One para.", "Two", "Three"]


def test_split_sentences_handles_abbreviations_and_decimals():
    text = "Dr. Smith paid $3.50 for it. The U.S. economy grew 2.5% in 1987.\nMr. Jones left."
    assert split_sentences(text) == ["Dr. Smith paid $3.50 for it.", "The U.S. economy grew 2.5% in 1987.", "Mr. Jones left."]
    assert set(BACKENDS) >= {"blingfire", "pysbd"}  # pysbd: bench only, not a dependency
    with pytest.raises(KeyError):
        split_sentences(text, backend="nltk")


def test_outputs_written_inside_the_corpus_folder_are_not_read_as_corpus(tmp_path):
    """Run from inside the corpus folder, ``data-cache/`` and ``runs/`` land there: their
    documents.txt, metrics.jsonl and a half-built shard directory are skipped and reported."""
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt").write_text("The only document.")
    build = d / "data-cache" / "0123456789abcdef"
    (build / "train").mkdir(parents=True)
    (build / "manifest.json").write_text("{}")
    (build / "train" / "documents.txt").write_text("a.txt\n")
    partial = d / "data-cache" / "fedcba9876543210.partial"
    (partial / ".progress").mkdir(parents=True)
    (partial / ".progress" / "build.json").write_text("{}")
    (partial / "notes.txt").write_text("not corpus")
    run = d / "runs" / "bert"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: bert\n")
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    job = run / "finetune" / "sst2"
    job.mkdir(parents=True)
    (job / "finetune.yaml").write_text("task: sst2\n")
    (job / "scores.md").write_text("sst2 ...")
    (job / "log.txt").write_text("a log")
    docs, st = read(d)
    assert [x.id for x in docs] == ["a.txt"]
    skipped = {k for k, v in st.files.items() if v.get("skipped", "").startswith("written by this toolkit")}
    assert skipped == {"data-cache/0123456789abcdef/", "data-cache/fedcba9876543210.partial/", "runs/bert/"}
    # the folder named itself is read as given
    docs, _ = read(job)
    assert [x.id for x in docs] == ["log.txt"]
