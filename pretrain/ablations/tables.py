"""Result tables of ablations, rebuilt from run directories alone (no training).

For every ``runs_root/<name>/ablation.yaml`` (written by ``pretrain.ablations.runner``) this writes
``results/<preset>/<name>.md``, ``.csv`` and the loss-curve plot ``.png`` — one directory per
preset, so a quick ``smoke`` run never overwrites the committed ``small`` tables —
one row per arm with our held-out MLM metrics and the paper's numbers for the same arm,
labelled "(paper)". Arms that have not finished are listed and marked, so a table can be
made while an ablation is still running. Every number comes from the run logs
(summary.json, metrics.jsonl) or, for the paper's columns, from the ablation YAML.
"""

from __future__ import annotations

import csv
import io
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import OmegaConf

from common.atomic import write_text_atomic
from common.errors import UserError
from pretrain.ablations.plots import last_per_step, plot_loss_curves
from pretrain.ablations.spec import AblationRecord, ablate_command, arm_command, load_record
from pretrain.training import rundir


@dataclass
class ArmResult:
    """What the table shows for one arm. Metric fields are None when not available.

    status: ``done``, ``not run`` or ``unfinished, step k/N`` (running or interrupted;
        then the metrics are those of the latest held-out evaluation).
    mlm_loss: held-out masked-LM cross-entropy, nats per masked token.
    perplexity: exp(mlm_loss) as logged by the trainer.
    accuracy_pct: held-out masked-token accuracy in percent.
    tokens_seen / epochs: training tokens consumed and passes over the training data.
    wall_min: training wall time in minutes (summed over resumed segments; finished arms only).
    """

    arm: str
    status: str
    mlm_loss: Optional[float] = None
    perplexity: Optional[float] = None
    accuracy_pct: Optional[float] = None
    tokens_seen: Optional[int] = None
    epochs: Optional[float] = None
    wall_min: Optional[float] = None


# (header, ArmResult field, markdown format). The CSV keeps full precision.
OUR_COLUMNS: List[tuple] = [
    ("held-out MLM loss", "mlm_loss", "{:.4f}"),
    ("perplexity", "perplexity", "{:.2f}"),
    ("masked-token accuracy (%)", "accuracy_pct", "{:.2f}"),
    ("tokens seen", "tokens_seen", "{:,}"),
    ("epochs", "epochs", "{:.2f}"),
    ("wall time (min)", "wall_min", "{:.2f}"),
]
PAPER_SUFFIX = " (paper)"


def collect_arm(arm: str, run: Path) -> ArmResult:
    """Read one arm's result from its run directory (see rundir.py for the files)."""
    summary = rundir.read_summary(run)
    if summary and summary.get("status") == "done":
        ev = summary.get("final_eval") or {}
        return ArmResult(
            arm=arm,
            status="done",
            mlm_loss=_num(ev.get("mlm_loss")),
            perplexity=_num(ev.get("perplexity")),
            accuracy_pct=_pct(ev.get("mlm_accuracy")),
            tokens_seen=_int(summary.get("tokens_seen")),
            epochs=_num(summary.get("epochs")),
            wall_min=_num(summary["wall_time_s"]) / 60 if summary.get("wall_time_s") is not None else None,
        )
    records = last_per_step(rundir.read_metrics(run))
    if not run.is_dir() or (not records and not (run / rundir.CONFIG).is_file()):
        return ArmResult(arm=arm, status="not run")
    step = max((int(r["step"]) for r in records), default=0)
    res = ArmResult(arm=arm, status=f"unfinished, step {step}/{_max_steps(run) or '?'}")
    evals = [r for r in records if r.get("kind") == "eval"]
    if evals:
        ev = evals[-1]
        res.mlm_loss, res.perplexity = _num(ev.get("mlm_loss")), _num(ev.get("perplexity"))
        res.accuracy_pct = _pct(ev.get("mlm_accuracy"))
    if records:
        res.tokens_seen, res.epochs = _int(records[-1].get("tokens_seen")), _num(records[-1].get("epoch"))
    return res


def collect(abl_dir: Path, rec: AblationRecord) -> List[ArmResult]:
    """One ArmResult per arm, in the ablation's arm order."""
    return [collect_arm(arm, abl_dir / arm) for arm in rec.ablation.arms]


def render_csv(rec: AblationRecord, results: List[ArmResult]) -> str:
    """CSV text: arm, status, our columns (full precision), then the paper's columns."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_headers(rec))
    for r in results:
        ours = [_csv_cell(getattr(r, f)) for _, f, _ in OUR_COLUMNS]
        w.writerow([r.arm, r.status, *ours, *[_csv_cell(v) for v in _paper_row(rec, r.arm)]])
    return buf.getvalue()


def render_markdown(rec: AblationRecord, results: List[ArmResult], runs_root: str, results_dir: str) -> str:
    """Markdown page: title, settings, the table, notes, the plot and the commands."""
    abl = rec.ablation
    lines = [f"# {abl.title}", ""]
    over = " ".join(f"`{o}`" for o in rec.overrides) or "none"
    lines += [f"Preset `{rec.preset}`; command-line overrides: {over}.", ""]
    lines.append("| arm | status | " + " | ".join(_md_escape(h) for h in _headers(rec)[2:]) + " |")
    lines.append("|" + "---|" * len(_headers(rec)))
    for r in results:
        ours = [_md_cell(getattr(r, f), fmt) for _, f, fmt in OUR_COLUMNS]
        paper = ["—" if v is None else str(v) for v in _paper_row(rec, r.arm)]  # as written in the YAML
        lines.append("| " + " | ".join([f"`{r.arm}`", r.status, *ours, *paper]) + " |")
    lines += [
        "",
        "Ours: held-out masked-LM loss (nats per masked token), perplexity and masked-token accuracy on "
        + ("the validation split, masked once with a fixed seed and shared by every arm"
           if _shares_validation(abl) else
           "each arm's validation split (the arms differ in input format or sentence objective, so their "
           "pairs differ; the documents, tokenizer and mask seed are shared)")
        + ", after the last "
        "training step (for an unfinished arm: its latest evaluation); tokens seen, epochs over the training data and training wall time from the run logs.",
        "",
        f"Paper numbers: {abl.paper.source}.",
        "",
        f"Note: the (paper) columns are the paper's fine-tuning scores of its full-scale model; ours are "
        f"held-out MLM metrics at the `{rec.preset}` preset's scale, so they are not directly comparable "
        "(compare the ordering of the arms, not the values).",
        "",
        f"![train and held-out MLM loss vs. tokens seen]({abl.name}.png)",
        "",
        "Regenerate this table, its CSV and plot from the run directories (no training):",
        "",
        f"    {shlex.join(['pretrain', 'tables', '--runs', str(runs_root), '--results', str(results_dir)])}",
        "",
        "Run commands (rerunning skips finished arms and resumes interrupted ones):",
        "",
        f"    {ablate_command(rec)}",
        "",
        "Each arm alone:",
        "",
    ]
    lines += [f"    {arm_command(rec, arm)}" for arm in abl.arms]
    return "\n".join(lines) + "\n"


def preset_dir(preset: str) -> str:
    """The subdirectory of the results root that a preset's tables go to: the preset's name
    (``--preset smoke`` → ``smoke``; a preset given as a YAML path → its file stem)."""
    p = Path(preset)
    return p.stem if p.suffix in (".yaml", ".yml") else preset


def table_paths(results_dir: str | Path, preset: str, name: str) -> List[Path]:
    """``results_dir/<preset>/<name>.md``, ``.csv``, ``.png``: where an ablation's table goes."""
    out = Path(results_dir) / preset_dir(preset)
    return [out / f"{name}.md", out / f"{name}.csv", out / f"{name}.png"]


def write_ablation_table(abl_dir: str | Path, results_dir: str | Path, runs_root: str | Path) -> List[Path]:
    """Write ``results_dir/<preset>/<name>.md``, ``.csv`` and ``.png`` for the ablation recorded
    in ``abl_dir/ablation.yaml`` (atomically: temp name, then rename). Returns the three paths.
    Raises UserError if the record is missing or invalid."""
    abl_dir = Path(abl_dir)
    rec = load_record(abl_dir)
    results = collect(abl_dir, rec)
    md, csv_path, png_path = table_paths(results_dir, rec.preset, rec.ablation.name)
    out = md.parent
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(md, render_markdown(rec, results, str(runs_root), str(results_dir)))
    write_text_atomic(csv_path, render_csv(rec, results))
    png = plot_loss_curves({a: abl_dir / a for a in rec.ablation.arms}, png_path, rec.ablation.title)
    return [md, csv_path, png]


def rebuild_tables(runs_root: str | Path, results_dir: str | Path) -> List[Path]:
    """Rebuild the table, CSV and plot of every ablation under ``runs_root`` (``pretrain
    tables``) into ``results_dir/<preset>/``. Returns the written paths. Raises UserError when no
    ``runs_root/*/ablation.yaml`` exists."""
    found = sorted(Path(runs_root).glob(f"*/{rundir.ABLATION}"))
    if not found:
        raise UserError(
            f"no ablations found: looked for {Path(runs_root) / '*' / rundir.ABLATION}; "
            "run `pretrain ablate` first or pass --runs DIR"
        )
    written: List[Path] = []
    for f in found:
        written += write_ablation_table(f.parent, results_dir, runs_root)
    return written


# ----------------------------------------------------------------------------- helpers


def _shares_validation(abl: Any) -> bool:
    """False if some arm sets ``data.format`` or ``data.sentence_objective``: such arms
    build different pairs, so ``pretrain ablate`` lets their validation splits differ."""
    for over in OmegaConf.to_container(OmegaConf.create(dict(abl.arms)), resolve=True).values():
        data = (over or {}).get("data") or {}
        if "format" in data or "sentence_objective" in data:
            return False
    return True


def _headers(rec: AblationRecord) -> List[str]:
    return ["arm", "status", *[h for h, _, _ in OUR_COLUMNS], *[c + PAPER_SUFFIX for c in rec.ablation.paper.columns]]


def _paper_row(rec: AblationRecord, arm: str) -> List[Optional[float]]:
    row = rec.ablation.paper.rows.get(arm)
    return list(row) if row is not None else [None] * len(rec.ablation.paper.columns)


def _max_steps(run: Path) -> Optional[int]:
    f = run / rundir.CONFIG
    if not f.is_file():
        return None
    v = OmegaConf.select(OmegaConf.load(f), "train.max_steps")
    return int(v) if v is not None else None


def _num(v: Any) -> Optional[float]:
    return float(v) if v is not None else None


def _int(v: Any) -> Optional[int]:
    return int(v) if v is not None else None


def _pct(v: Any) -> Optional[float]:
    # The trainer logs mlm_accuracy as a fraction of masked tokens predicted correctly.
    return 100.0 * float(v) if v is not None else None


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    return repr(float(v)) if isinstance(v, float) else str(v)


def _md_cell(v: Any, fmt: str) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return fmt.format(v)


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")

