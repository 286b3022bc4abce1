"""Several nodes, for real, on one host: two ``torchrun`` agents started separately (node 0
and node 1: ``--nnodes 2 --nproc_per_node 1``, c10d rendezvous on 127.0.0.1) train the smoke
preset in one shared run directory, and give bit for bit the metrics and final weights of
one agent running both ranks (``--standalone --nproc_per_node 2``).

What the two-agent run exercises that one agent does not: the c10d rendezvous between
agents, ranks that each sit alone on their "node" (torchrun gives both ``LOCAL_RANK=0`` and
``LOCAL_WORLD_SIZE=1``, so anything keyed on the local rank would run twice), node 0
building the shards while node 1 waits at the barrier and then only opens them, and
checkpoints written into the shared run directory by ranks of different agents. Both agents
share this host's file system: the shared-file-system set-up the README asks for.

Why equality is exact: both runs have ranks 0 and 1 with the same seeds and the same rows,
and a sum over two ranks is the same float whatever the all-reduce algorithm (a + b == b + a).

On Slurm (marked ``slurm``): the local cluster of slurm/local-cluster.sh has a second node on
this host (``node1``, its own slurmd) and a partition ``twonodes``; the script that
``pretrain submit --nodes 2 --procs-per-node 1`` renders runs there — srun starts one torchrun
per node, rendezvous on the first node — and trains the same run to the same bits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pretrain.training import checkpoint, rundir
from pretrain.training.distributed import free_port

try:  # tests/ imported as a package (tests/__init__.py, importlib mode)
    from tests.slurm_cluster import (  # slurm_cluster: a pytest fixture
        TERMINAL_STATES,
        job_info,
        slurm_cluster,
    )
    from tests.slurm_cluster import run as slurm_cmd
except ImportError:  # tests/ is a plain directory on sys.path (rootdir-less default)
    from slurm_cluster import TERMINAL_STATES, job_info, slurm_cluster  # type: ignore[no-redef]  # noqa: F401
    from slurm_cluster import run as slurm_cmd  # type: ignore[no-redef]
from conftest import child_env

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "recipe" / "roberta.yaml"

# The smoke preset cut to 10 steps (about 15 s per run on a quiet core); a micro batch of 16
# splits the global 32 over two ranks. Eval and checkpoint mid-run and at the end.
OVERRIDES = [
    "train.max_steps=10", "train.schedule.warmup_steps=2", "train.micro_batch_size=16",
    "train.log_every=1", "train.eval_every=5", "train.checkpoint_every=5",
]
TIMEOUT = 300  # seconds per launch; a run takes ~15-40 s depending on the machine's load


def _env() -> dict[str, str]:
    env = child_env()
    # One intra-op thread per process: two processes share the cores with the test runner.
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _train_cmd(*launcher: str, run_dir: Path, data: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "--max-restarts=0",
            "-m", "pretrain.cli", "train", str(RECIPE), "--preset", "smoke", *OVERRIDES,
            f"run_dir={run_dir}", f"data.output_dir={data}"]


def _assert_same_training(run: Path, ref: Path) -> None:
    """Every metrics record, the summary's end state and the final weights of ``run`` are
    those of ``ref``, to the bit."""
    a, b = rundir.read_metrics(ref), rundir.read_metrics(run)
    assert [(r["kind"], r["step"]) for r in a] == [(r["kind"], r["step"]) for r in b]
    assert [r["step"] for r in a if r["kind"] == "train"] == list(range(1, 11))
    train = [r for r in a if r["kind"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"] - 0.2  # it learns, so agreeing means something
    for x, y in zip(a, b):
        for k in ("loss", "mlm_loss", "grad_norm", "lr", "tokens_seen", "perplexity", "mlm_accuracy"):
            if k in x:
                assert y[k] == x[k], (x["kind"], x["step"], k, x[k], y[k])
    s_ref, s_run = (json.loads((r / rundir.SUMMARY).read_text()) for r in (ref, run))
    assert s_run["final_eval"] == s_ref["final_eval"] and s_run["tokens_seen"] == s_ref["tokens_seen"]

    _, w_ref = checkpoint.load_model_state(ref)
    cfg_run, w_run = checkpoint.load_model_state(run)
    assert cfg_run.train.max_steps == 10 and set(w_run) == set(w_ref)
    for k in w_ref:
        assert torch.equal(w_run[k], w_ref[k]), k


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
    return root / "two-nodes", root / "one-node", [f.read_text(errors="replace") for f in node_logs], data


def test_two_agents_rendezvous_as_two_nodes_and_node0_builds_the_data(runs):
    two, _, logs, _ = runs
    summary = json.loads((two / rundir.SUMMARY).read_text())
    assert summary["status"] == "done" and summary["steps"] == 10
    # Exactly one agent's worker (global rank 0, on whichever agent the rendezvous made node 0)
    # built the shards; the other waited at the barrier and opened them.
    assert sum("data-prep: built" in log for log in logs) == 1, logs
    assert [d.name for d in checkpoint.list_checkpoints(two)] == ["step-0000005", "step-0000010"]
    assert not list((two / "checkpoints").glob(".tmp-*"))


def test_two_nodes_match_one_node_with_two_ranks(runs):
    two, one, _, _ = runs
    _assert_same_training(two, one)


# ------------------------------------------------------------------ the same on Slurm

PARTITION = "twonodes"  # slurm/local-cluster.sh: nodes localhost and node1, both this host


@pytest.mark.slurm
def test_rendered_two_node_sbatch_script_runs_on_two_slurm_nodes(slurm_cluster, runs, tmp_path):
    """``pretrain submit --nodes 2 --procs-per-node 1``: its data job and its training job
    (srun → one torchrun per node → c10d rendezvous on the first node) run on the two nodes
    of the local cluster and train what one node with two ranks trains."""
    nodes = slurm_cmd(slurm_cluster, "sinfo", "-h", "-p", PARTITION, "-o", "%D", check=False).stdout.strip()
    if nodes != "2":
        pytest.skip(f"the running Slurm cluster has no 2-node partition {PARTITION!r} (sinfo: {nodes or 'none'}); "
                    "it was started by an older slurm/local-cluster.sh: `sudo bash slurm/local-cluster.sh stop` "
                    "then `start` gives it node1")
    _, one, _, data = runs
    (tmp_path / "site.yaml").write_text(f"python: {sys.executable}\n")
    run = tmp_path / "run"
    env = {**_env(), "SLURM_CONF": slurm_cluster["SLURM_CONF"]}
    proc = subprocess.run(
        [sys.executable, "-m", "pretrain.cli", "submit", str(RECIPE), "--preset", "smoke", "--nodes", "2",
         "--procs-per-node", "1", "--cpus-per-task", "1", "--partition", PARTITION, "--site", "site.yaml",
         *OVERRIDES, f"run_dir={run}", f"data.output_dir={data}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    script = (run / "slurm" / "train.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and "--nnodes=2" in script and "--nproc-per-node=1" in script
    job = json.loads((run / "slurm" / "jobs.json").read_text())["jobs"]["train"]

    deadline, info, last = time.monotonic() + TIMEOUT, None, {}
    while time.monotonic() < deadline:
        info = job_info(slurm_cluster, job)
        if info is None or info["JobState"] in TERMINAL_STATES:
            break
        last = info
        time.sleep(1)
    log = "".join(f.read_text(errors="replace") for f in (run / "slurm").glob("train-*.out"))
    assert info is None or info["JobState"] == "COMPLETED", f"job {job}: {info and info['JobState']}\n{log[-3000:]}"
    assert (last or info or {}).get("NodeList") == "localhost,node1", last or info
    assert f"on localhost,node1: {run}" in log and "finished:" in log, log[-3000:]
    # One rank per node; both opened the shards the data job found up to date.
    assert log.count("is up to date") == 2, log[-3000:]
    _assert_same_training(run, one)
