"""Two details of DistilBERT's released training script (Hugging Face
``examples/research_projects/distillation``): the frequency-smoothed choice of masked
tokens (``train.py --mlm_smoothing``, ``data.masking.smoothing``) and frozen student
position embeddings (``--freeze_pos_embs``, ``distillation.freeze_position_embeddings``).
Tiny shapes, no trainer run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.configfile import merge_into
from common.errors import UserError
from common.schema import IGNORE_INDEX
from data_prep.build import build
from data_prep.config import DataConfig, MaskingConfig, TokenizerConfig, check_data_config, data_fingerprint
from data_prep.masking import STREAM_DYNAMIC, Masker, sequence_rng
from data_prep.shards import ShardSet
from data_prep.token_counts import cache_path, load_or_count, masking_weights, smoothed_weights
from pretrain.config import ModelConfig, load_run_config
from pretrain.criterions.distillation import DistillationCriterion
from pretrain.models.distil import freeze_position_embeddings
from pretrain.models.encoder import build_model
from pretrain.training.optim import param_groups

REPO = Path(__file__).resolve().parents[1]
SPECIAL = np.arange(5)  # ids 0..4: PAD, UNK, CLS, SEP, MASK in these synthetic tests
MASK_ID = 4

pytestmark = pytest.mark.usefixtures("one_thread")


def _mask_rates(masker: Masker, frequent: int, rare: int, rows: int = 400):
    """Share of the `frequent` and of the `rare` token's occurrences chosen for prediction
    over ``rows`` synthetic sequences of 90 frequent + 10 rare tokens (shuffled)."""
    chosen = {frequent: 0, rare: 0}
    gen = np.random.default_rng(0)
    for row in range(rows):
        ids = np.array([frequent] * 90 + [rare] * 10, dtype=np.int32)
        gen.shuffle(ids)
        ids = np.concatenate([[2], ids, [3]]).astype(np.int32)
        _, labels = masker(ids, sequence_rng(7, STREAM_DYNAMIC, 0, row))
        assert labels[0] == labels[-1] == IGNORE_INDEX
        picked = labels[labels != IGNORE_INDEX]
        assert picked.size == 15  # the budget is unchanged: round(0.15 x 100)
        for t in chosen:
            chosen[t] += int((picked == t).sum())
    return chosen[frequent] / (90 * rows), chosen[rare] / (10 * rows)


def test_smoothing_masks_rare_tokens_more_often():
    vocab, frequent, rare = 50, 10, 11
    counts = np.full(vocab, 100, dtype=np.int64)
    counts[frequent], counts[rare] = 100_000, 10  # the corpus frequencies the weights come from
    uniform = Masker(vocab, MASK_ID, SPECIAL)
    f_u, r_u = _mask_rates(uniform, frequent, rare)
    assert abs(f_u - 0.15) < 0.02 and abs(r_u - 0.15) < 0.03  # BERT: every token alike
    smoothed = Masker(vocab, MASK_ID, SPECIAL, token_weights=smoothed_weights(counts, 0.7, SPECIAL))
    f_s, r_s = _mask_rates(smoothed, frequent, rare)
    # weight ratio (1e5 / 10) ** 0.7 ≈ 631: the 10 rare tokens take 10 of the 15 slots in
    # nearly every row, the 90 frequent ones share the other 5
    assert r_s > 0.97 and abs(f_s - 5 / 90) < 0.01
    # a milder ratio, 10x more frequent -> weight 10 ** -0.7 ≈ 1/5: no saturation, still
    # several times the rate
    counts[frequent], counts[rare] = 1000, 100
    f_m, r_m = _mask_rates(Masker(vocab, MASK_ID, SPECIAL, token_weights=smoothed_weights(counts, 0.7, SPECIAL)),
                           frequent, rare)
    assert 0.3 < r_m < 0.9 and r_m > 3 * f_m


def test_smoothed_weights_are_the_scripts_formula():
    counts = np.array([5, 0, 7, 0, 3, 1, 8, 1000], dtype=np.int64)
    w = smoothed_weights(counts, 0.7, [0, 2, 4])
    assert w[0] == w[2] == w[4] == 0.0  # special tokens never predicted
    assert w[1] == 1.0 and w[5] == 1.0  # max(count, 1): an unseen id counts once
    np.testing.assert_allclose(w[[3, 6, 7]], [1.0, 8 ** -0.7, 1000 ** -0.7])


def test_masker_rejects_weights_it_cannot_use():
    with pytest.raises(UserError, match="masking.unit=whole_word"):
        Masker(50, MASK_ID, SPECIAL, unit="whole_word", token_weights=np.ones(50))
    with pytest.raises(UserError, match="50 finite values"):
        Masker(50, MASK_ID, SPECIAL, token_weights=np.ones(49))


def test_smoothing_config_checks_and_fingerprint():
    base = DataConfig(masking=MaskingConfig(mode="dynamic"))
    smooth = DataConfig(masking=MaskingConfig(mode="dynamic", smoothing=0.7))
    check_data_config(smooth)
    # training masks are drawn by the trainer; the shards' bytes do not change
    assert data_fingerprint(base) == data_fingerprint(smooth)
    for masking, message in [(MaskingConfig(mode="static", smoothing=0.7), "mode=dynamic"),
                             (MaskingConfig(mode="dynamic", unit="whole_word", smoothing=0.7), "unit=token"),
                             (MaskingConfig(mode="dynamic", smoothing=-0.1), "must be >= 0")]:
        with pytest.raises(UserError, match=message):
            check_data_config(DataConfig(masking=masking))


def test_recipe_defaults():
    cfg = load_run_config(REPO / "configs" / "recipe" / "bert.yaml")
    assert cfg.data.masking.smoothing == 0.0 and cfg.distillation is None  # off elsewhere
    from omegaconf import OmegaConf

    data = OmegaConf.load(REPO / "configs" / "data" / "distilbert.yaml")
    recipe = OmegaConf.load(REPO / "configs" / "recipe" / "distilbert.yaml")
    assert data.masking.smoothing == 0.7  # train.py --mlm_smoothing default
    # train.py's freeze_pos_embeddings leaves a distilbert student's positions trainable
    assert recipe.distillation.freeze_position_embeddings is False


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A RoBERTa smoke run config (dynamic masking) on 12 pydoc documents with
    ``data.masking.smoothing=0.7``, and its built shards."""
    out = tmp_path_factory.mktemp("tiny") / "data"
    cfg = load_run_config(REPO / "configs" / "recipe" / "roberta.yaml", preset="smoke", overrides=[
        "data.corpus=pydoc", "data.max_documents=12", "data.tokenizer.vocab_size=400", "data.max_seq_length=64",
        "data.validation_fraction=0.2", "data.masking.smoothing=0.7", f"data.output_dir={out}",
        f"run_dir={out.parent / 'run'}"])
    return cfg, ShardSet(build(cfg.data))


@pytest.fixture(scope="module")
def tiny_shards(tiny_run) -> ShardSet:
    return tiny_run[1]


def test_token_counts_come_from_the_training_shards_and_are_cached(tiny_shards: ShardSet):
    from data_prep.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_shards.tokenizer_path, "bpe")
    train = tiny_shards["train"]
    expected = np.bincount(np.concatenate([train.row(i)["input_ids"] for i in range(len(train))]),
                           minlength=tok.vocab_size)
    path = cache_path(tiny_shards.directory, "train")
    path.unlink(missing_ok=True)
    counts = load_or_count(tiny_shards, "train", tok.vocab_size)
    np.testing.assert_array_equal(counts, expected)
    assert path.is_file() and counts.sum() == train.num_tokens
    # a stale or tampered cache (another token total) is recounted, not trusted
    import json

    stale = json.loads(path.read_text())
    stale["num_tokens"] += 1
    stale["counts"] = [0] * tok.vocab_size
    path.write_text(json.dumps(stale))
    np.testing.assert_array_equal(load_or_count(tiny_shards, "train", tok.vocab_size, write=False), expected)
    w = masking_weights(MaskingConfig(mode="dynamic", smoothing=0.7), tiny_shards, tok.vocab_size, tok.special_ids)
    ordinary = np.ones(tok.vocab_size, bool)
    ordinary[tok.special_ids] = False
    assert w[tok.special_ids].max() == 0.0 and (w[ordinary] > 0).all()
    np.testing.assert_allclose(w[ordinary], np.maximum(expected[ordinary], 1) ** -0.7)
    assert masking_weights(MaskingConfig(mode="dynamic"), tiny_shards, tok.vocab_size, tok.special_ids) is None
    with pytest.raises(UserError, match="outside the vocabulary"):
        train.token_counts(5)


def _tiny_model_cfg(**kw) -> ModelConfig:
    d = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
             max_position_embeddings=24, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    d.update(kw)
    return merge_into(ModelConfig, d, where="test")


def test_frozen_position_embeddings_stay_put_and_leave_the_optimizer():
    torch.manual_seed(0)
    teacher = build_model(_tiny_model_cfg(num_hidden_layers=2)).eval().requires_grad_(False)
    student = build_model(_tiny_model_cfg(num_hidden_layers=1, family="distilbert", type_vocab_size=0))
    freeze_position_embeddings(student)
    pos = student.encoder.embeddings.position_embeddings.weight
    words = student.encoder.embeddings.word_embeddings.weight
    groups = param_groups(student, 0.0)
    assert all(p is not pos for g in groups for p in g["params"])
    assert any(p is words for g in groups for p in g["params"])
    assert "encoder.embeddings.position_embeddings.weight" in student.state_dict()  # checkpoints keep it
    before_pos, before_words = pos.detach().clone(), words.detach().clone()
    opt = torch.optim.AdamW(groups, lr=1e-2)
    ids = torch.randint(5, 40, (2, 12))
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, 3] = ids[:, 3]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
             "labels": labels}
    terms, sizes, _ = DistillationCriterion(teacher, 2.0, 5.0, 2.0, 1.0)(student, batch)
    loss = 5.0 * terms["ce"] / sizes["ce"] + 2.0 * terms["mlm"] / sizes["mlm"] + terms["cos"] / sizes["cos"]
    loss.backward()
    assert pos.grad is None
    opt.step()
    assert torch.equal(pos, before_pos)
    assert not torch.equal(words, before_words)


def test_the_trainer_draws_smoothed_masks(tiny_run):
    from pretrain.tasks.pretraining import PretrainingTask
    from pretrain.training.distributed import World

    cfg, shards = tiny_run
    task = PretrainingTask(cfg)
    task.prepare(World(rank=0, size=1, local_rank=0, local_size=1))
    masker = task.collate_train.masker
    counts = load_or_count(shards, "train", masker.vocab_size, write=False)
    special = np.flatnonzero(masker._is_special)
    np.testing.assert_array_equal(masker.token_weights, smoothed_weights(counts, 0.7, special))
    # over the training split, the predicted tokens are rarer than those of a uniform mask
    rows = np.arange(len(shards["train"]))
    uniform = PretrainingTask(load_run_config(REPO / "configs" / "recipe" / "roberta.yaml", preset="smoke",
                                              overrides=[f"{k}={v}" for k, v in _same_data(cfg, smoothing=0.0)]))
    uniform.prepare(World(rank=0, size=1, local_rank=0, local_size=1))
    assert uniform.collate_train.masker.token_weights is None
    log_count = {}
    for name, t in (("smoothed", task), ("uniform", uniform)):
        labels = t.collate(rows, epoch=0)["labels"]
        log_count[name] = float(np.log(counts[labels[labels != IGNORE_INDEX].numpy()]).mean())
    # measured 4.19 vs 4.73 nats (~2,300 picks each; standard error ~0.03): a per-sequence
    # budget limits the shift (the reference draws over the whole batch)
    assert log_count["smoothed"] < log_count["uniform"] - 0.3


def _same_data(cfg, smoothing: float):
    return [("data.corpus", "pydoc"), ("data.max_documents", 12), ("data.tokenizer.vocab_size", 400),
            ("data.max_seq_length", 64), ("data.validation_fraction", 0.2), ("data.masking.smoothing", smoothing),
            ("data.output_dir", cfg.data.output_dir), ("run_dir", cfg.run_dir)]


@pytest.fixture(scope="module")
def hf_distilbert_teacher(tmp_path_factory) -> Path:
    """A tiny randomly initialised transformers DistilBertForMaskedLM saved as a model
    directory (no hub access)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.DistilBertConfig(vocab_size=60, dim=16, n_layers=4, n_heads=2, hidden_dim=32,
                                           max_position_embeddings=32, dropout=0.0, attention_dropout=0.0)
    config.architectures = ["DistilBertForMaskedLM"]
    model = transformers.DistilBertForMaskedLM(config).eval()
    with torch.no_grad():  # non-zero biases and LayerNorms, so a wrong mapping shows in the logits
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = tmp_path_factory.mktemp("hf") / "distilbert"
    model.save_pretrained(out)
    return out


def test_a_hf_distilbert_teacher_loads_with_its_logits(hf_distilbert_teacher: Path):
    import transformers

    from pretrain.models.distil import init_student, load_teacher, select_layers, student_model_config

    cfg, ours = load_teacher(str(hf_distilbert_teacher))
    assert cfg.family == "distilbert" and cfg.type_vocab_size == 0 and cfg.num_hidden_layers == 4
    theirs = transformers.DistilBertForMaskedLM.from_pretrained(hf_distilbert_teacher).eval()
    ids = torch.randint(0, 60, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).logits
    got = ours.logits(ids, mask)["mlm_logits"]
    keep = mask.bool()
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-4, rtol=1e-4)
    # a student of half its layers starts from it
    layers = select_layers(cfg.num_hidden_layers, "extract_distilbert", [])
    student = build_model(student_model_config(cfg, layers))
    init_student(student, ours, layers)
    assert torch.equal(student.encoder.embeddings.word_embeddings.weight, ours.encoder.embeddings.word_embeddings.weight)


def test_distilbert_recipe_takes_a_hf_distilbert_teacher(hf_distilbert_teacher: Path, tiny_shards: ShardSet):
    from pretrain.models.distil import resolve_distillation

    cfg = load_run_config(REPO / "configs" / "recipe" / "distilbert.yaml", preset="smoke", overrides=[
        f"distillation.teacher={hf_distilbert_teacher}", f"data.tokenizer.path={tiny_shards.tokenizer_path}"])
    assert cfg.model.family == "distilbert" and cfg.model.num_hidden_layers == 2 and cfg.model.hidden_size == 16
    # without a tokenizer.json in the directory and none given: one line naming the fix
    cfg.data.tokenizer.path = None
    with pytest.raises(UserError, match="has no tokenizer.json to build the data with; set data.tokenizer.path"):
        resolve_distillation(cfg, "test")


def _save_hf_distilbert(out: Path, vocab_size: int, max_positions: int) -> Path:
    import transformers

    torch.manual_seed(1)
    config = transformers.DistilBertConfig(vocab_size=vocab_size, dim=16, n_layers=2, n_heads=2, hidden_dim=32,
                                           max_position_embeddings=max_positions, dropout=0.0, attention_dropout=0.0)
    config.architectures = ["DistilBertForMaskedLM"]
    transformers.DistilBertForMaskedLM(config).save_pretrained(out)
    return out


def test_frozen_positions_and_smoothed_masks_through_the_trainer(tmp_path: Path):
    """Two bf16 steps of the DistilBERT recipe (a tiny Hugging Face DistilBERT teacher,
    ``freeze_position_embeddings=true``, ``masking.smoothing`` 0.7): the checkpoint's
    position embeddings are the teacher's, its word embeddings moved, and the token counts
    were cached beside the shards."""
    pytest.importorskip("transformers")
    from data_prep.tokenizer import load_tokenizer
    from pretrain.models.distil import load_teacher
    from pretrain.training import checkpoint
    from pretrain.training.loop import train

    tok_dir = build(DataConfig(corpus="pydoc", max_documents=12, tokenizer=TokenizerConfig(kind="wordpiece", vocab_size=300),
                               max_seq_length=32, validation_fraction=0.2, output_dir=str(tmp_path / "tok")))
    tok_path = Path(tok_dir) / "tokenizer.json"
    teacher = _save_hf_distilbert(tmp_path / "teacher", load_tokenizer(tok_path, "wordpiece").vocab_size, 34)
    run, data = tmp_path / "run", tmp_path / "data"
    cfg = load_run_config(REPO / "configs" / "recipe" / "distilbert.yaml", preset="smoke", overrides=[
        f"distillation.teacher={teacher}", f"data.tokenizer.path={tok_path}", "distillation.freeze_position_embeddings=true",
        "data.corpus=pydoc", "data.max_documents=12", "data.max_seq_length=32", "data.validation_fraction=0.2",
        "train.max_steps=2", "train.global_batch_size=4", "train.micro_batch_size=4", "train.eval_every=2",
        "train.checkpoint_every=2", "train.schedule.warmup_steps=1", "train.eval_max_batches=1", "train.precision=bf16",
        f"run_dir={run}", f"data.output_dir={data}"])
    assert cfg.data.masking.smoothing == 0.7
    train(cfg)
    _, state = checkpoint.load_model_state(run)
    _, t = load_teacher(str(teacher))
    t_pos, t_words = t.encoder.embeddings.position_embeddings.weight, t.encoder.embeddings.word_embeddings.weight
    pos, words = state["encoder.embeddings.position_embeddings.weight"], state["encoder.embeddings.word_embeddings.weight"]
    assert torch.equal(pos, t_pos.bfloat16().float())  # the teacher's, rounded to the run's bf16 and never updated
    assert not torch.equal(words, t_words.bfloat16().float())
    assert cache_path(data, "train").is_file()
