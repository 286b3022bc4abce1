"""GLUE and CoNLL-2003 readers, fine-tuning encodings, heads, criteria and metrics, on the real
files in $BERT_RECIPES_DATA (counts are GLUE's and CoNLL's published ones)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from common.errors import UserError
from common.schema import IGNORE_INDEX
from pretrain.downstream import conll, glue
from pretrain.downstream.encode import encode_pairs, encode_words
from pretrain.downstream.metrics import (
    classification_scores,
    entity_scores,
    regression_scores,
)


@pytest.fixture(scope="module")
def glue_dir(data_dir: Path) -> Path:
    return data_dir / "glue"


@pytest.fixture(scope="module")
def conll_dir(data_dir: Path) -> Path:
    return data_dir / "conll2003"


@pytest.fixture(scope="module")
def tokenizers(data_dir: Path, tmp_path_factory):
    """wordpiece and bpe tokenizers trained on a few thousand SST-2 and CoNLL sentences."""
    from data_prep.tokenizer import load_tokenizer, train_tokenizer

    text = [e.text_a for e in glue.load_examples("sst2", "dev", data_dir / "glue")]
    text += [" ".join(s.words) for s in conll.load_sentences("dev", data_dir / "conll2003")[:2000]]
    root = tmp_path_factory.mktemp("tok")
    return {k: load_tokenizer(train_tokenizer(k, text, 1500, 2, root / f"{k}.json"), k) for k in ("wordpiece", "bpe")}


def test_glue_readers_give_glues_counts_and_labels(glue_dir):
    sst = glue.load_examples("sst2", "dev", glue_dir)
    assert len(sst) == 872 and Counter(e.label for e in sst) == {0: 428, 1: 444}
    assert sst[0].text_a == "it 's a charming and often affecting journey ." and sst[0].text_b is None
    assert len(glue.load_examples("sst2", "train", glue_dir)) == 67349  # train_full.tsv
    cola = glue.load_examples("cola", "train", glue_dir)  # train.tsv + val.tsv, header-less
    assert len(cola) == 8551 and Counter(e.label for e in cola) == {0: 2528, 1: 6023}
    mrpc = glue.load_examples("mrpc", "dev", glue_dir)  # BOM, quotes kept verbatim
    assert len(mrpc) == 408 and mrpc[0].text_b.startswith('"The foodservice pie business')
    rte = glue.load_examples("rte", "dev", glue_dir)
    assert Counter(e.label for e in rte) == {0: 146, 1: 131}  # entailment = 0
    sts = glue.load_examples("stsb", "train", glue_dir)
    assert len(sts) == 5749 and sts[0].label == 5.0 and isinstance(sts[1].label, float)
    assert len(glue.load_examples("qnli", "dev", glue_dir)) == 5463


def test_glue_missing_split_bad_rows_and_names_are_one_line_errors(glue_dir, tmp_path):
    with pytest.raises(UserError, match=r"qnli train split not found .*hf:nyu-mll/glue"):
        glue.load_examples("qnli", "train", glue_dir)
    with pytest.raises(UserError, match="no GLUE MNLI directory"):
        glue.load_examples("mnli", "dev", glue_dir)
    with pytest.raises(UserError, match="unknown GLUE task 'sst-2'; valid: sst2, cola"):
        glue.get_task("sst-2")
    d = tmp_path / "RTE"
    d.mkdir()
    (d / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n")
    with pytest.raises(UserError, match=r"dev.tsv:3: 3 tab-separated fields, expected 4"):
        glue.load_examples("rte", "dev", tmp_path)
    (d / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(UserError, match="label 'maybe' is not one of entailment, not_entailment"):
        glue.load_examples("rte", "dev", d)


def test_conll_reader_skips_docstart_and_keeps_iob1_tags(conll_dir, tmp_path):
    dev = conll.load_sentences("dev", conll_dir)
    assert len(dev) == 3250 and sum(len(s.words) for s in dev) == 51362
    assert not any("-DOCSTART-" in s.words for s in dev)
    test = conll.load_sentences("test", conll_dir)
    assert len(test) == 3453
    tags = Counter(t[:2] for s in test for t in s.tags)
    assert tags["B-"] == 20 and tags["I-"] > 8000  # IOB1: B- only between touching entities
    bad = tmp_path / "eng.testa"
    bad.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP I-ORGANIZATION\n")
    with pytest.raises(UserError, match=r"eng.testa:3: tag 'I-ORGANIZATION'"):
        conll.load_sentences("dev", tmp_path)


def test_stsb_score_outside_0_to_5_is_refused_before_training(tmp_path):
    d = tmp_path / "STS-B"
    d.mkdir()
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    row = "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane.\tAn air plane.\t{}\n"
    for score in ("nan", "inf", "7.5", "-1"):
        (d / "dev.tsv").write_text(head + row.format("5.000") + row.format(score))
        with pytest.raises(UserError, match=rf"dev.tsv row 2: score '{score}' is outside STS-B's 0 to 5; fix or drop"):
            glue.load_examples("stsb", "dev", d)


def test_text_that_is_not_utf8_names_file_and_line(tmp_path):
    d = tmp_path / "SST-2"
    d.mkdir()
    (d / "dev.tsv").write_bytes(b"sentence\tlabel\ngood\t1\ncaf\xe9 au lait\t1\n")
    with pytest.raises(UserError, match=r"SST-2/dev.tsv:3: not UTF-8 text \(byte 0xe9 at column 4\); convert .* iconv"):
        glue.load_examples("sst2", "dev", tmp_path)
    (tmp_path / "eng.testa").write_bytes(b"EU NNP B-NP I-ORG\n\nCaf\xe9 NNP I-NP I-LOC\n")
    with pytest.raises(UserError, match=r"eng.testa:3: not UTF-8 text \(byte 0xe9 at column 4\)"):
        conll.load_sentences("dev", tmp_path)


def test_conll_line_with_a_lost_or_extra_column_is_named(tmp_path):
    """A lost POS column leaves the chunk tag last; an extra column a word: neither is the NER tag."""
    for line, n in (("EU B-NP O", 3), ("lamb NN I-NP O extra", 5)):
        (tmp_path / "eng.testa").write_text(f"-DOCSTART- -X- -X- O\n\nGerman JJ I-NP I-MISC\n{line}\n")
        with pytest.raises(UserError, match=rf"eng.testa:4: {n} space-separated columns, but line 3 has 4 "
                                            rf"\(CoNLL-2003: WORD POS CHUNK TAG\); got '{line}'"):
            conll.load_sentences("dev", tmp_path)


def test_pair_layouts_and_longest_first_truncation(tokenizers):
    wp, bpe = tokenizers["wordpiece"], tokenizers["bpe"]
    (ids, types), = encode_pairs(wp, ["a charming journey"], ["bleak and desperate"], 64)
    a, b = wp.encode_batch(["a charming journey", "bleak and desperate"])
    assert ids.tolist() == [wp.cls_id, *a, wp.sep_id, *b, wp.sep_id]
    assert types.tolist() == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    (ids, types), = encode_pairs(bpe, ["a charming journey"], ["bleak and desperate"], 64, type_vocab_size=1)
    a, b = bpe.encode_batch(["a charming journey", "bleak and desperate"])
    assert ids.tolist() == [bpe.cls_id, *a, bpe.sep_id, bpe.sep_id, *b, bpe.sep_id] and not types.any()
    long_a = " ".join(["journey"] * 30)
    (ids, types), = encode_pairs(wp, [long_a], ["bleak"], 12)
    (b,) = wp.encode_batch(["bleak"])
    assert len(ids) == 12 and types.tolist().count(1) == len(b) + 1  # B kept whole, A cut from its end
    assert ids[1:9 - len(b)].tolist() == wp.encode_batch([long_a])[0][: 8 - len(b)]
    (ids, _), = encode_pairs(wp, [long_a], None, 8)
    assert len(ids) == 8 and ids[-1] == wp.sep_id


def test_ner_labels_sit_on_first_sub_tokens(tokenizers, conll_dir):
    for info in tokenizers.values():
        words = ["EU", "rejects", "Zyxwvutsrqp", "call"]
        tags = [3, 0, 1, 0]
        (ids,), (types,), (labels,), (pos,) = encode_words(info, [words], [tags], 64)
        assert ids[0] == info.cls_id and ids[-1] == info.sep_id and len(labels) == len(ids)
        assert labels[pos].tolist() == tags and (pos > 0).all()
        assert (labels != IGNORE_INDEX).sum() == 4  # the rare word's continuation tokens ignored
        assert pos[3] - pos[2] > 1  # the made-up word split into several sub-tokens
        # truncation: words past max_length get position -1
        (ids,), _, (labels,), (pos,) = encode_words(info, [words * 10], [tags * 10], 10)
        assert len(ids) <= 10 and (pos == -1).any() and (labels[pos[pos > 0]] >= 0).all()
    dev = conll.load_sentences("dev", conll_dir)[:200]
    _, _, labels, pos = encode_words(tokenizers["wordpiece"], [s.words for s in dev],
                                     [[conll.LABELS.index(t) for t in s.tags] for s in dev], 128)
    assert all((p >= 0).all() for p in pos) and sum(int((lab >= 0).sum()) for lab in labels) == sum(len(s.words) for s in dev)


def test_metrics_follow_glue_and_conlleval():
    y = [1, 1, 0, 0, 1, 0, 1, 1]
    p = [1, 0, 0, 1, 1, 0, 1, 1]
    s = classification_scores(p, y, ("accuracy", "f1", "matthews"))
    # tp=4 fp=1 fn=1 tn=2: F1 = 8/10; MCC = (4*2-1*1)/sqrt(5*5*3*3)
    assert s == pytest.approx({"accuracy": 0.75, "f1": 0.8, "matthews": 7 / 15})
    r = regression_scores([0.1, 0.4, 0.35, 0.8], [0.0, 1.0, 2.0, 3.0])
    assert r["spearman"] == pytest.approx(0.8) and 0.8 < r["pearson"] < 1.0
    assert regression_scores([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]) == {"pearson": 0.0, "spearman": 0.0}
    # conlleval: an I- tag after O opens an entity; IOB1 B- splits two touching entities.
    gold = [["I-ORG", "I-ORG", "O", "I-PER"], ["I-PER", "B-PER", "O"]]
    pred = [["I-ORG", "I-ORG", "O", "I-LOC"], ["I-PER", "I-PER", "O"]]
    e = entity_scores(pred, gold)
    # gold 4 entities, predicted 3, correct 1 (the ORG): P=1/3, R=1/4
    assert e["entity_precision"] == pytest.approx(1 / 3) and e["entity_recall"] == pytest.approx(1 / 4)
    assert e["entity_f1"] == pytest.approx(2 / 7)


def _tiny_cfg(family="bert", vocab=200):
    from common.configfile import merge_into
    from pretrain.config import ModelConfig

    extra = {"position_offset": 2, "max_position_embeddings": 66, "type_vocab_size": 1} if family == "roberta" else {}
    return merge_into(ModelConfig, {"family": family, "vocab_size": vocab, "hidden_size": 32, "num_hidden_layers": 2,
                                    "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64, **extra})


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_heads_take_the_pretrained_encoder_and_hf_layout(family):
    from pretrain.models.encoder import build_model
    from pretrain.models.heads import FineTuneModel

    cfg = _tiny_cfg(family)
    torch.manual_seed(0)
    pre = build_model(cfg, "nsp" if family == "bert" else "none")
    m = FineTuneModel(cfg, "sequence", 3).load_pretrained(pre).eval()
    assert all(torch.equal(a, b) for a, b in zip(m.encoder.state_dict().values(), pre.encoder.state_dict().values()))
    names = {k for k in m.state_dict() if k.startswith("head.")}
    if family == "bert":
        assert names == {"head.pooler.weight", "head.pooler.bias", "head.classifier.weight", "head.classifier.bias"}
        assert torch.equal(m.head.pooler.weight, pre.sentence_head.pooler.weight)
    else:
        assert names == {"head.dense.weight", "head.dense.bias", "head.out_proj.weight", "head.out_proj.bias"}
    ids = torch.randint(5, 200, (4, 9))
    assert m(ids, torch.ones_like(ids), torch.zeros_like(ids)).shape == (4, 3)
    t = FineTuneModel(cfg, "token", 9).load_pretrained(pre)
    assert t(ids, torch.ones_like(ids), torch.zeros_like(ids)).shape == (4, 9, 9)
    with pytest.raises(UserError, match="head 'span' is not one of: sequence, token"):
        FineTuneModel(cfg, "span", 2)


def test_criteria_return_sums_and_counts_that_give_the_mean():
    from pretrain.criterions.finetuning import (
        ClassificationCriterion,
        RegressionCriterion,
        TokenCriterion,
    )
    from pretrain.models.heads import FineTuneModel

    cfg = _tiny_cfg()
    torch.manual_seed(0)
    ids = torch.randint(5, 200, (4, 7))
    base = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    m = FineTuneModel(cfg, "sequence", 2).eval()
    batch = {**base, "labels": torch.tensor([0, 1, 1, 0])}
    crit = ClassificationCriterion()
    loss, n, logs = crit(m, batch)
    assert int(n["cls"]) == 4 == int(crit.sample_size(batch)["cls"])
    logits = m(ids)
    torch.testing.assert_close(loss["cls"] / 4, F.cross_entropy(logits, batch["labels"]))
    assert int(logs["cls_correct"]) == int((logits.argmax(-1) == batch["labels"]).sum())
    r = FineTuneModel(cfg, "sequence", 1).eval()
    batch = {**base, "labels": torch.tensor([0.5, 2.0, 4.5, 1.0])}
    loss, n, _ = RegressionCriterion()(r, batch)
    torch.testing.assert_close(loss["mse"] / n["mse"], F.mse_loss(r(ids).squeeze(-1), batch["labels"]))
    t = FineTuneModel(cfg, "token", 9).eval()
    labels = torch.full((4, 7), IGNORE_INDEX)
    labels[:, 1] = 3
    labels[0, 4] = 0
    batch = {**base, "labels": labels}
    loss, n, logs = TokenCriterion()(t, batch)
    assert int(n["tok"]) == 5 == int(TokenCriterion().sample_size(batch)["tok"]) == int(logs["tok_count"])
    sel = labels != IGNORE_INDEX
    torch.testing.assert_close(loss["tok"] / 5, F.cross_entropy(t(ids)[sel], labels[sel]))
