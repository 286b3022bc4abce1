"""Faults and hostile input around checkpoints and run directories (issue 13, cases 1, 2,
4, 5, 6), each retried as written:

1. a crafted pickle in a checkpoint runs nothing through any entry point (train --resume,
   export, submit --dry-run, tables, Hugging Face import) and is refused in one line;
2. a missing ``checkpoints/latest`` does not wipe a run: --resume finds the newest intact
   checkpoint; a fresh start never overwrites a run;
4. a run directory (and a data build) is locked: a second process stops naming the
   holder, a dead holder's lock is taken over, no lock file stays behind;
5. a damaged checkpoint is named in one line and --resume falls back to the newest intact
   one; export refuses it naming the intact one;
6. a full disk while saving a checkpoint or writing metrics is one line naming the path
   and the space, and nothing half-written is taken for valid later.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from common.errors import UserError
from common.lock import DirLock
from data_prep.build import build
from pretrain import cli
from pretrain.config import load_run_config
from pretrain.training import checkpoint, manifest, rundir, safeload
from pretrain.training.loop import train
from conftest import child_env

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "recipe" / "roberta.yaml"
TINY = [
    "model.vocab_size=null", "model.hidden_size=64", "model.num_hidden_layers=2", "model.num_attention_heads=2",
    "model.intermediate_size=128", "data.max_documents=30", "data.max_seq_length=64", "data.tokenizer.vocab_size=1000",
    "train.global_batch_size=16", "train.micro_batch_size=8", "train.schedule.warmup_steps=1", "train.log_every=1",
    "train.eval_every=4", "train.checkpoint_every=2", "train.keep_checkpoints=4", "train.precision=fp32",
]
TIMING = ("tokens_per_s", "time_s", "model_tflops", "mfu")

pytestmark = pytest.mark.usefixtures("one_thread")


def overrides(run: Path, data: Path, *extra: str):
    return [*TINY, f"run_dir={run}", f"data.output_dir={data}", *extra]


def cfg_of(run: Path, data: Path, *extra: str):
    return load_run_config(RECIPE, "smoke", overrides(run, data, *extra))


def train_cli(run: Path, data: Path, *extra: str, resume: bool = False):
    return ["train", str(RECIPE), "--preset", "smoke", *overrides(run, data, *extra), *(["--resume"] if resume else [])]


def one_line_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1, err
    return err[0]


def metrics(run: Path):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rundir.read_metrics(run)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults-data") / "shards"
    build(cfg_of(out.parent / "unused", out).data)
    return out


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, data: Path) -> Path:
    """A finished 8-step run with checkpoints at steps 2, 4, 6 and 8."""
    run = tmp_path_factory.mktemp("faults-base") / "run"
    train(cfg_of(run, data, "train.max_steps=8"))
    assert [d.name for d in checkpoint.list_checkpoints(run)] == [checkpoint.tag(s) for s in (2, 4, 6, 8)]
    return run


def copy_run(base: Path, to: Path) -> Path:
    shutil.copytree(base, to)
    # A copy's config.yaml names the base's run_dir; resumes here pass their own run_dir.
    return to


# ------------------------------------------------------------------ 1. code in a checkpoint


class _Touch:
    """Unpickling this runs ``touch <marker>``: what an attacker's checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path: Path, marker: Path) -> None:
    """Replace ``path`` with a pickle that runs code, and make its checkpoint's manifest
    match, as an attacker who hands out a whole checkpoint would."""
    torch.save({"module": {"x": torch.zeros(1)}, "payload": _Touch(marker)}, path)
    manifest.write(path.parent)
    assert manifest.problem(path.parent) is None


def test_crafted_pickle_runs_nothing_through_any_entry_point(tmp_path: Path, data: Path, base_run: Path, capsys):
    marker = tmp_path / "PWNED"
    run = copy_run(base_run, tmp_path / "runs" / "evil")
    _plant(run / "checkpoints" / checkpoint.tag(8) / checkpoint.MODEL_STATES, marker)
    metrics_before = (run / rundir.METRICS).read_bytes()

    # train --resume: refused (not skipped for an older checkpoint: a planted file is an alarm)
    assert cli.main(train_cli(run, data, "train.max_steps=10", resume=True)) == 2
    line = one_line_error(capsys)
    assert "refusing to load" in line and checkpoint.MODEL_STATES in line and "posix.system" in line, line
    assert (run / rundir.METRICS).read_bytes() == metrics_before

    # pretrain export (a run directory and the step directory itself)
    for target in (run, run / "checkpoints" / checkpoint.tag(8)):
        assert cli.main(["export", str(target), "--format", "hf", str(tmp_path / "hf")]) == 2
        assert "refusing to load" in one_line_error(capsys)
    assert not (tmp_path / "hf").exists()

    # pretrain submit --dry-run on that run: reads the JSON trainer state, unpickles nothing
    code = cli.main(["submit", str(RECIPE), "--preset", "smoke", "--dry-run", *overrides(run, data, "train.max_steps=8")])
    out = capsys.readouterr()
    assert code == 0, out.err

    # pretrain tables over a runs/ holding it
    cli.main(["tables", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")])
    capsys.readouterr()

    # Hugging Face import of a directory whose pytorch_model.bin is such a pickle
    from pretrain.models.hf import export_checkpoint, from_hf

    hf = export_checkpoint(base_run, tmp_path / "hf-ok")
    for f in hf.glob("*.safetensors"):
        f.unlink()
    torch.save({"payload": _Touch(marker)}, hf / "pytorch_model.bin")
    with pytest.raises(safeload.UnsafeCheckpoint, match=r"^refusing to load .*hf-ok: it would call posix.system"):
        from_hf(hf)

    assert not marker.exists(), "a checkpoint ran code"


ZERO = ("train.precision=bf16", "train.zero_stage=2")


@pytest.fixture(scope="module")
def zero_run(tmp_path_factory, data: Path) -> Path:
    """A bf16 ZeRO-2 run of 2 steps: model states plus an optimizer partition file."""
    run = tmp_path_factory.mktemp("faults-zero") / "run"
    train(cfg_of(run, data, *ZERO, "train.max_steps=2"))
    return run


def test_every_torch_load_of_a_resume_is_weights_only(tmp_path: Path, data: Path, zero_run: Path, monkeypatch):
    """DeepSpeed's own loader passes weights_only=False; every load it makes while resuming
    a ZeRO-2 bf16 run (model states and optimizer partitions) is weights-only."""
    run = copy_run(zero_run, tmp_path / "run")
    calls = []
    real = torch.load

    def spy(f, *args, **kwargs):
        forced = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") == "1"
        calls.append((str(f), kwargs.get("weights_only") is True or forced))
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    train(cfg_of(run, data, *ZERO, "train.max_steps=3"), resume=True)
    checkpoint.load_model_state(run)  # export: DeepSpeed's zero_to_fp32 gathers the partitions
    assert any("optim_states" in f for f, _ in calls) and any("model_states" in f for f, _ in calls), calls
    assert all(safe for _, safe in calls), calls


def test_crafted_zero_partition_is_refused(tmp_path: Path, data: Path, zero_run: Path, capsys):
    """The optimizer partition is read by DeepSpeed's engine (resume) and by its
    zero_to_fp32 (export), both of which call torch.load(weights_only=False) themselves."""
    marker = tmp_path / "PWNED"
    run = copy_run(zero_run, tmp_path / "run")
    step = run / "checkpoints" / checkpoint.tag(2)
    (partition,) = step.glob("*optim_states.pt")
    _plant(partition, marker)
    assert cli.main(train_cli(run, data, *ZERO, "train.max_steps=3", resume=True)) == 2
    assert "refusing to load" in one_line_error(capsys)
    with pytest.raises(UserError, match="refusing to load"):
        checkpoint.load_model_state(step)
    assert not marker.exists()


# ------------------------------------------------------------------ 2. no `latest`, fresh starts


def test_missing_latest_resumes_from_the_newest_intact_checkpoint(tmp_path: Path, data: Path, base_run: Path, capsys):
    run = copy_run(base_run, tmp_path / "run")
    (run / "checkpoints" / checkpoint.LATEST).unlink()
    before = metrics(run)
    summary = train(cfg_of(run, data, "train.max_steps=10"), resume=True)
    err = capsys.readouterr().err
    assert f"checkpoints/latest is missing; resuming from {run}/checkpoints/step-0000008" in err
    after = metrics(run)
    assert summary["steps"] == 10
    # the first 8 steps are kept as they were, not retrained from step 0
    assert [r for r in after if r["step"] <= 8] == before
    assert [r["step"] for r in after if r["kind"] == "train"] == list(range(1, 11))


def test_fresh_start_never_overwrites_a_run(tmp_path: Path, data: Path, base_run: Path, capsys):
    run = copy_run(base_run, tmp_path / "run")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert cli.main(train_cli(run, data, "train.max_steps=8")) == 2
    line = one_line_error(capsys)
    assert f"{run} already holds a run" in line and "pass --resume" in line and "new directory" in line
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    # metrics alone (a run killed before its first checkpoint) are not overwritten either
    only_metrics = tmp_path / "early"
    only_metrics.mkdir()
    (only_metrics / rundir.METRICS).write_text('{"kind": "train", "step": 1, "loss": 7.0}\n')
    with pytest.raises(UserError, match=r"already holds a run \(metrics.jsonl\); pass --resume"):
        train(cfg_of(only_metrics, data, "train.max_steps=2"))


# ------------------------------------------------------------------ 5. damaged checkpoints


def _flip(path: Path, n: int = 64) -> None:
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + n] = bytes(b ^ 0xFF for b in raw[mid:mid + n])
    path.write_bytes(bytes(raw))


def test_damaged_latest_is_named_and_resume_falls_back(tmp_path: Path, data: Path, base_run: Path, capsys):
    run = copy_run(base_run, tmp_path / "run")
    _flip(run / "checkpoints" / checkpoint.tag(8) / checkpoint.MODEL_STATES)
    before = metrics(run)
    summary = train(cfg_of(run, data, "train.max_steps=8"), resume=True)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert err == [f"warning: checkpoint {run}/checkpoints/step-0000008 is damaged: {checkpoint.MODEL_STATES} does not "
                   f"match its sha256 in manifest.json; resuming from {run}/checkpoints/step-0000006, the newest intact "
                   "checkpoint"]
    # steps 7 and 8 are trained again from step 6's state: the same records as before
    assert summary["steps"] == 8 and metrics(run) == before
    assert manifest.problem(run / "checkpoints" / checkpoint.tag(8)) is None  # rewritten whole


def test_truncated_checkpoint_export_names_the_intact_one(tmp_path: Path, base_run: Path, capsys):
    run = copy_run(base_run, tmp_path / "run")
    f = run / "checkpoints" / checkpoint.tag(8) / checkpoint.MODEL_STATES
    f.write_bytes(f.read_bytes()[:1000])
    assert cli.main(["export", str(run), "--format", "hf", str(tmp_path / "hf")]) == 2
    assert one_line_error(capsys) == (
        f"error: checkpoint {run}/checkpoints/step-0000008 is damaged: {checkpoint.MODEL_STATES} has 1000 bytes, "
        f"the manifest says {(base_run / 'checkpoints' / checkpoint.tag(8) / checkpoint.MODEL_STATES).stat().st_size}; "
        f"the newest intact checkpoint is {run}/checkpoints/step-0000006: pass that to use it")
    assert cli.main(["export", str(run / "checkpoints" / checkpoint.tag(6)), "--format", "hf", str(tmp_path / "hf")]) == 0


def test_export_refuses_a_file_a_foreign_directory_and_the_run_and_never_half_writes(tmp_path: Path, base_run: Path,
                                                                                       capsys, monkeypatch):
    def export(out: Path, ckpt: Path = base_run) -> int:
        return cli.main(["export", str(ckpt), "--format", "hf", str(out)])

    (tmp_path / "afile").write_text("x")
    assert export(tmp_path / "afile") == 2
    assert one_line_error(capsys) == f"error: export directory {tmp_path}/afile exists and is a file; pass a new directory"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    assert export(tmp_path / "notes") == 2
    assert "holds other files and is not an earlier export" in one_line_error(capsys)
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["a.txt"]
    for out in (base_run / "hf", base_run / "checkpoints" / checkpoint.tag(8) / "hf"):
        assert export(out) == 2
        assert one_line_error(capsys) == (f"error: export directory {out} is inside the run directory {base_run}; "
                                          f"write it elsewhere, e.g. hf/{base_run.name}")
        assert not out.exists()
    out = tmp_path / "hf"
    assert export(out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import transformers

    def half_then_full(self, d, **kw):
        (Path(d) / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", half_then_full)
    assert export(out) == 2
    assert one_line_error(capsys).startswith(f"error: no space left on the device of {tmp_path}")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier export, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "hf", "notes"]  # no .hf.partial left
    # a model directory with a config.json and files of its own is not ours to replace
    monkeypatch.undo()
    (out / "README.md").write_text("my notes")
    assert export(out) == 2
    assert "holds files this export does not write (README.md)" in one_line_error(capsys)
    assert (out / "README.md").read_text() == "my notes" and (out / "config.json").is_file()


def test_damaged_summary_of_the_run_is_one_line_for_export_and_finetune(tmp_path: Path, base_run: Path, capsys):
    run = copy_run(base_run, tmp_path / "run")
    (run / rundir.SUMMARY).write_text('{"data_dir": "sha')  # cut short: where the tokenizer is was in it
    want = f"error: {run}/{rundir.SUMMARY} is damaged ("
    assert cli.main(["export", str(run), "--format", "hf", str(tmp_path / "hf")]) == 2
    assert one_line_error(capsys).startswith(want)
    assert cli.main(["finetune", str(run), "--task", "sst2", "--preset", "smoke", "--out", str(tmp_path / "job")]) == 2
    assert one_line_error(capsys).startswith(want)
    assert not (tmp_path / "hf").exists()


def test_all_checkpoints_damaged_refuses_and_keeps_everything(tmp_path: Path, data: Path, base_run: Path):
    run = copy_run(base_run, tmp_path / "run")
    for d in checkpoint.list_checkpoints(run):
        (d / checkpoint.STATE).write_text("{}")
    before = (run / rundir.METRICS).read_bytes()
    with pytest.raises(UserError, match=r"no intact checkpoint to resume .* \(checkpoint .*step-0000008 is damaged: "
                                        r"trainer_state.json has 2 bytes.* and 3 more\); nothing was overwritten"):
        train(cfg_of(run, data, "train.max_steps=8"), resume=True)
    assert (run / rundir.METRICS).read_bytes() == before


# ------------------------------------------------------------------ 4. locks


def test_second_train_on_a_run_directory_stops_naming_the_first(tmp_path: Path, data: Path, capsys):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "pretrain.cli", *train_cli(run, data, "train.max_steps=30")]
    log = tmp_path / "first.log"
    with open(log, "w") as f:
        first = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=f, stderr=subprocess.STDOUT)
        try:
            t0 = time.time()
            while not (run / rundir.LOCK).is_file():
                assert first.poll() is None and time.time() - t0 < 120, log.read_text()[-2000:]
                time.sleep(0.01)
            assert cli.main(train_cli(run, data, "train.max_steps=30")) == 2
            line = one_line_error(capsys)
            assert line.startswith(f"error: run directory {run} is in use by host {socket.gethostname()} pid {first.pid} ")
            assert first.wait(timeout=300) == 0, log.read_text()[-2000:]
        finally:
            first.kill()
    assert not (run / rundir.LOCK).exists()
    assert rundir.read_summary(run)["steps"] == 30
    assert [r["step"] for r in rundir.read_metrics(run, "train")] == list(range(1, 31))


def test_a_dead_holders_lock_is_taken_over(tmp_path: Path, capsys):
    lock = tmp_path / "run" / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from common.lock import DirLock; "
                               f"DirLock(__import__('pathlib').Path({str(lock)!r}), 'x').acquire(); print('held', flush=True); "
                               "time.sleep(600)"], cwd=REPO, env=child_env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=rf"^run {tmp_path}/run is in use by host {socket.gethostname()} pid {holder.pid} "
                                        rf"\(since .*\); wait for it to finish, or, if that process is gone, delete {lock}$"):
        DirLock(lock, f"run {tmp_path}/run").acquire()
    holder.send_signal(signal.SIGKILL)  # no chance to clean up
    holder.wait()
    assert lock.is_file()
    with DirLock(lock, "the run") as mine:
        assert mine.held and json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"taking over the lock on the run: host {socket.gethostname()} pid {holder.pid}" in capsys.readouterr().err
    assert not lock.exists()


def test_a_reused_pid_or_a_reboot_frees_a_lock(tmp_path: Path):
    """The pid in a stale lock may belong to a new process (this one, here) by now."""
    from common.lock import _boot_id, _start_time, holder_is_gone

    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid()), "boot_id": _boot_id()}
    assert not holder_is_gone(me)
    assert holder_is_gone({**me, "started": me["started"] - 100.0})  # same pid, another process
    assert holder_is_gone({**me, "boot_id": "another-boot"})
    zombie = subprocess.Popen(["sleep", "60"])
    held = {**me, "pid": zombie.pid, "started": _start_time(zombie.pid)}
    assert not holder_is_gone(held)
    zombie.kill()
    time.sleep(0.2)  # killed, not yet reaped
    assert holder_is_gone(held)
    zombie.wait()


def test_a_lock_of_another_host_is_not_taken(tmp_path: Path):
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"host": "node-elsewhere", "pid": 1234, "since": 0, "token": "t"}))
    with pytest.raises(UserError, match=rf"in use by host node-elsewhere pid 1234 .*delete {lock}$"):
        DirLock(lock, "the run").acquire()
    assert lock.is_file()

    # a refused or finished lock leaves no directory it created behind
    fresh = tmp_path / "runs" / "a" / "b" / ".lock"
    with DirLock(fresh, "the run"):
        with pytest.raises(UserError, match=rf"in use by host {socket.gethostname()} pid {os.getpid()}"):
            DirLock(fresh, "the run").acquire()
        assert fresh.is_file()
    assert not (tmp_path / "runs").exists()


def test_a_requeued_slurm_job_takes_over_its_earlier_runs_lock(tmp_path: Path, monkeypatch):
    """Killed on node A (SIGKILL after the grace time), requeued onto node B: same job id,
    a higher restart count. The same job at the same restart count is not taken over."""
    lock = tmp_path / ".lock"
    held = {"host": "node-a", "pid": 4321, "since": 0, "token": "t", "slurm": {"job": "77", "restart": 0}}
    lock.write_text(json.dumps(held))
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with pytest.raises(UserError, match="in use by host node-a pid 4321"):
        DirLock(lock, "the run").acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with pytest.raises(UserError, match="in use by host node-a pid 4321"):
        DirLock(lock, "the run").acquire()  # another job
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    with DirLock(lock, "the run"):
        assert json.loads(lock.read_text())["slurm"] == {"job": "77", "restart": 1}
    assert not lock.exists()


def test_build_lock_waits_names_the_holder_and_leaves_no_file(tmp_path: Path, data: Path, capsys):
    lock = tmp_path / ".shards.lock"
    first = DirLock(lock, "the build").acquire()
    threading.Timer(0.5, first.release).start()
    with DirLock(lock, "the build", wait=True, poll_s=0.05):
        pass
    assert f"waiting for host {socket.gethostname()} pid {os.getpid()}" in capsys.readouterr().err
    assert not lock.exists()

    # data-prep: no .<name>.lock beside the output after a build, nor after a failed one
    out = tmp_path / "built"
    build(cfg_of(tmp_path / "unused", out).data)
    with pytest.raises(UserError):
        build(cfg_of(tmp_path / "unused", tmp_path / "failed", "data.max_documents=1").data)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".lock")) == []


# ------------------------------------------------------------------ 6. a full disk


def _fail_saves_after(monkeypatch, n_ok: int, error) -> None:
    """torch.save writes half of the file and raises ``error`` after ``n_ok`` good saves."""
    real, count = torch.save, [0]

    def save(obj, f, *args, **kwargs):
        count[0] += 1
        if count[0] <= n_ok:
            return real(obj, f, *args, **kwargs)
        Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise error

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/3: "
                 "file write failed"),
], ids=["ENOSPC", "torch-writer"])
def test_disk_full_while_saving_a_checkpoint(tmp_path: Path, data: Path, monkeypatch, capsys, error):
    run = tmp_path / "run"
    if isinstance(error, RuntimeError):  # torch loses the errno: the free space tells
        import common.diskspace

        monkeypatch.setattr(common.diskspace, "free_bytes", lambda path: 300_000)
    _fail_saves_after(monkeypatch, 1, error)  # step 2 saved, step 4 fails
    assert cli.main(train_cli(run, data, "train.max_steps=6")) == 2
    line = one_line_error(capsys)
    assert line.startswith(f"error: no space left on the device of {run}/checkpoints (")
    assert "free, about" in line and line.endswith("needed); free some space, then rerun with --resume "
                                                   "(it resumes from step-0000002)"), line
    # no partial step-4 directory, nothing that could be taken for a checkpoint
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [checkpoint.LATEST, checkpoint.tag(2)]
    monkeypatch.undo()
    summary = train(cfg_of(run, data, "train.max_steps=6"), resume=True)
    assert summary["steps"] == 6 and [r["step"] for r in rundir.read_metrics(run, "train")] == list(range(1, 7))


def test_disk_full_on_a_real_small_file_system(tmp_path: Path, data: Path, capsys):
    """A 3 MB tmpfs: the step-2 checkpoint (1.8 MB) fits, step 4's does not."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        run = mnt / "run"
        assert cli.main(train_cli(run, data, "train.max_steps=6")) == 2
        line = one_line_error(capsys)
        assert line.startswith(f"error: no space left on the device of {run}/checkpoints (") and "MB needed" in line
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [checkpoint.LATEST, checkpoint.tag(2)]
        assert manifest.problem(run / "checkpoints" / checkpoint.tag(2)) is None
        assert checkpoint.latest(run).name == checkpoint.tag(2)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full_while_writing_metrics(tmp_path: Path, data: Path, monkeypatch, capsys):
    """The metrics line of step 3 gets half written, then the disk is full: one line; the
    resumed run drops the half line and ends with every line whole."""
    import pretrain.training.metrics_log as metrics_log

    real_open = open

    class FillsUp:
        def __init__(self, f):
            self.f, self.lines = f, 0

        def write(self, s):
            self.lines += 1
            if self.lines == 3:
                self.f.write(s[: len(s) // 2])
                self.f.flush()
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(s)

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(metrics_log, "open", lambda *a, **k: FillsUp(real_open(*a, **k)), raising=False)
    run = tmp_path / "run"
    assert cli.main(train_cli(run, data, "train.max_steps=6")) == 2
    line = one_line_error(capsys)
    assert line.startswith(f"error: no space left on the device of {run}/metrics.jsonl (") and "B needed" in line
    assert not (run / rundir.METRICS).read_text().endswith("\n")  # the half line is there
    monkeypatch.undo()
    train(cfg_of(run, data, "train.max_steps=6"), resume=True)
    lines = (run / rundir.METRICS).read_text().splitlines()
    assert all(json.loads(x) for x in lines)
    assert [json.loads(x)["step"] for x in lines if json.loads(x)["kind"] == "train"] == list(range(1, 7))


def test_disk_full_leaves_an_atomic_file_as_it_was(tmp_path: Path, monkeypatch):
    from common.atomic import write_json_atomic

    target = tmp_path / "summary.json"
    write_json_atomic(target, {"a": 1})
    real = Path.write_bytes

    def fills_up(self, data):
        real(self, data[:3])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", fills_up)
    with pytest.raises(UserError, match=rf"^no space left on the device of {target} \(.* free, about 13.0B needed\)"):
        write_json_atomic(target, {"a": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"a": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
