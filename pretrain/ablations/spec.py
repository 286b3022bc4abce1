"""What an ablation is: its YAML definition (a base run config, the arms' overrides, the
paper's numbers) and the record ``pretrain ablate`` leaves in ``runs/<name>/ablation.yaml``,
from which ``pretrain tables`` rebuilds the table and the commands that made it. Shared by
the runner (``pretrain.ablations.runner``), the tables (``pretrain.ablations.tables``) and
Slurm submission, so none of them imports another for it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

from omegaconf import MISSING, DictConfig, OmegaConf

from common.configfile import merge_into, parse_overrides, read_yaml
from common.errors import UserError
from pretrain.ablations import downstream
from pretrain.config import to_dict
from pretrain.training import rundir

# Arm and ablation names become directory names; keep them portable.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# What the arms of an ablation hold equal (AblationConfig.budget).
Budget = Literal["tokens", "train_flops", "real_tokens"]
# Keys the runner sets itself (where each arm's run directory is).
_RESERVED = ("name", "run_dir")


@dataclass
class PaperConfig:
    """The paper's numbers for this ablation; optional (an ablation of your own has none:
    leave ``paper`` out and the table has no paper columns).

    source: citation of the table, e.g. "Liu et al. 2019 (RoBERTa), Table 1".
    columns: the paper's column names (shown in our table with " (paper)" appended).
    rows: arm name → one number per column (null where the paper has none).
    """

    source: str = ""
    columns: List[str] = field(default_factory=list)
    rows: Dict[str, List[Optional[float]]] = field(default_factory=dict)


# Our side of a claim: held-out metrics the trainer logs in summary.json's final_eval, with
# the direction that counts as better.
OurMetric = Literal["mlm_loss", "mlm_accuracy", "sentence_accuracy"]
LOWER_IS_BETTER = {"mlm_loss": True, "mlm_accuracy": False, "sentence_accuracy": False}


@dataclass
class ClaimConfig:
    """One claim of the paper, checked against our numbers by ``pretrain tables``.

    text: the claim in words, e.g. "dynamic masking is as good as or better than static".
    a / b: the two arms compared; the claim's difference is always ``a − b``.
    paper_column: the ``paper.columns`` entry the paper's difference is read from (both
        arms must have a number there).
    paper_higher_is_better: False for columns such as perplexity (RoBERTa Table 3).
    metric: our held-out metric for the same comparison (``mlm_loss`` lower is better;
        ``mlm_accuracy``, ``sentence_accuracy`` higher is better), used when no column of
        ours judges the claim.
    ours_column: the column of ours (a fine-tuning or probe column of the ``evaluate``
        section, ``pretrain.ablations.downstream.columns``) that judges the claim when it is
        not the paper's column of the same name, e.g. "GLUE avg" for ELECTRA Table 1's GLUE
        score (Clark et al. 2020); None = ours of the paper's name, else ``metric``.
    """

    text: str = MISSING
    a: str = MISSING
    b: str = MISSING
    paper_column: str = MISSING
    paper_higher_is_better: bool = True
    metric: OurMetric = "mlm_loss"
    ours_column: Optional[str] = None


@dataclass
class ArmScale:
    """An arm that trains with ``batch`` × the composed global batch for 1/``batch`` of the
    steps (equal epochs and tokens; warmup, eval, log and checkpoint intervals divided
    too) at ``lr`` × the composed learning rate: RoBERTa §4.3, Table 3 (256×1M steps at
    1e-4, 2K×125K at 7e-4, 8K×31K at 1e-3). Relative, so one ablation file fits every preset."""

    batch: int = 1
    lr: float = 1.0


@dataclass
class ProbesConfig:
    """Zero-shot probes of every run (``pretrain probe``, ``pretrain.downstream.probe``), no
    fine-tuning; results in ``<run>/eval/``.

    blimp: score BLiMP by pseudo-log-likelihood (Salazar et al. 2020); the control (with
        ``evaluate.control``) scores the random-init model too (``<run>/eval-random-init/``).
    blimp_limit: the first N pairs of each of the 67 phenomena (None = all 1,000).
    sentence: the intrinsic tasks of ALBERT Table 5 on one held-out NSP and one SOP set shared
        by every arm (built once under ``<runs>/probe/sentence-sets/``), plus masked-token
        accuracy on the same text: the table's "MLM acc", "NSP acc", "SOP acc" columns.
    sentence_pairs: pairs per sentence task.
    """

    blimp: bool = False
    blimp_limit: Optional[int] = None
    sentence: bool = False
    sentence_pairs: int = 2000


@dataclass
class EvaluateConfig:
    """The evaluation stages of every run of an ablation (issue 14): after a run's
    pretraining, one ``pretrain finetune`` job per task (``pretrain.downstream.runner.finetune``
    into ``<run>/finetune/<task>/``), and one random-init control job per task for the whole
    ablation. Empty ``tasks`` (the default) = no evaluation stages.

    preset: ``configs/finetune/preset/NAME.yaml`` (or a YAML path); None = follow the
        ablation's ``--preset``: the fine-tuning preset of the same name when there is one
        (smoke, small), else ``small`` (there is no ``medium`` fine-tuning preset; see
        ``pretrain.ablations.stages.finetune_preset``).
    tasks: fine-tuning tasks (``pretrain.downstream.config.TASK_NAMES``), each a column of
        the table named as the papers print it (``pretrain.ablations.downstream``).
    overrides: ``key=value`` of the FinetuneConfig, applied to every task (e.g. ``lrs=[3e-4]``).
    control: also fine-tune the first arm's first run's shape and tokenizer from random
        weights (``--random-init``): the table's ``random init (control)`` row, showing what
        pretraining bought at this scale.
    probes: zero-shot probes of every run (ProbesConfig).
    """

    preset: Optional[str] = None
    tasks: List[str] = field(default_factory=list)
    overrides: List[str] = field(default_factory=list)
    control: bool = True
    probes: ProbesConfig = field(default_factory=ProbesConfig)


def evaluating(ev: EvaluateConfig) -> bool:
    """Whether an evaluate section asks for any stage (a task or a probe)."""
    return bool(ev.tasks) or bool(ev.probes.blimp) or bool(ev.probes.sentence)


@dataclass
class AblationConfig:
    """One ablation: a base run config and the arms that differ from it.

    name: directory name of the ablation under the runs root and the results directory.
    title: human-readable title (paper, section, table).
    base: run config YAML, relative to the ablation file.
    arms: arm name → override mapping of the run config (``{}`` = the base as is).
    paper: see PaperConfig.
    seeds: pretraining seeds (``train.seed``) every arm runs with; empty = the composed
        config's one seed. With seeds, arm ``A`` runs once per seed in ``<runs>/<name>/A/seed-S``
        and the table reports the median and spread (max − min) over seeds.
    scale: arm → ArmScale (batch-size ablations); arms not named train as composed.
    claims: the paper's claims this ablation tests (see ClaimConfig); the table gives a
        verdict for each.
    budget: what the arms hold equal: ``tokens`` (steps × batch × sequence length, the
        default) or ``train_flops``: the runner sets every arm's ``train.max_steps`` so its
        training FLOPs equal the FIRST arm's (``pretrain.ablations.runner.equalize_train_flops``)
        — ELECTRA vs MLM at equal compute (Clark et al. 2020, Table 1: BERT-Small trains
        1.5M steps to ELECTRA-Small's 1M for the same FLOPs); ``real_tokens``: the runner
        sets every arm's ``train.global_batch_size`` so its real (non-padding) tokens per
        step equal the FIRST arm's, from the mean row length of its built data
        (``pretrain.ablations.budget``) — RoBERTa §4.2's SENTENCE-PAIR with a larger batch.
    evaluate: the downstream evaluation stages of every run (see EvaluateConfig).
    min_steps: the fewest optimizer steps an arm may take for the table to judge it (0 = no
        floor). A finished arm below it makes the table warn and every verdict
        inconclusive: with too few updates a batch-size ablation (RoBERTa §4.3 trains its
        largest batch 31K steps) measures under-training, not the batch. A judgement of the
        table, like the claims: changing it does not retrain.
    """

    name: str = MISSING
    title: str = MISSING
    base: str = MISSING
    arms: Dict[str, Any] = MISSING
    paper: PaperConfig = field(default_factory=PaperConfig)
    seeds: List[int] = field(default_factory=list)
    scale: Dict[str, ArmScale] = field(default_factory=dict)
    claims: List[ClaimConfig] = field(default_factory=list)
    budget: Budget = "tokens"
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    min_steps: int = 0


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
    # arm → train.max_steps the runner derived (budget train_flops), for the arm commands
    arm_steps: Dict[str, int] = field(default_factory=dict)
    # arm → train.global_batch_size the runner derived (budget real_tokens)
    arm_batch: Dict[str, int] = field(default_factory=dict)
    # the fine-tuning preset the evaluation stages used (EvaluateConfig.preset resolved)
    finetune_preset: Optional[str] = None
    # the command's evaluate.* overrides, already merged into ``ablation.evaluate``
    evaluate_overrides: List[str] = field(default_factory=list)


def load_ablation(path: str | Path) -> AblationConfig:
    """Load and check an ablation YAML.

    Raises UserError (one line) for a missing/unparsable file, an unknown or missing key,
    a name that is not a portable directory name, an arm whose overrides are not a mapping
    or set ``name``/``run_dir``, a paper row that names no arm or whose length differs
    from ``paper.columns``, a repeated seed, a ``scale`` entry that names no arm or is not
    positive, a claim naming an unknown arm or paper column, a paper cell that is empty or
    an ``ours_column`` that the ``evaluate`` section does not produce (naming those it does),
    an ``evaluate`` task that is not a fine-tuning task (or repeated), or a malformed
    ``evaluate.overrides`` entry (whether its keys exist is checked when the arms compose:
    ``pretrain.ablations.stages.plan_evaluation``).
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
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise UserError(f"{where}: seeds {list(cfg.seeds)} repeat a seed; list each pretraining seed once")
    if cfg.min_steps < 0:
        raise UserError(f"{where}: min_steps={cfg.min_steps} must be >= 0 (0 = no floor)")
    for arm, sc in cfg.scale.items():
        if arm not in cfg.arms:
            raise UserError(f"{where}: scale.{arm} names no arm (arms: {', '.join(cfg.arms)})")
        if sc.batch < 1 or sc.lr <= 0:
            raise UserError(f"{where}: scale.{arm} needs batch >= 1 and lr > 0, got batch={sc.batch} lr={sc.lr}")
    for i, c in enumerate(cfg.claims):
        for arm in (c.a, c.b):
            if arm not in cfg.arms:
                raise UserError(f"{where}: claims[{i}] names arm {arm!r}, which is not an arm (arms: {', '.join(cfg.arms)})")
        if c.paper_column not in cfg.paper.columns:
            raise UserError(
                f"{where}: claims[{i}].paper_column {c.paper_column!r} is not in paper.columns ({', '.join(cfg.paper.columns)})"
            )
        col = list(cfg.paper.columns).index(c.paper_column)
        for arm in (c.a, c.b):
            row = cfg.paper.rows.get(arm)
            if row is None or row[col] is None:
                raise UserError(f"{where}: claims[{i}] compares {arm!r} on {c.paper_column!r}, but the paper row has no number there")
    _check_evaluate(cfg.evaluate, where)
    ours = [col.name for col in downstream.columns(cfg.evaluate, cfg.paper.columns)]
    for i, c in enumerate(cfg.claims):
        if c.ours_column is not None and c.ours_column not in ours:
            raise UserError(f"{where}: claims[{i}].ours_column {c.ours_column!r} is not a column of ours; the evaluate "
                            f"section gives: {', '.join(ours) or 'none (add evaluate.tasks or probes)'}")


def _check_evaluate(ev: EvaluateConfig, where: str) -> None:
    from pretrain.downstream.config import TASK_NAMES

    for t in ev.tasks:
        if t not in TASK_NAMES:
            raise UserError(f"{where}: evaluate.tasks has {t!r}, not a fine-tuning task; valid: {', '.join(TASK_NAMES)}")
    if len(set(ev.tasks)) != len(ev.tasks):
        raise UserError(f"{where}: evaluate.tasks {list(ev.tasks)} repeats a task; list each task once")
    try:
        parse_overrides(list(ev.overrides))
    except UserError as e:
        raise UserError(f"{where}: evaluate.overrides: {e}") from None
    if ev.probes.blimp_limit is not None and ev.probes.blimp_limit < 1:
        raise UserError(f"{where}: evaluate.probes.blimp_limit={ev.probes.blimp_limit} must be >= 1 or null (all pairs)")
    if ev.probes.sentence_pairs < 1:
        raise UserError(f"{where}: evaluate.probes.sentence_pairs={ev.probes.sentence_pairs} must be >= 1")


EVALUATE_PREFIX = "evaluate."


def split_evaluate_overrides(overrides: Sequence[str]) -> Tuple[List[str], List[str]]:
    """``key=value`` overrides of ``pretrain ablate``/``submit`` → (those of every arm's run
    config, those of the ablation's ``evaluate`` section: keys starting ``evaluate.``)."""
    run: List[str] = []
    evaluate: List[str] = []
    for o in overrides:
        (evaluate if o.strip().startswith(EVALUATE_PREFIX) else run).append(o)
    return run, evaluate


def apply_evaluate_overrides(abl: AblationConfig, overrides: Sequence[str], where: str) -> AblationConfig:
    """``abl`` with ``evaluate.*`` overrides merged into its evaluate section (e.g.
    ``evaluate.probes.blimp=true evaluate.probes.blimp_limit=100``: add BLiMP to the stages of
    a run at one scale without editing the ablation file). They add or change evaluation
    stages, never what an arm trains, so a rerun with other ones reuses the finished
    pretraining. Raises UserError (one line) for a malformed pair, an unknown key (naming the
    valid ones), a bad value, or a result ``load_ablation`` would refuse."""
    if not overrides:
        return abl
    where = f"{where} with {' '.join(overrides)}"
    merged = merge_into(AblationConfig, abl, parse_overrides(list(overrides)), where=where)
    check_ablation(merged, where=where)
    return merged


def seed_runs(abl: AblationConfig) -> List[tuple]:
    """``(arm, seed or None, run path relative to runs/<name>)`` for every run of the ablation:
    ``arm`` alone without ``seeds``, ``arm/seed-S`` per seed with them."""
    if not abl.seeds:
        return [(arm, None, arm) for arm in abl.arms]
    return [(arm, int(s), f"{arm}/seed-{int(s)}") for arm in abl.arms for s in abl.seeds]


def load_record(abl_dir: str | Path) -> AblationRecord:
    """Load ``abl_dir/ablation.yaml`` (written by ``run_ablation``). Raises UserError."""
    p = Path(abl_dir) / rundir.ABLATION
    rec = merge_into(AblationRecord, read_yaml(p), where=str(p))
    check_ablation(rec.ablation, where=str(p))
    return rec


def base_path(source: str | Path, base: str) -> Path:
    """The base run config of an ablation: ``base`` is relative to the ablation file."""
    return Path(source).parent / base


def ablate_command(rec: AblationRecord) -> str:
    """The shell command that (re)runs an ablation as recorded."""
    parts = ["pretrain", "ablate", rec.source, "--preset", rec.preset, *rec.overrides, *rec.evaluate_overrides]
    if rec.runs_root != "runs":
        parts += ["--runs", rec.runs_root]
    if rec.results_dir != "results":
        parts += ["--results", rec.results_dir]
    return shlex.join(parts)


def arm_command(
    rec: AblationRecord, arm: str, seed: Optional[int] = None, rel: Optional[str] = None,
    logs: Optional[Path] = None,
) -> str:
    """An equivalent ``pretrain train`` command for one run of an arm (the arm's overrides
    flattened to key=value, then the ablation's command-line overrides, the seed, and for a
    scaled arm its batch, steps, lr and intervals as its recorded ``config.yaml`` holds them).
    ``rel``: the run's path under ``runs/<name>`` (default: the arm's name). ``logs``: the
    directory that holds that run's config.yaml now (default: the run directory the record
    names) — a table regenerated from copied logs (``results/runs``) must not depend on the
    original runs directory still existing."""
    layer = rec.ablation.arms[arm]
    flat = _flatten(to_dict(layer) if layer is not None else {})
    rel = rel or arm
    run = Path(rec.runs_root) / rec.ablation.name / rel
    base = Path(_normpath(base_path(rec.source, rec.ablation.base)))
    parts = ["pretrain", "train", str(base), "--preset", rec.preset, *flat, *rec.overrides]
    if seed is not None:
        parts.append(f"train.seed={seed}")
    if arm in rec.ablation.scale:
        parts += _scaled_keys(logs or run)
    if rel in rec.arm_steps:
        parts.append(f"train.max_steps={rec.arm_steps[rel]}")
    if rel in rec.arm_batch:
        parts.append(f"train.global_batch_size={rec.arm_batch[rel]}")
    parts += [f"name={rec.ablation.name}/{rel}", f"run_dir={run}"]
    return shlex.join(parts)


# What ArmScale changes (runner.scale_overrides), read back from a scaled run's config.yaml.
_SCALED = ("train.global_batch_size", "train.max_steps", "train.optimizer.lr", "train.schedule.warmup_steps",
           "train.eval_every", "train.log_every", "train.checkpoint_every")


def _scaled_keys(run: Path) -> List[str]:
    f = run / rundir.CONFIG
    if not f.is_file():
        return []
    cfg = read_yaml(f)
    return [f"{k}={_scalar(OmegaConf.select(cfg, k))}" for k in _SCALED]


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
