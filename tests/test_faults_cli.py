"""Faults of the command-line surface (issue 13): hostile names and values for `pretrain
submit` (case 3), one-line errors for unresolvable interpolations and YAML syntax (case 8),
the README quick start leaving the committed results as they are (case 9), and the newcomer
items of case 11 (Slurm tests only when asked for, complete --help texts, what a command
wrote, one error line under a launcher)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from common.configfile import read_yaml
from common.errors import UserError
from pretrain.cli import main
from pretrain.config import load_run_config
from conftest import child_env

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "recipe" / "roberta.yaml"
MASKING = REPO / "tests" / "fixtures" / "two_arm_masking.yaml"  # one seed per arm
# A CPU ablation small enough to pass every submit check.
SMALL = ["train.global_batch_size=8", "train.micro_batch_size=4", "train.max_steps=6", "train.schedule.warmup_steps=2"]

# Each would run `touch <marker>` if it reached a shell unquoted.
HOSTILE = [
    "a\ntouch {m}",
    "a$(touch {m})",
    "a`touch {m}`",
    "a'; touch {m}; '",
    'a"; touch {m}; "',
    "a b; touch {m}",
]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def _tool(bin_dir: Path, name: str, text: str) -> None:
    p = bin_dir / name
    p.write_text(text)
    p.chmod(p.stat().st_mode | stat.S_IXUSR)


# Slurm stand-ins. sbatch prints job ids; srun records its argv (a NUL after each word, a
# newline after each call) and two variables the script exported, then exits with $FAKE_SRUN_RC;
# scontrol resolves the node list and refuses to requeue (the path that echoes the script).
FAKE_SBATCH = '#!/bin/bash\nif [[ $1 == --test-only ]]; then exit 0; fi\necho "$*" >> "$FAKE_LOG"\necho $((100 + $(grep -c . "$FAKE_LOG")))\n'
FAKE_SRUN = """#!/bin/bash
{ printf '%s\\0' "$@"; printf '\\n'; } >> "$FAKE_LOG.srun"
printf '%s\\0' "${SITE_A-}" "${SITE_B-}" > "$FAKE_LOG.env"
exit "${FAKE_SRUN_RC:-0}"
"""
FAKE_SCONTROL = """#!/bin/bash
if [[ $1 == show && $2 == hostnames ]]; then echo node1; exit 0; fi
echo "scontrol: error: $*" >&2
exit 1
"""


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake sbatch/srun/scontrol first on PATH, cwd = tmp_path/work. Returns the sbatch log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _tool(bin_dir, "sbatch", FAKE_SBATCH)
    _tool(bin_dir, "srun", FAKE_SRUN)
    _tool(bin_dir, "scontrol", FAKE_SCONTROL)
    _tool(bin_dir, "scancel", "#!/bin/bash\nexit 0\n")
    work = tmp_path / "work"
    work.mkdir()
    log = tmp_path / "sbatch.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(work)
    return log


def _markers(root: Path) -> list:
    return sorted(str(p) for p in root.rglob("PWNED*"))


# ------------------------------------------------------------------ case 3: pretrain submit


@pytest.mark.parametrize("template", HOSTILE)
def test_hostile_run_name_is_refused_before_anything_is_written(fake_slurm, tmp_path, capsys, template):
    name = template.format(m="PWNED")
    assert main(["submit", str(RECIPE), *SMALL, f"name={name}", "--dry-run"]) == 2
    assert "must be letters, digits, '.', '_', '-' and '/'" in _one_error_line(capsys)
    # The same name from a config file, where YAML keeps a real newline.
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"include: [{RECIPE}]\nname: {json.dumps(name)}\n")
    with pytest.raises(UserError, match="must be letters"):
        load_run_config(cfg)
    assert not fake_slurm.exists() and not Path("runs").exists() and not _markers(tmp_path)


@pytest.mark.parametrize("name", ["../escape", "/abs/run", "a//b", "a/./b", ""])
def test_run_name_must_be_a_relative_path_without_dot_parts(name):
    with pytest.raises(UserError, match="must be letters"):
        load_run_config(RECIPE, "smoke", [f"name='{name}'"])


def test_ablation_style_names_are_accepted():
    cfg = load_run_config(RECIPE, "smoke", ["name=roberta_masking/static-1.2"])
    assert cfg.name == "roberta_masking/static-1.2"


@pytest.mark.parametrize("template", HOSTILE)
def test_hostile_run_dir_is_refused(fake_slurm, tmp_path, capsys, template):
    run_dir = "runs/" + template.format(m="PWNED")
    assert main(["submit", str(RECIPE), *SMALL, f"run_dir={run_dir}", "--dry-run"]) == 2
    assert "cannot go on an #SBATCH --chdir/--output line" in _one_error_line(capsys)
    assert not Path("runs").exists() and not _markers(tmp_path)


@pytest.mark.parametrize("flag", ["--partition", "--account", "--qos", "--time"])
def test_hostile_job_option_is_refused(fake_slurm, tmp_path, capsys, flag):
    assert main(["submit", str(RECIPE), *SMALL, flag, "gpu;touch PWNED", "--dry-run"]) == 2
    assert flag in _one_error_line(capsys)
    assert not _markers(tmp_path)


def test_newline_in_any_rendered_value_is_refused(fake_slurm, tmp_path, capsys):
    # --results is a shell word of the tables job (quoted there), so quotes and $ are
    # allowed in it; a newline is not, in any value.
    assert main(["submit", str(MASKING), "--preset", "smoke", *SMALL, "--results", "res\ntouch PWNED", "--dry-run"]) == 2
    assert "newline or control character" in _one_error_line(capsys)
    site = tmp_path / "site.yaml"
    site.write_text('env: {SITE_A: "x\\ntouch PWNED"}\n')
    assert main(["submit", str(RECIPE), *SMALL, "--site", str(site), "--dry-run"]) == 2
    assert "newline or control character" in _one_error_line(capsys)
    assert not _markers(tmp_path)


def _run_script(script: Path, tmp_path: Path, rc: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node1", "SLURM_ARRAY_TASK_ID": "1",
           "FAKE_SRUN_RC": str(rc)}
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)


def _srun_calls(log: Path) -> list:
    """Each srun call's argv (the fake writes NUL-separated words, one call per line)."""
    f = Path(f"{log}.srun")
    return [call.split("\0") for call in f.read_text().split("\0\n") if call] if f.exists() else []


def test_hostile_values_render_quoted_and_running_the_scripts_injects_nothing(fake_slurm, tmp_path, capsys):
    """Values that may hold shell characters (the tables job's --results, the site's env
    values and python command) reach the jobs as one literal word: the scripts pass
    `bash -n`, and running them with a fake srun/scontrol creates no marker file and hands
    srun exactly the hostile text."""
    results = "res $(touch PWNED1) `touch PWNED2` 'q\" ; touch PWNED3"
    env_a, env_b = "$(touch PWNED4)", "`touch PWNED5`'\"; touch PWNED6"
    python = "py$(touch PWNED7)"
    site = tmp_path / "site.yaml"
    site.write_text(
        "env: " + json.dumps({"SITE_A": env_a, "SITE_B": env_b}) + "\n"
        "python: " + json.dumps(python) + "\n"
        "setup: ['echo site-setup-ran > setup.marker']\n"  # the site's own shell, by design
    )
    argv = ["submit", str(MASKING), "--preset", "smoke", *SMALL, "--procs-per-node", "2", "--site", str(site),
            "--results", results, "data.corpus=corpus $(touch PWNED8)"]
    assert main(argv) == 0, capsys.readouterr().err
    slurm_dir = Path("runs/roberta_masking/slurm")
    scripts = {n: slurm_dir / f"{n}.sbatch" for n in ("data", "train", "tables")}
    for s in scripts.values():
        assert subprocess.run(["bash", "-n", str(s)], capture_output=True).returncode == 0, s.read_text()

    # tables: srun gets --results as one word, verbatim
    r = _run_script(scripts["tables"], tmp_path)
    assert r.returncode == 0, r.stderr
    call = _srun_calls(fake_slurm)[-1]
    assert call[call.index("--results") + 1] == results and python in call
    assert Path(f"{fake_slurm}.env").read_text().split("\0")[:2] == [env_a, env_b]
    # data: every data config path is one word
    r = _run_script(scripts["data"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert sum(1 for c in _srun_calls(fake_slurm) if "data_prep.cli" in c) == 2
    # train: the trainer "exits 75" and the requeue fails, so the script echoes its own path too
    r = _run_script(scripts["train"], tmp_path, rc=75)
    assert r.returncode == 75, r.stdout + r.stderr
    assert "resubmit with: sbatch runs/roberta_masking/slurm/train.sbatch" in r.stdout
    call = _srun_calls(fake_slurm)[-1]
    assert call[call.index("-m") - 1] == python and "runs/roberta_masking/dynamic/config.yaml" in call
    assert Path("setup.marker").read_text() == "site-setup-ran\n"
    assert not _markers(tmp_path)


# ------------------------------------------------------------------ case 8: config errors


@pytest.mark.parametrize("override, key", [
    ("train.seed=${nope}", "train.seed='${nope}' does not resolve: interpolation key 'nope' not found"),
    ("name=${data.nothere}", "name='${data.nothere}' does not resolve"),
    ("train.seed=${name}", "train.seed='${name}' does not resolve"),
])
def test_unresolvable_interpolation_in_an_override_is_one_line(capsys, monkeypatch, tmp_path, override, key):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(RECIPE), "--preset", "smoke", override]) == 2
    assert key in _one_error_line(capsys)


def test_unresolvable_interpolation_in_a_file_names_the_file_and_key(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # were the check to miss, nothing lands in the repository
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"include: [{RECIPE}]\ntrain:\n  optimizer:\n    eps: ${{train.tiny}}\n")
    assert main(["train", str(cfg)]) == 2
    err = _one_error_line(capsys)
    assert str(cfg) in err and "train.optimizer.eps='${train.tiny}' does not resolve" in err


def test_malformed_interpolation_in_an_override_names_the_pair(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(RECIPE), "name=${oops"]) == 2
    assert "override 'name=${oops'" in _one_error_line(capsys)


def test_yaml_syntax_error_names_file_line_and_column(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain:\n  max_steps: 10\n   seed: 3\n")
    with pytest.raises(UserError) as e:
        read_yaml(bad)
    assert str(e.value).startswith(f"{bad}:4:8: YAML syntax error: mapping values are not allowed")
    bad.write_text("name: x\ntrain: {max_steps: [1, 2}\n")
    assert main(["train", str(bad)]) == 2
    assert f"{bad}:2:" in _one_error_line(capsys)
    # the same through an include and through data-prep
    run = tmp_path / "run.yaml"
    run.write_text(f"include:\n  train: {bad.name}\n")
    assert main(["train", str(run)]) == 2
    assert f"{bad}:2:" in _one_error_line(capsys)
    from data_prep.cli import main as data_prep_main

    assert data_prep_main(["build", str(bad)]) == 2
    assert f"{bad}:2:" in _one_error_line(capsys)


def test_override_value_that_is_not_yaml_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(RECIPE), "train.optimizer.betas=[0.9"]) == 2
    assert "override 'train.optimizer.betas=[0.9': its value is not valid YAML" in _one_error_line(capsys)


# ------------------------------------------------------------------ case 9: the quick start


def _readme_quick_start() -> list:
    """The README's quick-start `pretrain ablate ...` command, as argv."""
    import shlex

    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("pip install") and "pretrain ablate" in line:
            return shlex.split(line.split("&&")[-1])
    raise AssertionError("README has no quick-start line `pip install ... && pretrain ablate ...`")


@pytest.mark.slow
def test_readme_quick_start_leaves_the_committed_results_alone(tmp_path):
    """On a fresh copy of the repository, the README's quick start (with a shorter run: fewer
    documents, steps and fine-tuning rows, which change no output path) writes its table
    under results/smoke/, leaves `git status` clean and every other file under results/ as it
    was, ignored ones included: what tests/test_results.py reads (results/runs/, the committed
    tables, the README's summary) is untouched, so it passes there as it does here."""
    clone = tmp_path / "clone"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for rel in filter(None, files.split("\0")):
        src = REPO / rel
        if src.is_file():  # a file deleted in the working tree but not yet committed
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            (clone / rel).write_bytes(src.read_bytes())
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "fresh clone"]):
        subprocess.run(git + cmd, cwd=clone, check=True, capture_output=True)
    # Not the launcher variables an earlier in-process run of this test process set for its
    # world of one (still listening on that port): the quick start makes its own world.
    env = {k: v for k, v in child_env().items() if k not in ("BERT_RECIPES_SLURM", "PYTEST_ADDOPTS")}
    env.update(PYTHONPATH=str(clone), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")

    def results_outside_smoke() -> dict[str, bytes]:
        return {str(f.relative_to(clone)): f.read_bytes() for f in sorted((clone / "results").rglob("*"))
                if f.is_file() and f.relative_to(clone / "results").parts[0] != "smoke"}

    before = results_outside_smoke()
    argv = _readme_quick_start()
    assert argv[:2] == ["pretrain", "ablate"] and "--preset" in argv
    shorter = ["data.max_documents=24", "train.max_steps=4", "train.schedule.warmup_steps=1", "train.eval_every=2",
               "train.log_every=2", "train.checkpoint_every=2",
               'evaluate.overrides=["lrs=[3e-4]","data.max_train_rows=32","data.max_eval_rows=32"]']
    r = subprocess.run([sys.executable, "-m", "pretrain.cli", *argv[1:], *shorter], cwd=clone, env=env,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "on corpus pydoc (the CPython reference documentation" in r.stdout
    assert "table: results/smoke/roberta_masking.md" in r.stdout and "runs: runs/roberta_masking/" in r.stdout
    assert "roberta_masking: all 4 runs" in r.stderr  # the overall bar: 2 arms × 2 seeds
    for ext in ("md", "csv", "png"):
        assert (clone / "results" / "smoke" / f"roberta_masking.{ext}").is_file()
        committed = REPO / "results" / "small" / f"roberta_masking.{ext}"
        assert (clone / "results" / "small" / committed.name).read_bytes() == committed.read_bytes()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True)
    assert status.stdout == "", status.stdout
    after = results_outside_smoke()
    assert sorted(after) == sorted(before)
    assert [k for k in before if after[k] != before[k]] == []


# ------------------------------------------------------------------ case 11: newcomer items


def _subcommands(parser):
    import argparse

    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in action._choices_actions}
    return action.choices, helps


@pytest.mark.parametrize("prog", ["pretrain", "data-prep"])
def test_every_command_and_option_has_help(prog, capsys):
    import argparse

    from data_prep.cli import build_parser as data_prep_parser
    from pretrain.cli import build_parser as pretrain_parser

    parser = pretrain_parser() if prog == "pretrain" else data_prep_parser()
    commands, helps = _subcommands(parser)
    if prog == "pretrain":
        assert {"train", "ablate", "tables", "describe", "export", "submit", "status"} <= set(commands)
    for name, sub in commands.items():
        assert helps.get(name), f"{prog} {name}: no one-line help"
        assert sub.description, f"{prog} {name}: no description"
        assert f"{prog} {name}" in parser.description, f"`{prog} --help` does not show a `{prog} {name}` usage line"
        for a in sub._actions:
            if isinstance(a, argparse._HelpAction) or a.help == argparse.SUPPRESS:
                continue
            assert a.help and len(a.help) > 10, f"{prog} {name} {a.option_strings or a.dest}: no help text"
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in commands:
        assert name in out


def test_train_ends_by_naming_its_outputs(tmp_path, monkeypatch, capsys):
    """The trainer's own work is covered elsewhere; here a stand-in writes what a run writes
    and `pretrain train` must name each file at the end."""
    import pretrain.training.loop as loop

    def fake_train(cfg, resume=False):
        run = Path(cfg.run_dir)
        for f in ("config.yaml", "metrics.jsonl", "summary.json"):
            (run / f).parent.mkdir(parents=True, exist_ok=True)
            (run / f).write_text("{}")
        for step in ("step-0000010", "step-0000020"):
            (run / "checkpoints" / step).mkdir(parents=True)
        return {"status": "done", "data_dir": "data-cache/abc"}

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loop, "train", fake_train)
    assert main(["train", str(RECIPE), "--preset", "smoke", "run_dir=out/r1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "outputs of out/r1/:"
    text = "\n".join(out)
    for piece in ("out/r1/config.yaml", "out/r1/metrics.jsonl", "tensorboard --logdir out/r1/tb", "out/r1/summary.json",
                  "out/r1/checkpoints/ (step-0000010, step-0000020)", "data-cache/abc"):
        assert piece in text, piece


def test_plain_test_run_skips_slurm_tests_and_starts_no_cluster(tmp_path):
    """`python -m pytest` without BERT_RECIPES_SLURM=1 skips the slurm-marked tests with the
    reason and never runs slurm/local-cluster.sh — also as root (checked with a `bash` on
    PATH that records any call)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    called = tmp_path / "bash-called"
    _tool(bin_dir, "bash", f"#!/bin/sh\necho \"$@\" >> {called}\nexit 1\n")
    _tool(bin_dir, "sbatch", "#!/bin/sh\nexit 1\n")
    env = {k: v for k, v in os.environ.items() if k not in ("BERT_RECIPES_SLURM", "PYTEST_ADDOPTS")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                        "tests/test_local_slurm.py", "tests/test_slurm_jobs.py"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:]
    assert "passed" not in r.stdout and " skipped" in r.stdout
    assert "Slurm tests run only when asked for (BERT_RECIPES_SLURM=1 or --slurm" in r.stdout
    assert not called.exists(), called.read_text()


def test_user_error_under_torchrun_is_printed_once(tmp_path):
    """Two ranks under torchrun fail the same config check: one `error:` line (rank 0's),
    both ranks exit 2, and torchrun's own failure report names the message instead of
    "To enable traceback see ...". torchrun itself still prints that report (with a traceback
    of its own code) and exits 1 whenever a worker fails; README says so."""
    env = child_env(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        "-m", "pretrain.cli", "train", str(RECIPE), "--preset", "smoke",
                        "train.global_batch_size=33", f"run_dir={tmp_path / 'run'}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    message = "train.global_batch_size=33 does not split over 2 ranks; use a multiple of 2"
    lines = (r.stdout + r.stderr).splitlines()
    assert [ln for ln in lines if ln.startswith("error: ")] == [f"error: {message}"], r.stderr[-3000:]
    assert r.returncode == 1  # torchrun's own exit code for any failed worker
    root = r.stderr.split("Root Cause (first observed failure):")[1]
    assert "rank      : 0 (local_rank: 0)" in root and "exitcode  : 2 " in root
    assert f"traceback : error: {message}" in root
    # rank 1 exited 2 as well, or was stopped by torchrun once rank 0 had failed
    other = r.stderr.split("Failures:")[1].split("Root Cause")[0]
    assert "rank      : 1 (local_rank: 1)" in other and ("exitcode  : 2 " in other or "SIGTERM" in other)
    assert not (tmp_path / "run").exists()
