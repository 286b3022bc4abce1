"""`pretrain submit` and `pretrain status` without a cluster: rendering (--dry-run), the
checks made before anything is submitted, the sbatch chain against a recording fake sbatch,
and the status table from canned scontrol output."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from common.errors import UserError
from pretrain.cli import main
from pretrain.cluster.slurm_status import JobRecord, classify, print_status
from pretrain.cluster.submit import parse_time

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "recipe" / "roberta.yaml"
MASKING = REPO / "tests" / "fixtures" / "two_arm_masking.yaml"  # one seed per arm
# A small CPU ablation that passes every check for 2 processes per node.
SMALL = ["train.global_batch_size=8", "train.micro_batch_size=4", "train.max_steps=6", "train.schedule.warmup_steps=2"]

FAKE_SBATCH = """#!/bin/bash
# Records submissions (--test-only calls in a log of their own); prints the next job id, or
# fails like sbatch when told to (FAKE_SBATCH_FAIL_ON: a script name; _PHASE: test|submit).
phase=submit log=$FAKE_SLURM_LOG
if [[ $1 == --test-only ]]; then phase=test log=$FAKE_SLURM_LOG.test; fi
echo "$*" >> "$log"
if [[ -n ${FAKE_SBATCH_FAIL:-} && $* == *"$FAKE_SBATCH_FAIL_ON"* && $phase == "$FAKE_SBATCH_FAIL_PHASE" ]]; then
    echo "sbatch: error: $FAKE_SBATCH_FAIL" >&2
    exit 1
fi
if [[ $phase == test ]]; then echo "sbatch: Job 1 to start at 2026-01-01T00:00:00" >&2; exit 0; fi
echo $((100 + $(grep -c . "$FAKE_SLURM_LOG")))
"""
FAKE_SCANCEL = """#!/bin/bash
echo "scancel $*" >> "$FAKE_SLURM_LOG.scancel"
"""


def _tool(bin_dir: Path, name: str, text: str) -> None:
    p = bin_dir / name
    p.write_text(text)
    p.chmod(p.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A recording sbatch/scancel (and an scontrol that knows no job) first on PATH; the
    test runs in ``tmp_path``. Returns the log of sbatch calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _tool(bin_dir, "sbatch", FAKE_SBATCH)
    _tool(bin_dir, "scancel", FAKE_SCANCEL)
    _tool(bin_dir, "scontrol", "#!/bin/bash\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    log = tmp_path / "sbatch.log"
    monkeypatch.setenv("FAKE_SLURM_LOG", str(log))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    return log


def _dry_run(capsys, *args: str) -> dict[str, str]:
    """Run `pretrain submit --dry-run`; return script name -> text."""
    assert main(["submit", *args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    scripts: dict[str, str] = {}
    for chunk in out.split("# ==> ")[1:]:
        head, _, body = chunk.partition(" <==\n")
        scripts[Path(head).name] = body
    return scripts


def _bash_syntax_ok(text: str, tmp_path: Path) -> None:
    f = tmp_path / "check.sh"
    f.write_text(text)
    proc = subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# ------------------------------------------------------------------ rendering


def test_two_nodes_eight_gpus_renders_srun_torchrun_rendezvous_and_requeue(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scripts = _dry_run(capsys, str(RECIPE), "--nodes", "2", "--gpus-per-node", "8", "--time", "2-00:00:00")
    train = scripts["train.sbatch"]
    for line in [
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --time=2-00:00:00",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@300",
        "#SBATCH --open-mode=append",
        f"#SBATCH --chdir={tmp_path}",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "MASTER_PORT=$((10000 + SLURM_JOB_ID % 20000))",
        "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1",
        "srun --nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1",
        "python -m torch.distributed.run",
        "--nnodes=2",
        "--nproc-per-node=8",
        "--rdzv-backend=c10d",
        '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"',
        '-m pretrain.cli train "$RUN_DIR/config.yaml" --resume',
        "RUN_DIRS=(runs/roberta)",
        'scontrol requeue "$SLURM_JOB_ID"',
        "SIGUSR1",
    ]:
        assert line in train, line
    assert "--array" not in train and "DS_ACCELERATOR" not in train
    assert "data_prep.cli build runs/roberta/slurm/data-" in scripts["data.sbatch"]
    assert "tables.sbatch" not in scripts  # a single run has no table
    _bash_syntax_ok(train, tmp_path)
    _bash_syntax_ok(scripts["data.sbatch"], tmp_path)
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_cpu_ablation_is_a_job_array_with_gloo_processes_per_node(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scripts = _dry_run(capsys, str(MASKING), "--preset", "smoke", "--procs-per-node", "2", "--cpus-per-task", "4", *SMALL)
    train = scripts["train.sbatch"]
    assert "#SBATCH --array=0-1" in train
    assert "RUN_DIRS=(runs/roberta_masking/static runs/roberta_masking/dynamic)" in train
    assert "--nproc-per-node=2" in train and "export DS_ACCELERATOR=cpu" in train
    assert "OMP_NUM_THREADS=$(( ${SLURM_CPUS_PER_TASK:-1} / 2 ))" in train
    assert "gpus-per-node" not in train and "NCCL" not in train
    assert "#SBATCH --output=runs/roberta_masking/slurm/train-%A_%a.out" in train
    # Static and dynamic masking build different data: two configs, one data job.
    assert scripts["data.sbatch"].count("data_prep.cli build") == 2
    assert "pretrain.cli tables --runs runs --results results" in scripts["tables.sbatch"]
    for text in scripts.values():
        _bash_syntax_ok(text, tmp_path)


def test_deepspeed_launcher_runs_one_launcher_per_node_without_ssh(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train = _dry_run(capsys, str(RECIPE), "--nodes", "2", "--gpus-per-node", "8", "--launcher", "deepspeed")["train.sbatch"]
    assert "-m deepspeed.launcher.runner" in train and "torch.distributed.run" not in train
    assert '--no_ssh --node_rank="$SLURM_NODEID" --num_nodes=2 --num_gpus=8' in train
    _bash_syntax_ok(train, tmp_path)


def test_site_file_lines_appear_in_every_job(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "site.yaml").write_text(
        "job:\n  partition: gpu-long\n  account: proj42\n  gpus_per_node: 4\n  signal_seconds: 120\n"
        "sbatch: ['--mem=0', '--constraint=a100']\n"
        "setup: ['module load cuda/12.4', 'source $HOME/venv/bin/activate']\n"
        "env: {NCCL_SOCKET_IFNAME: ib0, NOTE: 'two words'}\n"
        "srun: ['--container-image=pytorch.sqsh']\n"
        "python: /opt/py/bin/python3\n"
    )
    # slurm/site.yaml is read by default; the command-line flag beats the site's job default.
    scripts = _dry_run(capsys, str(MASKING), "--preset", "smoke", "--partition", "debug", *SMALL, "train.micro_batch_size=2")
    for name, text in scripts.items():
        for line in ["#SBATCH --mem=0", "#SBATCH --constraint=a100", "#SBATCH --account=proj42",
                     "#SBATCH --partition=debug", "module load cuda/12.4", "source $HOME/venv/bin/activate",
                     "export NCCL_SOCKET_IFNAME=ib0", "export NOTE='two words'", "--container-image=pytorch.sqsh",
                     "/opt/py/bin/python3 -m "]:
            assert line in text, (name, line)
        assert "gpu-long" not in text
    train = scripts["train.sbatch"]
    assert "#SBATCH --gpus-per-node=4" in train and "--nproc-per-node=4" in train
    assert "#SBATCH --signal=B:USR1@120" in train and "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=120" in train
    # --site FILE replaces the default file.
    other = tmp_path / "other.yaml"
    other.write_text("setup: ['echo other-site']\n")
    train = _dry_run(capsys, str(RECIPE), "--site", str(other))["train.sbatch"]
    assert "echo other-site" in train and "module load" not in train


def test_example_site_file_is_valid(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train = _dry_run(capsys, str(RECIPE), "--site", str(REPO / "slurm" / "site.example.yaml"), "--nodes", "2")["train.sbatch"]
    assert "#SBATCH --nodes=2" in train and "#SBATCH --gpus-per-node=8" in train
    _bash_syntax_ok(train, tmp_path)


# ------------------------------------------------------------------ checks before submitting


def test_batch_that_does_not_split_over_nodes_x_gpus_is_refused(fake_slurm, capsys):
    # RoBERTa: 8192 sequences per step, micro batch 32; 3 × 8 = 24 ranks do not divide 8192.
    assert main(["submit", str(RECIPE), "--nodes", "3", "--gpus-per-node", "8"]) == 2
    err = _error(capsys)
    assert "3 node(s) x 8 process(es) per node = 24 ranks" in err and "train.global_batch_size=8192" in err
    assert not fake_slurm.exists() and not Path("runs").exists()


def test_cpu_processes_count_in_the_world_size(fake_slurm, capsys):
    # global 8, micro 4: fine on 2 processes, not on 3.
    assert main(["submit", str(MASKING), "--preset", "smoke", "--procs-per-node", "3", *SMALL]) == 2
    err = _error(capsys)
    assert "arm 'static': 1 node(s) x 3 process(es) per node = 3 ranks" in err
    assert not fake_slurm.exists()


def test_bad_arm_submits_nothing(fake_slurm, tmp_path, capsys):
    abl = tmp_path / "abl.yaml"
    abl.write_text(OmegaConf.to_yaml(OmegaConf.create({
        "name": "toy", "title": "Toy", "base": str(RECIPE),
        "arms": {"good": {}, "bad": {"train": {"no_such_key": 1}}},
        "paper": {"source": "none", "columns": [], "rows": {}},
    })))
    assert main(["submit", str(abl), "--preset", "smoke", *SMALL]) == 2
    err = _error(capsys)
    assert "arm 'bad'" in err and "no_such_key" in err
    assert not fake_slurm.exists() and not Path("runs").exists()


def test_ablation_needs_a_preset(fake_slurm, capsys):
    assert main(["submit", str(MASKING)]) == 2
    assert "--preset" in _error(capsys)
    assert not fake_slurm.exists()


def test_no_sbatch_on_path_suggests_dry_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here; python is already running
    assert main(["submit", str(RECIPE)]) == 2
    err = _error(capsys)
    assert "sbatch not found on PATH" in err and "--dry-run" in err
    assert not Path("runs").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--gpus-per-node", "8", "--procs-per-node", "2"], "--procs-per-node is for CPU jobs"),
        (["--time", "5", "--signal-seconds", "300"], "leaves no time before the USR1 warning"),
        (["--time", "soon"], "is not a Slurm time"),
        (["--partition", "gpu; rm -rf /"], "must be a single word"),
        (["--nodes", "0"], "--nodes=0 must be >= 1"),
    ],
)
def test_bad_job_options(fake_slurm, capsys, flags, message):
    assert main(["submit", str(RECIPE), *flags]) == 2
    assert message in _error(capsys)
    assert not fake_slurm.exists()


def test_unknown_site_key_is_an_error(fake_slurm, tmp_path, capsys):
    site = tmp_path / "site.yaml"
    site.write_text("modules: [cuda]\n")
    assert main(["submit", str(RECIPE), "--site", str(site), "--dry-run"]) == 2
    err = _error(capsys)
    assert "unknown key 'modules'" in err and "setup" in err


def test_parse_time():
    assert parse_time("30") == 1800
    assert parse_time("10:30") == 630
    assert parse_time("02:00:00") == 7200
    assert parse_time("1-12") == 36 * 3600
    assert parse_time("2-00:30") == 48 * 3600 + 1800
    assert parse_time("1-00:00:05") == 86405
    assert parse_time("UNLIMITED") is None
    with pytest.raises(UserError):
        parse_time("1h")


# ------------------------------------------------------------------ submitting (fake sbatch)


def test_ablation_submits_data_then_array_then_tables_and_writes_the_run_dirs(fake_slurm, capsys):
    assert main(["submit", str(MASKING), "--preset", "smoke", "--procs-per-node", "2", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "data job 101, training job 102 (array: static, dynamic), tables job 103" in out
    calls = fake_slurm.read_text().splitlines()
    d = "runs/roberta_masking/slurm"
    assert calls == [
        f"--parsable {d}/data.sbatch",
        f"--parsable --dependency=afterok:101 --kill-on-invalid-dep=yes {d}/train.sbatch",
        f"--parsable --dependency=afterany:102 {d}/tables.sbatch",
    ]
    # Slurm validated every script before the first one was queued.
    assert Path(f"{fake_slurm}.test").read_text().splitlines() == [
        f"--test-only {d}/{name}.sbatch" for name in ("data", "train", "tables")]
    for arm, mode in (("static", "static"), ("dynamic", "dynamic")):
        cfg = OmegaConf.load(f"runs/roberta_masking/{arm}/config.yaml")
        assert cfg.run_dir == f"runs/roberta_masking/{arm}" and cfg.data.masking.mode == mode
        assert cfg.train.global_batch_size == 8
    rec = OmegaConf.load("runs/roberta_masking/ablation.yaml")
    assert rec.preset == "smoke" and list(rec.overrides) == SMALL
    jobs = json.loads(Path(d, "jobs.json").read_text())
    assert jobs["jobs"] == {"data": "101", "train": "102", "tables": "103"}
    assert [(r["name"], r["task"]) for r in jobs["runs"]] == [("static", 0), ("dynamic", 1)]
    # Each data config the data job builds loads as a DataConfig.
    from data_prep.config import load_data_config

    files = sorted(Path(d).glob("data-*.yaml"))
    assert {load_data_config(str(f)).masking.mode for f in files} == {"static", "dynamic"}


def test_finished_arms_are_not_resubmitted(fake_slurm, capsys):
    run = Path("runs/roberta_masking/static")
    assert main(["submit", str(MASKING), "--preset", "smoke", *SMALL]) == 0
    (run / "summary.json").write_text(json.dumps({"status": "done"}))
    capsys.readouterr()
    assert main(["submit", str(MASKING), "--preset", "smoke", *SMALL]) == 0
    assert "finished arms not resubmitted: static" in capsys.readouterr().out
    train = Path("runs/roberta_masking/slurm/train.sbatch").read_text()
    assert "RUN_DIRS=(runs/roberta_masking/dynamic)" in train and "--array" not in train
    # A different experiment in the same runs directory is refused before any sbatch call.
    calls = len(fake_slurm.read_text().splitlines())
    assert main(["submit", str(MASKING), "--preset", "smoke", *SMALL, "train.seed=7"]) == 2
    assert "records different arms, preset or overrides" in _error(capsys)
    assert len(fake_slurm.read_text().splitlines()) == calls


def test_job_slurm_would_reject_is_shown_verbatim_and_nothing_submitted(fake_slurm, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_SBATCH_FAIL", "Batch job submission failed: Invalid account or account/partition combination specified")
    monkeypatch.setenv("FAKE_SBATCH_FAIL_ON", "train.sbatch")
    monkeypatch.setenv("FAKE_SBATCH_FAIL_PHASE", "test")
    assert main(["submit", str(RECIPE), "--account", "nope"]) == 2
    err = _error(capsys)
    assert err == ("error: sbatch rejected runs/roberta/slurm/train.sbatch (nothing submitted): sbatch: error: "
                   "Batch job submission failed: Invalid account or account/partition combination specified")
    assert not fake_slurm.exists()  # --test-only of every script before the first submission
    assert not Path("runs/roberta/slurm/jobs.json").exists()


def test_rejection_after_the_test_cancels_the_jobs_already_submitted(fake_slurm, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_SBATCH_FAIL", "Batch job submission failed: Job violates accounting/QOS policy")
    monkeypatch.setenv("FAKE_SBATCH_FAIL_ON", "train.sbatch")
    monkeypatch.setenv("FAKE_SBATCH_FAIL_PHASE", "submit")
    assert main(["submit", str(RECIPE)]) == 2
    err = _error(capsys)
    assert "runs/roberta/slurm/train.sbatch (cancelled jobs 101)" in err and err.endswith("accounting/QOS policy")
    assert Path(str(fake_slurm) + ".scancel").read_text() == "scancel 101\n"
    assert not Path("runs/roberta/slurm/jobs.json").exists()


# ------------------------------------------------------------------ status


def test_status_classifies_job_records():
    rec = lambda state, restarts=0, reason="None": JobRecord("7", state, reason, restarts, None)  # noqa: E731
    assert classify(rec("RUNNING"), "7", False) == ("running", "")
    assert classify(rec("RUNNING", 2), "7", False) == ("running", "restart 2")
    assert classify(rec("PENDING", 0, "Dependency"), "7", False) == ("pending", "Dependency")
    assert classify(rec("PENDING", 1, "BeginTime"), "7", False) == ("requeued", "restart 1, BeginTime")
    assert classify(rec("REQUEUED", 1), "7", False)[0] == "requeued"
    assert classify(rec("TIMEOUT"), "7", False) == ("failed", "job TIMEOUT without summary.json")
    assert classify(rec("COMPLETED"), "7", True) == ("done", "")
    assert classify(None, "7", False)[0] == "failed"
    pending = JobRecord("9", "PENDING", "Resources", 0, "1-3,5%2")
    assert [t for t in range(7) if pending.has_task(t)] == [1, 2, 3, 5]


def test_status_of_a_submitted_ablation(fake_slurm, capsys):
    assert main(["submit", str(MASKING), "--preset", "smoke", *SMALL]) == 0
    Path("runs/roberta_masking/dynamic/metrics.jsonl").write_text('{"kind": "train", "step": 4, "tokens_seen": 512}\n')
    # scontrol's view: data done, task 0 requeued after a preemption, task 1 running, tables waiting.
    records = {
        "101": "JobId=101 JobState=COMPLETED Reason=None Restarts=0",
        "102": "JobId=104 ArrayJobId=102 ArrayTaskId=0 JobState=PENDING Reason=BeginTime Restarts=1\n"
               "JobId=105 ArrayJobId=102 ArrayTaskId=1 JobState=RUNNING Reason=None Restarts=0",
        "103": "JobId=103 JobState=PENDING Reason=Dependency Restarts=0",
    }
    script = "#!/bin/bash\ncase ${@: -1} in\n" + "".join(
        f"{k}) cat <<'EOF'\n{v}\nEOF\n;;\n" for k, v in records.items()) + "*) exit 1;;\nesac\n"
    _tool(Path("bin"), "scontrol", script)
    capsys.readouterr()
    rows = {r.name: r for r in print_status("runs/roberta_masking")}
    assert (rows["data"].state, rows["tables"].state, rows["tables"].detail) == ("completed", "pending", "Dependency")
    assert (rows["static"].state, rows["static"].job, rows["static"].detail) == ("requeued", "102_0", "restart 1, BeginTime")
    assert (rows["dynamic"].state, rows["dynamic"].detail) == ("running", "step 4/6")
    out = capsys.readouterr().out
    assert out.startswith("roberta_masking (runs/roberta_masking): submitted ")
    # A damaged metrics file marks its own run; the other rows still print.
    Path("runs/roberta_masking/dynamic/metrics.jsonl").write_text('{"kind": "train", "step": 4}\n')
    rows = {r.name: r for r in print_status("runs/roberta_masking")}
    assert rows["dynamic"].detail.startswith("metrics.jsonl damaged (runs/roberta_masking/dynamic/metrics.jsonl:1)")
    assert rows["static"].state == "requeued"
    # A resubmission while jobs are still queued is refused.
    assert main(["submit", str(MASKING), "--preset", "smoke", *SMALL]) == 2
    assert "jobs from an earlier submission in the queue" in _error(capsys)


def test_status_after_slurm_forgot_the_jobs_uses_accounting_then_the_run_dirs(fake_slurm, capsys):
    assert main(["submit", str(RECIPE), *SMALL]) == 0
    # The fake scontrol knows no job (MinJobAge passed); accounting knows how it ended.
    _tool(Path("bin"), "sacct", "#!/bin/bash\necho TIMEOUT\n")
    capsys.readouterr()
    rows = {r.name: r for r in print_status("runs/roberta")}
    assert (rows["roberta"].state, rows["roberta"].detail) == ("failed", "job TIMEOUT without summary.json")
    assert rows["data"].state == "timeout"
    # A finished run is done whatever Slurm remembers.
    Path("runs/roberta/summary.json").write_text(json.dumps({"status": "done"}))
    assert {r.name: r.state for r in print_status("runs/roberta")}["roberta"] == "done"


def test_run_dir_with_a_checkpoint_of_another_config_is_refused(fake_slurm, capsys):
    from pretrain.config import load_run_config, to_dict
    from pretrain.training import checkpoint, manifest

    saved = to_dict(load_run_config(RECIPE, None, SMALL))
    saved["model"]["vocab_size"] = 50265  # what the trainer stores for a null vocab_size
    ckpt = Path("runs/roberta/checkpoints/step-0000002")
    ckpt.mkdir(parents=True)
    (ckpt / checkpoint.STATE).write_text(json.dumps({"config": saved, "rng": []}))
    manifest.write(ckpt)
    (ckpt.parent / "latest").write_text("step-0000002")
    # The same experiment resumes (a longer max_steps is allowed, as for `pretrain train --resume`).
    assert main(["submit", str(RECIPE), *SMALL, "train.max_steps=8", "model.vocab_size=null"]) == 0
    assert main(["submit", str(RECIPE), *SMALL, "train.seed=7"]) == 2
    err = _error(capsys)
    assert "runs/roberta has a checkpoint of another config (train.seed: 42 -> 7)" in err


def test_directory_with_a_space_is_refused(tmp_path, capsys, monkeypatch):
    d = tmp_path / "my runs"
    d.mkdir()
    monkeypatch.chdir(d)
    assert main(["submit", str(RECIPE), "--dry-run"]) == 2
    assert "cannot go on an #SBATCH --chdir/--output line: it holds whitespace" in _error(capsys)


# ------------------------------------------------------------------ evaluation stages


def _evaluated(tmp_path: Path, overrides: str = '["lrs=[3e-4]", "train.precision=bf16"]') -> Path:
    """The two-arm masking fixture with an evaluate section (SST-2 and STS-B, the control)."""
    doc = OmegaConf.load(MASKING)
    doc.base = str((MASKING.parent / doc.base).resolve())
    p = tmp_path / "evaluated.yaml"
    p.write_text(OmegaConf.to_yaml(doc) + f"evaluate:\n  tasks: [sst2, stsb]\n  overrides: {overrides}\n  control: true\n")
    return p


def test_evaluation_is_an_array_after_the_training_array_task_by_task(fake_slurm, tmp_path, capsys, data_dir):
    abl = _evaluated(tmp_path)
    scripts = _dry_run(capsys, str(abl), "--preset", "smoke", "--cpus-per-task", "2", *SMALL)
    assert list(scripts) == ["data.sbatch", "train.sbatch", "evaluate.sbatch", "control.sbatch", "tables.sbatch"]
    ev, control = scripts["evaluate.sbatch"], scripts["control.sbatch"]
    assert "#SBATCH --array=0-1" in ev and "RUN_DIRS=(runs/roberta_masking/static runs/roberta_masking/dynamic)" in ev
    assert "for TASK in sst2 stsb; do" in ev
    assert ("-m pretrain.cli finetune \"$RUN_DIR\" --task \"$TASK\" --preset smoke 'lrs=[3e-4]' train.precision=bf16\n"
            in ev)
    assert "--array" not in control and "RUN_DIRS=(runs/roberta_masking/static)" in control
    assert "train.precision=bf16 --random-init\n" in control
    assert "already finished: $RUN_DIR/summary.json" in scripts["train.sbatch"]
    for text in scripts.values():
        _bash_syntax_ok(text, tmp_path)
    assert main(["submit", str(abl), "--preset", "smoke", *SMALL]) == 0
    assert "training job 102 (array: static, dynamic), evaluation job 103, control job 104, tables job 105" in capsys.readouterr().out
    d = "runs/roberta_masking/slurm"
    assert fake_slurm.read_text().splitlines() == [
        f"--parsable {d}/data.sbatch",
        f"--parsable --dependency=afterok:101 --kill-on-invalid-dep=yes {d}/train.sbatch",
        f"--parsable --dependency=aftercorr:102 --kill-on-invalid-dep=yes {d}/evaluate.sbatch",
        f"--parsable --dependency=afterok:102_0 --kill-on-invalid-dep=yes {d}/control.sbatch",
        f"--parsable --dependency=afterany:103:104 {d}/tables.sbatch",
    ]
    jobs = json.loads(Path(d, "jobs.json").read_text())["jobs"]
    assert jobs == {"data": "101", "train": "102", "evaluate": "103", "control": "104", "tables": "105"}
    assert OmegaConf.load("runs/roberta_masking/ablation.yaml").finetune_preset == "smoke"


def test_a_pretrained_run_stays_in_the_arrays_until_its_fine_tuning_is_done(fake_slurm, tmp_path, capsys, data_dir):
    abl = _evaluated(tmp_path)
    assert main(["submit", str(abl), "--preset", "smoke", *SMALL]) == 0
    static = Path("runs/roberta_masking/static")
    (static / "summary.json").write_text(json.dumps({"status": "done"}))
    (static / "checkpoints").mkdir(parents=True, exist_ok=True)  # a finished run keeps its last checkpoint
    (static / "checkpoints" / "latest").write_text("step-0000008")
    capsys.readouterr()
    # pretrained, not fine-tuned: still in both arrays (its training task exits at once), control too
    scripts = _dry_run(capsys, str(abl), "--preset", "smoke", *SMALL)
    assert "RUN_DIRS=(runs/roberta_masking/static runs/roberta_masking/dynamic)" in scripts["evaluate.sbatch"]
    assert "control.sbatch" in scripts
    # its jobs and the control's finished (by hand, as `pretrain finetune` writes them): only dynamic is left
    from pretrain.ablations import stages
    from pretrain.ablations.runner import compose_arms

    a, cfgs = compose_arms(abl, "smoke", SMALL, "runs")
    for st in stages.plan_evaluation(a, "smoke", cfgs):
        if st.key == "static":
            st.job.mkdir(parents=True, exist_ok=True)
            (st.job / "finetune.yaml").write_text(OmegaConf.to_yaml(st.cfg, resolve=True))
            (st.job / "scores.json").write_text("{}")
    scripts = _dry_run(capsys, str(abl), "--preset", "smoke", *SMALL)
    assert "RUN_DIRS=(runs/roberta_masking/dynamic)" in scripts["evaluate.sbatch"] and "control.sbatch" not in scripts
    # a job made with another config is refused before anything is written
    f = static / "finetune" / "sst2" / "finetune.yaml"
    f.write_text(f.read_text().replace("bf16", "fp32"))
    assert main(["submit", str(abl), "--preset", "smoke", *SMALL, "--dry-run"]) == 2
    assert f"{f}: fine-tuning job made with another config" in _error(capsys)


def test_evaluation_values_are_quoted_and_checked_before_submitting(fake_slurm, tmp_path, capsys, data_dir):
    # an override with shell characters is one quoted word; an unknown key never reaches a script
    abl = _evaluated(tmp_path, overrides='["lrs=[3e-4]", "name=$(touch pwned); echo x"]')
    ev = _dry_run(capsys, str(abl), "--preset", "smoke", *SMALL)["evaluate.sbatch"]
    assert "'lrs=[3e-4]' 'name=$(touch pwned); echo x'\n" in ev
    f = tmp_path / "ev.sh"
    f.write_text(ev.replace("srun --ntasks=1 ", "echo "))  # the finetune command line as bash reads it
    proc = subprocess.run(["bash", str(f)], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "n"})
    assert "'name=$(touch pwned); echo x'" not in proc.stdout and "name=$(touch pwned); echo x" in proc.stdout
    assert not (tmp_path / "pwned").exists()
    abl = _evaluated(tmp_path, overrides='["lrz=[3e-4]"]')
    assert main(["submit", str(abl), "--preset", "smoke", *SMALL]) == 2
    assert "evaluate sst2 of static: " in _error(capsys) and not fake_slurm.exists()


def test_probes_run_in_the_evaluation_array_and_blimp_in_the_control(fake_slurm, tmp_path, capsys, data_dir):
    doc = OmegaConf.load(MASKING)
    doc.base = str((MASKING.parent / doc.base).resolve())
    abl = tmp_path / "probed.yaml"
    abl.write_text(OmegaConf.to_yaml(doc) + "evaluate:\n  probes: {blimp: true, blimp_limit: 20, sentence: true}\n")
    scripts = _dry_run(capsys, str(abl), "--preset", "smoke", *SMALL)
    ev, control = scripts["evaluate.sbatch"], scripts["control.sbatch"]
    assert "for TASK" not in ev and "-m pretrain.cli probe blimp \"$RUN_DIR\" --limit 20\n" in ev
    assert "-m pretrain.cli probe sentence \"$RUN_DIR\" --pairs 2000 --runs runs\n" in ev
    assert "probe blimp \"$RUN_DIR\" --limit 20 --random-init\n" in control and "probe sentence" not in control
    for text in scripts.values():
        _bash_syntax_ok(text, tmp_path)
