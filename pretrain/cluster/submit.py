"""``pretrain submit``: train a run config or an ablation as Slurm batch jobs.

    pretrain submit CONFIG|ABLATION [--preset P] [--nodes N] [--gpus-per-node G]
        [--procs-per-node P] [--cpus-per-task C] [--partition P] [--time T] [--account A]
        [--qos Q] [--site FILE] [--dry-run] [key=value ...]

Everything is resolved and checked before anything is submitted: the run's RunConfig (for an
ablation every arm's — one failing arm submits nothing), the fairness of the arms, the
trainer's config checks, and that the global batch splits over nodes × processes per node.
Then, from the Jinja2 templates in ``slurm/templates/``, up to three jobs:

1. ``data.sbatch``: ``data-prep build`` of each distinct data config (cached by fingerprint);
2. ``train.sbatch`` (``afterok`` on 1): ``pretrain train <run_dir>/config.yaml --resume``
   through ``srun`` — one task per node, each running torchrun or the DeepSpeed launcher with
   the rendezvous on the first node — with ``--requeue --signal=B:USR1@S``; for an ablation a
   job array with one task per unfinished arm;
3. ``evaluate.sbatch`` (ablations with an ``evaluate`` section; ``aftercorr`` on 2: task i
   starts when training task i succeeded): ``pretrain finetune`` of run i on every task — the
   stages of ``pretrain ablate`` (``pretrain.ablations.stages``), an array like 2;
4. ``control.sbatch`` (with ``evaluate.control``; ``afterok`` on the first run's training
   task): the random-init control jobs on the first run;
5. ``tables.sbatch`` (ablations; ``afterany`` on 3 and 4, or on 2 without evaluation):
   ``pretrain tables``.

With evaluation, a run whose pretraining finished but whose fine-tuning did not stays in the
arrays (its training task sees ``summary.json`` and exits at once), so the two arrays line up
task for task.

The scripts, the data configs and ``jobs.json`` (job ids for ``pretrain status``) are written
to ``<run_dir>/slurm/`` for a run and ``<runs>/<name>/slurm/`` for an ablation; each run's
resolved ``config.yaml`` goes to its run directory, and an ablation's ``ablation.yaml`` to
``<runs>/<name>/``. Lines specific to a cluster (modules, container, environment, extra
``#SBATCH`` options) come from a site file (``SiteConfig``), not from edits to the templates.

What reaches a script from the command line or a config cannot run a command: the run name
is ``[A-Za-z0-9._/-]+`` (``pretrain.config.check_run_name``), paths on ``#SBATCH`` lines
(working directory, job directory) hold no whitespace, quotes, shell or sbatch pattern
characters, job options are single words or integers, every value in a shell line is
``shlex.quote``-d, and no rendered value may hold a newline (``_one_line``). The site file's
``setup`` and ``srun`` entries are the exception by design (see ``SiteConfig``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TextIO

from omegaconf import OmegaConf

from common.atomic import write_json_atomic, write_text_atomic
from common.configfile import merge_into, read_yaml
from common.errors import UserError
from data_prep.config import data_fingerprint
from pretrain.cluster.slurm_status import JOBS, SLURM_DIR, queued_jobs
from pretrain.config import RunConfig, check_run_name, load_run_config, run_dir, to_dict, to_yaml
from pretrain.training import rundir

LAUNCHERS = ("torchrun", "deepspeed")
DEFAULT_SITE = Path("slurm") / "site.yaml"
TEMPLATES = Path(__file__).resolve().parents[2] / "slurm" / "templates"
_WORD_RE = re.compile(r"^[^\s'\"\\;&|<>`$]+$")  # a value safe on an #SBATCH line
# A path on an #SBATCH line (--chdir, --output): sbatch reads those lines itself, splitting on
# whitespace, dropping quotes and expanding %j-style patterns, so none of that may occur; the
# same paths also appear in shell lines (quoted there).
_SBATCH_PATH_RE = re.compile(r"^[^\s'\"\\;&|<>`$%*?\[\]{}()!#]+$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class JobOptions:
    """Resources and scheduling of the training job. The site file's ``job:`` section sets
    defaults; the command-line flag of the same name overrides it.

    nodes: nodes per run; ``srun`` starts one task per node.
    gpus_per_node: GPUs per node (``#SBATCH --gpus-per-node``); one training process per GPU,
        NCCL between them. 0 = a CPU job (gloo).
    procs_per_node: training processes per node of a CPU job (null = 1); must stay null when
        gpus_per_node > 0.
    cpus_per_task: CPUs of each node's task (all of that node's processes share them);
        null = the cluster's default. Also the data job's CPUs.
    partition / account / qos: null = the cluster's default.
    time: wall-clock limit in a Slurm time format (``MM``, ``HH:MM:SS``, ``D-HH``,
        ``D-HH:MM:SS``, ...); null = the partition's default.
    launcher: ``torchrun`` or ``deepspeed`` (the DeepSpeed launcher without ssh).
    signal_seconds: USR1 comes this long before the time limit (``--signal=B:USR1@S``): time
        for the trainer to finish its step and write a checkpoint. Slurm may send it up to a
        minute earlier.
    """

    nodes: int = 1
    gpus_per_node: int = 0
    procs_per_node: Optional[int] = None
    cpus_per_task: Optional[int] = None
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time: Optional[str] = None
    launcher: str = "torchrun"
    signal_seconds: int = 300


@dataclass
class SiteConfig:
    """A cluster's lines for every job (``slurm/site.yaml``; see ``slurm/site.example.yaml``).

    job: defaults of the job options (JobOptions).
    sbatch: extra ``#SBATCH`` options, one per item (e.g. ``--mem=0``, ``--constraint=a100``).
    setup: shell lines run first in every job (``module load ...``, activating an environment).
    env: variables exported in every job (e.g. ``NCCL_SOCKET_IFNAME``).
    srun: extra ``srun`` options of the training step, as shell words (e.g. a container:
        ``--container-image=...``).
    python: the Python command on the compute nodes (runs ``-m pretrain.cli``, torchrun, ...).

    Trust: ``setup`` lines and ``srun`` words are written into the scripts as given — they
    are the site's own shell, like a ``.bashrc`` (so ``$HOME`` expands); keep the site file
    as private as your shell startup files. Everything else that reaches a script is checked
    or quoted: ``env`` values and ``python`` with ``shlex.quote``, ``env`` keys as variable
    names, ``sbatch`` entries as single option lines, and no value may hold a newline.
    """

    job: JobOptions = field(default_factory=JobOptions)
    sbatch: List[str] = field(default_factory=list)
    setup: List[str] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)
    srun: List[str] = field(default_factory=list)
    python: str = "python"


@dataclass
class Plan:
    """What one ``pretrain submit`` sends: the runs to train, in array-task order."""

    kind: str  # "run" or "ablation"
    name: str
    slurm_dir: Path
    runs: Dict[str, Any]  # run (or arm) name -> RunConfig
    skipped: List[str] = field(default_factory=list)  # finished arms left out
    record: Any = None  # AblationRecord written as ablation.yaml
    runs_root: str = "runs"
    results_dir: str = "results"
    # evaluation stages (ablations with an ``evaluate`` section): what evaluate.sbatch runs per run
    evaluating: bool = False
    eval_probes: Dict[str, Any] = field(default_factory=dict)
    eval_tasks: List[str] = field(default_factory=list)
    finetune_preset: Optional[str] = None
    eval_overrides: List[str] = field(default_factory=list)
    control_run: Optional[str] = None  # run directory of the control jobs, when any is unfinished


# --------------------------------------------------------------------------- options


def load_site(path: Optional[str | Path]) -> tuple[SiteConfig, str]:
    """The site file ``path`` (must exist), else ``slurm/site.yaml`` if present, else the
    defaults. Returns the config and where it came from. Raises UserError."""
    p = Path(path) if path else (DEFAULT_SITE if DEFAULT_SITE.is_file() else None)
    if p is None:
        return merge_into(SiteConfig, where="site defaults"), "no site file"
    site = merge_into(SiteConfig, read_yaml(p), where=str(p))
    for opt in site.sbatch:
        if "\n" in opt or not opt.startswith("-"):
            raise UserError(f"{p}: sbatch entry {opt!r} must be one option line such as --mem=0")
    for key in site.env:
        if not _ENV_KEY_RE.match(key):
            raise UserError(f"{p}: env key {key!r} is not a shell variable name")
    if any("\n" in line for line in [*site.setup, *site.srun, site.python]):
        raise UserError(f"{p}: setup/srun/python entries must be single lines; use one list item per line")
    return site, str(p)


def resolve_job(site: SiteConfig, flags: Dict[str, Any]) -> JobOptions:
    """Site defaults < command-line ``flags`` (None = not given), checked. Raises UserError."""
    given = {k: v for k, v in flags.items() if v is not None}
    job = merge_into(JobOptions, site.job, given, where="job options")
    for key, low in (("nodes", 1), ("gpus_per_node", 0), ("procs_per_node", 1), ("cpus_per_task", 1), ("signal_seconds", 1)):
        v = getattr(job, key)
        if v is not None and v < low:
            raise UserError(f"--{key.replace('_', '-')}={v} must be >= {low}")
    if job.gpus_per_node and job.procs_per_node is not None:
        raise UserError("--procs-per-node is for CPU jobs; with --gpus-per-node each node runs one process per GPU")
    if job.launcher not in LAUNCHERS:
        raise UserError(f"launcher={job.launcher!r} is not one of: {', '.join(LAUNCHERS)}")
    for key in ("partition", "account", "qos", "time"):
        v = getattr(job, key)
        if v is not None and not _WORD_RE.match(v):
            raise UserError(f"--{key}={v!r} must be a single word")
    limit = parse_time(job.time) if job.time else None
    if limit is not None and job.signal_seconds >= limit:
        raise UserError(
            f"--time={job.time} ({limit} s) leaves no time before the USR1 warning "
            f"{job.signal_seconds} s ahead of the limit; raise --time or lower signal_seconds"
        )
    return job


def procs_per_node(job: JobOptions) -> int:
    """Training processes per node: one per GPU, else ``procs_per_node`` (default 1)."""
    return job.gpus_per_node or job.procs_per_node or 1


def parse_time(value: str) -> Optional[int]:
    """Seconds of a Slurm time limit (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``,
    ``D-H:M:S``); None for ``UNLIMITED``/``INFINITE``. Raises UserError for other text."""
    v = value.strip()
    if v.upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", v)
    if not m:
        raise UserError(f"--time={value!r} is not a Slurm time (minutes, HH:MM:SS or D-HH:MM:SS)")
    days, a, b, c = m.groups()
    nums = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-H, D-H:M, D-H:M:S
        h, mi, s = (nums + [0, 0])[:3]
        return ((int(days) * 24 + h) * 60 + mi) * 60 + s
    if len(nums) == 1:  # minutes
        return nums[0] * 60
    if len(nums) == 2:  # minutes:seconds
        return nums[0] * 60 + nums[1]
    return (nums[0] * 60 + nums[1]) * 60 + nums[2]


# --------------------------------------------------------------------------- plans


def is_ablation(path: str | Path) -> bool:
    """An ablation file has ``arms``; a run config has not."""
    return "arms" in read_yaml(path)


def plan_run(config: str | Path, preset: Optional[str], overrides: Sequence[str]) -> Plan:
    """One run: its RunConfig, unless the run already finished. Raises UserError."""
    from pretrain.ablations.runner import arm_state

    cfg = load_run_config(config, preset, overrides)
    run = run_dir(cfg)
    if arm_state(run) == "done":
        raise UserError(f"{run} has finished (summary.json); set name= or run_dir= to train another run")
    check_resumable(run, cfg)
    return Plan("run", cfg.name, run / SLURM_DIR, {cfg.name: cfg})


def plan_ablation(
    path: str | Path, preset: Optional[str], overrides: Sequence[str], runs_root: str, results_dir: str
) -> Plan:
    """Every arm of an ablation, composed and checked as ``pretrain ablate`` does, with its
    evaluation stages (``pretrain.ablations.stages.plan_evaluation``); runs with nothing left to
    do (pretrained and, with evaluation, fine-tuned on every task) are left out. Raises
    UserError naming the arm or stage that fails — before any job exists."""
    from pretrain.ablations import stages
    from pretrain.ablations.runner import arm_state, plan_arms
    from pretrain.ablations.spec import evaluating

    if not preset:
        raise UserError(f"{path} is an ablation: pass --preset NAME (as for `pretrain ablate`)")
    abl, cfgs, rec, abl_dir = plan_arms(path, preset, overrides, runs_root, results_dir)
    evals = [st for st in stages.plan_evaluation(abl, preset, cfgs, runs_root) if stages.stage_state(st) != "done"]
    busy = {st.key for st in evals}
    todo = {arm: c for arm, c in cfgs.items() if arm_state(Path(c.run_dir)) != "done" or arm in busy}
    if not todo:
        raise UserError(f"every arm of {abl.name} has finished; `pretrain tables --runs {runs_root}` rebuilds its table")
    for cfg in todo.values():
        check_resumable(Path(cfg.run_dir), cfg)
    skipped = [a for a in cfgs if a not in todo]
    plan = Plan("ablation", abl.name, abl_dir / SLURM_DIR, todo, skipped, rec, str(runs_root), str(results_dir))
    if evaluating(abl.evaluate):
        rec.finetune_preset = stages.finetune_preset(abl.evaluate.preset, preset)
        plan.evaluating, plan.eval_probes = True, to_dict(abl.evaluate.probes)
        plan.eval_tasks, plan.finetune_preset = list(abl.evaluate.tasks), rec.finetune_preset
        plan.eval_overrides = list(abl.evaluate.overrides)
        control = [st for st in evals if st.random_init]
        plan.control_run = str(control[0].run_dir) if control else None
    return plan


def check_resumable(run: Path, cfg: RunConfig) -> None:
    """A run directory with a checkpoint must hold the same experiment: the job resumes it,
    and the trainer would refuse a different config only once the job runs."""
    from pretrain.training import checkpoint

    # Any complete checkpoint holds the run's config (read from JSON, nothing unpickled);
    # which one the job resumes from (``checkpoint.resume_point``) does not matter here.
    complete = checkpoint.list_checkpoints(run)
    if not complete:
        return
    saved = checkpoint.read_client_state(complete[-1])["config"]
    new = to_dict(cfg)
    # The trainer fills a null vocab_size from the tokenizer, which the data config fixes.
    if new["model"]["vocab_size"] is None:
        new["model"]["vocab_size"] = saved.get("model", {}).get("vocab_size")
    diff = checkpoint.config_differences(saved, new)
    if diff:
        raise UserError(
            f"{run} has a checkpoint of another config ({'; '.join(diff[:3])}); "
            f"set name= or run_dir= to a new directory, or remove {run}"
        )


def check_world(plan: Plan, job: JobOptions) -> None:
    """The trainer's config checks (``pretrain.training.checks.check_run``) for the job's
    world size (nodes × processes per node), so a batch that does not split fails here,
    not after queueing. Machine checks (a GPU for fp16) are left to the job's nodes.
    Raises UserError."""
    from pretrain.training.checks import check_run

    nproc = procs_per_node(job)
    world = job.nodes * nproc
    for name, cfg in plan.runs.items():
        label = f"arm {name!r}: " if plan.kind == "ablation" else ""
        try:
            check_run(cfg, world)
        except UserError as e:
            raise UserError(f"{label}{job.nodes} node(s) x {nproc} process(es) per node = {world} ranks: {e}") from None


# --------------------------------------------------------------------------- rendering


def _template_env():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        # Bash uses "{#" (${#array[@]}); move Jinja's comment syntax out of its way.
        comment_start_string="<#",
        comment_end_string="#>",
        finalize=_one_line,
    )
    env.filters["shquote"] = shlex.quote
    return env


def _one_line(value: Any) -> Any:
    """Every value written into a job script stays on its line: a newline (or other control
    character) would start a new shell command or end a comment, whatever the quoting.
    Raises UserError naming the value."""
    if isinstance(value, str) and re.search(r"[\x00-\x1f\x7f]", value):
        raise UserError(f"{value!r} cannot be written into a job script: it holds a newline or control character")
    return value


def check_sbatch_path(path: str, what: str) -> None:
    """Raise UserError unless ``path`` can go on an ``#SBATCH`` line as is (see
    ``_SBATCH_PATH_RE``): no whitespace, quotes, shell or sbatch pattern characters."""
    if not _SBATCH_PATH_RE.match(path):
        raise UserError(
            f"{what} {path!r} cannot go on an #SBATCH --chdir/--output line: it holds whitespace, a quote or "
            "one of $ ` \\ ; & | < > % * ? [ ] { } ( ) ! #; use a directory (run_dir=, --runs) without them"
        )


def data_files(plan: Plan) -> Dict[str, Any]:
    """``slurm_dir/data-<fingerprint>.yaml`` → DataConfig, one per distinct data config."""
    out: Dict[str, Any] = {}
    for cfg in plan.runs.values():
        out.setdefault(str(plan.slurm_dir / f"data-{data_fingerprint(cfg.data)}.yaml"), cfg.data)
    return out


def render(plan: Plan, job: JobOptions, site: SiteConfig, site_source: str) -> Dict[str, str]:
    """Script path → text of the data, train and (ablations) tables jobs."""
    if not TEMPLATES.is_dir():
        raise UserError(f"sbatch templates not found in {TEMPLATES}; `pretrain submit` needs the source checkout")
    env = _template_env()
    d = plan.slurm_dir
    for what, path in (("the working directory", os.getcwd()), ("the job directory", str(d))):
        check_sbatch_path(path, what)
    check_run_name(plan.name, "job name")
    common = {
        "name": plan.name,
        "chdir": os.getcwd(),
        "job": OmegaConf.to_container(OmegaConf.structured(job)),
        "site": OmegaConf.to_container(OmegaConf.structured(site)),
        "site_source": site_source,
        "python": site.python,
    }
    array = len(plan.runs) > 1
    scripts = {
        str(d / "data.sbatch"): env.get_template("data.sbatch.j2").render(
            common, job_name=f"{plan.name}-data", output=str(d / "data-%j.out"), data_files=list(data_files(plan))
        ),
        str(d / "train.sbatch"): env.get_template("train.sbatch.j2").render(
            common,
            job_name=plan.name,
            output=str(d / ("train-%A_%a.out" if array else "train-%j.out")),
            run_dirs=[str(run_dir(c)) for c in plan.runs.values()],
            nproc=procs_per_node(job),
            script=str(d / "train.sbatch"),
        ),
    }
    if plan.evaluating:
        # Every run in the arrays has a training and an evaluation task (see the module docstring).
        evaluate = {"preset": plan.finetune_preset, "overrides": plan.eval_overrides, "tasks": plan.eval_tasks,
                    "probes": plan.eval_probes, "runs_root": plan.runs_root}
        scripts[str(d / "evaluate.sbatch")] = env.get_template("evaluate.sbatch.j2").render(
            common, **evaluate, job_name=f"{plan.name}-evaluate", random_init=False,
            output=str(d / ("evaluate-%A_%a.out" if array else "evaluate-%j.out")),
            run_dirs=[str(run_dir(c)) for c in plan.runs.values()], script=str(d / "evaluate.sbatch"),
        )
    if plan.control_run:
        scripts[str(d / "control.sbatch")] = env.get_template("evaluate.sbatch.j2").render(
            common, **evaluate, job_name=f"{plan.name}-control", random_init=True, output=str(d / "control-%j.out"),
            run_dirs=[plan.control_run], script=str(d / "control.sbatch"),
        )
    if plan.kind == "ablation":
        scripts[str(d / "tables.sbatch")] = env.get_template("tables.sbatch.j2").render(
            common,
            job_name=f"{plan.name}-tables",
            output=str(d / "tables-%j.out"),
            runs_root=plan.runs_root,
            results_dir=plan.results_dir,
        )
    return scripts


def sbatch_commands(scripts: Sequence[str], array: bool = False) -> List[List[str]]:
    """The sbatch command of each script (``data``, ``train``, then ``evaluate``, ``control``,
    ``tables`` when present), in submission order; ``{data}``, ``{train}``, ... stand for the
    ids of the jobs submitted before. ``array``: the training job is an array (the evaluation
    array then follows it task by task, ``aftercorr``; the control waits for task 0, the
    first run, which is always in the arrays while its control is unfinished)."""
    by = {Path(s).stem: s for s in scripts}
    # A failed data job must not leave the training pending forever; likewise for the rest.
    kill = "--kill-on-invalid-dep=yes"
    cmds = [
        ["sbatch", "--parsable", by["data"]],
        ["sbatch", "--parsable", "--dependency=afterok:{data}", kill, by["train"]],
    ]
    if "evaluate" in by:
        cmds.append(["sbatch", "--parsable", f"--dependency={'aftercorr' if array else 'afterok'}:{{train}}", kill, by["evaluate"]])
    if "control" in by:
        cmds.append(["sbatch", "--parsable", "--dependency=afterok:{train}" + ("_0" if array else ""), kill, by["control"]])
    if "tables" in by:
        after = ":".join(f"{{{n}}}" for n in ("evaluate", "control") if n in by) or "{train}"
        cmds.append(["sbatch", "--parsable", f"--dependency=afterany:{after}", by["tables"]])
    return cmds


# --------------------------------------------------------------------------- submitting


def submit(
    target: str | Path,
    preset: Optional[str] = None,
    overrides: Sequence[str] = (),
    flags: Optional[Dict[str, Any]] = None,
    site_file: Optional[str | Path] = None,
    runs_root: str = "runs",
    results_dir: str = "results",
    dry_run: bool = False,
    out: Optional[TextIO] = None,
) -> Dict[str, str]:
    """Check, render and submit (or, with ``dry_run``, print) the jobs of a run config or an
    ablation. Returns ``{"data": id, "train": id[, "tables": id]}`` ({} for a dry run).

    Raises UserError before anything is written or submitted for a bad config, arm, site
    file or job option, a global batch that does not split over the job's ranks, no sbatch
    on PATH, jobs of an earlier submission still in the queue, or a job ``sbatch
    --test-only`` rejects (sbatch's message is the error). The inputs the jobs read are
    written just before that test.
    """
    out = out or sys.stdout
    site, site_source = load_site(site_file)
    job = resolve_job(site, flags or {})
    if is_ablation(target):
        plan = plan_ablation(target, preset, overrides, runs_root, results_dir)
    else:
        plan = plan_run(target, preset, overrides)
    check_world(plan, job)
    scripts = render(plan, job, site, site_source)
    cmds = sbatch_commands(list(scripts), len(plan.runs) > 1)
    if dry_run:
        for path, text in scripts.items():
            print(f"# ==> {path} <==", file=out)
            out.write(text)
            print(file=out)
        print("# Submitted in this order (without --dry-run):", file=out)
        for c in cmds:
            line = " ".join(c)
            for name in ("data", "train", "evaluate", "control"):
                line = line.replace(f"{{{name}}}", f"${{{name.upper()}_JOB}}" if f"{{{name}}}_" in line else f"${name.upper()}_JOB")
            print("#   " + line, file=out)
        return {}

    if shutil.which("sbatch") is None:
        raise UserError("sbatch not found on PATH: not a Slurm submit host; use --dry-run to print the job scripts")
    busy = queued_jobs(plan.slurm_dir / JOBS)
    if busy:
        raise UserError(
            f"{plan.name} has jobs from an earlier submission in the queue ({', '.join(busy)}); "
            f"wait for them or `scancel {' '.join(sorted({b.split('_')[0] for b in busy}))}` first"
        )
    _write_inputs(plan, scripts)
    for script in scripts:
        _sbatch_test(script)
    ids = _sbatch_chain(cmds)
    jobs = dict(zip([Path(c[-1]).stem for c in cmds], ids))
    write_json_atomic(plan.slurm_dir / JOBS, {
        "kind": plan.kind,
        "name": plan.name,
        "submitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "jobs": jobs,
        "array": len(plan.runs) > 1,
        "runs": [{"name": n, "run_dir": str(run_dir(c)), "task": i} for i, (n, c) in enumerate(plan.runs.items())],
        "skipped": plan.skipped,
    })
    arms = ", ".join(plan.runs)
    print(f"submitted {plan.name}: data job {jobs['data']}, training job {jobs['train']}"
          + (f" (array: {arms})" if len(plan.runs) > 1 else "")
          + (f", evaluation job {jobs['evaluate']}" if "evaluate" in jobs else "")
          + (f", control job {jobs['control']}" if "control" in jobs else "")
          + (f", tables job {jobs['tables']}" if "tables" in jobs else ""), file=out)
    if plan.skipped:
        print(f"finished arms not resubmitted: {', '.join(plan.skipped)}", file=out)
    where = plan.slurm_dir.parent
    print(f"scripts and logs: {plan.slurm_dir}/   progress: pretrain status {where}", file=out)
    return jobs


def _write_inputs(plan: Plan, scripts: Dict[str, str]) -> None:
    """Everything the jobs read: run configs, data configs, scripts, ablation.yaml."""
    plan.slurm_dir.mkdir(parents=True, exist_ok=True)
    for cfg in plan.runs.values():
        run = run_dir(cfg)
        run.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run / rundir.CONFIG, to_yaml(cfg))
    for path, data_cfg in data_files(plan).items():
        write_text_atomic(Path(path), to_yaml(data_cfg))
    for path, text in scripts.items():
        write_text_atomic(Path(path), text)
    if plan.record is not None:
        write_text_atomic(plan.slurm_dir.parent / rundir.ABLATION, OmegaConf.to_yaml(plan.record))


def _sbatch_test(script: str) -> None:
    """``sbatch --test-only``: Slurm validates partition, account, QOS, GPUs and limits
    without queueing, so a job it would reject stops the submission before any job exists."""
    proc = subprocess.run(["sbatch", "--test-only", script], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"sbatch rejected {script} (nothing submitted): {_sbatch_message(proc)}")


def _sbatch_message(proc: subprocess.CompletedProcess) -> str:
    """sbatch's own words, its lines joined into one (e.g. the reason, then "Batch job
    submission failed: ...")."""
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    return "; ".join(lines) if lines else f"exit code {proc.returncode}"


def _sbatch_chain(cmds: List[List[str]]) -> List[str]:
    """Submit in order, filling in the ids of earlier jobs. A rejection here (after
    ``--test-only`` passed: the queue changed, a limit was reached) cancels what was
    submitted and raises UserError with sbatch's own message."""
    ids: List[str] = []
    for cmd in cmds:
        known = dict(zip([Path(c[-1]).stem for c in cmds], ids))
        argv = [a.format(**known) if a.startswith("--dependency=") else a for a in cmd]
        proc = subprocess.run(argv, capture_output=True, text=True)
        job_id = proc.stdout.strip().split(";")[0]
        if proc.returncode != 0 or not job_id.isdigit():
            if ids:
                subprocess.run(["scancel", *ids], capture_output=True, text=True)
            undone = f" (cancelled jobs {', '.join(ids)})" if ids else ""
            raise UserError(f"sbatch rejected {argv[-1]}{undone}: {_sbatch_message(proc)}")
        ids.append(job_id)
    return ids
