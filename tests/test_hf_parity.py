"""Weight parity with Hugging Face transformers (random weights, tiny shapes, fp32, eval):
ours → export → transformers gives the same logits, transformers → import → ours too; an
exported run fills a fill-mask pipeline; layouts no HF class holds are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.configfile import merge_into
from common.errors import UserError
from pretrain.config import ModelConfig, load_run_config
from pretrain.models.encoder import build_model
from conftest import padded_ids, perturbed, write_finished_run

transformers = pytest.importorskip("transformers")
from pretrain.models.hf import export_hf, export_run, from_hf  # noqa: E402

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

REPO = Path(__file__).resolve().parents[1]
V = 101
SHAPE = dict(vocab_size=V, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=40)
# family → (ModelConfig keys, objective, HF class, MLM output, sentence output, pad id)
FAMILIES = {
    "bert-nsp": (dict(family="bert"), "nsp", "BertForPreTraining", "prediction_logits", "seq_relationship_logits", 0),
    "roberta": (
        dict(family="roberta", position_offset=2, type_vocab_size=1, max_position_embeddings=22, layer_norm_eps=1e-5),
        "none",
        "RobertaForMaskedLM",
        "logits",
        None,
        1,
    ),
    "albert-sop": (
        dict(family="albert", embedding_size=16, sharing="all", hidden_act="gelu_new"),
        "sop",
        "AlbertForPreTraining",
        "prediction_logits",
        "sop_logits",
        0,
    ),
    "albert-unshared-E=H": (dict(family="albert", sharing="none"), "sop", "AlbertForPreTraining", "prediction_logits", "sop_logits", 0),
}


def model_cfg(**kw):
    return merge_into(ModelConfig, {**SHAPE, **kw})


def padded_batch(pad_id: int, two_types: bool):
    ids, mask = padded_ids(V, pad_id)
    types = torch.zeros_like(ids)
    if two_types:
        types[:, 7:] = 1
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    labels[0, 11] = ids[0, 11]
    return ids, mask, types, labels


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_then_transformers_gives_our_logits(family, tmp_path):
    kw, sentence, cls, mlm_key, sent_key, pad = FAMILIES[family]
    cfg = model_cfg(**kw)
    ours = perturbed(build_model(cfg, sentence))
    export_hf(cfg, sentence, ours.state_dict(), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [cls]
    hf = getattr(transformers, cls).from_pretrained(tmp_path).eval()
    ids, mask, types, labels = padded_batch(pad, cfg.type_vocab_size > 1)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        train_path = ours(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
    full = ours.logits(ids, mask, types)
    diff = (full["mlm_logits"] - theirs[mlm_key]).abs().max().item()
    print(f"{family}: max |Δ MLM logits| = {diff:.2e}")
    torch.testing.assert_close(full["mlm_logits"], theirs[mlm_key], atol=1e-5, rtol=0)
    # the training path (labelled positions only) agrees too
    torch.testing.assert_close(train_path["mlm_logits"], theirs[mlm_key][labels != -100], atol=1e-5, rtol=0)
    if sent_key:
        torch.testing.assert_close(full["sentence_logits"], theirs[sent_key], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_transformers_then_import_gives_their_logits(family, tmp_path):
    kw, sentence, cls, mlm_key, sent_key, pad = FAMILIES[family]
    cfg = model_cfg(**kw)
    from pretrain.models.hf import hf_config

    hf_cfg = hf_config(cfg, sentence)
    hf_cfg.architectures = [cls]
    torch.manual_seed(3)
    hf = perturbed(getattr(transformers, cls)(hf_cfg))
    if family == "albert-unshared-E=H":  # E = H imports only with the identity projection
        with torch.no_grad():
            hf.albert.encoder.embedding_hidden_mapping_in.weight.copy_(torch.eye(32))
            hf.albert.encoder.embedding_hidden_mapping_in.bias.zero_()
    hf.save_pretrained(tmp_path)
    got_cfg, ours = from_hf(tmp_path)
    assert ours.sentence == sentence and not ours.training
    assert (got_cfg.family, got_cfg.sharing, got_cfg.position_offset) == (cfg.family, cfg.sharing, cfg.position_offset)
    ids, mask, types, _ = padded_batch(pad, cfg.type_vocab_size > 1)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
    full = ours.logits(ids, mask, types)
    torch.testing.assert_close(full["mlm_logits"], theirs[mlm_key], atol=1e-5, rtol=0)
    if sent_key:
        torch.testing.assert_close(full["sentence_logits"], theirs[sent_key], atol=1e-5, rtol=0)


def test_albert_with_learned_square_projection_is_refused(tmp_path):
    cfg = model_cfg(family="albert")
    from pretrain.models.hf import hf_config

    c = hf_config(cfg, "none")
    c.architectures = ["AlbertForMaskedLM"]
    transformers.AlbertForMaskedLM(c).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="learned projection this model omits when E = H"):
        from_hf(tmp_path)


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory):
    from data_prep.tokenizer import train_tokenizer

    text = [
        "the cat sat on the mat. the dog sat on the log.",
        "a cat and a dog met on the mat and sat down together.",
        "language models fill in masked words from their context.",
    ] * 20
    return train_tokenizer("bpe", text, 320, 1, tmp_path_factory.mktemp("tok") / "tokenizer.json")


def _roberta_run(bpe_tokenizer):
    from data_prep.tokenizer import load_tokenizer

    n = load_tokenizer(bpe_tokenizer, "bpe").vocab_size
    overrides = ["model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2", "model.intermediate_size=64", f"model.vocab_size={n}"]
    cfg = load_run_config(REPO / "configs" / "recipe" / "roberta.yaml", "smoke", overrides)
    torch.manual_seed(0)
    return cfg, build_model(cfg.model, cfg.objective.sentence)


def test_exported_run_fills_a_fill_mask_pipeline(bpe_tokenizer, tmp_path):
    cfg, model = _roberta_run(bpe_tokenizer)
    out = export_run(cfg, model.state_dict(), tmp_path / "hf", bpe_tokenizer)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    fill = transformers.pipeline("fill-mask", model=str(out), tokenizer=str(out), device="cpu")
    preds = fill("the cat sat on the <mask>.", top_k=3)
    assert len(preds) == 3 and all(isinstance(p["token_str"], str) and 0 <= p["score"] <= 1 for p in preds)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert (tok.cls_token, tok.sep_token, tok.pad_token, tok.mask_token, tok.bos_token) == ("<s>", "</s>", "<pad>", "<mask>", "<s>")
    # what the pipeline's model saw is our model
    enc = tok(["the dog sat on the <mask>.", "a cat"], padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = fill.model(**enc).logits
    ours = model.eval().logits(enc["input_ids"], enc["attention_mask"])["mlm_logits"]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_cli_export_of_a_checkpoint_finds_the_runs_tokenizer(bpe_tokenizer, tmp_path):
    from pretrain.cli import main

    cfg, model = _roberta_run(bpe_tokenizer)
    run = tmp_path / "run"
    write_finished_run(run, cfg, model.state_dict(), Path(bpe_tokenizer).parent)
    assert main(["export", str(run), str(tmp_path / "hf"), "--format", "hf"]) == 0
    got_cfg, back = from_hf(tmp_path / "hf")
    ids = torch.randint(5, 300, (2, 9))
    torch.testing.assert_close(back.logits(ids)["mlm_logits"], model.eval().logits(ids)["mlm_logits"], atol=1e-6, rtol=0)
    assert (tmp_path / "hf" / "tokenizer.json").is_file()


@pytest.mark.parametrize(
    "kw, sentence, msg",
    [
        (dict(family="albert", pre_ln=True), "sop", "holds a pre-LN encoder"),
        (dict(family="albert", sharing="attention"), "sop", "shares only the attention blocks"),
        (dict(family="albert", sharing="ffn"), "sop", "shares only the feed-forward blocks"),
        (dict(family="bert", sharing="all"), "nsp", "model.family=bert cannot hold a factorized embedding or shared layers"),
        (dict(family="bert", embedding_size=16), "nsp", "set model.family=albert"),
        (dict(family="roberta", position_offset=2), "nsp", "export with --drop-sentence-head"),
        (dict(family="roberta"), "none", "needs model.position_offset"),
        (dict(family="bert", position_offset=2), "nsp", "needs family roberta"),
    ],
)
def test_layouts_no_hf_class_holds_are_one_line_errors(kw, sentence, msg, tmp_path):
    cfg = model_cfg(**kw)
    sd = build_model(cfg, sentence).state_dict()
    with pytest.raises(UserError) as e:
        export_hf(cfg, sentence, sd, tmp_path / "out")
    assert msg in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_roberta_with_nsp_exports_without_its_head(tmp_path):
    cfg = model_cfg(family="roberta", position_offset=2, type_vocab_size=2)
    m = build_model(cfg, "nsp")
    export_hf(cfg, "nsp", m.state_dict(), tmp_path, drop_sentence_head=True)
    _, back = from_hf(tmp_path)
    assert back.sentence == "none" and back.sentence_head is None


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    albert = model_cfg(family="albert", embedding_size=16, sharing="all")
    bert = model_cfg(family="bert")
    with pytest.raises(UserError, match="weights do not fit model config .*another architecture"):
        export_hf(bert, "nsp", build_model(albert, "sop").state_dict(), tmp_path)


def test_import_refuses_other_architectures_and_non_model_dirs(tmp_path):
    with pytest.raises(UserError, match="is not a Hugging Face model directory"):
        from_hf(tmp_path)
    c = transformers.DistilBertConfig(vocab_size=V, dim=32, n_layers=1, n_heads=2, hidden_dim=40)
    transformers.DistilBertModel(c).save_pretrained(tmp_path / "distil")  # no MLM head: nothing to distil from
    with pytest.raises(UserError) as e:
        from_hf(tmp_path / "distil")
    assert "DistilBertModel (distilbert); import reads BertForPreTraining" in str(e.value)
    c = transformers.BertConfig(**{k: v for k, v in SHAPE.items()}, architectures=["BertModel"])
    transformers.BertModel(c).save_pretrained(tmp_path / "bare")
    with pytest.raises(UserError, match="BertModel"):
        from_hf(tmp_path / "bare")


HEADLESS = {  # family → (ModelConfig keys, bare class, a task class, their encoder's attribute, pad id)
    "bert": (dict(family="bert"), "BertModel", "BertForSequenceClassification", "bert", 0),
    "roberta": (dict(family="roberta", position_offset=2, type_vocab_size=1, max_position_embeddings=22, layer_norm_eps=1e-5),
                "RobertaModel", "RobertaForTokenClassification", "roberta", 1),
    "albert": (dict(family="albert", embedding_size=16, sharing="all"), "AlbertModel", "AlbertForSequenceClassification", "albert", 0),
}


@pytest.mark.parametrize("family", list(HEADLESS))
def test_fine_tuning_reads_the_encoder_of_headless_classes(family, tmp_path):
    """``BertModel``, ``*ForSequenceClassification`` ... directories have no MLM head: import
    (distillation, probes) refuses them; fine-tuning (``mlm_head=False``) loads their encoder
    to the same hidden states and, for BERT/ALBERT, their pooler."""
    from pretrain.downstream.source import hf_pooler
    from pretrain.models.hf import hf_config

    kw, bare, task, attr, pad = HEADLESS[family]
    cfg = model_cfg(**kw)
    ids, mask, types, _ = padded_batch(pad, cfg.type_vocab_size > 1)
    for cls in (bare, task):
        hf_cfg = hf_config(cfg, "none")
        hf_cfg.architectures = [cls]
        torch.manual_seed(5)
        hf = perturbed(getattr(transformers, cls)(hf_cfg)).eval()
        out = tmp_path / cls
        hf.save_pretrained(out)
        with pytest.raises(UserError, match=f"is a {cls} \\({family}\\); import reads"):
            from_hf(out)
        got_cfg, ours = from_hf(out, mlm_head=False)
        assert ours.sentence == "none" and got_cfg.family == family
        encoder = hf if cls == bare else getattr(hf, attr)
        with torch.no_grad():
            theirs = encoder(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
            mine = ours.encoder(ids, mask, types)
        keep = mask.bool()  # padded positions are not compared (no one reads them)
        torch.testing.assert_close(mine[keep], theirs[keep], atol=1e-5, rtol=0)
        pooler = hf_pooler(out, family)
        if family == "roberta":
            assert pooler is None
        else:
            dense = encoder.pooler.dense if family == "bert" else encoder.pooler
            assert torch.equal(pooler["weight"], dense.weight) and torch.equal(pooler["bias"], dense.bias)
    if family == "bert":  # a class of no family here (config.json edited: save_pretrained names the class)
        f = tmp_path / bare / "config.json"
        f.write_text(json.dumps({**json.loads(f.read_text()), "architectures": ["ElectraForPreTraining"]}))
        with pytest.raises(UserError, match="ElectraForPreTraining .*fine-tuning also reads the encoder of any Bert"):
            from_hf(tmp_path / bare, mlm_head=False)


def test_a_directory_with_only_vocab_txt_gets_a_fast_wordpiece_and_leaves_no_temp_file(tmp_path, monkeypatch):
    """Turc et al.'s BERT miniatures ship vocab.txt without tokenizer.json: transformers
    converts it; the converted file is written to a temporary directory that is removed."""
    import tempfile

    from pretrain.downstream.encode import tokenizer_for_hf_dir

    d = tmp_path / "mini"
    d.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s", "."]
    (d / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertConfig(**SHAPE).save_pretrained(d)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    info = tokenizer_for_hf_dir(d, "bert")
    assert info.encode_batch(["The cats sat on the mat."]) == [[5, 6, 10, 7, 8, 5, 9, 11]]
    assert (info.cls_id, info.sep_id, info.mask_id, info.pad_id) == (2, 3, 4, 0)
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("e", [16, 32])
def test_an_electra_directory_gives_its_encoder_hidden_states(e, tmp_path):
    """google/electra-*-discriminator's layout (ElectraForPreTraining; E < H with
    embeddings_project, or E = H without): our encoder gives transformers' hidden states."""
    from pretrain.models.hf_electra import encoder_from_hf_electra

    c = transformers.ElectraConfig(**SHAPE, embedding_size=e, architectures=["ElectraForPreTraining"])
    torch.manual_seed(7)
    hf = perturbed(transformers.ElectraForPreTraining(c)).eval()
    hf.save_pretrained(tmp_path)
    cfg, ours = encoder_from_hf_electra(tmp_path)
    assert cfg.family == "bert" and cfg.embedding_size == (None if e == 32 else e) and ours.sentence == "none"
    ids, mask, types, _ = padded_batch(0, True)
    with torch.no_grad():
        theirs = hf.electra(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        mine = ours.encoder(ids, mask, types)
    keep = mask.bool()
    torch.testing.assert_close(mine[keep], theirs[keep], atol=1e-5, rtol=0)
    bert = transformers.BertConfig(**SHAPE)
    transformers.BertModel(bert).save_pretrained(tmp_path / "bert")
    with pytest.raises(UserError, match="not an ELECTRA class"):
        encoder_from_hf_electra(tmp_path / "bert")
