"""The local one-node Slurm cluster (slurm/local-cluster.sh) really runs jobs.

The cluster is left running afterwards on purpose (see tests/slurm_cluster.py).
"""

from __future__ import annotations

import time

import pytest

try:  # tests/ imported as a package (tests/__init__.py, importlib mode)
    from tests.slurm_cluster import (
        TERMINAL_STATES,
        job_info,
        job_state,
        run,
        sbatch,
        scancel,
        slurm_cluster,  # noqa: F401  (pytest fixture)
        wait_for_file_text,
        wait_for_state,
    )
except ImportError:  # tests/ is a plain directory on sys.path (rootdir-less default)
    from slurm_cluster import (  # type: ignore[no-redef]
        TERMINAL_STATES,
        job_info,
        job_state,
        run,
        sbatch,
        scancel,
        slurm_cluster,  # noqa: F401
        wait_for_file_text,
        wait_for_state,
    )

pytestmark = pytest.mark.slurm


def test_batch_job_runs_to_completion(slurm_cluster, tmp_path):
    out = tmp_path / "hi.out"
    job = sbatch(slurm_cluster, f"--output={out}", "--wrap", "echo hi")
    state = wait_for_state(slurm_cluster, job, TERMINAL_STATES, timeout=60)
    # None: record already purged, which only happens to finished jobs.
    assert state in ("COMPLETED", None), f"job {job} ended {state}"
    assert out.read_text() == "hi\n"


def test_two_default_jobs_share_the_node(slurm_cluster, tmp_path):
    # Guards DefMemPerCPU: without it the first job claims all memory and the
    # second one pends until the first ends.
    jobs = [
        sbatch(slurm_cluster, f"--output={tmp_path}/s{i}.out", "--wrap", "sleep 60")
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 30
        states: list[str | None] = []
        while time.monotonic() < deadline:
            states = [job_state(slurm_cluster, j) for j in jobs]
            if states == ["RUNNING", "RUNNING"]:
                break
            time.sleep(0.25)
        assert states == ["RUNNING", "RUNNING"], f"jobs {jobs} are {states}"
    finally:
        scancel(slurm_cluster, *jobs)


def test_requeue_restarts_running_job(slurm_cluster, tmp_path):
    out = tmp_path / "requeue.out"
    job = sbatch(
        slurm_cluster,
        f"--output={out}",
        # Requeue truncates the output file unless it is opened for append.
        "--open-mode=append",
        "--requeue",
        "--wrap",
        'echo "start restart=${SLURM_RESTART_COUNT:-0}"; sleep 300',
    )
    try:
        wait_for_file_text(out, "start restart=0", timeout=60)
        assert job_state(slurm_cluster, job) == "RUNNING"
        run(slurm_cluster, "scontrol", "requeue", job)
        # A requeued job may only restart once its credential expired
        # (AuthInfo=cred_expire=20 in the cluster config): ~20-25 s.
        text = wait_for_file_text(out, "start restart=1", timeout=60)
        assert text.count("start restart=0") == 1, text
        info = job_info(slurm_cluster, job)
        assert info is not None
        assert info["Restarts"] == "1"
        assert info["JobState"] == "RUNNING"
    finally:
        scancel(slurm_cluster, job)
    # Leave no work behind for tests that reuse the cluster.
    wait_for_state(slurm_cluster, job, TERMINAL_STATES, timeout=30)
