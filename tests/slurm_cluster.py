"""Session-wide access to the local Slurm cluster (slurm/local-cluster.sh): node
``localhost`` in the default partition ``debug``, and partition ``twonodes`` of
``localhost`` and ``node1`` (a second slurmd on the same host) for multi-node jobs.

Not a conftest: import the fixture into a test module to use it::

    from slurm_cluster import slurm_cluster  # noqa: F401  (pytest fixture)

    @pytest.mark.slurm
    def test_x(slurm_cluster, tmp_path):
        job = sbatch(slurm_cluster, "--wrap", "echo hi", f"--output={tmp_path}/o")

The fixture yields an environment dict (os.environ plus SLURM_CONF) to pass
as ``env=`` to every Slurm client call and to code under test that shells out
to sbatch/squeue/scontrol. The cluster is started once per test process and
deliberately left running afterwards so later tests and sessions reuse it;
`bash slurm/local-cluster.sh stop` tears it down.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "slurm" / "local-cluster.sh"

# States after which a job will not run again by itself.
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
    }
)

_env_cache: dict[str, str] | None = None


def _conf_from_output(output: str) -> str | None:
    m = re.search(r"^export SLURM_CONF=(\S+)$", output, re.MULTILINE)
    return m.group(1) if m else None


def ensure_cluster() -> dict[str, str]:
    """Start the cluster if needed (or reuse a running one) and return its env.

    Skips the calling test unless Slurm tests were asked for (``BERT_RECIPES_SLURM=1``,
    which ``pytest --slurm`` sets) and when the cluster cannot be had without root;
    fails loudly when starting it as root does not work.
    """
    global _env_cache
    if _env_cache is not None:
        return _env_cache
    if os.environ.get("BERT_RECIPES_SLURM") != "1":
        # conftest.py skips tests marked `slurm` unless asked; this guards any other caller.
        pytest.skip("Slurm tests run only when asked for: BERT_RECIPES_SLURM=1 or pytest --slurm")

    is_root = os.geteuid() == 0
    if not is_root and shutil.which("sbatch") is None:
        pytest.skip("Slurm not installed and not root: run `sudo bash slurm/local-cluster.sh start`")

    cmd = "start" if is_root else "status"
    proc = subprocess.run(
        ["bash", str(SCRIPT), cmd], capture_output=True, text=True, timeout=600
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        if not is_root:
            pytest.skip(
                "local Slurm cluster is down and starting it needs root: "
                "run `sudo bash slurm/local-cluster.sh start`"
            )
        raise RuntimeError(f"slurm/local-cluster.sh start failed ({proc.returncode}):\n{output}")
    conf = _conf_from_output(output)
    if conf is None:
        raise RuntimeError(f"no SLURM_CONF in output of local-cluster.sh {cmd}:\n{output}")
    _env_cache = {**os.environ, "SLURM_CONF": conf}
    return _env_cache


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[dict[str, str]]:
    """Environment (with SLURM_CONF) of a running local Slurm cluster."""
    # Not stopped at the end on purpose: later tests/sessions reuse it.
    yield ensure_cluster()


def run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=60, check=check)


def sbatch(env: dict[str, str], *args: str) -> str:
    """Submit a batch job and return its id."""
    proc = run(env, "sbatch", "--parsable", *args)
    # --parsable prints "id" or "id;cluster".
    return proc.stdout.strip().split(";")[0]


def job_info(env: dict[str, str], job_id: str) -> dict[str, str] | None:
    """`scontrol show job` as a dict, or None once Slurm forgot the job (MinJobAge)."""
    proc = run(env, "scontrol", "show", "job", "--oneliner", job_id, check=False)
    if proc.returncode != 0:
        return None
    info: dict[str, str] = {}
    for token in proc.stdout.split():
        key, sep, value = token.partition("=")
        if sep:
            info.setdefault(key, value)
    return info


def job_state(env: dict[str, str], job_id: str) -> str | None:
    info = job_info(env, job_id)
    return None if info is None else info.get("JobState")


def wait_for_state(
    env: dict[str, str], job_id: str, states: frozenset[str] | set[str], timeout: float = 60.0
) -> str | None:
    """Poll until the job is in one of ``states`` (or forgotten); return the state.

    ``None`` means the job record is already gone, which only happens after it
    ended. Raises TimeoutError with the last seen state otherwise.
    """
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = job_state(env, job_id)
        if state is None or state in states:
            return state
        time.sleep(0.25)
    raise TimeoutError(f"job {job_id} still {state} after {timeout:.0f}s")


def wait_for_file_text(path: Path, needle: str, timeout: float = 60.0) -> str:
    """Poll until ``path`` contains ``needle``; return the file's text."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        if path.exists():
            text = path.read_text()
            if needle in text:
                return text
        time.sleep(0.25)
    raise TimeoutError(f"{needle!r} not in {path} after {timeout:.0f}s; content: {text!r}")


def scancel(env: dict[str, str], *job_ids: str) -> None:
    if job_ids:
        run(env, "scancel", *job_ids, check=False)
