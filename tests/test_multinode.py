"""Several nodes, for real, on one host: two ``torchrun`` agents started separately (node 0
and node 1: ``--nnodes 2 --nproc_per_node 1``, c10d rendezvous on 127.0.0.1) train the smoke
preset in one shared run directory, and give bit for bit the metrics and final weights of
one agent running both ranks (``--standalone --nproc_per_node 2``).

What the two-agent run exercises that one agent does not: the c10d rendezvous between
agents, a world whose ranks each sit alone on their "node" (``LOCAL_RANK=0`` and
``LOCAL_WORLD_SIZE=1`` on both), node 0 building the shards while node 1 waits at the
barrier and then only opens them, and checkpoints written into the shared run directory by
ranks of different agents. Both agents share this host's file system: the shared-file-system
set-up the README asks for.

Why equality is exact: both runs have ranks 0 and 1 with the same seeds and the same rows,
and a sum over two ranks is the same float whatever the all-reduce algorithm (a + b == b + a).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain.training import checkpoint, rundir
from pretrain.training.distributed import free_port

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "recipe" / "roberta.yaml"

# The smoke preset cut to 10 steps (about 15 s per run on a quiet core); a micro batch of 16
# splits the global 32 over two ranks. Eval and checkpoint mid-run and at the end.
OVERRIDES = [
    "train.max_steps=10", "train.schedule.warmup_steps=2", "train.micro_batch_size=16",
    "train.log_every=1", "train.eval_every=5", "train.checkpoint_every=5",
]
TIMEOUT = 300  # seconds per launch; a run takes ~15-40 s depending on the machine's load
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
                 "TORCHELASTIC_RUN_ID")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    # One intra-op thread per process: two processes share the cores with the test runner.
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _train_cmd(*launcher: str, run_dir: Path, data: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "--max-restarts=0",
            "-m", "pretrain.cli", "train", str(RECIPE), "--preset", "smoke", *OVERRIDES,
            f"run_dir={run_dir}", f"data.output_dir={data}"]


def _launch(cmds: list[list[str]], logs: list[Path]) -> list[int]:
    """Start every command at once (each in its own process group), wait for all of them;
    on a timeout kill them all and fail. Returns the exit codes."""
    procs = []
    try:
        for cmd, log in zip(cmds, logs):
            with open(log, "w") as out:
                procs.append(subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        return [p.wait(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _tail(log: Path) -> str:
    return f"--- {log.name}:\n" + log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(two-node run dir, one-node run dir, the two agents' logs). The two-node run goes
    first, so its node 0 builds the shards; the one-node run finds them up to date."""
    root = tmp_path_factory.mktemp("multinode")
    data = root / "shards"
    port = free_port()
    rdzv = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
            f"--rdzv-id=multinode-{port}", "--rdzv-conf=join_timeout=120"]
    node_logs = [root / "node0.log", root / "node1.log"]
    rcs = _launch([_train_cmd(*rdzv, run_dir=root / "two-nodes", data=data)] * 2, node_logs)
    assert rcs == [0, 0], "\n".join(_tail(f) for f in node_logs)

    one_log = root / "one-node.log"
    rcs = _launch([_train_cmd("--standalone", "--nproc_per_node=2", run_dir=root / "one-node", data=data)], [one_log])
    assert rcs == [0], _tail(one_log)
    return root / "two-nodes", root / "one-node", [f.read_text(errors="replace") for f in node_logs]


def test_two_agents_rendezvous_as_two_nodes_and_node0_builds_the_data(runs):
    two, _, logs = runs
    summary = json.loads((two / rundir.SUMMARY).read_text())
    assert summary["status"] == "done" and summary["steps"] == 10
    # Exactly one agent's worker (global rank 0, on whichever agent the rendezvous made node 0)
    # built the shards; the other waited at the barrier and opened them.
    assert sum("data-prep: built" in log for log in logs) == 1, logs
    assert [d.name for d in checkpoint.list_checkpoints(two)] == ["step-0000005", "step-0000010"]
    assert not list((two / "checkpoints").glob(".tmp-*"))


def test_two_nodes_match_one_node_with_two_ranks(runs):
    two, one, _ = runs
    a, b = rundir.read_metrics(one), rundir.read_metrics(two)
    assert [(r["kind"], r["step"]) for r in a] == [(r["kind"], r["step"]) for r in b]
    assert [r["step"] for r in a if r["kind"] == "train"] == list(range(1, 11))
    train = [r for r in a if r["kind"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"] - 0.2  # it learns, so agreeing means something
    for x, y in zip(a, b):
        for k in ("loss", "mlm_loss", "grad_norm", "lr", "tokens_seen", "perplexity", "mlm_accuracy"):
            if k in x:
                assert y[k] == x[k], (x["kind"], x["step"], k, x[k], y[k])
    s_one, s_two = (json.loads((r / rundir.SUMMARY).read_text()) for r in (one, two))
    assert s_two["final_eval"] == s_one["final_eval"] and s_two["tokens_seen"] == s_one["tokens_seen"]

    cfg_one, w_one = checkpoint.load_model_state(one)
    cfg_two, w_two = checkpoint.load_model_state(two)
    assert cfg_two.train.max_steps == 10 and set(w_two) == set(w_one)
    for k in w_one:
        assert torch.equal(w_two[k], w_one[k]), k
