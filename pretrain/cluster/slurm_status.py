"""``pretrain status``: where each run of a ``pretrain submit`` stands.

    pretrain status ABLATION_DIR | RUN_DIR | ABLATION.yaml [--runs DIR]

A run is ``pending``, ``running``, ``requeued`` (preempted, waiting to resume), ``done``
(its summary.json says so) or ``failed`` (its job ended without summary.json). The job ids
come from ``slurm/jobs.json`` (written by ``pretrain submit``), the job states from
``scontrol show job`` while Slurm remembers the job, then from ``sacct`` where accounting is
on, and in the end from the run directory alone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, TextIO

from common.configfile import read_yaml
from common.errors import UserError
from pretrain.training import rundir

SLURM_DIR = "slurm"  # below a run directory or an ablation directory: scripts, logs, jobs.json
JOBS = "jobs.json"
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
          "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING"}


@dataclass
class JobRecord:
    """One ``scontrol show job`` record (a job, or one or several tasks of an array)."""

    job_id: str
    state: str
    reason: str
    restarts: int
    array_tasks: Optional[str]  # "3", "0-4%2", "1,3" or None for a plain job

    def has_task(self, task: int) -> bool:
        """Whether this record covers array task ``task`` (pending tasks share one record)."""
        if self.array_tasks is None:
            return False
        for part in self.array_tasks.split("%")[0].split(","):
            lo, _, hi = part.partition("-")
            if lo.isdigit() and int(lo) <= task <= int(hi or lo):
                return True
        return False


@dataclass
class RunStatus:
    """One row of ``pretrain status``."""

    name: str
    state: str  # pending | running | requeued | done | failed | not submitted
    job: str
    detail: str


def scontrol_records(job_id: str) -> Optional[List[JobRecord]]:
    """Records of ``job_id`` (all tasks of an array); None once Slurm forgot the job or
    when there is no ``scontrol``."""
    if shutil.which("scontrol") is None:
        return None
    proc = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    out = []
    for line in proc.stdout.splitlines():
        kv = dict(t.partition("=")[::2] for t in line.split() if "=" in t)
        if "JobId" not in kv:
            continue
        out.append(JobRecord(kv["JobId"], kv.get("JobState", "?"), kv.get("Reason", "None"),
                             int(kv.get("Restarts", "0") or 0), kv.get("ArrayTaskId")))
    return out


def sacct_state(job_id: str) -> Optional[str]:
    """Final state of a job Slurm no longer shows, from accounting (None without it)."""
    if shutil.which("sacct") is None:
        return None
    proc = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job_id, "--format=State"], capture_output=True, text=True)
    words = proc.stdout.split()
    return words[-1].split()[0] if proc.returncode == 0 and words else None


def load_jobs(path: Path) -> Optional[dict]:
    """``slurm/jobs.json`` or None if nothing was submitted from here."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not valid JSON; it is written by `pretrain submit`") from None


def queued_jobs(jobs_file: Path) -> List[str]:
    """Ids (``123`` or ``123_4``) of the jobs recorded in ``jobs_file`` that are still
    pending, running or requeued."""
    rec = load_jobs(jobs_file)
    if rec is None:
        return []
    busy = []
    for job_id in rec.get("jobs", {}).values():
        for r in scontrol_records(str(job_id)) or []:
            if r.state in ACTIVE:
                busy.append(f"{job_id}_{r.array_tasks}" if r.array_tasks else str(job_id))
    return busy


def run_progress(run: Path) -> str:
    """``step k/N`` from the run's metrics and config, or '' before its first log line.

    A damaged metrics.jsonl gives ``metrics.jsonl damaged (…)`` for that run alone: status is
    read while jobs run, and one bad file must not hide every other run's state.
    """
    try:
        steps = [int(r["step"]) for r in rundir.read_metrics(run) if "step" in r]
    except UserError as e:
        return f"metrics.jsonl damaged ({str(e).split(': ', 1)[0]})"
    if not steps:
        return ""
    total = None
    if (run / rundir.CONFIG).is_file():
        total = read_yaml(run / rundir.CONFIG).get("train", {}).get("max_steps")
    return f"step {max(steps)}/{total if total is not None else '?'}"


def classify(record: Optional[JobRecord], job_id: str, finished: bool) -> tuple[str, str]:
    """(state, detail) of one run from its job record (None = Slurm forgot the job)."""
    if finished:
        return "done", ""
    if record is None:
        final = sacct_state(job_id)
        return "failed", f"job {final or 'ended'} without summary.json"
    restarts = f"restart {record.restarts}" if record.restarts else ""
    if record.state in ("RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT"):
        return "running", restarts
    if record.state.startswith("REQUEUE") or (record.state == "PENDING" and record.restarts):
        return "requeued", ", ".join(x for x in (restarts, record.reason if record.reason != "None" else "") if x)
    if record.state in ("PENDING", "SUSPENDED"):
        return "pending", record.reason if record.reason != "None" else ""
    return "failed", f"job {record.state} without summary.json"


def status(target: str | Path, runs_root: str | Path = "runs") -> tuple[str, List[RunStatus]]:
    """Header line and one RunStatus per run (and one for each helper job) of ``target``:
    an ablation directory, a run directory, or an ablation YAML (looked up in ``runs_root``).
    Raises UserError when ``target`` is none of these."""
    base = _resolve_target(Path(target), Path(runs_root))
    rec = load_jobs(base / SLURM_DIR / JOBS)
    if rec is None:
        return _unsubmitted(base)
    jobs = {k: str(v) for k, v in rec["jobs"].items()}
    header = f"{rec['name']} ({base}): submitted {rec['submitted']}, jobs " + ", ".join(
        f"{k} {jobs[k]}" for k in ("data", "train", "evaluate", "control", "tables") if k in jobs)
    train = scontrol_records(jobs["train"])
    rows: List[RunStatus] = [_helper("data", jobs["data"])]
    for r in rec["runs"]:
        run = Path(r["run_dir"])
        if rec.get("array"):
            match = next((x for x in train or [] if x.has_task(int(r["task"]))), None)
            job = f"{jobs['train']}_{r['task']}"
        else:
            match = (train or [None])[0]
            job = jobs["train"]
        state, detail = classify(match, job, _finished(run))
        detail = ", ".join(x for x in (run_progress(run), detail) if x)
        rows.append(RunStatus(r["name"], state, job, detail))
    for name in rec.get("skipped", []):
        rows.append(RunStatus(name, "done", "-", "finished before this submission"))
    for helper in ("evaluate", "control", "tables"):
        if helper in jobs:
            rows.append(_helper(helper, jobs[helper]))
    return header, rows


def print_status(target: str | Path, runs_root: str | Path = "runs", out: Optional[TextIO] = None) -> List[RunStatus]:
    """``pretrain status``: the header and an aligned table."""
    out = out or sys.stdout
    header, rows = status(target, runs_root)
    print(header, file=out)
    w = max(len(r.name) for r in rows)
    for r in rows:
        print(f"  {r.name:<{w}}  {r.state:<13} {r.job:<10} {r.detail}".rstrip(), file=out)
    return rows


def _resolve_target(target: Path, runs_root: Path) -> Path:
    if target.is_dir() and ((target / rundir.ABLATION).is_file() or (target / rundir.CONFIG).is_file()
                            or (target / SLURM_DIR / JOBS).is_file()):
        return target
    if target.is_file() and target.suffix in (".yaml", ".yml"):
        name = read_yaml(target).get("name")
        if name and (runs_root / str(name)).is_dir():
            return runs_root / str(name)
        raise UserError(f"{target}: nothing submitted or run yet (no {runs_root / str(name)})")
    raise UserError(f"{target} is not a run directory, an ablation directory or an ablation YAML")


def _finished(run: Path) -> bool:
    return rundir.finished_summary(run) is not None


def _helper(name: str, job_id: str) -> RunStatus:
    """The data or tables job: its Slurm state, or 'ended' once forgotten."""
    recs = scontrol_records(job_id)
    if not recs:
        final = sacct_state(job_id)
        return RunStatus(name, (final or "ended").lower(), job_id, "")
    r = recs[0]
    detail = r.reason if r.reason != "None" else ""
    return RunStatus(name, r.state.lower(), job_id, detail)


def _unsubmitted(base: Path) -> tuple[str, List[RunStatus]]:
    """A directory never submitted from: the run-directory states alone."""
    if (base / rundir.ABLATION).is_file():
        from pretrain.ablations.spec import load_record

        runs = {arm: base / arm for arm in load_record(base).ablation.arms}
    else:
        runs = {base.name: base}
    rows = []
    for name, run in runs.items():
        state = "done" if _finished(run) else "not submitted"
        rows.append(RunStatus(name, state, "-", run_progress(run)))
    return f"{base}: no jobs.json (not submitted with `pretrain submit`)", rows
