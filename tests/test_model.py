"""The encoder and its criterion: fairseq's criterion contract (sums and counts), factorized embedding,
cross-layer sharing, pre-LN, RoBERTa positions, NSP/SOP heads and one-line bad-input errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from common.configfile import merge_into
from common.errors import UserError
from data_prep.config import DataConfig
from pretrain.config import ModelConfig
from pretrain.criterions.pretraining import PretrainingCriterion, check_objective, score_sentence_task
from pretrain.models.encoder import build_model, check_model_fits_data, flops_per_token
from pretrain.tasks.base import normalized_loss

V, H, L, A, FF = 97, 32, 3, 4, 48


def tiny(**kw):
    base = dict(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=A, intermediate_size=FF)
    return merge_into(ModelConfig, {**base, **kw})


def batch(b=4, t=10, seed=0, pad_from=(None, 7, 4, None)):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (b, t), generator=g)
    mask = torch.ones_like(ids)
    for i, p in enumerate(pad_from[:b]):
        if p is not None:
            mask[i, p:] = 0
            ids[i, p:] = 1
    labels = torch.full_like(ids, -100)
    labels[:, 1] = ids[:, 1]
    labels[0, 5] = ids[0, 5]
    tt = torch.zeros_like(ids)
    tt[:, t // 2 :] = 1
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=tt, labels=labels)


@pytest.mark.parametrize("sentence", ["none", "nsp", "sop"])
def test_criterion_contract_sums_counts_and_backward(sentence):
    """fairseq's contract: the model returns logits only; the criterion returns per-term
    loss SUMS with a gradient path, the counts they sum over (equal to what
    ``sample_size`` reads from the labels alone), and correct/count logs."""
    torch.manual_seed(0)
    m = build_model(tiny(), sentence).eval()  # no dropout: two forward passes below must agree
    b = batch()
    col = {"nsp": "next_sentence_label", "sop": "sentence_order_label"}.get(sentence)
    if col:
        b[col] = torch.tensor([0, 1, 1, 0])
    out = m(**{k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels")})
    assert not any("loss" in k for k in out)  # losses left the model
    crit = PretrainingCriterion(sentence)
    loss_sum, sample_size, logs = crit(m, b)
    n_labels = int((b["labels"] != -100).sum())
    assert crit.weights == ({"mlm": 1.0} if sentence == "none" else {"mlm": 1.0, sentence: 1.0})
    assert sorted(loss_sum) == sorted(sample_size) == sorted(crit.weights)
    assert {k: int(v) for k, v in crit.sample_size(b).items()} == {k: int(v) for k, v in sample_size.items()}
    assert int(sample_size["mlm"]) == n_labels == int(logs["mlm_count"]) == out["mlm_logits"].shape[0]
    assert out["mlm_logits"].shape == (n_labels, V) and 0 <= int(logs["mlm_correct"]) <= n_labels
    mlm_ref = F.cross_entropy(out["mlm_logits"], b["labels"][b["labels"] != -100], reduction="sum")
    assert torch.allclose(loss_sum["mlm"], mlm_ref)
    # the step loss of one micro batch on one rank: BERT appendix A.2's sum of the two means
    total = normalized_loss(loss_sum, {k: float(v) for k, v in sample_size.items()}, crit.weights)
    mean_ref = mlm_ref / n_labels
    if col:
        assert int(sample_size[sentence]) == 4 == int(logs["sentence_count"])
        mean_ref = mean_ref + F.cross_entropy(out["sentence_logits"], b[col])
    assert torch.allclose(total, mean_ref)
    total.backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if col:
        assert out["sentence_logits"].shape == (4, 2)
        assert m.sentence_head.classifier.weight.grad.abs().sum() > 0


def test_global_sample_size_weighs_every_token_equally():
    """Two micro batches with 1 and 9 masked tokens: the micro batches' shares over the
    GLOBAL count add up to the mean over all 10 tokens, not the mean of the two means."""
    torch.manual_seed(3)
    m = build_model(tiny(), "none").eval()  # no dropout: the forward passes below must agree
    crit = PretrainingCriterion("none")
    a, b = batch(seed=1), batch(seed=2)
    a["labels"].fill_(-100)
    a["labels"][0, 1] = a["input_ids"][0, 1]
    assert int(crit.sample_size(a)["mlm"]) == 1 and int(crit.sample_size(b)["mlm"]) > 1
    n = float(crit.sample_size(a)["mlm"] + crit.sample_size(b)["mlm"])
    shares = [normalized_loss(crit(m, x)[0], {"mlm": n}, crit.weights) for x in (a, b)]
    per_token = torch.cat([F.cross_entropy(m(**x)["mlm_logits"], x["labels"][x["labels"] != -100], reduction="none")
                           for x in (a, b)])
    torch.testing.assert_close(sum(shares), per_token.mean())
    assert not torch.allclose(sum(shares), (per_token[:1].mean() + per_token[1:].mean()) / 2)


def test_labelled_position_logits_equal_all_position_logits():
    torch.manual_seed(1)
    m = build_model(tiny(embedding_size=16, sharing="all"), "sop").eval()
    b = batch()
    out = m(**b)
    full = m.logits(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    sel = b["labels"] != -100
    assert full["mlm_logits"].shape == (4, 10, V)
    torch.testing.assert_close(out["mlm_logits"], full["mlm_logits"][sel])
    torch.testing.assert_close(out["sentence_logits"], full["sentence_logits"])


def test_criterion_without_sentence_term_ignores_sentence_labels_and_needs_its_own():
    b = batch()
    b["next_sentence_label"] = torch.zeros(4, dtype=torch.long)
    loss_sum, sample_size, logs = PretrainingCriterion("none")(build_model(tiny(), "none"), b)
    assert list(loss_sum) == list(sample_size) == ["mlm"] and not any(k.startswith("sentence") for k in logs)
    with pytest.raises(ValueError, match="sop criterion needs a sentence_order_label column"):
        PretrainingCriterion("sop")(build_model(tiny(), "sop"), b)


def _count(m):
    return sum(p.numel() for p in m.parameters())


def test_factorized_embedding_shapes_and_count():
    e = 8
    m = build_model(tiny(embedding_size=e), "none")
    emb = m.encoder.embeddings
    assert emb.word_embeddings.weight.shape == (V, e) and emb.projection.weight.shape == (H, e)
    assert m.mlm.dense.weight.shape == (e, H) and m.mlm.LayerNorm.weight.shape == (e,)
    plain = build_model(tiny(), "none")
    assert plain.encoder.embeddings.projection is None
    # ALBERT §3.1: O(V·H) → O(V·E + E·H) for the embeddings (the MLM transform shrinks too)
    pos, types = 512, 2
    d_emb = (V + pos + types + 2) * (H - e) - (e * H + H)
    d_mlm = (H * H + H + 2 * H) - (H * e + e + 2 * e)
    assert _count(plain) - _count(m) == d_emb + d_mlm


@pytest.mark.parametrize("sharing, n_attn, n_ffn", [("none", L, L), ("all", 1, 1), ("attention", 1, L), ("ffn", L, 1)])
def test_cross_layer_sharing_keeps_one_block_and_applies_it_at_every_layer(sharing, n_attn, n_ffn):
    m = build_model(tiny(sharing=sharing), "none")
    assert len(m.encoder.attention) == n_attn and len(m.encoder.ffn) == n_ffn
    attn = _count(m.encoder.attention[0])
    ffn = _count(m.encoder.ffn[0])
    assert _count(build_model(tiny(), "none")) - _count(m) == (L - n_attn) * attn + (L - n_ffn) * ffn
    # every layer runs the shared block: count calls
    calls = []
    hook = m.encoder.attention[0].register_forward_hook(lambda *a: calls.append(1))
    m(**batch())
    hook.remove()
    assert len(calls) == (L if n_attn == 1 else 1)
    # sharing saves memory, not compute
    assert flops_per_token(m, 64) == flops_per_token(build_model(tiny(), "none"), 64)


def test_flops_per_token_formula():
    m = build_model(tiny(), "none")
    n = _count(m) - V * H - 512 * H
    assert flops_per_token(m, 64) == 6 * n + 12 * L * H * 64


def _reference_pre_ln(m, ids):
    """Pre-LN encoder written out by hand from the model's own parameters."""
    emb = m.encoder.embeddings
    x = emb.word_embeddings(ids) + emb.position_embeddings(torch.arange(ids.shape[1])) + emb.token_type_embeddings(torch.zeros_like(ids))
    x = emb.LayerNorm(x)
    b, t, h = x.shape
    d = h // A
    for i in range(L):
        at, ff = m.encoder.attention[i], m.encoder.ffn[i]
        y = at.LayerNorm(x)
        q, k, v = (lin(y).view(b, t, A, d).transpose(1, 2) for lin in (at.query, at.key, at.value))
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        x = x + at.dense((w @ v).transpose(1, 2).reshape(b, t, h))
        x = x + ff.output(F.gelu(ff.intermediate(ff.LayerNorm(x))))
    return m.encoder.final_layer_norm(x)


def test_pre_ln_matches_a_hand_written_reference():
    torch.manual_seed(2)
    m = build_model(tiny(pre_ln=True), "none").eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))  # LayerNorm weights away from 1 so their placement matters
    ids = batch()["input_ids"]
    with torch.no_grad():
        ours = m.encoder(ids)
        ref = _reference_pre_ln(m, ids)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    post = build_model(tiny(), "none").eval()
    post.load_state_dict({k: v for k, v in m.state_dict().items() if "final_layer_norm" not in k})
    with torch.no_grad():
        assert (post.encoder(ids) - ours).abs().max() > 1e-2


@pytest.mark.parametrize("offset", [0, 2])
def test_right_padding_leaves_real_tokens_unchanged(offset):
    torch.manual_seed(3)
    m = build_model(tiny(position_offset=offset, max_position_embeddings=16), "none").eval()
    ids = torch.randint(5, V, (1, 6))
    padded = torch.cat([ids, torch.ones(1, 4, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 6 + [0] * 4])
    alone = m.logits(ids)["mlm_logits"]
    with_pad = m.logits(padded, mask)["mlm_logits"][:, :6]
    torch.testing.assert_close(alone, with_pad, atol=1e-5, rtol=1e-5)
    pos = m.encoder.embeddings.position_ids(padded, mask)
    if offset:  # Hugging Face RoBERTa: real tokens from padding_idx+1, padding at padding_idx
        assert pos.tolist() == [[2, 3, 4, 5, 6, 7, 1, 1, 1, 1]]
    else:
        assert pos.tolist() == [list(range(10))]


def test_init_is_bert_truncated_normal():
    torch.manual_seed(4)
    m = build_model(tiny(vocab_size=4000, hidden_size=64, num_attention_heads=4), "nsp")
    w = m.encoder.embeddings.word_embeddings.weight
    assert abs(w.std().item() - 0.02 * 0.88) < 0.002  # std of N(0, σ) truncated at 2σ is 0.88σ
    assert w.abs().max() <= 0.04 + 1e-6
    assert m.encoder.attention[0].query.bias.abs().sum() == 0 and (m.encoder.ffn[0].LayerNorm.weight == 1).all()


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(hidden_size=30), "hidden_size=30 is not divisible by model.num_attention_heads=4"),
        (dict(embedding_size=64), "embedding_size=64 is larger than model.hidden_size=32"),
        (dict(vocab_size=None), "vocab_size is not set"),
        (dict(position_offset=600), "position_offset=600"),
        (dict(hidden_dropout_prob=1.0), "hidden_dropout_prob=1.0"),
    ],
)
def test_bad_model_configs_are_one_line_user_errors(kw, msg):
    cfg = tiny()
    for k, v in kw.items():
        cfg[k] = v
    with pytest.raises(UserError) as e:
        build_model(cfg, "none")
    assert msg in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kw, msg", [
    (dict(sharing="layers"), "model: sharing='layers' is not one of: none, all, attention, ffn"),
    (dict(family="gpt"), "model: family='gpt' is not one of: bert, roberta, albert, distilbert"),
    (dict(hidden_act="swish"), "model: hidden_act='swish' is not one of: gelu, gelu_new, relu"),
])
def test_model_choices_are_typed_and_fail_at_load(kw, msg):
    with pytest.raises(UserError) as e:
        merge_into(ModelConfig, kw, where="model")
    assert str(e.value) == msg
    cfg = tiny()
    with pytest.raises(Exception, match="expected one of"):  # not even assignable later
        cfg.sharing = "layers"


def test_bad_objective_is_refused_before_training():
    with pytest.raises(UserError, match="not one of: none, nsp, sop"):
        build_model(tiny(), "mlm+nsp")
    full_sentences = ["input_ids", "labels"]
    check_objective("none", full_sentences)
    check_objective("sop", ["input_ids", "token_type_ids", "sentence_order_label"])
    with pytest.raises(UserError, match="needs a sentence_order_label column in the shards, but they hold no sentence pairs"):
        check_objective("sop", full_sentences)
    with pytest.raises(UserError, match="needs a next_sentence_label column in the shards, but they carry sentence_order_label"):
        check_objective("nsp", ["input_ids", "sentence_order_label"])


def test_model_must_fit_the_data():
    roberta = tiny(position_offset=2, max_position_embeddings=130, type_vocab_size=1)
    check_model_fits_data(roberta, merge_into(DataConfig, {"max_seq_length": 128}))
    with pytest.raises(UserError, match="max_seq_length=129 exceeds the model's 128 positions"):
        check_model_fits_data(roberta, merge_into(DataConfig, {"max_seq_length": 129}))
    pair = merge_into(DataConfig, {"format": "segment_pair", "sentence_objective": "nsp", "max_seq_length": 64})
    with pytest.raises(UserError, match="type_vocab_size=1; use 2"):
        check_model_fits_data(roberta, pair)


def test_score_sentence_task_reuses_the_head_across_tasks():
    torch.manual_seed(5)
    m = build_model(tiny(), "nsp")
    with torch.no_grad():  # a head that always answers class 0 ("B follows A")
        m.sentence_head.classifier.weight.zero_()
        m.sentence_head.classifier.bias.copy_(torch.tensor([1.0, 0.0]))
    b = batch()
    b["sentence_order_label"] = torch.tensor([0, 1, 1, 1])
    m.train()
    r = score_sentence_task(m, [b, b], "sop")
    assert r == {"accuracy": 0.25, "correct": 2, "count": 8}
    assert m.training  # mode restored
    with pytest.raises(UserError, match="needs a next_sentence_label column"):
        score_sentence_task(m, [b], "nsp")


def test_score_sentence_task_without_head_uses_a_seeded_untrained_head():
    torch.manual_seed(6)
    m = build_model(tiny(), "none")
    b = batch(b=4)
    b["next_sentence_label"] = torch.tensor([0, 1, 0, 1])
    before = torch.random.get_rng_state()
    r1 = score_sentence_task(m, [b], "nsp", seed=1)
    assert torch.equal(before, torch.random.get_rng_state())  # the global RNG is untouched
    assert r1 == score_sentence_task(m, [b], "nsp", seed=1) and r1["count"] == 4
    assert m.sentence_head is None
