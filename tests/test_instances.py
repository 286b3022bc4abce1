"""``data_prep.instances`` on real text: the pair semantics of BERT (NSP, Devlin et al. 2019,
§3.1/A.2) and ALBERT (SOP, Lan et al. 2020, §3.1), DOC-SENTENCES boundaries (Liu et al.
2019, §4.2), short targets, lengths and layout. Every row's ``source`` is checked against
the documents' token streams, so a wrong provenance cannot hide a wrong row."""

from __future__ import annotations

import random

import numpy as np
import pytest

from data_prep.corpus import read_documents
from data_prep.instances import (
    InstanceStats,
    chunk_random,
    create_pairs,
    make_rows,
    pack_sentences,
)
from data_prep.sentences import line_units, split_sentences
from data_prep.tokenizer import load_tokenizer, train_tokenizer
from data_prep.words import encode_with_words

CLS, SEP = 0, 2


@pytest.fixture(scope="module")
def reuters(nltk_dir, tmp_path_factory):
    """1500 reuters articles as (ids, word starts) per sentence, and the tokenizer."""
    docs = [d.text for d in read_documents(str(nltk_dir / "reuters.zip"), max_documents=1500)]
    tok = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer("bpe", (u for t in docs for u in line_units(t)), 2000, 2, tok)
    info = load_tokenizer(tok, "bpe")
    ids, starts = [], []
    for text in docs:
        enc = [e for e in encode_with_words(info, split_sentences(text)) if e[0].size]
        ids.append([e[0] for e in enc])
        starts.append([e[1] for e in enc])
    return ids, starts, info


def piece_tokens(docs, piece):
    d, first, end, lo, hi = piece
    return np.concatenate(docs[d][first:end])[lo:hi]


def check_pair_row(row, docs, max_len):
    """Layout ``[CLS] A [SEP] B [SEP]``, types 0…0 1…1, and A/B equal to their sources."""
    ids, types = row.input_ids, row.token_type_ids
    a, b = row.source
    la, lb = a[4] - a[3], b[4] - b[3]
    assert len(ids) == la + lb + 3 <= max_len and la >= 1 and lb >= 1
    assert ids[0] == CLS and ids[1 + la] == SEP and ids[-1] == SEP
    assert types.tolist() == [0] * (la + 2) + [1] * (lb + 1)
    assert np.array_equal(ids[1 : 1 + la], piece_tokens(docs, a))
    assert np.array_equal(ids[2 + la : -1], piece_tokens(docs, b))
    assert row.word_starts.shape == ids.shape and row.word_starts[[0, 1 + la, len(ids) - 1]].all()
    return a, b


def chunks_of(docs, size=200):
    return [docs[i : i + size] for i in range(0, len(docs), size)]


def test_nsp_segment_pairs_follow_or_come_from_another_document(reuters):
    ids, starts, _ = reuters
    labels, is_next, not_next = [], 0, 0
    for c, (docs, ws) in enumerate(zip(chunks_of(ids), chunks_of(starts), strict=True)):
        st = InstanceStats()
        for row in create_pairs(docs, 64, CLS, SEP, "nsp", chunk_random(1, "train", c), word_starts=ws, stats=st):
            a, b = check_pair_row(row, docs, 64)
            labels.append(row.label)
            if row.label == 0:  # IsNext: B is the text right after A's sentences, same document
                assert b[0] == a[0] and b[1] == a[2] and b[2] > b[1]
                is_next += 1
            else:  # NotNext: B comes from another document of the chunk
                assert b[0] != a[0] and b[0] < len(docs)
                not_next += 1
        assert st.is_next + st.not_next == st.sequences
    assert is_next > 1000 and not_next > 1000
    assert abs(np.mean(labels) - 0.5) < 0.02


def test_sentence_pairs_are_single_sentences(reuters):
    ids, starts, _ = reuters
    docs, ws = ids[:300], starts[:300]
    st = InstanceStats()
    rows = list(create_pairs(docs, 128, CLS, SEP, "nsp", random.Random(3), sentence_pairs=True, word_starts=ws, stats=st))
    for row in rows:
        a, b = check_pair_row(row, docs, 128)
        assert a[2] - a[1] == 1 and b[2] - b[1] == 1  # one sentence each
        assert (b[0] == a[0] and b[1] == a[2]) if row.label == 0 else b[0] != a[0]
    assert st.short_targets == 0 and st.unpaired_sentences > 0
    assert 0.45 < np.mean([r.label for r in rows]) < 0.55


def test_sop_swapped_pair_is_the_two_segments_reversed(reuters):
    ids, starts, _ = reuters
    docs, ws = ids, starts
    st = InstanceStats()
    rows = list(create_pairs(docs, 64, CLS, SEP, "sop", random.Random(5), word_starts=ws, stats=st))
    for row in rows:
        a, b = check_pair_row(row, docs, 64)
        assert a[0] == b[0]  # both segments from one document
        if row.label == 1:
            assert b[2] == a[1]  # row's A is the later segment, B the one just before it
        else:
            assert a[2] == b[1]
    assert st.swapped + st.in_order == len(rows) > 3000
    assert abs(st.swapped / len(rows) - 0.5) < 0.03


def test_doc_sentences_never_cross_a_document(reuters):
    ids, starts, _ = reuters
    docs, ws = ids[:300], starts[:300]
    rows = list(pack_sentences(docs, 64, CLS, SEP, False, ws))
    last_of = {}
    for r in rows:
        assert len(r.source) == 1 and len(r.input_ids) <= 64
        d, first, end, lo, hi = r.source[0]
        body = r.input_ids[1:-1]
        assert SEP not in body  # no document separator inside
        assert np.array_equal(body, np.concatenate(docs[d][first:end])[: hi - lo])
        last_of[d] = end
    assert all(last_of[d] == len(doc) for d, doc in enumerate(docs))  # every document's tail is kept
    full = list(pack_sentences(docs, 64, CLS, SEP, True, ws))
    assert sum(len(r.source) > 1 for r in full) > 100  # FULL-SENTENCES does cross documents
    assert len(rows) > len(full)


def test_every_format_respects_max_seq_length(reuters):
    ids, starts, _ = reuters
    docs, ws = ids[:200], starts[:200]
    for fmt, obj in [("full_sentences", "none"), ("doc_sentences", "none"), ("segment_pair", "nsp"),
                     ("segment_pair", "sop"), ("sentence_pair", "nsp"), ("sentence_pair", "sop")]:
        for max_len in (16, 128):
            st = InstanceStats()
            rows = list(make_rows(fmt, obj, docs, max_len, CLS, SEP, random.Random(0), 0.1, ws, st))
            assert rows and max(len(r.input_ids) for r in rows) <= max_len, fmt
            assert all(r.word_starts.shape == r.input_ids.shape for r in rows)
            assert st.sequences == len(rows) and st.tokens == sum(len(r.input_ids) for r in rows)


def test_short_seq_prob_gives_that_share_of_short_pairs():
    # One-token sentences: a pair's length is exactly its target + 3 (except at a
    # document's end), so short rows measure short targets directly.
    docs = [[np.asarray([10 + (i % 50)], np.int32) for i in range(8000)] for _ in range(40)]
    for p in (0.0, 0.1, 0.3):
        st = InstanceStats()
        rows = list(create_pairs(docs, 32, CLS, SEP, "nsp", random.Random(11), short_seq_prob=p, stats=st))
        short = np.mean([len(r.input_ids) < 32 for r in rows])
        expected = p * 27 / 28  # target uniform in [2, 29]; 29 is not short
        assert len(rows) > 10_000 and abs(short - expected) < 0.015, (p, short)
        assert abs(st.short_targets / max(1, len(rows)) - p) < 0.015


def test_one_sentence_documents_are_counted_and_give_no_pair():
    rng = np.random.default_rng(0)
    docs = [[rng.integers(10, 90, 7).astype(np.int32) for _ in range(n)] for n in (1, 5, 1, 8, 0, 6, 1)]
    st = InstanceStats()
    rows = list(create_pairs(docs, 40, CLS, SEP, "nsp", random.Random(2), stats=st))
    assert st.one_sentence_documents == 3 and st.empty_documents == 1 and st.documents == 6
    assert {r.source[0][0] for r in rows} <= {1, 3, 5}  # A never from a one-sentence document
    with pytest.raises(ValueError, match="two non-empty documents"):
        list(create_pairs([docs[1], []], 40, CLS, SEP, "nsp", random.Random(2)))
    assert list(create_pairs([docs[1]], 40, CLS, SEP, "sop", random.Random(2)))  # SOP needs no other document


def test_rows_depend_only_on_chunk_and_seed(reuters):
    ids, starts, _ = reuters
    docs, ws = ids[:100], starts[:100]
    a = [r.input_ids.tobytes() for r in create_pairs(docs, 64, CLS, SEP, "nsp", chunk_random(7, "train", 3), word_starts=ws)]
    b = [r.input_ids.tobytes() for r in create_pairs(docs, 64, CLS, SEP, "nsp", chunk_random(7, "train", 3), word_starts=ws)]
    c = [r.input_ids.tobytes() for r in create_pairs(docs, 64, CLS, SEP, "nsp", chunk_random(7, "train", 4), word_starts=ws)]
    assert a == b and a != c



# --------------------------------------------------------------------------- reference rules


def _oracle_pairs(all_documents, max_seq_length, short_seq_prob, rng, objective):
    """The per-document procedure of create_pretraining_data.py (google-research/bert for
    NSP, google-research/albert for SOP), written out independently over lists of token
    lists, without the mask draws (the pipeline masks from its own streams). Returns
    ``(tokens_a, tokens_b, label)`` per pair, documents in order."""
    out = []
    max_num_tokens = max_seq_length - 3
    for index, document in enumerate(all_documents):
        target = max_num_tokens
        if rng.random() < short_seq_prob:
            target = rng.randint(2, max_num_tokens)
        chunk, length, i = [], 0, 0
        while i < len(document):
            chunk.append(document[i])
            length += len(document[i])
            if i == len(document) - 1 or length >= target:
                a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                a = [t for seg in chunk[:a_end] for t in seg]
                b = []
                if len(chunk) == 1 or (objective == "nsp" and rng.random() < 0.5):
                    label = 1
                    for _ in range(10):
                        other = rng.randint(0, len(all_documents) - 1)
                        if other != index:
                            break
                    doc = all_documents[other]
                    for seg in doc[rng.randint(0, len(doc) - 1):]:
                        b.extend(seg)
                        if len(b) >= target - len(a):
                            break
                    i -= len(chunk) - a_end
                elif objective == "sop" and rng.random() < 0.5:
                    label = 1
                    b = [t for seg in chunk[a_end:] for t in seg]
                    a, b = b, a
                else:
                    label = 0
                    b = [t for seg in chunk[a_end:] for t in seg]
                while len(a) + len(b) > max_num_tokens:
                    longer = a if len(a) > len(b) else b
                    if rng.random() < 0.5:
                        del longer[0]
                    else:
                        longer.pop()
                out.append((a, b, label))
                chunk, length = [], 0
            i += 1
    return out


@pytest.mark.parametrize("objective", ["nsp", "sop"])
@pytest.mark.parametrize("max_len", [24, 128])
def test_reference_rules_draw_what_the_reference_draws(reuters, objective, max_len):
    """sentence_labels=reference + short_seq_rule=reference give, with the same generator,
    exactly the pairs of the reference's create_instances_from_document (written out in
    ``_oracle_pairs``), one-sentence documents and chunks included."""
    ids, starts, _ = reuters
    docs = ids[:150]
    expected = _oracle_pairs([[s.tolist() for s in d] for d in docs], max_len, 0.3, random.Random(7), objective)
    st = InstanceStats()
    rows = list(create_pairs(docs, max_len, CLS, SEP, objective, random.Random(7), short_seq_prob=0.3, stats=st,
                             short_seq_rule="reference", sentence_labels="reference"))
    assert len(rows) == len(expected) > 100
    for row, (a, b, label) in zip(rows, expected):
        la = len(a)
        assert row.input_ids.tolist() == [CLS, *a, SEP, *b, SEP] and row.label == label
        assert row.token_type_ids.tolist() == [0] * (la + 2) + [1] * (len(b) + 1)
    assert st.random_b > 0 and st.sequences == len(rows)
    if objective == "nsp":
        assert st.not_next == st.random_b and st.is_next + st.not_next == len(rows)
    else:
        assert 0 < st.random_b < st.swapped and st.in_order + st.swapped == len(rows)


def test_reference_rules_pair_one_sentence_documents_with_a_random_document():
    """BERT's rule: a one-sentence chunk is always NotNext, so a one-sentence document
    gives a pair (the balanced rule gives none)."""
    docs = [[np.arange(5, 9)], [np.arange(10, 14), np.arange(20, 25)], [np.arange(30, 33)]]
    ref = list(create_pairs(docs, 64, CLS, SEP, "nsp", random.Random(0), short_seq_rule="reference", sentence_labels="reference"))
    assert [r.label for r in ref if r.source[0][0] in (0, 2)] == [1, 1]
    balanced = list(create_pairs(docs, 64, CLS, SEP, "nsp", random.Random(0)))
    assert all(r.source[0][0] == 1 for r in balanced)


def test_sentence_pair_has_no_reference_rule():
    with pytest.raises(ValueError, match="sentence_pair uses balanced"):
        list(create_pairs([[np.arange(3, 6)] * 3] * 2, 64, CLS, SEP, "nsp", random.Random(0), sentence_pairs=True,
                          sentence_labels="reference"))


def test_short_target_drawn_once_per_document_or_per_chunk(reuters):
    """short_seq_rule=reference draws the target once per document (BERT's
    create_instances_from_document), per_chunk once per chunk; with short_seq_prob=1
    every draw is short, so the counter counts draws."""
    ids, _, _ = reuters
    docs = ids[:200]
    for labels in ("balanced", "reference"):
        per_doc, per_chunk = InstanceStats(), InstanceStats()
        list(create_pairs(docs, 128, CLS, SEP, "nsp", random.Random(3), short_seq_prob=1.0, stats=per_doc,
                          short_seq_rule="reference", sentence_labels=labels))
        rows = list(create_pairs(docs, 128, CLS, SEP, "nsp", random.Random(3), short_seq_prob=1.0, stats=per_chunk,
                                 short_seq_rule="per_chunk", sentence_labels=labels))
        with_pairs = per_doc.documents - (per_doc.one_sentence_documents if labels == "balanced" else 0)
        assert per_doc.short_targets == with_pairs
        assert per_chunk.short_targets >= len(rows) > with_pairs


# --------------------------------------------------------------------------- fairseq's eos layout


def _fairseq_complete_blocks(documents, tokens_per_sample, bos, eos):
    """fairseq's FULL-SENTENCES data written out independently: every line (sentence)
    binarized with a trailing eos, a blank line (a lone eos) between documents, the stream
    cut by ``TokenBlockDataset(break_mode="complete")`` into blocks of at most
    ``tokens_per_sample - 1`` tokens (a line joins a block if it fits or the block is
    empty), each block prepended with bos (fairseq/tasks/masked_lm.py)."""
    lines = []
    for i, doc in enumerate(documents):
        if i:
            lines.append([eos])
        lines.extend([list(s) + [eos] for s in doc])
    blocks, current = [], []
    for line in lines:
        if current and len(current) + len(line) > tokens_per_sample - 1:
            blocks.append(current)
            current = []
        current = current + line
    if current:
        blocks.append(current)
    return [[bos, *b] for b in blocks]


@pytest.mark.parametrize("max_len", [16, 64])
def test_eos_separator_rows_are_fairseqs_complete_blocks(reuters, max_len):
    """sentence_separator=eos: FULL-SENTENCES rows are fairseq's blocks token for token
    (sentences cut to max_len - 2 first, as the pipeline does; fairseq would let the block
    overflow), and every sentence ends with </s>."""
    ids, starts, _ = reuters
    docs = [[s[: max_len - 2] for s in d] for d in ids[:120]]
    rows = list(make_rows("full_sentences", "none", docs, max_len, CLS, SEP, random.Random(0), 0.1, starts[:120], None,
                          sentence_separator="eos"))
    expected = _fairseq_complete_blocks([[s.tolist() for s in d] for d in docs], max_len, CLS, SEP)
    assert [r.input_ids.tolist() for r in rows] == expected
    assert all(r.word_starts.shape == r.input_ids.shape for r in rows)
    # The eos layout has one </s> per sentence and one per document boundary, no other.
    seps = sum(int((r.input_ids == SEP).sum()) for r in rows)
    assert seps == sum(len(d) for d in docs) + len(docs) - 1
    none = list(make_rows("full_sentences", "none", docs, max_len, CLS, SEP, random.Random(0), 0.1, starts[:120], None))
    assert len(rows) > len(none)  # the per-sentence </s> takes room


def test_eos_separator_doc_sentences_stay_in_their_document(reuters):
    ids, starts, _ = reuters
    docs = ids[:60]
    rows = list(pack_sentences(docs, 64, CLS, SEP, False, starts[:60], sentence_separator="eos"))
    assert all(len(r.source) == 1 and r.input_ids[0] == CLS and r.input_ids[-1] == SEP for r in rows)
    for r in rows:  # <s> s1 </s> s2 </s> …: as many </s> as sentences, no separator unit
        d, first, end, _, _ = r.source[0]
        assert int((r.input_ids == SEP).sum()) == end - first
    with pytest.raises(ValueError, match="packed formats"):
        list(make_rows("segment_pair", "nsp", docs, 64, CLS, SEP, random.Random(0), sentence_separator="eos"))
