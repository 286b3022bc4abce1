"""The DeepSpeed trainer: its DeepSpeed config (AdamW, LAMB, ZeRO), optimizer groups and
schedules, the train presets against their papers, the checks made before the first step,
the non-finite-loss guard, and short real runs: the run directory contract of
``pretrain.training.rundir`` (with model FLOPs / MFU), bf16 with ZeRO 0/2/3 and LAMB, NSP accuracy,
DOC-SENTENCES token batching."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from common.configfile import merge_into
from common.errors import UserError
from data_prep.shards import ShardSet
from pretrain.config import ModelConfig, TrainConfig, load_run_config
from pretrain.models.encoder import build_model
from pretrain.training import checkpoint, rundir, safeload
from pretrain.training.checks import check_device, device_warnings
from pretrain.training.hardware import cpu_bf16_native
from pretrain.training.engine import accumulation_steps, deepspeed_config, split_batch
from pretrain.training.loop import NonFiniteLoss, train
from pretrain.training.mfu import gpu_peak_flops, peak_flops
from pretrain.training.optim import param_groups, schedule_fn
from conftest import TINY_ROBERTA

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "recipe" / "roberta.yaml"

TINY = [*TINY_ROBERTA, "train.log_every=2", "train.eval_every=10"]


def tiny_cfg(tmp: Path, data: Path, *overrides: str):
    """The tiny run config; shards go to ``data/<masking mode>`` (one directory per data config)."""
    cfg = load_run_config(RECIPE, "smoke", [*TINY, f"run_dir={tmp}", *overrides])
    cfg.data.output_dir = str(data / cfg.data.masking.mode)
    return cfg


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trainer-data")


# ------------------------------------------------------------------ DeepSpeed config


def test_accumulation_is_derived_from_global_micro_and_world():
    assert accumulation_steps(64, 8, 2) == 4
    assert accumulation_steps(32, 32, 1) == 1
    # micro_batch_size is a maximum: the largest divisor of global / world not above it
    assert split_batch(48, 5, 2) == (4, 6)
    assert split_batch(32, 32, 2) == (16, 1)  # the smoke preset on 2 ranks
    assert split_batch(256, 32, 16) == (16, 1)  # BERT's batch on 2 nodes x 8 GPUs
    assert split_batch(26, 8, 2) == (1, 13)  # 13 is prime
    with pytest.raises(UserError, match="does not split over 4 ranks; use a multiple of 4"):
        accumulation_steps(30, 5, 4)


def test_lamb_config_picks_the_implementation_and_refuses_zero():
    lamb = {"optimizer": {"name": "lamb", "lr": 0.00176, "betas": [0.9, 0.999]}}
    # CPU (this machine): torch LAMB is handed to deepspeed.initialize, so no optimizer section
    assert "optimizer" not in deepspeed_config(merge_into(TrainConfig, lamb), 1)
    fused = merge_into(TrainConfig, {"optimizer": {**lamb["optimizer"], "lamb_impl": "fused"}})
    ds = deepspeed_config(fused, 1)  # machine-independent: a GPU job can be checked here
    assert ds["optimizer"]["type"] == "Lamb" and ds["optimizer"]["params"]["lr"] == 0.00176
    assert ds["optimizer"]["params"]["betas"] == [0.9, 0.999]
    with pytest.raises(UserError, match=r"^train.optimizer.lamb_impl=fused needs CUDA .* use lamb_impl=torch \(or auto\)$"):
        check_device(fused)
    check_device(merge_into(TrainConfig, lamb))  # auto on CPU = torch: fine
    for stage in (1, 2, 3):
        with pytest.raises(UserError, match=rf"^train.optimizer.name=lamb does not work with train.zero_stage={stage}: "
                                            r"ZeRO hands the optimizer flat partitions.*use zero_stage=0$"):
            deepspeed_config(merge_into(TrainConfig, {**lamb, "zero_stage": stage}), 1)
    with pytest.raises(UserError, match=r"optimizer.lamb_impl='cuda' is not one of: auto, fused, torch"):
        deepspeed_config(merge_into(TrainConfig, {"optimizer": {"name": "lamb", "lamb_impl": "cuda"}}), 1)
    with pytest.raises(UserError, match=r"optimizer.name='sgd' is not one of: adamw, lamb"):
        deepspeed_config(merge_into(TrainConfig, {"optimizer": {"name": "sgd"}}), 1)


def test_bf16_on_a_cpu_without_bf16_kernels_is_a_warning_naming_the_fix(monkeypatch):
    import pretrain.training.checks as checks

    bf16 = merge_into(TrainConfig, {"precision": "bf16"})
    monkeypatch.setattr(checks.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(checks, "cpu_bf16_native", lambda: False)
    (line,) = device_warnings(bf16)
    assert line.startswith("warning: train.precision=bf16, but this CPU (") and "\n" not in line
    assert "add train.precision=fp32" in line and "evaluate.overrides" in line
    assert device_warnings(merge_into(TrainConfig, {"precision": "fp32"})) == []
    monkeypatch.setattr(checks, "cpu_bf16_native", lambda: True)
    assert device_warnings(bf16) == []


def test_deepspeed_config_follows_train_config():
    t = merge_into(TrainConfig, {"global_batch_size": 64, "micro_batch_size": 16, "precision": "bf16", "zero_stage": 2,
                                 "gradient_clipping": 0.5, "optimizer": {"betas": [0.9, 0.999], "eps": 1e-8}})
    ds = deepspeed_config(t, world_size=2)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (64, 16, 2)
    assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["torch_adam"] is True
    assert ds["optimizer"]["params"]["betas"] == [0.9, 0.999] and ds["optimizer"]["params"]["eps"] == 1e-8
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["zero_optimization"]["stage"] == 2 and ds["gradient_clipping"] == 0.5
    with pytest.raises(UserError, match="precision='fp8' is not one of"):
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


def _schedule(max_steps: int, **schedule):
    return schedule_fn(merge_into(TrainConfig, {"schedule": schedule}).schedule, max_steps)


def test_linear_schedule_warms_up_then_decays_to_zero():
    f = _schedule(110, warmup_steps=10)
    assert [f(0), f(5), f(10), f(60), f(110)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    with pytest.raises(UserError, match="schedule.name='cosine' is not one of: linear, polynomial, wsd"):
        _schedule(100, name="cosine")
    with pytest.raises(UserError, match=r"warmup_steps=100 must be in \[0, train.max_steps=100\)"):
        _schedule(100, warmup_steps=100)


def test_polynomial_schedule_decays_from_step_zero_like_bert():
    # BERT's optimization.py: polynomial decay over the whole run, warmup overriding it early,
    # so right after warmup the lr is already (1 - 10/100) of the peak.
    f = _schedule(100, name="polynomial", warmup_steps=10, power=1.0)
    assert [f(0), f(5), f(10), f(50), f(100)] == pytest.approx([0.0, 0.5, 0.9, 0.5, 0.0])
    g = _schedule(100, name="polynomial", warmup_steps=10, power=2.0)
    assert g(50) == pytest.approx(0.25) and g(10) == pytest.approx(0.81)
    with pytest.raises(UserError, match=r"train.schedule.power=0.0 must be > 0"):
        _schedule(100, name="polynomial", warmup_steps=10, power=0.0)


def test_warmup_stable_decay_schedule():
    f = _schedule(100, name="wsd", warmup_steps=10, decay_steps=20)
    assert [f(5), f(10), f(79), f(80), f(90), f(100)] == pytest.approx([0.5, 1.0, 1.0, 1.0, 0.5, 0.0])
    assert [_schedule(100, name="wsd", warmup_steps=10, decay_fraction=0.2)(s) for s in range(101)] == \
        [f(s) for s in range(101)]
    with pytest.raises(UserError, match="needs exactly one of train.schedule.decay_steps or decay_fraction"):
        _schedule(100, name="wsd", warmup_steps=10)
    with pytest.raises(UserError, match="needs exactly one of"):
        _schedule(100, name="wsd", warmup_steps=10, decay_steps=5, decay_fraction=0.1)
    with pytest.raises(UserError, match=r"wsd decay of 95 steps must be in \[1, max_steps - warmup_steps = 90\]"):
        _schedule(100, name="wsd", warmup_steps=10, decay_steps=95)


def test_gpu_peak_table_and_configured_peak():
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert gpu_peak_flops("Tesla V100-SXM2-32GB", "fp16") == 125e12
    assert gpu_peak_flops("NVIDIA H100 PCIe", "bf16") is None  # a slower part, not guessed
    assert gpu_peak_flops("Tesla V100-SXM2-32GB", "bf16") is None and gpu_peak_flops("NVIDIA A100", "fp32") is None
    assert peak_flops(merge_into(TrainConfig, {"peak_flops": 2.5e12})) == 2.5e12
    assert peak_flops(merge_into(TrainConfig, {})) is None  # CPU: only when configured


# (preset, batch, steps, peak lr, optimizer, β2, schedule, warmup, clipping): RoBERTa Table 3 and
# Table 9, BERT §A.2, ALBERT §4.1 (sources in each file's comments).
TRAIN_PRESETS = [
    ("roberta", 8192, 500_000, 6e-4, "adamw", 0.98, "linear", 24_000, 0.0),
    ("roberta-bsz256", 256, 1_000_000, 1e-4, "adamw", 0.98, "linear", 10_000, 0.0),
    ("roberta-bsz2k", 2048, 125_000, 7e-4, "adamw", 0.98, "linear", 1_250, 0.0),
    ("roberta-bsz8k", 8192, 31_000, 1e-3, "adamw", 0.98, "linear", 310, 0.0),
    ("bert", 256, 1_000_000, 1e-4, "adamw", 0.999, "polynomial", 10_000, 1.0),
    ("albert", 4096, 125_000, 0.00176, "lamb", 0.999, "polynomial", 3_125, 1.0),
]


@pytest.mark.parametrize("preset, batch, steps, lr, opt, beta2, schedule, warmup, clip", TRAIN_PRESETS,
                         ids=[p[0] for p in TRAIN_PRESETS])
def test_train_presets_hold_the_papers_numbers(tmp_path: Path, preset, batch, steps, lr, opt, beta2, schedule, warmup,
                                               clip):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"include:\n  train: {REPO / 'configs' / 'train' / preset}.yaml\n")
    t = load_run_config(recipe).train
    assert (t.global_batch_size, t.max_steps, t.optimizer.lr, t.optimizer.name) == (batch, steps, lr, opt)
    assert (t.optimizer.betas[1], t.schedule.name, t.schedule.warmup_steps, t.gradient_clipping) == (beta2, schedule,
                                                                                                     warmup, clip)
    ds = deepspeed_config(t, 8)  # one node of 8 GPUs: the batch splits, accumulation is derived
    assert ds["gradient_accumulation_steps"] * 8 * t.micro_batch_size == batch
    assert schedule_fn(t.schedule, t.max_steps)(t.schedule.warmup_steps) == pytest.approx(
        1.0 if schedule == "linear" else 1.0 - warmup / steps)


# ------------------------------------------------------------------ checks before the first step


def test_bad_runs_are_refused_before_any_step(tmp_path: Path, data: Path):
    with pytest.raises(UserError, match=r"fewer than one global batch \(train.global_batch_size=4096\)"):
        train(tiny_cfg(tmp_path / "a", data, "train.global_batch_size=4096", "train.micro_batch_size=64"))
    with pytest.raises(UserError, match=r"roberta.yaml: model.sharing='alll' is not one of: none, all, attention, ffn$"):
        train(tiny_cfg(tmp_path / "b", data, "model.sharing=alll"))
    with pytest.raises(UserError, match=r"model.vocab_size=10 is smaller than the tokenizer's"):
        train(tiny_cfg(tmp_path / "c", data, "model.vocab_size=10"))
    with pytest.raises(UserError, match="train.precision=fp16 needs a GPU"):
        train(tiny_cfg(tmp_path / "d", data, "train.precision=fp16"))
    with pytest.raises(UserError, match=r"^objective.sentence=sop needs a sentence_order_label column in the shards, "
                                        r"but they hold no sentence pairs; build pair data"):
        train(tiny_cfg(tmp_path / "e", data, "objective.sentence=sop"))  # FULL-SENTENCES shards
    with pytest.raises(UserError, match=r"lamb_impl=fused needs CUDA"):
        train(tiny_cfg(tmp_path / "f", data, "train.optimizer.name=lamb", "train.optimizer.lamb_impl=fused"))
    with pytest.raises(UserError, match=r"lamb does not work with train.zero_stage=2"):
        train(tiny_cfg(tmp_path / "g", data, "train.optimizer.name=lamb", "train.zero_stage=2"))
    for d in "abcdefg":
        assert not (tmp_path / d / rundir.METRICS).exists() and not (tmp_path / d / rundir.CHECKPOINTS).exists()


def test_non_finite_loss_stops_and_names_the_last_good_checkpoint(tmp_path: Path, data: Path, monkeypatch):
    """fp32: the loss of step 3 turns NaN (as after a blow-up); the run stops at once, saves
    nothing of the broken state, and names the checkpoint of step 2."""
    import pretrain.tasks.pretraining as trainer

    micro_per_step = 2  # global 16 = 2 micro batches of 8

    def poisoned_model(model_cfg, sentence="none"):
        model = build_model(model_cfg, sentence)
        forward, calls = model.forward, [0]

        def nan_from_step_3(*args, **kwargs):
            out = forward(*args, **kwargs)
            calls[0] += 1
            if model.training and calls[0] > 2 * micro_per_step:
                out["mlm_logits"] = out["mlm_logits"] * float("nan")
            return out

        model.forward = nan_from_step_3
        return model

    monkeypatch.setattr(trainer, "build_model", poisoned_model)
    run = tmp_path / "nan"
    with pytest.raises(NonFiniteLoss, match=rf"^non-finite loss at step 3 of {run} \(loss=nan, mlm_loss=nan\); stopped "
                                            rf"without saving; the last good checkpoint is {run}/checkpoints/step-0000002 "
                                            r"\(step 2\)\. The run is deterministic"):
        train(tiny_cfg(run, data, "train.max_steps=6", "train.checkpoint_every=2", "train.log_every=1"))
    assert [d.name for d in checkpoint.list_checkpoints(run)] == ["step-0000002"]
    assert [r["step"] for r in rundir.read_metrics(run)] == [1, 2]
    assert not (run / rundir.SUMMARY).exists()


# ------------------------------------------------------------------ a short real run


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, data: Path):
    run = tmp_path_factory.mktemp("short") / "run"
    cfg = tiny_cfg(run, data, "train.max_steps=24", "train.checkpoint_every=8", "train.keep_checkpoints=2",
                   "data.masking.mode=static", "train.peak_flops=1e11")
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
    train_keys = {"kind", "step", "epoch", "tokens_seen", "loss", "mlm_loss", "lr", "grad_norm", "tokens_per_s",
                  "model_tflops", "mfu", "time_s"}
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
    from pretrain.training.batching import GlobalBatchSampler

    sampler = GlobalBatchSampler(train_rows, 16, cfg.train.seed)
    expected = sum(int(lengths[sampler.global_batch(i)[1]].sum()) for i in range(24))
    assert s["tokens_seen"] == expected == tr[-1]["tokens_seen"]

    # Model FLOPs of a log window: 6N per token plus 12·L·H per token and position of its own
    # sequence (N = non-embedding parameters), over the same seconds as tokens_per_s.
    model = build_model(merge_into(ModelConfig, saved["model"]))
    n, lh = model.num_parameters(non_embedding=True), 12 * 2 * 64
    windows = [range(r["step"] - 2, r["step"]) for r in tr]  # log_every=2; 0-based steps in the window
    for r, steps in zip(tr, windows):
        seq = np.concatenate([lengths[sampler.global_batch(i)[1]] for i in steps]).astype(np.float64)
        flops = (6 * n * seq + lh * seq * seq).sum()
        assert r["model_tflops"] / r["tokens_per_s"] == pytest.approx(flops / seq.sum() / 1e12, rel=1e-9)
        assert r["mfu"] == pytest.approx(r["model_tflops"] * 1e12 / 1e11)  # train.peak_flops=1e11

    assert any((run / rundir.TENSORBOARD).glob("events.out.tfevents.*"))
    # keep_checkpoints=2 of steps 8, 16, 24; latest names the last
    assert [d.name for d in checkpoint.list_checkpoints(run)] == ["step-0000016", "step-0000024"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-0000024"
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_existing_run_needs_resume_and_same_config(short_run, data: Path):
    cfg, run, _ = short_run
    with pytest.raises(UserError, match=r"already holds a run \(2 checkpoint\(s\) \(step-0000024 the newest\), metrics.jsonl, summary.json\); pass --resume"):
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
    raw = safeload.load_tensors(run / "checkpoints" / "step-0000024" / checkpoint.MODEL_STATES)["module"]
    for k, v in raw.items():
        assert torch.equal(sd[k], v.float()), k


@pytest.mark.parametrize("zero_stage, optimizer", [(0, "adamw"), (2, "adamw"), (3, "adamw"), (0, "lamb")])
def test_bf16_run_exports_fp32_master_weights(tmp_path: Path, data: Path, zero_stage: int, optimizer: str, capsys):
    run = tmp_path / "bf16"
    cfg = tiny_cfg(run, data, "train.max_steps=4", "train.schedule.warmup_steps=1", "train.precision=bf16",
                   f"train.zero_stage={zero_stage}", "train.checkpoint_every=4", f"train.optimizer.name={optimizer}")
    summary = train(cfg)
    # the trainer says so when this CPU emulates bf16, and only then
    assert ("warning: train.precision=bf16, but this CPU" in capsys.readouterr().err) == (not cpu_bf16_native())
    assert math.isfinite(summary["final_eval"]["mlm_loss"])
    assert all(r["grad_norm"] is not None and r["grad_norm"] > 0 for r in rundir.read_metrics(run, "train"))
    _, sd = checkpoint.load_model_state(run)
    ckpt = run / "checkpoints" / "step-0000004"
    states = safeload.load_tensors(next(ckpt.glob("*model_states.pt")))
    raw = states["module"]
    if zero_stage == 0:
        # 4 optimizer steps = 4 updates: DeepSpeed's state-allocating zero-gradient step is undone
        opt_state = states["optimizer"]["optimizer_state_dict"]["state"]
        assert {int(st["step"]) for st in opt_state.values()} == {4}
    assert all(v.dtype == torch.float32 for v in sd.values())
    assert set(sd) == set(build_model(merge_into(ModelConfig, yaml.safe_load((run / rundir.CONFIG).read_text())["model"]))
                          .state_dict())
    if zero_stage == 3:
        return  # ZeRO-3 saves partitions only: the module weights above come from them
    for k, v in raw.items():
        assert v.dtype == torch.bfloat16
        # the module holds the master weights rounded to bf16
        assert torch.equal(sd[k].to(torch.bfloat16), v), k
    assert any(not torch.equal(sd[k], raw[k].float()) for k in raw)  # and the masters keep more bits


def test_nsp_run_reports_sentence_accuracy(tmp_path: Path, data: Path):
    """SEGMENT-PAIR shards with NSP labels (BERT §3.1): the eval lines and the summary carry
    the NSP loss and accuracy next to the MLM metrics."""
    cfg = tiny_cfg(tmp_path / "nsp", data, "data.format=segment_pair", "data.sentence_objective=nsp",
                   "model.type_vocab_size=2",
                   "train.max_steps=4", "train.eval_every=2", "train.checkpoint_every=4")
    cfg.data.output_dir = str(data / "segment_pair")
    summary = train(cfg)
    evals = rundir.read_metrics(tmp_path / "nsp", "eval")
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert 0.0 <= r["sentence_accuracy"] <= 1.0 and 0.3 < r["nsp_loss"] < 2.0  # 2 classes: ln 2 = 0.69 at chance
    assert all("nsp_loss" in r for r in rundir.read_metrics(tmp_path / "nsp", "train"))
    assert summary["final_eval"]["sentence_accuracy"] == evals[-1]["sentence_accuracy"]


def test_doc_sentences_steps_hold_a_constant_number_of_tokens(tmp_path: Path, data: Path):
    """DOC-SENTENCES with data.doc_sentences_batching=tokens (RoBERTa §4.2): each step reads
    about global_batch_size x max_seq_length = 16 x 64 tokens, however many rows that takes."""
    cfg = tiny_cfg(tmp_path / "doc", data, "data.format=doc_sentences", "data.doc_sentences_batching=tokens",
                   "train.max_steps=6", "train.log_every=1", "train.eval_every=6", "train.checkpoint_every=6")
    cfg.data.output_dir = str(data / "doc_sentences")
    summary = train(cfg)
    lengths = ShardSet(summary["data_dir"])["train"].lengths()
    assert lengths.min() < 64 // 2  # short last rows of documents: fixed row counts would vary the tokens
    seen = [0] + [r["tokens_seen"] for r in rundir.read_metrics(tmp_path / "doc", "train")]
    per_step = np.diff(seen)
    assert len(per_step) == 6 and all(abs(n - 16 * 64) < 64 for n in per_step), per_step
    assert summary["epochs"] == pytest.approx(6 * 16 * 64 / lengths.sum())
