"""Run every arm of an ablation under one preset and write its result table.

An ablation file (``configs/ablation/*.yaml``) names a base run config and, per arm, the
override mapping that makes the arm differ from the base — e.g. RoBERTa's static vs.
dynamic masking (Liu et al. 2019, §4.1, Table 1) differ only in ``data.masking.mode``.
It also carries the paper's numbers for the same comparison so the table can show them
beside ours (labelled as the paper's).

With ``seeds:`` every arm runs once per pretraining seed (``<arm>/seed-<S>``); with
``scale:`` an arm trains a multiple of the batch for the same fraction of the steps
(RoBERTa §4.3, Table 3).

``run_ablation`` composes every arm's RunConfig before anything runs (a bad arm is a
one-line UserError and nothing is trained), checks that the arms are a fair comparison
(same token budget, same seeds, identical validation data), prepares each distinct data
config once, trains the arms one after another (skipping finished ones, resuming
interrupted ones), fine-tunes each run on the tasks of the ablation's ``evaluate`` section
(``pretrain.ablations.stages``; plus one random-init control) and writes the table after
each stage so partial results are visible.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import OmegaConf

from common.atomic import write_text_atomic
from common.configfile import parse_overrides
from common.errors import UserError, launcher_rank
from data_prep.config import data_fingerprint, resolve_output_dir
from pretrain.ablations.budget import check_real_tokens, equalize_real_tokens
from pretrain.ablations.spec import (  # noqa: F401 (AblationRecord, arm_command: part of the runner's API)
    _RESERVED,
    AblationConfig,
    AblationRecord,
    ablate_command,
    apply_evaluate_overrides,
    arm_command,
    base_path,
    load_ablation,
    load_record,
    seed_runs,
    split_evaluate_overrides,
)
from pretrain.ablations import stages
from pretrain.ablations.tables import write_ablation_table
from pretrain.config import RunConfig, load_run_config, resolve_preset, to_dict
from pretrain.training import rundir


def compose_arms(
    path: str | Path, preset: str, overrides: Sequence[str], runs_root: str | Path,
    evaluate_overrides: Sequence[str] = (),
) -> Tuple[AblationConfig, Dict[str, RunConfig]]:
    """Load the ablation (its evaluate section with ``evaluate_overrides`` merged in:
    ``spec.apply_evaluate_overrides``) and compose every run's RunConfig: base < preset < arm
    < ``overrides`` (< ``train.seed=S`` per seed of ``seeds``, < the arm's ``scale``).

    Keys of the returned mapping are the runs' paths under ``runs_root/<ablation>``: the arm
    name, or ``<arm>/seed-<S>`` when the ablation lists ``seeds``; each run is named
    ``<ablation>/<key>``. Raises UserError naming the arm whose config fails to load, an
    override of ``name``/``run_dir`` (the runner chooses those), or a scaled arm whose
    ``train.max_steps`` is not divisible by its batch multiple.
    """
    abl = apply_evaluate_overrides(load_ablation(path), evaluate_overrides, str(path))
    base = base_path(path, abl.base)
    if not base.is_file():
        raise UserError(f"{path}: base run config {abl.base!r} not found (looked for {base})")
    # A bad preset or malformed key=value is the command's fault, not an arm's: check first.
    resolve_preset(preset, base)
    parse_overrides(overrides)
    for o in overrides:
        if o.split("=", 1)[0].strip() in _RESERVED:
            raise UserError(f"override {o!r}: the ablation runner chooses each arm's name and run_dir; use --runs DIR")
    cfgs: Dict[str, RunConfig] = {}
    for arm, seed, key in seed_runs(abl):
        layer = abl.arms[arm]
        where = {"name": f"{abl.name}/{key}", "run_dir": str(Path(runs_root) / abl.name / key)}
        extra = list(overrides) + ([f"train.seed={seed}"] if seed is not None else [])
        try:
            cfg = load_run_config(base, preset, extra, layers=[layer or {}, where])
            if arm in abl.scale:
                cfg = load_run_config(base, preset, extra + scale_overrides(cfg, abl.scale[arm]), layers=[layer or {}, where])
        except UserError as e:
            raise UserError(f"ablation {abl.name}, arm {arm!r}: {e}") from None
        cfgs[key] = cfg
    if abl.budget == "train_flops":
        equalize_train_flops(cfgs)
    return abl, cfgs


def scale_overrides(cfg: RunConfig, scale: Any) -> List[str]:
    """``key=value`` overrides that make ``cfg`` train ``scale.batch`` × its global batch for
    1/``scale.batch`` of its steps at ``scale.lr`` × its learning rate (RoBERTa §4.3, Table 3:
    equal epochs, warmup and the logging intervals divided alike). Raises UserError when
    ``train.max_steps`` is not divisible by ``scale.batch``."""
    k = int(scale.batch)
    t = cfg.train
    if t.max_steps % k:
        raise UserError(
            f"train.max_steps={t.max_steps} is not divisible by the batch multiple {k}; the arms would see "
            f"different token budgets: pass train.max_steps=<a multiple of {k}>"
        )
    out = [
        f"train.global_batch_size={t.global_batch_size * k}",
        f"train.max_steps={t.max_steps // k}",
        f"train.optimizer.lr={t.optimizer.lr * float(scale.lr)!r}",
        f"train.schedule.warmup_steps={max(1, round(t.schedule.warmup_steps / k))}",
    ]
    if t.schedule.decay_steps is not None:
        out.append(f"train.schedule.decay_steps={max(1, round(t.schedule.decay_steps / k))}")
    for key in ("eval_every", "log_every", "checkpoint_every"):
        out.append(f"train.{key}={max(1, getattr(t, key) // k)}")
    return out


def train_flops(cfg: RunConfig) -> float:
    """Training FLOPs of a run: ``train.max_steps × train.global_batch_size ×`` the FLOPs
    of one full-length sequence (``pretrain.tasks.train_flops_per_sequence``)."""
    from pretrain.tasks import train_flops_per_sequence

    return cfg.train.max_steps * cfg.train.global_batch_size * train_flops_per_sequence(cfg)


def equalize_train_flops(cfgs: Dict[str, RunConfig]) -> None:
    """Set ``train.max_steps`` of every arm after the first so that its training FLOPs
    (``train_flops``) are the first arm's, rounded to the nearest step (at least 1): the
    ``train_flops`` budget of an ablation (ELECTRA's generator costs compute; an MLM arm
    at equal compute trains longer, Clark et al. 2020 Table 1). Modifies ``cfgs``."""
    from pretrain.tasks import train_flops_per_sequence

    arms = list(cfgs)
    target = train_flops(cfgs[arms[0]])
    for arm in arms[1:]:
        c = cfgs[arm]
        c.train.max_steps = max(1, round(target / (c.train.global_batch_size * train_flops_per_sequence(c))))


def check_fair(cfgs: Dict[str, RunConfig], budget: str = "tokens") -> None:
    """The arms of an ablation must differ only in the recipe choice under study.

    Checks the budget — ``tokens``: train.max_steps × train.global_batch_size ×
    data.max_seq_length (RoBERTa §4.3, Table 3 compares batch sizes at equal steps × batch:
    256×1M, 2K×125K, 8K×31K); ``train_flops``: training FLOPs (``train_flops``) equal to the
    first arm's within half of one of the arm's steps — and the seeds: ``data.seed`` equal for
    all runs, ``train.seed`` equal across arms for each pretraining seed (runs
    ``<arm>/seed-S``). Raises UserError listing every run's value when they differ.
    """
    if budget == "real_tokens":
        check_real_tokens(cfgs)
    if budget == "train_flops":
        flops = {a: train_flops(c) for a, c in cfgs.items()}
        target = next(iter(flops.values()))
        for a, c in cfgs.items():
            if abs(flops[a] - target) > 0.5 * flops[a] / c.train.max_steps:
                detail = ", ".join(f"{x}={f:.4g} ({cfgs[x].train.max_steps} steps)" for x, f in flops.items())
                raise UserError(f"arms see different training FLOPs: {detail}; make them equal")
    budgets = {
        a: (c.train.max_steps, c.train.global_batch_size, c.data.max_seq_length) for a, c in cfgs.items()
    }
    if budget == "tokens" and len({s * b * n for s, b, n in budgets.values()}) > 1:
        detail = ", ".join(f"{a}={s}×{b}×{n}={s * b * n:,}" for a, (s, b, n) in budgets.items())
        raise UserError(
            "arms see different token budgets (train.max_steps × train.global_batch_size × "
            f"data.max_seq_length): {detail}; make them equal"
        )
    groups: Dict[str, Dict[str, RunConfig]] = {}
    for key, c in cfgs.items():
        groups.setdefault(key.split("/seed-")[1] if "/seed-" in key else "", {})[key] = c
    checks = [("data.seed", cfgs)] + [("train.seed", g) for g in groups.values()]
    for key, group in checks:
        vals = {a: OmegaConf.select(c, key) for a, c in group.items()}
        if len(set(vals.values())) > 1:
            detail = ", ".join(f"{a}={v}" for a, v in vals.items())
            raise UserError(f"arms use different {key}: {detail}; an ablation compares arms at the same seed")


def precheck_arms(cfgs: Dict[str, RunConfig]) -> None:
    """Run the trainer's config checks (``pretrain.training.checks.check_run``, everything
    it checks before touching data) on every arm now, so an arm that would fail — e.g.
    warmup longer than max_steps — stops the ablation before any data is built or any arm
    is trained. Raises UserError naming the arm. World size from ``WORLD_SIZE`` (1 on one
    machine)."""
    from pretrain.training.checks import check_run

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    for arm, cfg in cfgs.items():
        try:
            check_run(cfg, world_size)
        except UserError as e:
            raise UserError(f"arm {arm!r}: {e}") from None


def prepare_data(cfgs: Dict[str, RunConfig]) -> Dict[str, Path]:
    """Build (or find, cached by fingerprint) each distinct data config once and check
    that all arms are scored on byte-identical validation data — the validation split is
    masked once with ``data.masking.validation_seed`` and shared by every arm.

    Returns arm → shard directory. Raises UserError when two different data configs would
    share one ``data.output_dir`` or when the validation sha256 differ between arms.
    """
    from data_prep.build import build
    from data_prep.shards import read_manifest

    groups: Dict[str, List[str]] = {}
    for arm, cfg in cfgs.items():
        groups.setdefault(data_fingerprint(cfg.data), []).append(arm)
    outs: Dict[str, str] = {}
    for fp, arms in groups.items():
        out = str(resolve_output_dir(cfgs[arms[0]].data))
        if out in outs.values():
            other = next(f for f, o in outs.items() if o == out)
            raise UserError(
                f"arms {', '.join(groups[other])} and {', '.join(arms)} need different data but share "
                f"data.output_dir={out}; leave data.output_dir unset so each data config gets its own directory"
            )
        outs[fp] = out
    dirs: Dict[str, Path] = {}
    val_sha: Dict[str, str] = {}
    for i, (fp, arms) in enumerate(groups.items(), 1):
        print(f"[data {i}/{len(groups)}] arms {', '.join(arms)}: data fingerprint {fp}", flush=True)
        d = Path(build(cfgs[arms[0]].data))
        sha = read_manifest(d)["splits"]["validation"]["sha256"]
        for arm in arms:
            dirs[arm], val_sha[arm] = d, sha
    # Arms that differ in input format or sentence objective (NSP vs SOP, ALBERT Table 5)
    # cannot share validation rows; every other pair of arms must.
    task: Dict[str, tuple] = {a: (c.data.format, c.data.sentence_objective) for a, c in cfgs.items()}
    for key in set(task.values()):
        same = {a: s for a, s in val_sha.items() if task[a] == key}
        if len(set(same.values())) > 1:
            detail = ", ".join(f"{a}={s[:12]}" for a, s in same.items())
            raise UserError(
                f"the arms' validation data differ (sha256 {detail}); the arms must share corpus, tokenizer, "
                "max_seq_length, validation_fraction and masking.validation_seed to be scored on the same positions"
            )
    return dirs


def arm_state(run: Path) -> str:
    """``done`` (summary.json says so), ``partial`` (``checkpoints/latest`` or a
    ``checkpoints/step-*`` directory: something the trainer may resume from) or ``new``."""
    if rundir.finished_summary(run):
        return "done"
    if rundir.has_checkpoint(run):
        return "partial"
    return "new"


def plan_arms(
    path: str | Path,
    preset: str,
    overrides: Sequence[str],
    runs_root: str | Path,
    results_dir: str | Path,
) -> Tuple[AblationConfig, Dict[str, RunConfig], AblationRecord, Path]:
    """Compose every arm, check the comparison is fair, and make the record of this command.

    Shared by ``pretrain ablate`` and ``pretrain submit``. Returns (ablation, arm → RunConfig,
    record, ``runs_root/<name>``). Raises UserError for an arm that does not load, unequal
    budgets or seeds, or a runs directory that recorded another experiment (finished arms are
    skipped on a rerun, so a rerun must be the same experiment).
    """
    overrides, evaluate_overrides = split_evaluate_overrides(overrides)
    abl, cfgs = compose_arms(path, preset, overrides, runs_root, evaluate_overrides)
    if abl.budget == "real_tokens":  # RoBERTa §4.2: needs the arms' data built (pretrain.ablations.budget)
        equalize_real_tokens(cfgs)
    check_fair(cfgs, abl.budget)
    rec = OmegaConf.structured(AblationRecord)
    rec.ablation = abl
    rec.source, rec.preset, rec.overrides = str(path), preset, list(overrides)
    rec.evaluate_overrides = list(evaluate_overrides)
    if abl.budget == "train_flops":
        rec.arm_steps = {arm: int(c.train.max_steps) for arm, c in list(cfgs.items())[1:]}
    if abl.budget == "real_tokens":
        rec.arm_batch = {arm: int(c.train.global_batch_size) for arm, c in list(cfgs.items())[1:]}
    rec.runs_root, rec.results_dir = str(runs_root), str(results_dir)
    abl_dir = Path(runs_root) / abl.name
    _check_same_record(abl_dir, rec)
    return abl, cfgs, rec, abl_dir


def run_ablation(
    path: str | Path,
    preset: str,
    overrides: Sequence[str] = (),
    runs_root: str | Path = "runs",
    results_dir: str | Path = "results",
    evaluate: bool = True,
    time_budget: Optional[str] = None,
) -> List[Path]:
    """Run every arm of the ablation at ``path`` under ``preset`` and write its table.
    ``evaluate=False`` (``--no-evaluate``) skips the fine-tuning stages.

    Steps: compose and check all arms, including the trainer's config checks (UserError:
    nothing built or trained, no run directory made); refuse a runs directory recorded with
    other arms/preset/overrides; prepare data once per distinct data config and check the
    validation data are identical; compose and check every evaluation stage
    (``pretrain.ablations.stages.plan_evaluation``: a bad task, preset or override, missing
    task data or a job directory made another way stops here too); write
    ``runs_root/<name>/ablation.yaml``; train each arm, then fine-tune it on each task (skip
    ``done`` stages, resume ``partial`` ones) and rewrite the table after each stage. Returns the
    written paths (``results_dir/<preset>/<name>.md``, ``.csv``, ``.png``: each preset has its
    own directory, so the README's ``--preset smoke`` quick start leaves the committed
    ``results/small/`` tables alone).

    ``time_budget`` (``--time-budget``, e.g. ``2h``, ``90m``: ``preemption.parse_duration``),
    counted from this call: once spent, the loop run in progress — a pretraining run or one
    lr × seed run of a fine-tuning job — stops at its next step boundary with a checkpoint,
    exactly as on SIGTERM (``preemption.time_budget``); a data build or a probe in progress
    finishes; no further stage starts. A stop by the budget or by SIGTERM/SIGUSR1 during a
    stage writes the table, prints the command that continues (the same one) and raises
    ``Stopped`` (exit code 75, ``preemption.PREEMPTED_EXIT_CODE``). Raises UserError for a
    malformed ``time_budget`` before anything runs.
    """
    from pretrain.training import preemption

    seconds = None
    if time_budget is not None:
        try:
            seconds = preemption.parse_duration(time_budget)
        except ValueError as e:
            raise UserError(f"--time-budget {e}") from None
    with preemption.time_budget(seconds, time_budget or ""):
        return _run_ablation(path, preset, overrides, runs_root, results_dir, evaluate, time_budget)


class Stopped(SystemExit):
    """``pretrain ablate`` stopped before its last stage, resumable: the time budget was spent
    or a stop signal came (``reason``). A SystemExit with code 75 (EX_TEMPFAIL, the code of a
    preempted run, ``pretrain.training.preemption``); ``command`` continues the ablation."""

    def __init__(self, reason: str, command: str) -> None:
        from pretrain.training.preemption import PREEMPTED_EXIT_CODE

        super().__init__(PREEMPTED_EXIT_CODE)
        self.reason, self.command = reason, command

    def __str__(self) -> str:
        return f"stopped by {self.reason}; continue with: {self.command}"


def _run_ablation(path, preset, overrides, runs_root, results_dir, evaluate, time_budget) -> List[Path]:
    from pretrain.ablations import report

    abl, cfgs, rec, abl_dir = plan_arms(path, preset, overrides, runs_root, results_dir)
    precheck_arms(cfgs)
    evals = stages.plan_evaluation(abl, preset, cfgs, runs_root) if evaluate else []
    if evals:
        rec.finetune_preset = stages.finetune_preset(abl.evaluate.preset, preset)
    if launcher_rank() == 0:
        print(report.header(abl.name, preset, cfgs), flush=True)
        if evals:
            each = [*abl.evaluate.tasks, *[f"probe {p}" for p in ("blimp", "sentence") if abl.evaluate.probes[p]]]
            print(f"evaluation: {len(evals)} stages ({', '.join(each)} per run"
                  + (", plus the random-init control" if abl.evaluate.control else "")
                  + f"), fine-tuning preset {rec.finetune_preset}", flush=True)
    prepare_data(cfgs)
    abl_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(abl_dir / rundir.ABLATION, OmegaConf.to_yaml(rec))

    # imported here: `pretrain submit` and `pretrain status` import this module without
    # training, and torch + DeepSpeed take seconds to load
    from pretrain.training import distributed
    from pretrain.training.loop import train
    from pretrain.training.preemption import Preempted, budget_spent

    written: List[Path] = []
    order = _stage_order(cfgs, evals)
    n = len(order)
    parts = {key: report.pretrain_stage(cfgs[key]) for key in cfgs}
    parts.update({_key(st): [(run, steps, st.tokens_per_step) for run, steps in st.runs] for st in evals})
    done = [key for key in cfgs if arm_state(Path(cfgs[key].run_dir)) == "done"]
    done += [_key(st) for st in evals if stages.stage_state(st) == "done"]
    what = f"{len(cfgs)} " + ("runs" if any("/seed-" in k for k in cfgs) else "arms")
    what += f" + {len(evals)} evaluation stages" if evals else ""
    progress = report.AblationProgress(abl.name, parts, done, what)
    stopped = None
    try:
        for i, item in enumerate(order, 1):
            if isinstance(item, str):
                run, state = Path(cfgs[item].run_dir), arm_state(Path(cfgs[item].run_dir))
                label = f"{abl.name} / {item}"
                action = {"done": "done, skipping", "partial": "resuming from checkpoint", "new": "training"}[state]
            else:
                run, state = item.job, stages.stage_state(item)
                label = f"{abl.name} / {item.key} / {item.name}"
                new = "probing" if isinstance(item, stages.ProbeStage) else "fine-tuning"
                action = {"done": "done, skipping", "partial": "resuming", "new": new}[state]
            if state != "done":
                # Rank 0's clock decides for every rank once a run has made the process group
                # (before the first, the ranks, started together, read their own clocks).
                stopped = distributed.broadcast_object(budget_spent())
                if stopped:
                    progress.write(f"=== [{i}/{n}] {label}: not started, {stopped} is spent")
                    break
            progress.write(f"=== [{i}/{n}] {label}: {action} → {run}")
            if state == "done":
                continue
            try:
                with progress.training(item if isinstance(item, str) else _key(item)):
                    if isinstance(item, str):
                        # Always --resume: an arm cut off before `latest` was written (or whose latest
                        # checkpoint is damaged) continues from its newest intact checkpoint; one with no
                        # checkpoint starts fresh. A fresh start would refuse to overwrite its files.
                        train(cfgs[item], resume=True)
                    else:
                        stages.run_stage(item, rec.finetune_preset, abl.evaluate.overrides)
            except Preempted as e:  # the budget or a signal: a checkpoint of e.step is saved
                stopped = f"{e.signal_name} ({e.run} checkpointed after step {e.step})"
                break
            written = write_ablation_table(abl_dir, results_dir, runs_root)
        if stopped or not written:  # a stop mid-stage, or every stage done before
            written = write_ablation_table(abl_dir, results_dir, runs_root)
    finally:
        progress.close()
    if launcher_rank() == 0:
        print(f"table: {written[0]}  (csv: {written[1]}, plot: {written[2]})", flush=True)
        print(f"runs: {abl_dir}/ (one directory per arm: config.yaml, metrics.jsonl, checkpoints/, summary.json"
              + (", finetune/<task>/ per evaluated task" if evals else "") + ")", flush=True)
    if stopped:
        extra = ([] if evaluate else ["--no-evaluate"]) + (["--time-budget", time_budget] if time_budget else [])
        err = Stopped(stopped, ablate_command(rec) + "".join(f" {shlex.quote(x)}" for x in extra))
        if launcher_rank() == 0:
            print(err, flush=True)
        raise err
    return written


def _key(stage: Any) -> str:
    return f"{stage.key}/{stage.name}"


def _stage_order(cfgs: Dict[str, RunConfig], evals: List[Any]) -> List[Any]:
    """Each run's pretraining (its key) followed by its fine-tuning stages (the control's
    after the first run's), in the arms' order."""
    order: List[Any] = []
    for key in cfgs:
        order.append(key)
        order += [st for st in evals if st.key == key]
    return order


def _check_same_record(abl_dir: Path, rec: Any) -> None:
    """Finished arms are skipped on a rerun, so a rerun must be the same experiment."""
    f = abl_dir / rundir.ABLATION
    if not f.is_file():
        return
    old = load_record(abl_dir)
    # Title, paper numbers and claims do not change what is trained; arms, seeds, scale,
    # preset and overrides do.
    same = (
        to_dict(old.ablation.arms) == to_dict(rec.ablation.arms)
        and list(old.ablation.seeds) == list(rec.ablation.seeds)
        and to_dict(old.ablation.scale) == to_dict(rec.ablation.scale)
        and old.preset == rec.preset
        and list(old.overrides) == list(rec.overrides)
    )
    if not same:
        raise UserError(
            f"{f} records different arms, preset or overrides than this command (recorded: "
            f"{ablate_command(old)}); use another --runs directory or remove {abl_dir}"
        )


