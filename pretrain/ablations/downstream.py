"""The downstream side of an ablation's table: which columns the evaluated tasks and probes
give, named as the papers print them, and their values read back from the fine-tuning jobs'
``scores.json`` (``pretrain.downstream.runner``), pooled over pretraining and fine-tuning
seeds, and from the probes' ``blimp.json`` / ``sentence.json`` (one value per pretraining run).

Pooling: each job (one pretraining run × one task) picks its learning rate by its own dev
median, as the papers do (``runner.summarize``); the arm's cell is the median of every
per-seed score at each job's chosen lr, over all pretraining seeds × fine-tuning seeds, and
its spread is the min–max of the same scores. The control row reads the random-init jobs
(``<first run>/finetune/<task>-random-init``).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from common.configfile import read_yaml
from common.errors import UserError

CONTROL_ROW = "random init (control)"

# task → (column as the papers print it, scores.json metric), the task's main metric
# (``task_data.main_metric``: the one BERT Table 1 reports) first. MRPC and QQP: BERT Table 1
# prints F1, BERT Table 5 accuracy; STS-B: Spearman; CoLA: Matthews corr.; CoNLL-2003: test F1
# (BERT Table 3 prints dev and test).
TASK_COLUMNS: Dict[str, List[tuple]] = {
    "sst2": [("SST-2 acc", "dev_accuracy")],
    "cola": [("CoLA mcc", "dev_matthews")],
    "mrpc": [("MRPC F1", "dev_f1"), ("MRPC acc", "dev_accuracy")],
    "qqp": [("QQP F1", "dev_f1"), ("QQP acc", "dev_accuracy")],
    "stsb": [("STS-B Spearman", "dev_spearman"), ("STS-B Pearson", "dev_pearson")],
    "qnli": [("QNLI acc", "dev_accuracy")],
    "rte": [("RTE acc", "dev_accuracy")],
    "mnli": [("MNLI-m acc", "dev_accuracy"), ("MNLI-mm acc", "dev_mismatched_accuracy")],
    "conll2003": [("CoNLL-2003 test F1", "test_entity_f1"), ("CoNLL-2003 dev F1", "dev_entity_f1")],
}
# GLUE's tasks (Wang et al. 2019) without WNLI, which BERT Table 1 and ELECTRA leave out: two or
# more of them in evaluate.tasks add the derived column GLUE_AVG (``columns``).
GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
GLUE_AVG = "GLUE avg"
# probe → (column, key path in <run>/eval/<probe>.json). The sentence probe's columns are
# ALBERT Table 5's intrinsic accuracies, on the sets every arm shares.
PROBE_COLUMNS: Dict[str, List[tuple]] = {
    "blimp": [("BLiMP overall", "overall")],
    "sentence": [("MLM acc", "mlm.accuracy"), ("NSP acc", "nsp.accuracy"), ("SOP acc", "sop.accuracy")],
}
# Paper columns of tasks we do not fine-tune here, by their first word: why they stay paper-only.
UNAVAILABLE = {
    "SQuAD": "SQuAD (span extraction) is not a task of `pretrain finetune`",
    "RACE": "RACE (multiple choice) is not a task of `pretrain finetune`",
    "MNLI-m": "MNLI's training set is not in ../shared/data (add `mnli` to evaluate.tasks with data.source=GLUE's download)",
    "QNLI": "QNLI's training set is not in ../shared/data (only its dev set; add `qnli` with data.source=GLUE's download)",
    "QQP": "QQP is not in ../shared/data (add `qqp` with data.source=GLUE's download)",
    "Avg": "the paper's average includes SQuAD, MNLI and RACE, which this ablation does not fine-tune",
}


@dataclass(frozen=True)
class Column:
    """One downstream column of ours: ``name`` (e.g. "SST-2 acc"), the task, and the metric
    key of its scores.json (values there are fractions; the table shows percent); or the
    derived GLUE_AVG (task "glue", no metric) with ``averages``, the GLUE tasks it averages."""

    name: str
    task: str
    metric: str
    averages: Tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """How the column was measured, for the verdicts: "fine-tuned" or "zero-shot"."""
        return "zero-shot" if self.task in PROBE_COLUMNS else "fine-tuned"


@dataclass
class Cell:
    """An arm's (or the control's) value in one column: median, min and max in percent over
    ``n`` pooled scores; None everywhere when no job of the arm has finished."""

    median: Optional[float] = None
    low: Optional[float] = None
    high: Optional[float] = None
    n: int = 0

    @classmethod
    def of(cls, values: Sequence[float]) -> "Cell":
        """The median, min and max of ``values``; an empty Cell for none; all three NaN when a
        value is NaN or inf (a diverged run: neither its median nor a spread means anything,
        and min/max would depend on the order)."""
        if values and not all(math.isfinite(v) for v in values):
            return cls(math.nan, math.nan, math.nan, len(values))
        return cls(statistics.median(values), min(values), max(values), len(values)) if values else cls()


def columns(ev, paper_columns: Sequence[str]) -> List[Column]:
    """Our columns for an ``evaluate`` section: per task, the candidates of TASK_COLUMNS whose
    name is a paper column (so ours sits beside the paper's), or the task's main one when the
    paper has none of them; GLUE_AVG when two or more tasks are GLUE's; then every column of
    each probe asked for (PROBE_COLUMNS)."""
    out: List[Column] = []
    for t in ev.tasks:
        cands = TASK_COLUMNS[t]
        named = [c for c in cands if c[0] in paper_columns] or cands[:1]
        out += [Column(name, t, metric) for name, metric in named]
    glue = tuple(t for t in ev.tasks if t in GLUE_TASKS)
    if len(glue) >= 2:
        out.append(Column(GLUE_AVG, "glue", "", glue))
    for probe, cols in PROBE_COLUMNS.items():
        if ev.probes[probe]:
            out += [Column(name, probe, key) for name, key in cols]
    return out


def main_column(task: str) -> Column:
    """A task's column of its main metric, the first of TASK_COLUMNS."""
    name, metric = TASK_COLUMNS[task][0]
    return Column(name, task, metric)


def probe_value(run: Path, col: Column, random_init: bool = False) -> List[float]:
    """``[value in percent]`` of a probe column from ``<run>/eval[-random-init]/<probe>.json``;
    [] before the probe ran. UserError for a file that does not parse."""
    f = run / ("eval-random-init" if random_init else "eval") / f"{col.task}.json"
    if not f.is_file():
        return []
    try:
        v: Any = json.loads(f.read_text())
        for part in col.metric.split("."):
            v = v[part]
        return [100.0 * float(v)]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{f}: not a {col.task}.json of `pretrain probe` ({type(e).__name__}: {e}); rerun the probe") from None


def job_scores(job: Path, metric: str) -> List[float]:
    """Every per-seed score (percent) of ``metric`` at the job's chosen lr; [] while the job
    has no scores.json. UserError for a scores.json that does not parse."""
    from pretrain.downstream.runner import SCORES_JSON, lr_tag, read_scores

    f = job / SCORES_JSON
    if not f.is_file():
        return []
    s = read_scores(f)
    try:
        per_seed = s["per_lr"][lr_tag(float(s["chosen_lr"]))]["scores"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{f}: not a scores.json of `pretrain finetune` ({type(e).__name__}: {e}); rerun the job") from None
    return [100.0 * float(v[metric]) for _seed, v in sorted(per_seed.items()) if v.get(metric) is not None]


def cell(runs: Sequence[Path], col: Column, random_init: bool = False) -> Cell:
    """The pooled cell of ``col`` over the jobs of ``runs`` (pretraining run directories);
    for GLUE_AVG, ``glue_average`` of its tasks' main-metric cells."""
    from pretrain.downstream.runner import job_directory

    if col.averages:
        return glue_average([cell(runs, main_column(t), random_init) for t in col.averages])
    vals: List[float] = []
    for run in runs:
        if col.task in PROBE_COLUMNS:
            vals += probe_value(run, col, random_init)
        else:
            vals += job_scores(job_directory({"run_dir": run}, col.task, random_init, "runs"), col.metric)
    return Cell.of(vals)


def glue_average(cells: Sequence[Cell]) -> Cell:
    """The GLUE score of one row: the mean over tasks of each task's median (ELECTRA, Clark et
    al. 2020, §3.1 and Table 1: "the average score over all tasks" of medians over fine-tuning
    runs; BERT, Devlin et al. 2019, Table 1's "Average"); min–max = the mean of the tasks'
    minimums – the mean of their maximums, n = the smallest task's n. Empty unless every task
    has a score: an average over fewer tasks would not compare with another row's."""
    if not cells or any(c.median is None for c in cells):
        return Cell()
    return Cell(*(statistics.mean(getattr(c, f) for c in cells) for f in ("median", "low", "high")), min(c.n for c in cells))


def glue_average_note(col: Column) -> str:
    """What the table's GLUE_AVG column averages, and how its task set and metrics differ from
    the papers' GLUE score (``glue_average``)."""
    mains = [main_column(t) for t in col.averages]
    missing = ", ".join(main_column(t).name.split()[0] for t in GLUE_TASKS if t not in col.averages)
    f1 = " and ".join(c.name.split()[0] for c in mains if c.metric == "dev_f1")
    return (f"{col.name}: per row, the mean of the medians of {', '.join(c.name for c in mains)} (each task's main "
            "metric, as BERT Table 1 prints it), like the per-task average of BERT Table 1 and ELECTRA's GLUE score "
            "(Clark et al. 2020, §3.1, Tables 1 and 5); min–max = the mean of those tasks' minimums – the mean of "
            "their maximums, n = the smallest task's n; empty until every one of those tasks has a score. Not the "
            "papers' task set: " + (f"theirs also averages {missing}, which this ablation does not fine-tune" if missing else
                                    "the same tasks")
            + (f"; ELECTRA scores {f1} by accuracy, not F1" if f1 else "")
            + " — compare the ordering of the rows, not the values.")


def paper_only_note(paper_columns: Sequence[str], ours: Sequence[Column]) -> List[str]:
    """Why each paper column that names a downstream task has no column of ours."""
    have = {c.name for c in ours}
    notes = []
    for col in paper_columns:
        key = col.split()[0] if col.split() else col
        if col not in have and key in UNAVAILABLE and UNAVAILABLE[key] not in notes:
            notes.append(UNAVAILABLE[key])
    return notes


@dataclass
class ControlCheck:
    """Whether an arm's pretraining beat the random-init control on one column: ``diff`` =
    arm median − control median (points), ``spread`` = the larger min–max of the two."""

    column: str
    arm: str
    diff: float
    spread: float

    @property
    def beats(self) -> bool:
        return self.diff > self.spread


def control_checks(cols: Sequence[Column], arms: Dict[str, Dict[str, Cell]], control: Dict[str, Cell]) -> List[ControlCheck]:
    """One ControlCheck per column × arm where both the arm and the control have scores."""
    out = []
    for col in cols:
        c = control.get(col.name)
        if c is None or c.median is None:
            continue
        for arm, cells in arms.items():
            a = cells.get(col.name)
            if a is None or a.median is None:
                continue
            spread = max(a.high - a.low, c.high - c.low)
            out.append(ControlCheck(col.name, arm, a.median - c.median, spread))
    return out


def render_notes(rec, results, cols: Sequence[Column], settings: Optional[Dict[str, List[str]]] = None) -> List[str]:
    """The table page's paragraphs on the fine-tuning columns: how they were made and pooled,
    paper columns we cannot run, the control row, and per column and arm whether pretraining
    beat the control by more than the spread (issue 14's check), from the cells shown."""
    from pretrain.ablations.spec import seed_runs
    from pretrain.ablations.stages import finetune_preset

    ev = rec.ablation.evaluate
    preset = rec.finetune_preset or finetune_preset(ev.preset, rec.preset)
    over = " ".join(f"`{o}`" for o in ev.overrides) or "none"
    lines = [
        f"Ours, fine-tuned (`pretrain finetune`, preset `{preset}`, overrides {over}, on each run's final "
        "checkpoint): per column the median, in percent, of every per-seed score at the learning rate each job "
        "chose by its own dev median, pooled over all pretraining seeds × fine-tuning seeds; beside it the "
        "min–max of the same scores and their number (n). GLUE columns are dev-set scores; CoNLL-2003 test F1 is "
        "eng.testb, entity-level micro F1.",
        "",
    ] if ev.tasks else []
    lines += settings_lines(settings or {})
    if ev.probes.blimp:
        limit = "all 1,000" if ev.probes.blimp_limit is None else f"the first {ev.probes.blimp_limit}"
        lines += [f"BLiMP overall: zero-shot, the share (%) of minimal pairs (Warstadt et al. 2020; {limit} pairs of each "
                  "of the 67 phenomena) whose good sentence has the higher pseudo-log-likelihood (Salazar et al. 2020); "
                  "one value per pretraining run (`pretrain probe blimp`).", ""]
    if ev.probes.sentence:
        lines += ["MLM acc, NSP acc, SOP acc: zero-shot, ALBERT Table 5's intrinsic accuracies on one held-out NSP set "
                  f"and one SOP set ({ev.probes.sentence_pairs} pairs each at most) built from the validation documents "
                  "and shared by every arm, masked-token accuracy on the same text; a model without a head for a task "
                  "answers with a seeded untrained one (chance); one value per pretraining run (`pretrain probe sentence`).", ""]
    for c in cols:
        lines += [glue_average_note(c), ""] if c.averages else []
    for note in paper_only_note(rec.ablation.paper.columns, cols):
        lines += [f"Paper only: {note}.", ""]
    if not ev.control:
        return lines
    first = seed_runs(rec.ablation)[0][2]
    lines += [f"`{CONTROL_ROW}`: the shape and tokenizer of run `{first}` from random weights, through the same "
              "fine-tuning (and BLiMP, when probed; no pretraining, so no MLM numbers): what pretraining bought at this "
              "scale.", ""]
    control = next((r.downstream for r in results if r.arm == CONTROL_ROW), {})
    arms = {r.arm: r.downstream for r in results if r.arm != CONTROL_ROW}
    checks = control_checks(cols, arms, control)
    if not checks:
        return lines
    lines += ["Pretraining vs. the control (difference of medians in points; spread = the larger min–max of "
              "the two rows; \"yes\" when the difference is larger than the spread):", "",
              "| column | arm | arm − control | spread | beats the control |", "|---|---|---|---|---|"]
    lines += [f"| {c.column} | `{c.arm}` | {c.diff:+.2f} | {c.spread:.2f} | {'yes' if c.beats else 'no'} |" for c in checks]
    return lines + [""]


# The keys of a job's finetune.yaml that the table names (what a reader needs to compare rows).
SETTINGS = (("lrs", "lrs"), ("seeds", "seeds"), ("epochs", "epochs"), ("train.global_batch_size", "batch"),
            ("data.max_length", "max length"), ("data.max_train_rows", "training rows"), ("train.precision", "precision"))


def job_settings(abl_dir: Path, rec) -> Dict[str, List[str]]:
    """The fine-tuning settings each job recorded in its ``finetune.yaml`` (SETTINGS, in
    words) → the jobs (``<run>/finetune/<job>``) that used them; jobs not run yet are left out.
    One key = every row fine-tuned alike."""
    from omegaconf import OmegaConf

    from pretrain.ablations.spec import seed_runs
    from pretrain.downstream.runner import job_directory

    ev = rec.ablation.evaluate
    jobs = [(rel, t, False) for _arm, _seed, rel in seed_runs(rec.ablation) for t in ev.tasks]
    if ev.control:
        jobs += [(seed_runs(rec.ablation)[0][2], t, True) for t in ev.tasks]
    out: Dict[str, List[str]] = {}
    for rel, task, random_init in jobs:
        f = job_directory({"run_dir": Path(abl_dir) / rel}, task, random_init, "runs") / "finetune.yaml"
        if not f.is_file():
            continue
        cfg = read_yaml(f)
        words = []
        for key, name in SETTINGS:
            v = OmegaConf.select(cfg, key)
            v = OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
            words.append(f"{name} {'all' if v is None else v}")
        out.setdefault(", ".join(words), []).append(f"{rel}/finetune/{f.parent.name}")
    return out


def settings_lines(settings: Dict[str, List[str]]) -> List[str]:
    """The table page's line on the recorded fine-tuning settings (module docstring)."""
    if not settings:
        return []
    if len(settings) == 1:
        return [f"Fine-tuning settings recorded by every job (`finetune.yaml`): {next(iter(settings))}.", ""]
    lines = ["Fine-tuning settings recorded by the jobs (`finetune.yaml`) differ:", ""]
    lines += [f"- {words}: {', '.join(f'`{j}`' for j in jobs)}" for words, jobs in settings.items()]
    return lines + [""]


def settings_warning(settings: Dict[str, List[str]]) -> List[str]:
    """A warning when the jobs were fine-tuned with different settings (their rows then
    compare more than pretraining)."""
    if len(settings) < 2:
        return []
    return ["the fine-tuning jobs were not all run with the same settings (listed under the table): rows fine-tuned "
            "differently compare more than their pretraining."]
