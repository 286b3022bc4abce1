"""Data parallelism at small scale: 2 processes on CPU (gloo, started by torchrun) train the
same run as 1 process with the same global batch, step for step, with and without ZeRO-3."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.config import load_run_config
from pretrain.training import rundir
from pretrain.training.distributed import free_port
from pretrain.training.loop import train
from conftest import TINY_ROBERTA, child_env

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "recipe" / "roberta.yaml"

# Global batch 16: 1 rank accumulates 2 micro batches of 8, 2 ranks take one each. Dropout
# off, so both compute the same function of the same rows and differ only in float
# summation order (the gradient all-reduce against accumulation).
TINY = [
    *TINY_ROBERTA, "train.max_steps=8", "train.log_every=1", "train.eval_every=4",
    "train.checkpoint_every=8", "model.hidden_dropout_prob=0.0", "model.attention_probs_dropout_prob=0.0",
]
TOLERANCE = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: 1 process, ZeRO-0, accumulating 2 micro batches per step."""
    root = tmp_path_factory.mktemp("scale")
    data = root / "shards"
    summary = train(load_run_config(RECIPE, "smoke", [*TINY, f"run_dir={root / 'one'}", f"data.output_dir={data}"]))
    return root / "one", data, summary


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_two_processes_follow_the_one_process_loss_trajectory(tmp_path: Path, one_process, zero_stage: int):
    """2 ranks (one micro batch each; ZeRO-0, or ZeRO-3 partitioning weights, gradients and
    optimizer state) give the loss, gradient-norm and eval trajectory of 1 rank within 1e-5."""
    one_run, data, one = one_process
    env = child_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
           "-m", "pretrain.cli", "train", str(RECIPE), "--preset", "smoke",
           *TINY, f"run_dir={tmp_path / 'two'}", f"data.output_dir={data}", f"train.zero_stage={zero_stage}"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    a, b = rundir.read_metrics(one_run), rundir.read_metrics(tmp_path / "two")
    assert [(r["kind"], r["step"]) for r in a] == [(r["kind"], r["step"]) for r in b]  # written once, by rank 0
    train_a = [r for r in a if r["kind"] == "train"]
    assert [r["step"] for r in train_a] == list(range(1, 9))
    assert train_a[-1]["loss"] < train_a[0]["loss"] - 0.05  # it trains, so the trajectory means something
    for x, y in zip(a, b):
        assert x["tokens_seen"] == y["tokens_seen"]  # the same rows, split between the ranks
        for k in ("loss", "mlm_loss", "grad_norm", "perplexity", "mlm_accuracy"):
            if k in x:
                assert abs(y[k] - x[k]) <= TOLERANCE, (x["kind"], x["step"], k, x[k], y[k])
    two = json.loads((tmp_path / "two" / rundir.SUMMARY).read_text())
    assert abs(two["final_eval"]["mlm_loss"] - one["final_eval"]["mlm_loss"]) <= TOLERANCE
