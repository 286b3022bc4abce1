"""`pretrain submit` on the local one-node Slurm cluster (slurm/local-cluster.sh): a smoke
ablation as a job array (2 processes per task through torchrun) with its table, a partition
Slurm rejects, and preemption — an admin requeue and a time limit — resuming to the same
final metrics as an uninterrupted run.

Every job runs in one module-wide working directory, so the data is built once. The
uninterrupted reference is the ablation's ``dynamic`` arm: the interrupted runs use the same
base, preset and overrides (checked key by key before comparing).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pretrain.training import checkpoint, rundir

try:  # tests/ imported as a package (tests/__init__.py, importlib mode)
    from tests.slurm_cluster import TERMINAL_STATES, job_info, scancel, slurm_cluster  # noqa: F401
    from tests.slurm_cluster import run as slurm_cmd
except ImportError:  # tests/ is a plain directory on sys.path (rootdir-less default)
    from slurm_cluster import TERMINAL_STATES, job_info, scancel, slurm_cluster  # type: ignore[no-redef]  # noqa: F401
    from slurm_cluster import run as slurm_cmd

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "recipe" / "roberta.yaml"
MASKING = REPO / "tests" / "fixtures" / "two_arm_masking.yaml"  # one seed per arm
# 300 steps of a tiny encoder with two processes: 10-45 s on two cores (AVX512 or AVX2 only),
# long enough to requeue or signal mid-run after the first checkpoint (step 50).
STEPS = 300
OVERRIDES = [
    "data.max_documents=30", "data.max_seq_length=64", "model.vocab_size=null",
    "train.global_batch_size=8", "train.micro_batch_size=4", f"train.max_steps={STEPS}",
    "train.schedule.warmup_steps=10", "train.eval_every=150", "train.eval_max_batches=2",
    "train.log_every=10", "train.checkpoint_every=50",
]
JOB = ["--preset", "smoke", "--procs-per-node", "2", "--cpus-per-task", "1"]
WAIT = 300  # seconds; a run takes ~1 min, a requeue adds ~25 s (cred_expire=20)
TRAIN_S = 200  # seconds of training in the time-limit test: past the warning at <= 60 s


@pytest.fixture(scope="module")
def work(slurm_cluster, tmp_path_factory):
    """The jobs' working directory, with a site file naming this interpreter. Cancels every
    job submitted from it at the end."""
    d = tmp_path_factory.mktemp("slurm-jobs")
    (d / "site.yaml").write_text(f"python: {sys.executable}\n")
    yield d
    ids = [str(i) for f in d.rglob("jobs.json") for i in json.loads(f.read_text())["jobs"].values()]
    scancel(slurm_cluster, *ids)


def submit(env, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pretrain.cli", "submit", *args, "--site", "site.yaml"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )


def jobs_of(slurm_dir: Path) -> dict:
    return json.loads((slurm_dir / "jobs.json").read_text())["jobs"]


def wait_until(predicate, timeout: float, what, poll: float = 0.5):
    """``what``: the failure message, or a function giving it (to report the last state seen)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"{what() if callable(what) else what} after {timeout:.0f}s")


def wait_ended(env, job_id: str, timeout: float = WAIT) -> dict:
    """The job's last record (still shown for MinJobAge=60 s after it ended)."""
    last: dict = {}

    def ended():
        nonlocal last
        info = job_info(env, job_id)
        if info is None:  # forgotten: ended more than a minute ago
            return last or {"JobState": "FORGOTTEN"}
        last = info
        return info if info["JobState"] in TERMINAL_STATES else None

    return wait_until(ended, timeout, lambda: f"job {job_id} still {last.get('JobState')}")


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def log_of(slurm_dir: Path) -> str:
    # A process killed mid-line can leave half a UTF-8 character (progress bars).
    return "".join(f.read_text(errors="replace") for f in sorted(slurm_dir.glob("train-*.out")))


@pytest.fixture(scope="module")
def ablation(slurm_cluster, work):
    """The smoke masking ablation, submitted once and waited for (the interrupted runs
    below compare against its dynamic arm)."""
    proc = submit(slurm_cluster, work, str(MASKING), *JOB, *OVERRIDES)
    assert proc.returncode == 0, proc.stderr
    abl = work / "runs" / "roberta_masking"
    jobs = jobs_of(abl / "slurm")
    tables = wait_ended(slurm_cluster, jobs["tables"])
    return abl, jobs, tables, proc.stdout


@pytest.fixture(scope="module")
def reference(ablation):
    abl = ablation[0]
    assert summary(abl / "dynamic")["status"] == "done", log_of(abl / "slurm")
    return abl / "dynamic"


def assert_same_run(run: Path, ref: Path) -> None:
    """Same experiment (config) and the same end: steps, tokens, final held-out metrics."""
    load = lambda p: checkpoint.read_client_state(checkpoint.latest(p))["config"]  # noqa: E731
    assert checkpoint.config_differences(load(ref), load(run)) == []
    got, want = summary(run), summary(ref)
    assert (got["steps"], got["tokens_seen"]) == (want["steps"], want["tokens_seen"])
    assert got["final_eval"] == want["final_eval"]


def test_ablation_array_with_two_processes_per_task_writes_the_table(ablation, slurm_cluster):
    abl, jobs, tables, out = ablation
    assert "(array: static, dynamic)" in out
    assert tables["JobState"] in ("COMPLETED", "FORGOTTEN")
    logs = {f.name: f.read_text(errors="replace") for f in (abl / "slurm").glob("train-*_*.out")}
    assert len(logs) == 2, list(logs)
    for arm in ("static", "dynamic"):
        s = summary(abl / arm)
        assert s["status"] == "done" and s["steps"] == STEPS
        # Two ranks (torchrun --nproc-per-node=2) trained each arm.
        assert checkpoint.read_client_state(checkpoint.latest(abl / arm))["world_size"] == 2
        assert any(f"finished: runs/roberta_masking/{arm}/summary.json (exit 0)" in t for t in logs.values())
    table = (abl.parent.parent / "results" / "smoke" / "roberta_masking.md").read_text()
    rows = [ln for ln in table.splitlines() if ln.startswith("| `")]
    assert [r.split("|")[1:3] for r in rows] == [[" `static` ", " done "], [" `dynamic` ", " done "]]
    status = subprocess.run([sys.executable, "-m", "pretrain.cli", "status", "runs/roberta_masking"],
                            cwd=abl.parent.parent, env=slurm_cluster, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert re.search(rf"static\s+done\s+\S+\s+step {STEPS}/{STEPS}", status.stdout), status.stdout
    assert re.search(rf"dynamic\s+done\s+\S+\s+step {STEPS}/{STEPS}", status.stdout), status.stdout


def test_partition_slurm_rejects_is_reported_verbatim(slurm_cluster, work):
    proc = submit(slurm_cluster, work, str(RECIPE), *JOB, *OVERRIDES, "name=badpart", "--partition", "nosuch")
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "\n" not in err, err
    assert err.startswith("error: sbatch rejected runs/badpart/slurm/data.sbatch (nothing submitted): "), err
    assert "sbatch: error: invalid partition specified: nosuch" in err, err
    assert not (work / "runs" / "badpart" / "slurm" / "jobs.json").exists()
    queue = slurm_cmd(slurm_cluster, "squeue", "-h", "-o", "%j").stdout.split()
    assert not any(name.startswith("badpart") for name in queue), queue


def test_admin_requeue_resumes_from_the_checkpoint(slurm_cluster, work, reference):
    proc = submit(slurm_cluster, work, str(RECIPE), *JOB, *OVERRIDES, "name=requeued")
    assert proc.returncode == 0, proc.stderr
    run = work / "runs" / "requeued"
    job = jobs_of(run / "slurm")["train"]
    latest = run / "checkpoints" / "latest"
    wait_until(latest.is_file, WAIT, "no checkpoint")
    seen = latest.read_text().strip()
    assert not (run / "summary.json").exists(), "finished before it could be requeued"
    # Slurm sends SIGTERM to the job, then puts it back in the queue.
    assert slurm_cmd(slurm_cluster, "scontrol", "requeue", job).returncode == 0
    info = wait_ended(slurm_cluster, job)
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1")
    log = log_of(run / "slurm")
    assert "restart 0 on" in log and "restart 1 on" in log
    resumed = re.search(r"resumed runs/requeued from step-(\d+)", log)
    assert resumed and int(resumed.group(1)) >= int(seen.removeprefix("step-")), log[-3000:]
    assert_same_run(run, reference)


def test_time_limit_sends_usr1_and_the_job_requeues_itself_and_completes(slurm_cluster, work, reference):
    # A one-minute limit with the warning 30 s ahead: slurmctld checks limits every 30 s, so
    # USR1 comes at most ~60 s after the start. The run must outlast that on any machine, and
    # its rest must end within the wait: 500 steps took 18 s on an AVX512 CPU and 37-75 s on an
    # AVX2 one, so the step count comes from this machine's reference run, sized for TRAIN_S
    # seconds of training. The estimate errs short, never long: the reference's time includes
    # its frequent checkpoints, and the two arms of the array may have shared the CPUs (seen:
    # half the rate of a run alone), so the run trains TRAIN_S / 2 to TRAIN_S seconds.
    # (Same metrics as an uninterrupted run is the USR1 and admin-requeue tests' job; this one
    # is about Slurm's own warning and the job requeueing itself.)
    ref = summary(reference)
    steps = max(500, int(round(ref["steps"] * TRAIN_S / ref["wall_time_s"], -2)))
    proc = submit(slurm_cluster, work, str(RECIPE), *JOB, *OVERRIDES, "name=timelimit", f"train.max_steps={steps}",
                  f"train.eval_every={steps}", f"train.checkpoint_every={steps}", "--time", "1",
                  "--signal-seconds", "30")
    assert proc.returncode == 0, proc.stderr
    run = work / "runs" / "timelimit"
    job = jobs_of(run / "slurm")["train"]

    def requeued_and_waiting():
        info = job_info(slurm_cluster, job) or {}
        return info if info.get("JobState") == "PENDING" and info.get("Restarts", "0") != "0" else None

    info = wait_until(requeued_and_waiting, WAIT, f"job {job} never requeued itself")
    # The requeued job keeps its one-minute limit and would be warned again within 30 s of
    # every restart; give the rest of the run room to finish.
    assert slurm_cmd(slurm_cluster, "scontrol", "update", f"JobId={job}", "TimeLimit=10").returncode == 0
    info = wait_ended(slurm_cluster, job, WAIT + 2 * TRAIN_S)
    # Finished once, never requeued after that.
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1")
    log = log_of(run / "slurm")
    assert "SIGUSR1 (time limit near)" in log and f"requeueing job {job}" in log, log[-3000:]
    assert "restart 1 on" in log and "finished: runs/timelimit/summary.json (exit 0)" in log
    # Slurm may send the warning as early as the job's start (seen: 1 s in, before the first
    # step). Mid-run, the trainer checkpoints and the restart resumes there; before training,
    # there is nothing to save and the restart begins afresh.
    saved = re.search(r"SIGUSR1: checkpoint step-(\d+) saved", log)
    if saved:
        assert "User defined signal 1" not in log  # torchrun passed USR1 on instead of dying of it
        assert 0 < int(saved.group(1)) < steps, log[-3000:]
        assert f"resumed runs/timelimit from step-{saved.group(1)} " in log, log[-3000:]
    else:
        # A warning within torchrun's first second, before it installs its handler, kills it
        # (srun: "task 0: User defined signal 1"); the script requeues all the same.
        first = log[:log.index("restart 1 on")]
        assert not re.search(r"\d(step/s|s/step)", first), first[-3000:]  # no step was trained (no rate)
        assert "no checkpoint in runs/timelimit/checkpoints; starting fresh" in log, log[-3000:]
    s = summary(run)
    assert (s["status"], s["steps"]) == ("done", steps)


def test_usr1_checkpoints_at_the_next_step_and_the_requeued_job_resumes_there(slurm_cluster, work, reference):
    # No periodic checkpoint before the end: the only one mid-run is the trainer's answer to USR1.
    proc = submit(slurm_cluster, work, str(RECIPE), *JOB, *OVERRIDES, "name=usr1", "train.checkpoint_every=1000")
    assert proc.returncode == 0, proc.stderr
    run = work / "runs" / "usr1"
    job = jobs_of(run / "slurm")["train"]

    def trained_steps():
        return max((r["step"] for r in rundir.read_metrics(run, "train")), default=0) >= 20

    wait_until(trained_steps, WAIT, "no progress")
    # What Slurm does at the warning time of --signal=B:USR1@S: USR1 to the batch shell only.
    assert slurm_cmd(slurm_cluster, "scancel", "--batch", "--signal=USR1", job).returncode == 0
    info = wait_ended(slurm_cluster, job)
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1")
    log = log_of(run / "slurm")
    saved = re.search(r"SIGUSR1: checkpoint step-(\d+) saved", log)
    assert saved and 20 <= int(saved.group(1)) < STEPS, log[-3000:]
    assert f"resumed runs/usr1 from step-{saved.group(1)} " in log
    assert "User defined signal 1" not in log  # torchrun passed USR1 on instead of dying of it
    assert_same_run(run, reference)
