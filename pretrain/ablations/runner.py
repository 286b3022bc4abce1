"""Run every arm of an ablation under one preset and write its result table.

An ablation file (``configs/ablation/*.yaml``) names a base run config and, per arm, the
override mapping that makes the arm differ from the base — e.g. RoBERTa's static vs.
dynamic masking (Liu et al. 2019, §4.1, Table 1) differ only in ``data.masking.mode``.
It also carries the paper's numbers for the same comparison so the table can show them
beside ours (labelled as the paper's).

``run_ablation`` composes every arm's RunConfig before anything runs (a bad arm is a
one-line UserError and nothing is trained), checks that the arms are a fair comparison
(same token budget, same seeds, identical validation data), prepares each distinct data
config once, trains the arms one after another (skipping finished ones, resuming
interrupted ones) and writes the table after each arm so partial results are visible.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import MISSING, DictConfig, OmegaConf

from common.configfile import merge_into, parse_overrides, read_yaml
from common.errors import UserError, launcher_rank
from data_prep.config import data_fingerprint, resolve_output_dir
from pretrain.config import RunConfig, load_run_config, resolve_preset, to_dict
from pretrain.training import rundir

# Arm and ablation names become directory names; keep them portable.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Keys the runner sets itself (where each arm's run directory is).
_RESERVED = ("name", "run_dir")


@dataclass
class PaperConfig:
    """The paper's numbers for this ablation.

    source: citation of the table, e.g. "Liu et al. 2019 (RoBERTa), Table 1".
    columns: the paper's column names (shown in our table with " (paper)" appended).
    rows: arm name → one number per column (null where the paper has none).
    """

    source: str = MISSING
    columns: List[str] = MISSING
    rows: Dict[str, List[Optional[float]]] = MISSING


@dataclass
class AblationConfig:
    """One ablation: a base run config and the arms that differ from it.

    name: directory name of the ablation under the runs root and the results directory.
    title: human-readable title (paper, section, table).
    base: run config YAML, relative to the ablation file.
    arms: arm name → override mapping of the run config (``{}`` = the base as is).
    paper: see PaperConfig.
    """

    name: str = MISSING
    title: str = MISSING
    base: str = MISSING
    arms: Dict[str, Any] = MISSING
    paper: PaperConfig = field(default_factory=PaperConfig)


@dataclass
class AblationRecord:
    """What ``runs/<name>/ablation.yaml`` holds: the definition and how it was run, so
    ``pretrain tables`` can rebuild the table (and print the run commands) from the run
    directories alone."""

    ablation: AblationConfig = field(default_factory=AblationConfig)
    source: str = MISSING  # the ablation file as given on the command line
    preset: str = MISSING
    overrides: List[str] = field(default_factory=list)
    runs_root: str = "runs"
    results_dir: str = "results"


def load_ablation(path: str | Path) -> AblationConfig:
    """Load and check an ablation YAML.

    Raises UserError (one line) for a missing/unparsable file, an unknown or missing key,
    a name that is not a portable directory name, an arm whose overrides are not a mapping
    or set ``name``/``run_dir``, or a paper row that names no arm or whose length differs
    from ``paper.columns``.
    """
    p = Path(path)
    cfg = merge_into(AblationConfig, read_yaml(p), where=str(p))
    check_ablation(cfg, where=str(p))
    return cfg


def check_ablation(cfg: AblationConfig, where: str) -> None:
    """Consistency checks of a loaded AblationConfig (see ``load_ablation``)."""
    if not _NAME_RE.match(cfg.name):
        raise UserError(f"{where}: name {cfg.name!r} must be letters, digits, '_', '-' or '.'")
    if not cfg.arms:
        raise UserError(f"{where}: 'arms' is empty; an ablation needs at least one arm")
    for arm, layer in cfg.arms.items():
        if not _NAME_RE.match(str(arm)):
            raise UserError(f"{where}: arm name {arm!r} must be letters, digits, '_', '-' or '.'")
        if layer is not None and not isinstance(layer, DictConfig):
            raise UserError(f"{where}: arm {arm!r} must be a mapping of run-config overrides, got {layer!r}")
        for key in _RESERVED:
            if layer is not None and key in layer:
                raise UserError(f"{where}: arm {arm!r} sets {key!r}; the ablation runner chooses each arm's run directory")
    ncol = len(cfg.paper.columns)
    for arm, row in cfg.paper.rows.items():
        if arm not in cfg.arms:
            raise UserError(f"{where}: paper row {arm!r} names no arm (arms: {', '.join(cfg.arms)})")
        if len(row) != ncol:
            raise UserError(f"{where}: paper row {arm!r} has {len(row)} numbers but paper.columns has {ncol}")


def load_record(abl_dir: str | Path) -> AblationRecord:
    """Load ``abl_dir/ablation.yaml`` (written by ``run_ablation``). Raises UserError."""
    p = Path(abl_dir) / rundir.ABLATION
    rec = merge_into(AblationRecord, read_yaml(p), where=str(p))
    check_ablation(rec.ablation, where=str(p))
    return rec


def base_path(source: str | Path, base: str) -> Path:
    """The base run config of an ablation: ``base`` is relative to the ablation file."""
    return Path(source).parent / base


def compose_arms(
    path: str | Path, preset: str, overrides: Sequence[str], runs_root: str | Path
) -> Tuple[AblationConfig, Dict[str, RunConfig]]:
    """Load the ablation and compose every arm's RunConfig: base < preset < arm < ``overrides``.

    Each arm is named ``<ablation>/<arm>`` and runs in ``runs_root/<ablation>/<arm>``.
    Raises UserError naming the arm whose config fails to load, or an override of
    ``name``/``run_dir`` (the runner chooses those).
    """
    abl = load_ablation(path)
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
    for arm, layer in abl.arms.items():
        where = {"name": f"{abl.name}/{arm}", "run_dir": str(Path(runs_root) / abl.name / arm)}
        try:
            cfgs[arm] = load_run_config(base, preset, overrides, layers=[layer or {}, where])
        except UserError as e:
            raise UserError(f"ablation {abl.name}, arm {arm!r}: {e}") from None
    return abl, cfgs


def check_fair(cfgs: Dict[str, RunConfig]) -> None:
    """The arms of an ablation must differ only in the recipe choice under study.

    Checks the token budget, train.max_steps × train.global_batch_size × data.max_seq_length
    (RoBERTa §4.3, Table 3 compares batch sizes at equal steps × batch: 256×1M, 2K×125K,
    8K×31K), and the seeds (train.seed, data.seed). Raises UserError listing every arm's
    value when they differ.
    """
    budgets = {
        a: (c.train.max_steps, c.train.global_batch_size, c.data.max_seq_length) for a, c in cfgs.items()
    }
    if len({s * b * n for s, b, n in budgets.values()}) > 1:
        detail = ", ".join(f"{a}={s}×{b}×{n}={s * b * n:,}" for a, (s, b, n) in budgets.items())
        raise UserError(
            "arms see different token budgets (train.max_steps × train.global_batch_size × "
            f"data.max_seq_length): {detail}; make them equal"
        )
    for key in ("train.seed", "data.seed"):
        vals = {a: OmegaConf.select(c, key) for a, c in cfgs.items()}
        if len(set(vals.values())) > 1:
            detail = ", ".join(f"{a}={v}" for a, v in vals.items())
            raise UserError(f"arms use different {key}: {detail}; an ablation compares arms at the same seed")


def precheck_arms(cfgs: Dict[str, RunConfig]) -> None:
    """Run the trainer's config checks (the ones it makes before touching data) on every
    arm now, so an arm that would fail — e.g. warmup longer than max_steps — stops the
    ablation before any data is built or any arm is trained. Raises UserError naming the
    arm. World size from ``WORLD_SIZE`` (1 on one machine)."""
    from pretrain.models.encoder import check_model_fits_data
    from pretrain.training.loop import check_train_config, deepspeed_config
    from pretrain.training.optim import schedule_fn

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    for arm, cfg in cfgs.items():
        try:
            check_train_config(cfg.train)
            deepspeed_config(cfg.train, world_size)
            schedule_fn(cfg.train.schedule, cfg.train.max_steps)
            check_model_fits_data(cfg.model, cfg.data)
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
    """``done`` (summary.json says so), ``partial`` (``checkpoints/latest`` names a
    checkpoint to resume from — the file the trainer resumes from) or ``new``."""
    summary = rundir.read_summary(run)
    if summary and summary.get("status") == "done":
        return "done"
    if (run / rundir.CHECKPOINTS / "latest").is_file():
        return "partial"
    return "new"


def ablate_command(rec: AblationRecord) -> str:
    """The shell command that (re)runs an ablation as recorded."""
    parts = ["pretrain", "ablate", rec.source, "--preset", rec.preset, *rec.overrides]
    if rec.runs_root != "runs":
        parts += ["--runs", rec.runs_root]
    if rec.results_dir != "results":
        parts += ["--results", rec.results_dir]
    return shlex.join(parts)


def arm_command(rec: AblationRecord, arm: str) -> str:
    """An equivalent ``pretrain train`` command for one arm (the arm's overrides flattened
    to key=value, then the ablation's command-line overrides)."""
    layer = rec.ablation.arms[arm]
    flat = _flatten(to_dict(layer) if layer is not None else {})
    run = Path(rec.runs_root) / rec.ablation.name / arm
    base = Path(_normpath(base_path(rec.source, rec.ablation.base)))
    parts = ["pretrain", "train", str(base), "--preset", rec.preset, *flat, *rec.overrides]
    parts += [f"name={rec.ablation.name}/{arm}", f"run_dir={run}"]
    return shlex.join(parts)


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
    abl, cfgs = compose_arms(path, preset, overrides, runs_root)
    check_fair(cfgs)
    rec = OmegaConf.structured(AblationRecord)
    rec.ablation = abl
    rec.source, rec.preset, rec.overrides = str(path), preset, list(overrides)
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
) -> List[Path]:
    """Run every arm of the ablation at ``path`` under ``preset`` and write its table.

    Steps: compose and check all arms, including the trainer's config checks (UserError:
    nothing built or trained, no run directory made); refuse a runs directory recorded with
    other arms/preset/overrides; prepare data once per distinct data config and check the
    validation data are identical; write ``runs_root/<name>/ablation.yaml``; train each arm
    (skip ``done``, resume ``partial``) and rewrite the table after each. Returns the
    written paths (``results_dir/<preset>/<name>.md``, ``.csv``, ``.png``: each preset has its
    own directory, so the README's ``--preset smoke`` quick start leaves the committed
    ``results/small/`` tables alone).
    """
    from pretrain.ablations import report
    from pretrain.ablations.tables import write_ablation_table, write_text_atomic

    abl, cfgs, rec, abl_dir = plan_arms(path, preset, overrides, runs_root, results_dir)
    precheck_arms(cfgs)
    if launcher_rank() == 0:
        print(report.header(abl.name, preset, cfgs), flush=True)
    prepare_data(cfgs)
    abl_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(abl_dir / rundir.ABLATION, OmegaConf.to_yaml(rec))

    from pretrain.training.loop import (
        train,  # imported here: `pretrain tables` imports this module, keep it light
    )

    written: List[Path] = []
    n = len(cfgs)
    runs = {arm: Path(cfg.run_dir) for arm, cfg in cfgs.items()}
    done = [arm for arm, run in runs.items() if arm_state(run) == "done"]
    progress = report.AblationProgress(abl.name, runs, report.arm_steps(cfgs), done)
    try:
        for i, (arm, cfg) in enumerate(cfgs.items(), 1):
            run = runs[arm]
            state = arm_state(run)
            action = {"done": "done, skipping", "partial": "resuming from checkpoint", "new": "training"}[state]
            progress.write(f"=== [{i}/{n}] {abl.name} / {arm}: {action} → {run}")
            if state != "done":
                with progress.training(arm, run):
                    train(cfg, resume=(state == "partial"))
            written = write_ablation_table(abl_dir, results_dir, runs_root)
    finally:
        progress.close()
    print(f"table: {written[0]}  (csv: {written[1]}, plot: {written[2]})", flush=True)
    print(f"runs: {abl_dir}/ (one directory per arm: config.yaml, metrics.jsonl, checkpoints/, summary.json)", flush=True)
    return written


def _check_same_record(abl_dir: Path, rec: Any) -> None:
    """Finished arms are skipped on a rerun, so a rerun must be the same experiment."""
    f = abl_dir / rundir.ABLATION
    if not f.is_file():
        return
    old = load_record(abl_dir)
    # Title and paper numbers do not change what is trained; arms, preset and overrides do.
    same = (
        to_dict(old.ablation.arms) == to_dict(rec.ablation.arms)
        and old.preset == rec.preset
        and list(old.overrides) == list(rec.overrides)
    )
    if not same:
        raise UserError(
            f"{f} records different arms, preset or overrides than this command (recorded: "
            f"{ablate_command(old)}); use another --runs directory or remove {abl_dir}"
        )


def _flatten(d: Dict[str, Any], prefix: str = "") -> List[str]:
    out: List[str] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += _flatten(v, key + ".")
        else:
            out.append(f"{key}={_scalar(v)}")
    return out


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def _normpath(p: Path) -> str:
    return os.path.normpath(str(p))
