"""Resume exactness: a run killed with SIGKILL at a random (seeded) step and resumed with
--resume writes the same metrics, final eval and weights as an uninterrupted run (fp32,
CPU); so does a run stopped by SIGUSR1 or SIGTERM (preemption, exit code 75), and a bf16
run with LAMB or ZeRO-3 resumed from a middle checkpoint, and one stopped by a spent time budget."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from data_prep.build import build
from pretrain.config import load_run_config
from pretrain.training import checkpoint, rundir
from pretrain.training.loop import PREEMPTED_EXIT_CODE, Preempted, train
from conftest import child_env

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "recipe" / "roberta.yaml"

# Dynamic masking with several epochs (the masks depend on the epoch), log windows that
# straddle checkpoints (log every 3, checkpoint every 4), gradient
# accumulation (16 = 2 × 8) and dropout on: everything a resume has to restore.
OVERRIDES = [
    "model.vocab_size=null", "model.hidden_size=64", "model.num_hidden_layers=2", "model.num_attention_heads=2",
    "model.intermediate_size=128", "data.max_documents=8", "data.max_seq_length=64", "data.tokenizer.vocab_size=800",
    "data.masking.mode=dynamic", "train.global_batch_size=16", "train.micro_batch_size=8", "train.max_steps=24",
    "train.schedule.warmup_steps=3", "train.log_every=3", "train.eval_every=4", "train.checkpoint_every=4",
    "train.keep_checkpoints=3", "train.precision=fp32",
]
# The kill step: random, but the same in every run of the suite unless the seed is changed
# (TEST_RESUME_KILL_SEED=N to explore others). Steps 5-18 of 24: after the first checkpoint
# (step 4), before the run can finish.
KILL_SEED = int(os.environ.get("TEST_RESUME_KILL_SEED", "5"))
# Only these may differ between the two runs' metric lines.
TIMING = ("tokens_per_s", "time_s", "model_tflops", "mfu")


def _overrides(run: Path, data: Path):
    return [*OVERRIDES, f"run_dir={run}", f"data.output_dir={data}"]


def _strip(lines):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in lines]


def _last_step(metrics: Path) -> int:
    try:
        lines = metrics.read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(x)["step"] for x in lines if x.endswith("}")]
    return max(steps, default=0)


def _wait_for_step(run: Path, step: int, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    """Return once the run's metrics show ``step`` (or later) done."""
    t0 = time.time()
    while _last_step(run / rundir.METRICS) < step:
        if proc.poll() is not None:
            raise AssertionError(f"training subprocess exited ({proc.returncode}) before step {step}:\n{log.read_text()[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"step {step} not reached within {timeout} s")
        time.sleep(0.002)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume-data") / "shards"
    build(load_run_config(RECIPE, "smoke", _overrides(out.parent / "unused", out)).data)
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data: Path):
    run = tmp_path_factory.mktemp("straight") / "run"
    return run, train(load_run_config(RECIPE, "smoke", _overrides(run, data)))


def _assert_same_run(run: Path, summary, reference: Path, expected) -> None:
    a, b = rundir.read_metrics(reference), rundir.read_metrics(run)
    assert [(r["kind"], r["step"]) for r in b] == [(r["kind"], r["step"]) for r in a]
    assert _strip(b) == _strip(a)  # losses, lr, grad norms, eval metrics: bit-identical
    assert summary["final_eval"] == expected["final_eval"]
    assert summary["tokens_seen"] == expected["tokens_seen"] and summary["epochs"] == expected["epochs"]
    _, w_ref = checkpoint.load_model_state(reference)
    _, w_run = checkpoint.load_model_state(run)
    assert all(torch.equal(w_ref[k], w_run[k]) for k in w_ref)


def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path: Path, data: Path, uninterrupted):
    straight, expected = uninterrupted
    kill_after = random.Random(KILL_SEED).randint(5, 18)
    killed = tmp_path / "killed"
    # This process set RANK/MASTER_PORT/... for its own world of one; the child must pick its own.
    env = child_env()
    cmd = [sys.executable, "-m", "pretrain.cli", "train", str(RECIPE), "--preset", "smoke", *_overrides(killed, data)]
    log = tmp_path / "killed.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            _wait_for_step(killed, kill_after, proc, log)  # metrics are written every 3-4 steps
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / rundir.SUMMARY).exists(), "the subprocess finished before it was killed"
    stopped_at = int(checkpoint.latest(killed).name.split("-")[1])
    assert 4 <= stopped_at < 24 and _last_step(killed / rundir.METRICS) >= kill_after, (kill_after, stopped_at)

    # A checkpoint cut off mid-save (never renamed, never named by `latest`) must be ignored.
    half = killed / "checkpoints" / ".tmp-step-0000099"
    half.mkdir(exist_ok=True)
    (half / checkpoint.MODEL_STATES).write_bytes(b"truncated")

    resumed = train(load_run_config(RECIPE, "smoke", _overrides(killed, data)), resume=True)
    _assert_same_run(killed, resumed, straight, expected)
    assert resumed["wall_time_s"] > 0


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["SIGUSR1", "SIGTERM"])
def test_stop_signal_checkpoints_the_current_step_and_exits_75(tmp_path: Path, data: Path, uninterrupted, sig):
    """SIGUSR1 (Slurm's warning before the time limit) and SIGTERM (what Slurm, Kubernetes
    and torchrun send before a kill): checkpoint after the step in progress, exit 75."""
    straight, expected = uninterrupted
    run = tmp_path / "preempted"
    first = run / "checkpoints" / checkpoint.LATEST

    def warn_like_slurm():  # the signal once the first checkpoint exists: mid log window, off the cadence
        while not first.is_file():
            time.sleep(0.01)
        os.kill(os.getpid(), sig)

    threading.Thread(target=warn_like_slurm, daemon=True).start()
    with pytest.raises(Preempted) as stopped:
        train(load_run_config(RECIPE, "smoke", _overrides(run, data)))
    assert stopped.value.code == PREEMPTED_EXIT_CODE == 75 and stopped.value.signal_name == sig.name
    at = stopped.value.step
    assert 4 <= at < 24 and checkpoint.latest(run).name == checkpoint.tag(at)
    assert 0 <= at - max(r["step"] for r in rundir.read_metrics(run)) < 3  # nothing past the stop; log every 3
    assert not (run / rundir.SUMMARY).exists()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers removed again
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    resumed = train(load_run_config(RECIPE, "smoke", _overrides(run, data)), resume=True)
    _assert_same_run(run, resumed, straight, expected)


def test_spent_time_budget_stops_like_a_signal(tmp_path: Path, data: Path, uninterrupted):
    """A spent time budget (``pretrain ablate --time-budget``) takes the signal's path: a
    checkpoint after the step in progress (here the first: the budget is spent on entry),
    ``Preempted`` with exit code 75 naming the budget, and an exact resume."""
    from pretrain.training.preemption import budget_spent, time_budget

    straight, expected = uninterrupted
    run = tmp_path / "budget"
    with time_budget(0.0, "0s"), pytest.raises(Preempted) as stopped:
        train(load_run_config(RECIPE, "smoke", _overrides(run, data)))
    assert stopped.value.code == PREEMPTED_EXIT_CODE and stopped.value.signal_name == "the 0s time budget"
    assert stopped.value.step == 1 and checkpoint.latest(run).name == checkpoint.tag(1)
    assert not (run / rundir.SUMMARY).exists() and budget_spent() is None  # the budget ends with its block
    resumed = train(load_run_config(RECIPE, "smoke", _overrides(run, data)), resume=True)
    _assert_same_run(run, resumed, straight, expected)


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path, data: Path, capsys):
    cfg = load_run_config(RECIPE, "smoke", _overrides(tmp_path / "fresh", data) + ["train.max_steps=4", "train.eval_every=2", "train.log_every=1"])
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / rundir.METRICS).write_text('{"kind": "train", "step": 3, "loss": 1.0}\n')  # stale
    summary = train(cfg, resume=True)
    assert "starting fresh" in capsys.readouterr().out
    assert summary["steps"] == 4
    lines = rundir.read_metrics(tmp_path / "fresh", "train")
    assert [r["step"] for r in lines] == [1, 2, 3, 4] and lines[2]["loss"] != 1.0


@pytest.mark.parametrize("extra", [["train.precision=bf16", "train.optimizer.name=lamb"],
                                   ["train.precision=bf16", "train.zero_stage=3"]], ids=["bf16-lamb", "bf16-zero3"])
def test_resume_is_exact_with_bf16_lamb_and_zero3(tmp_path: Path, data: Path, extra):
    """Resuming from a middle checkpoint restores what these engines keep elsewhere: bf16
    master weights and LAMB state (DeepSpeed's unfused bf16 optimizer), ZeRO-3 partitions."""
    overrides = [*_overrides(tmp_path / "a", data), "train.max_steps=8", "train.keep_checkpoints=5", *extra]
    straight = train(load_run_config(RECIPE, "smoke", overrides))
    # Rewind a copy to its step-4 checkpoint, as if it had stopped there, and resume it.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-0000008")
    (tmp_path / "b" / "checkpoints" / checkpoint.LATEST).write_text("step-0000004\n")
    resumed = train(load_run_config(RECIPE, "smoke", [*overrides, f"run_dir={tmp_path / 'b'}"]), resume=True)
    assert _strip(rundir.read_metrics(tmp_path / "b")) == _strip(rundir.read_metrics(tmp_path / "a"))
    assert resumed["final_eval"] == straight["final_eval"]
