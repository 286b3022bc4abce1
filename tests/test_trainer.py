"""The DeepSpeed trainer: its DeepSpeed config, optimizer groups and schedule, the checks
made before the first step, and one short real run whose run directory must follow
``pretrain.rundir``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from data_prep.config import merge_into
from data_prep.errors import UserError
from data_prep.shards import ShardSet
from pretrain import checkpoint, rundir
from pretrain.config import ModelConfig, TrainConfig, load_run_config
from pretrain.distributed import free_port
from pretrain.model import build_model
from pretrain.optim import param_groups, schedule_fn
from pretrain.trainer import accumulation_steps, deepspeed_config, train

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "recipe" / "roberta.yaml"

TINY = [
    "model.vocab_size=null", "model.hidden_size=64", "model.num_hidden_layers=2", "model.num_attention_heads=2",
    "model.intermediate_size=128", "data.max_documents=30", "data.max_seq_length=64", "data.tokenizer.vocab_size=1000",
    "train.global_batch_size=16", "train.micro_batch_size=8", "train.optimizer.lr=2e-3",
    "train.schedule.warmup_steps=3", "train.log_every=2", "train.eval_every=10",
]


def tiny_cfg(tmp: Path, data: Path, *overrides: str):
    """The tiny run config; shards go to ``data/<masking mode>`` (one directory per data config)."""
    cfg = load_run_config(RECIPE, "smoke", [*TINY, f"run_dir={tmp}", *overrides])
    cfg.data.output_dir = str(data / cfg.data.masking.mode)
    return cfg


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain little from a second thread, and OpenMP threads spin badly when the
    suite shares the cores with other jobs; train() honours OMP_NUM_THREADS."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trainer-data")


# ------------------------------------------------------------------ DeepSpeed config


def test_accumulation_is_derived_from_global_micro_and_world():
    assert accumulation_steps(64, 8, 2) == 4
    assert accumulation_steps(32, 32, 1) == 1
    with pytest.raises(UserError, match=r"global_batch_size=48 is not divisible by train.micro_batch_size=5 x 2 rank\(s\); "
                                         r"valid micro batch sizes: 1, 2, 3, 4, 6, 8, 12, 24$"):
        accumulation_steps(48, 5, 2)
    with pytest.raises(UserError, match="does not split over 4 ranks"):
        accumulation_steps(30, 5, 4)


def test_deepspeed_config_follows_train_config():
    t = merge_into(TrainConfig, {"global_batch_size": 64, "micro_batch_size": 16, "precision": "bf16", "zero_stage": 2,
                                 "gradient_clipping": 0.5, "optimizer": {"betas": [0.9, 0.999], "eps": 1e-8}})
    ds = deepspeed_config(t, world_size=2)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (64, 16, 2)
    assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["torch_adam"] is True
    assert ds["optimizer"]["params"]["betas"] == [0.9, 0.999] and ds["optimizer"]["params"]["eps"] == 1e-8
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["zero_optimization"]["stage"] == 2 and ds["gradient_clipping"] == 0.5
    with pytest.raises(UserError, match="train.precision='fp8' is not one of"):
        deepspeed_config(merge_into(TrainConfig, {"precision": "fp8"}), 1)


def test_no_weight_decay_on_biases_and_layernorm():
    m = build_model(merge_into(ModelConfig, {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 1,
                                             "num_attention_heads": 2, "intermediate_size": 64}))
    decay, no_decay = param_groups(m, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in m.named_parameters()}
    assert all(n.endswith("bias") or "LayerNorm" in n for n in (names[id(p)] for p in no_decay["params"]))
    assert all(not n.endswith("bias") and "LayerNorm" not in n for n in (names[id(p)] for p in decay["params"]))
    # every parameter exactly once (the tied decoder weight is the embedding)
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))


def test_linear_schedule_warms_up_then_decays_to_zero():
    f = schedule_fn(merge_into(TrainConfig, {"schedule": {"warmup_steps": 10}}).schedule, 110)
    assert [f(0), f(5), f(10), f(60), f(110)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    with pytest.raises(UserError, match="train.schedule.name='cosine' is not one of: linear"):
        schedule_fn(merge_into(TrainConfig, {"schedule": {"name": "cosine"}}).schedule, 100)
    with pytest.raises(UserError, match=r"warmup_steps=100 must be in \[0, train.max_steps=100\)"):
        schedule_fn(merge_into(TrainConfig, {"schedule": {"warmup_steps": 100}}).schedule, 100)


# ------------------------------------------------------------------ checks before the first step


def test_bad_runs_are_refused_before_any_step(tmp_path: Path, data: Path):
    with pytest.raises(UserError, match=r"fewer than one global batch \(train.global_batch_size=4096\)"):
        train(tiny_cfg(tmp_path / "a", data, "train.global_batch_size=4096", "train.micro_batch_size=64"))
    with pytest.raises(UserError, match=r"valid micro batch sizes: 1, 2, 4, 8, 16"):
        train(tiny_cfg(tmp_path / "b", data, "train.micro_batch_size=6"))
    with pytest.raises(UserError, match=r"model.vocab_size=10 is smaller than the tokenizer's"):
        train(tiny_cfg(tmp_path / "c", data, "model.vocab_size=10"))
    with pytest.raises(UserError, match="train.precision=fp16 needs a GPU"):
        train(tiny_cfg(tmp_path / "d", data, "train.precision=fp16"))
    for d in "abcd":
        assert not (tmp_path / d / rundir.METRICS).exists() and not (tmp_path / d / rundir.CHECKPOINTS).exists()


# ------------------------------------------------------------------ a short real run


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, data: Path):
    run = tmp_path_factory.mktemp("short") / "run"
    cfg = tiny_cfg(run, data, "train.max_steps=24", "train.checkpoint_every=8", "train.keep_checkpoints=2",
                   "data.masking.mode=static")
    return cfg, run, train(cfg)


def test_short_run_loss_falls(short_run):
    _, run, summary = short_run
    losses = [r["loss"] for r in rundir.read_metrics(run, "train")]
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < losses[0] - 0.5, losses
    evals = rundir.read_metrics(run, "eval")
    assert evals[-1]["mlm_loss"] < evals[0]["mlm_loss"]


def test_run_directory_follows_the_contract(short_run):
    cfg, run, summary = short_run
    shards = ShardSet(summary["data_dir"])
    train_rows = len(shards["train"])
    lengths = shards["train"].lengths()

    saved = yaml.safe_load((run / rundir.CONFIG).read_text())
    assert saved["model"]["vocab_size"] == shards.manifest["tokenizer"]["vocab_size"]  # filled from the tokenizer
    assert saved["objective"]["sentence"] == "none"  # interpolations resolved
    assert saved["train"]["max_steps"] == 24

    lines = rundir.read_metrics(run)
    train_keys = {"kind", "step", "epoch", "tokens_seen", "loss", "mlm_loss", "lr", "grad_norm", "tokens_per_s", "time_s"}
    eval_keys = {"kind", "step", "epoch", "tokens_seen", "mlm_loss", "perplexity", "mlm_accuracy", "time_s"}
    for rec in lines:
        want = train_keys if rec["kind"] == "train" else eval_keys
        assert want <= set(rec), rec
        assert rec["epoch"] == pytest.approx(rec["step"] * 16 / train_rows)
    tr = [r for r in lines if r["kind"] == "train"]
    assert [r["step"] for r in tr] == list(range(2, 25, 2))
    assert [r["step"] for r in lines if r["kind"] == "eval"] == [10, 20, 24]
    assert all(r["grad_norm"] > 0 and r["tokens_per_s"] > 0 for r in tr)
    # the lr a step used: warmup 3 → step 2 used 1/3 of the peak, step 4 the peak, then linear decay
    assert [r["lr"] for r in tr[:3]] == pytest.approx([2e-3 / 3, 2e-3, 2e-3 * (24 - 5) / (24 - 3)])
    assert tr[-1]["lr"] == pytest.approx(2e-3 * 1 / 21)
    ev = lines[-1]
    assert ev["kind"] == "eval" and ev["perplexity"] == pytest.approx(math.exp(ev["mlm_loss"]))
    assert 0.0 <= ev["mlm_accuracy"] <= 1.0

    s = json.loads((run / rundir.SUMMARY).read_text())
    assert s == summary
    assert s["status"] == "done" and s["steps"] == 24 and s["num_train_sequences"] == train_rows
    assert s["epochs"] == pytest.approx(24 * 16 / train_rows)
    assert s["final_eval"] == {k: ev[k] for k in ("mlm_loss", "perplexity", "mlm_accuracy")}
    assert s["wall_time_s"] >= ev["time_s"] > 0
    assert Path(s["data_dir"]) == Path(cfg.data.output_dir).resolve()

    # tokens_seen counts the non-padding tokens of exactly the rows the sampler handed out
    from pretrain.batching import GlobalBatchSampler

    sampler = GlobalBatchSampler(train_rows, 16, cfg.train.seed)
    expected = sum(int(lengths[sampler.global_batch(i)[1]].sum()) for i in range(24))
    assert s["tokens_seen"] == expected == tr[-1]["tokens_seen"]

    assert any((run / rundir.TENSORBOARD).glob("events.out.tfevents.*"))
    # keep_checkpoints=2 of steps 8, 16, 24; latest names the last
    assert [d.name for d in checkpoint.list_checkpoints(run)] == ["step-0000016", "step-0000024"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-0000024"
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_existing_run_needs_resume_and_same_config(short_run, data: Path):
    cfg, run, _ = short_run
    with pytest.raises(UserError, match=r"already has checkpoints; pass --resume"):
        train(cfg)
    with pytest.raises(UserError, match=r"config differs from its checkpoint in train.optimizer.lr: 0.002 -> 0.001"):
        train(tiny_cfg(run, data, "train.max_steps=24", "data.masking.mode=static", "train.optimizer.lr=1e-3"), resume=True)
    # cadence keys may change; a finished run resumes to its stored summary without training
    again = train(tiny_cfg(run, data, "train.max_steps=24", "data.masking.mode=static", "train.eval_every=5",
                           "train.checkpoint_every=8", "train.keep_checkpoints=2"), resume=True)
    first = json.loads((run / rundir.SUMMARY).read_text())
    assert again["final_eval"] == first["final_eval"] and again["steps"] == 24


def test_load_model_state_gives_the_trained_weights(short_run):
    cfg, run, summary = short_run
    loaded_cfg, sd = checkpoint.load_model_state(run)
    assert loaded_cfg.train.max_steps == 24
    assert loaded_cfg.model.vocab_size == ShardSet(summary["data_dir"]).manifest["tokenizer"]["vocab_size"]
    model = build_model(loaded_cfg.model, loaded_cfg.objective.sentence)
    assert set(sd) == set(model.state_dict())
    model.load_state_dict(sd)
    raw = torch.load(run / "checkpoints" / "step-0000024" / checkpoint.MODEL_STATES, weights_only=False)["module"]
    for k, v in raw.items():
        assert torch.equal(sd[k], v.float()), k


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_bf16_run_exports_fp32_master_weights(tmp_path: Path, data: Path, zero_stage: int):
    run = tmp_path / "bf16"
    cfg = tiny_cfg(run, data, "train.max_steps=4", "train.schedule.warmup_steps=1", "train.precision=bf16",
                   f"train.zero_stage={zero_stage}", "train.checkpoint_every=4")
    summary = train(cfg)
    assert math.isfinite(summary["final_eval"]["mlm_loss"])
    assert all(r["grad_norm"] is not None and r["grad_norm"] > 0 for r in rundir.read_metrics(run, "train"))
    _, sd = checkpoint.load_model_state(run)
    raw = torch.load(run / "checkpoints" / "step-0000004" / checkpoint.MODEL_STATES, weights_only=False)["module"]
    assert all(v.dtype == torch.float32 for v in sd.values())
    for k, v in raw.items():
        assert v.dtype == torch.bfloat16
        # the module holds the master weights rounded to bf16
        assert torch.equal(sd[k].to(torch.bfloat16), v), k
    assert any(not torch.equal(sd[k], raw[k].float()) for k in raw)  # and the masters keep more bits


def test_two_ranks_match_one_rank_without_dropout(tmp_path: Path, data: Path):
    """torchrun with 2 ranks × 1 micro batch = 1 rank × 2 accumulated micro batches: same
    rows, same math (dropout off), so the same losses up to float summation order."""
    common = ["train.max_steps=6", "train.log_every=1", "train.eval_every=3", "train.checkpoint_every=6",
              "model.hidden_dropout_prob=0.0", "model.attention_probs_dropout_prob=0.0"]
    one = train(tiny_cfg(tmp_path / "one", data, *common))
    cfg = tiny_cfg(tmp_path / "two", data, *common)
    launcher = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
           "-m", "pretrain.cli", "train", str(RECIPE), "--preset", "smoke",
           *TINY, *common, f"run_dir={tmp_path / 'two'}", f"data.output_dir={cfg.data.output_dir}"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = rundir.read_metrics(tmp_path / "one"), rundir.read_metrics(tmp_path / "two")
    assert [(r["kind"], r["step"]) for r in a] == [(r["kind"], r["step"]) for r in b]  # written once, by rank 0
    for x, y in zip(a, b):
        for k in ("loss", "mlm_loss", "grad_norm", "perplexity", "mlm_accuracy"):
            if k in x:
                assert y[k] == pytest.approx(x[k], rel=1e-4), (x["kind"], x["step"], k)
        assert x["tokens_seen"] == y["tokens_seen"]
    two = json.loads((tmp_path / "two" / rundir.SUMMARY).read_text())
    assert two["final_eval"]["mlm_loss"] == pytest.approx(one["final_eval"]["mlm_loss"], rel=1e-4)
