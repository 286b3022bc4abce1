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
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from common.atomic import write_text_atomic
from common.errors import UserError
from pretrain.ablations import downstream
from pretrain.ablations.downstream import CONTROL_ROW, Cell, Column
from pretrain.ablations.plots import last_per_step, plot_loss_curves
from pretrain.ablations.spec import AblationRecord, ablate_command, arm_command, load_ablation, load_record, seed_runs
from pretrain.ablations.verdicts import Verdict, compute_verdicts, mask_reuse_warnings, token_warnings
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
    downstream: column name → the pooled fine-tuning scores of the arm's runs
        (``pretrain.ablations.downstream``); also in ``seed_values`` under the column name.
    """

    arm: str
    status: str
    mlm_loss: Optional[float] = None
    perplexity: Optional[float] = None
    accuracy_pct: Optional[float] = None
    tokens_seen: Optional[int] = None
    epochs: Optional[float] = None
    wall_min: Optional[float] = None
    sentence_accuracy_pct: Optional[float] = None
    parameters: Optional[int] = None
    seeds_done: Optional[int] = None
    mlm_loss_spread: Optional[float] = None
    seed_values: Optional[Dict[str, List[float]]] = None
    downstream: Dict[str, Cell] = field(default_factory=dict)


# (header, ArmResult field, markdown format). The CSV keeps full precision.
OUR_COLUMNS: List[tuple] = [
    ("held-out MLM loss", "mlm_loss", "{:.4f}"),
    ("perplexity", "perplexity", "{:.2f}"),
    ("masked-token accuracy (%)", "accuracy_pct", "{:.2f}"),
    ("tokens seen", "tokens_seen", "{:,}"),
    ("epochs", "epochs", "{:.2f}"),
    ("wall time (min)", "wall_min", "{:.2f}"),
]
# Shown only where they apply: a sentence objective in some arm, several pretraining seeds,
# arms of different sizes.
SENTENCE_COLUMN = ("NSP/SOP accuracy (%)", "sentence_accuracy_pct", "{:.2f}")
PARAMS_COLUMN = ("parameters", "parameters", "{:,}")
SEED_COLUMNS = [("seeds done", "seeds_done", "{}"), ("MLM loss spread (max − min)", "mlm_loss_spread", "{:.4f}")]
PAPER_SUFFIX = " (paper)"
# summary.json's final_eval key → ArmResult field, for the seeds' medians and the verdicts.
METRIC_FIELDS = {"mlm_loss": "mlm_loss", "mlm_accuracy": "accuracy_pct", "sentence_accuracy": "sentence_accuracy_pct"}


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
            sentence_accuracy_pct=_pct(ev.get("sentence_accuracy")),
            parameters=_int(summary.get("num_parameters")),
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
        res.sentence_accuracy_pct = _pct(ev.get("sentence_accuracy"))
    if records:
        res.tokens_seen, res.epochs = _int(records[-1].get("tokens_seen")), _num(records[-1].get("epoch"))
    return res


def collect(abl_dir: Path, rec: AblationRecord) -> List[ArmResult]:
    """One ArmResult per arm, in the ablation's arm order. With ``seeds``, each arm's row is
    the median over its finished seeds (``seeds_done`` of them; the MLM loss spread is max −
    min over them; ``seed_values`` keeps every seed's metrics for the verdicts)."""
    abl = rec.ablation
    if not abl.seeds:
        out = []
        for arm in abl.arms:
            r = collect_arm(arm, abl_dir / arm)
            if r.status == "done":
                r.seed_values = {f: [getattr(r, f)] for f in METRIC_FIELDS.values() if getattr(r, f) is not None}
            out.append(r)
    else:
        out = [_median_arm(arm, [collect_arm(arm, abl_dir / arm / f"seed-{s}") for s in abl.seeds]) for arm in abl.arms]
    cols = downstream_columns(rec)
    if not cols:
        return out
    runs: Dict[str, List[Path]] = {}
    for arm, _seed, rel in seed_runs(abl):
        runs.setdefault(arm, []).append(abl_dir / rel)
    for r in out:
        r.downstream = {c.name: downstream.cell(runs[r.arm], c) for c in cols}
        r.seed_values = dict(r.seed_values or {}, **{n: c.values for n, c in r.downstream.items() if c.values})
    if abl.evaluate.control:
        first = abl_dir / seed_runs(abl)[0][2]
        # the control has no sentence probe (no random-init mode): its stages are the tasks and BLiMP
        units = [*abl.evaluate.tasks, *(["blimp"] if abl.evaluate.probes.blimp else [])]
        cells = {c.name: downstream.cell([first], c, random_init=True) for c in cols if c.task in units}
        done = sum(1 for t in units if any(cells[c.name].n for c in cols if c.task == t))
        status = "done" if done == len(units) else ("not run" if not done else f"{done}/{len(units)} stages done")
        out.append(ArmResult(arm=CONTROL_ROW, status=status, downstream=cells))
    return out


def downstream_columns(rec: AblationRecord) -> List[Column]:
    """Our fine-tuning columns of the ablation (``evaluate.tasks``), named as the paper's."""
    return downstream.columns(rec.ablation.evaluate, rec.ablation.paper.columns)


def _median_arm(arm: str, runs: List[ArmResult]) -> ArmResult:
    done = [r for r in runs if r.status == "done"]
    if not done:
        started = [r for r in runs if r.status != "not run"]
        status = "not run" if not started else f"0/{len(runs)} seeds done"
        return ArmResult(arm=arm, status=status, seeds_done=0)
    res = ArmResult(arm=arm, status="done" if len(done) == len(runs) else f"{len(done)}/{len(runs)} seeds done")
    res.seeds_done = len(done)
    for f in ("mlm_loss", "perplexity", "accuracy_pct", "tokens_seen", "epochs", "wall_min", "sentence_accuracy_pct", "parameters"):
        vals = [getattr(r, f) for r in done if getattr(r, f) is not None]
        if vals:
            med = statistics.median(vals)
            setattr(res, f, int(med) if f in ("tokens_seen", "parameters") else float(med))
    losses = [r.mlm_loss for r in done if r.mlm_loss is not None]
    res.mlm_loss_spread = max(losses) - min(losses) if losses else None
    res.seed_values = {f: [getattr(r, f) for r in done if getattr(r, f) is not None] for f in METRIC_FIELDS.values()}
    return res


def our_columns(rec: AblationRecord, results: List[ArmResult]) -> List[tuple]:
    """The columns of our side of the table: always OUR_COLUMNS; the NSP/SOP accuracy when
    an arm has one, parameters when the arms differ in size, and the seed columns when the
    ablation lists ``seeds``."""
    cols = list(OUR_COLUMNS)
    if any(r.sentence_accuracy_pct is not None for r in results):
        cols.insert(3, SENTENCE_COLUMN)
    if len({r.parameters for r in results if r.parameters is not None}) > 1:
        cols.append(PARAMS_COLUMN)
    if rec.ablation.seeds:
        cols += SEED_COLUMNS
    return cols


def render_csv(rec: AblationRecord, results: List[ArmResult]) -> str:
    """CSV text: arm, status, our columns (full precision), then the paper's columns."""
    cols = our_columns(rec, results)
    dcols, rest = downstream_columns(rec), _paper_rest(rec)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["arm", "status", *[h for h, _, _ in cols]]
    for c in dcols:
        head += [c.name, f"{c.name} min", f"{c.name} max", f"{c.name} n"] + ([c.name + PAPER_SUFFIX] if _in_paper(rec, c) else [])
    w.writerow(head + [c + PAPER_SUFFIX for c in rest])
    for r in results:
        row = [r.arm, r.status, *[_csv_cell(getattr(r, f)) for _, f, _ in cols]]
        for c in dcols:
            x = r.downstream.get(c.name) or Cell()
            row += [_csv_cell(x.median), _csv_cell(x.low), _csv_cell(x.high), str(x.n) if x.n else ""]
            row += [_csv_cell(_paper_value(rec, r.arm, c.name))] if _in_paper(rec, c) else []
        w.writerow(row + [_csv_cell(_paper_value(rec, r.arm, p)) for p in rest])
    return buf.getvalue()


def render_markdown(
    rec: AblationRecord, results: List[ArmResult], runs_root: str, results_dir: str,
    verdicts: Sequence[Verdict] = (), warnings: Sequence[str] = (),
    settings: Optional[Dict[str, List[str]]] = None,
) -> str:
    """Markdown page: title, settings, warnings, the table, the verdicts, notes, the plot and
    the commands."""
    abl = rec.ablation
    cols = our_columns(rec, results)
    dcols, rest = downstream_columns(rec), _paper_rest(rec)
    headers = [h for h, _, _ in cols]
    for c in dcols:
        headers += [c.name, f"{c.name} min–max (n)"] + ([c.name + PAPER_SUFFIX] if _in_paper(rec, c) else [])
    headers += [p + PAPER_SUFFIX for p in rest]
    lines = [f"# {abl.title}", ""]
    over = " ".join(f"`{o}`" for o in rec.overrides) or "none"
    seeds = f"; pretraining seeds {', '.join(str(s) for s in abl.seeds)} (our columns: median over seeds)" if abl.seeds else ""
    lines += [f"Preset `{rec.preset}`; command-line overrides: {over}{seeds}.", ""]
    for w in warnings:
        lines += [f"**Warning:** {w}", ""]
    lines.append("| arm | status | " + " | ".join(_md_escape(h) for h in headers) + " |")
    lines.append("|" + "---|" * (len(headers) + 2))
    for r in results:
        row = [_md_cell(getattr(r, f), fmt) for _, f, fmt in cols]
        for c in dcols:
            x = r.downstream.get(c.name) or Cell()
            row += [_md_cell(x.median, "{:.2f}"), "—" if not x.n else f"{x.low:.2f}–{x.high:.2f} ({x.n})"]
            row += [_paper_text(_paper_value(rec, r.arm, c.name))] if _in_paper(rec, c) else []
        row += [_paper_text(_paper_value(rec, r.arm, p)) for p in rest]
        name = r.arm if r.arm == CONTROL_ROW else f"`{r.arm}`"
        lines.append("| " + " | ".join([name, r.status, *row]) + " |")
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
        *([f"Paper numbers: {abl.paper.source}.", ""] if abl.paper.source else []),
    ]
    if dcols:
        lines += downstream.render_notes(rec, results, dcols, settings)
    if verdicts:
        lines += render_verdicts(verdicts)
    if abl.paper.columns and dcols:
        lines += [
            f"Note: the (paper) columns are the paper's numbers for its full-scale model; our fine-tuning columns "
            f"beside them are the same tasks after pretraining at the `{rec.preset}` preset's scale, so compare the "
            "ordering of the arms, not the values.",
            "",
        ]
    elif abl.paper.columns:
        lines += [
            f"Note: the (paper) columns are the paper's numbers for its full-scale model (mostly fine-tuning scores); "
            f"ours are held-out MLM metrics at the `{rec.preset}` preset's scale, so they are not directly comparable "
            "(compare the ordering of the arms, not the values).",
            "",
        ]
    lines += [
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
    lines += [f"    {arm_command(rec, arm, seed, rel)}" for arm, seed, rel in seed_runs(abl)]
    return "\n".join(lines) + "\n"


def render_verdicts(verdicts: Sequence[Verdict]) -> List[str]:
    """The verdict section of a table page: one row per claim."""
    lines = [
        "Verdicts (difference = first arm − second arm; ours on our fine-tuned column of the paper's name when we "
        "measure one, else on the held-out metric named; median over seeds, "
        "spread = the larger max − min over seeds of the two arms; \"inconclusive\" when our difference "
        "is within the spread, when an arm has fewer than two finished seeds, or when a warning above says the runs cannot show the effect):",
        "",
        "| claim | arms | paper difference | ours | spread | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        lines.append(
            f"| {_md_escape(v.claim.text)} | `{v.claim.a}` − `{v.claim.b}` | {v.paper_text()} | {v.ours_text()} | "
            f"{v.spread_text()} | **{v.verdict}**{' (' + v.reason + ')' if v.reason else ''} |"
        )
    return lines + [""]


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
    rec = current_claims(load_record(abl_dir))
    results = collect(abl_dir, rec)
    blocking = mask_reuse_warnings(abl_dir, rec.ablation)
    verdicts = table_verdicts(rec, results, blocking)
    warnings = blocking + token_warnings(results)
    md, csv_path, png_path = table_paths(results_dir, rec.preset, rec.ablation.name)
    out = md.parent
    out.mkdir(parents=True, exist_ok=True)
    settings = downstream.job_settings(abl_dir, rec)
    warnings = warnings + downstream.settings_warning(settings)
    write_text_atomic(md, render_markdown(rec, results, str(runs_root), str(results_dir), verdicts, warnings, settings))
    write_text_atomic(csv_path, render_csv(rec, results))
    runs = {rel: abl_dir / rel for _arm, _seed, rel in seed_runs(rec.ablation)}
    png = plot_loss_curves(runs, png_path, rec.ablation.title)
    return [md, csv_path, png]


def table_verdicts(rec: AblationRecord, results: List[ArmResult], warnings: Sequence[str]) -> List[Verdict]:
    """The verdict of every claim of the ablation from the table's numbers; ``warnings``: the
    table's warnings that its runs cannot show the effect (each verdict is then inconclusive)."""
    abl = rec.ablation
    values = {r.arm: r.seed_values or {} for r in results}
    measured = {c.name: c.kind for c in downstream_columns(rec)}
    return compute_verdicts(abl.claims, abl.paper.columns, abl.paper.rows, values, bool(warnings), measured)


def current_claims(rec: AblationRecord) -> AblationRecord:
    """The record with the title, paper numbers and claims of the ablation file it was run
    from, when that file still exists with the same name and arms: those do not change what
    was trained (``runner._check_same_record``), so a table made from old logs shows the
    claims as they are written now; and the file's ``evaluate`` section when the record has
    none (fine-tuning stages added after pretraining). Otherwise the record as it is."""
    src = Path(rec.source)
    if not src.is_file():
        return rec
    try:
        now = load_ablation(src)
    except UserError:
        return rec
    if now.name != rec.ablation.name or list(now.arms) != list(rec.ablation.arms):
        return rec
    rec.ablation.title, rec.ablation.paper, rec.ablation.claims = now.title, now.paper, now.claims
    from pretrain.ablations.spec import evaluating

    if not evaluating(rec.ablation.evaluate):
        # A record made before the file had an evaluate section: its fine-tuning jobs (run by
        # hand or by a later `pretrain ablate`) are read as the file now names them.
        rec.ablation.evaluate = now.evaluate
    return rec


def rebuild_tables(runs_root: str | Path, results_dir: str | Path, ablations_dir: str | Path = "configs/ablation") -> List[Path]:
    """Rebuild the table, CSV and plot of every ablation under ``runs_root`` (``pretrain
    tables``) into ``results_dir/<preset>/``, then the verdict summary of
    ``results_dir/README.md`` (``write_summary``). Returns the written paths. Raises
    UserError when no ``runs_root/*/ablation.yaml`` exists."""
    found = sorted(Path(runs_root).glob(f"*/{rundir.ABLATION}"))
    if not found:
        raise UserError(
            f"no ablations found: looked for {Path(runs_root) / '*' / rundir.ABLATION}; "
            "run `pretrain ablate` first or pass --runs DIR"
        )
    written: List[Path] = []
    for f in found:
        written += write_ablation_table(f.parent, results_dir, runs_root)
    written.append(write_summary(runs_root, results_dir, ablations_dir))
    return written


SUMMARY_START = "<!-- verdict summary: generated by `pretrain tables` from the run logs; edits here are overwritten -->"
SUMMARY_END = "<!-- end of verdict summary -->"


def render_summary(runs_root: str | Path, ablations_dir: str | Path) -> str:
    """The verdict summary: every claim of every ablation file in ``ablations_dir`` with its
    verdict from the runs under ``runs_root`` (``not run yet`` for an ablation without a
    record there), linked to its table; ablations recorded under ``runs_root`` whose file
    is not in ``ablations_dir`` are listed too."""
    files = {p.stem: p for p in sorted(Path(ablations_dir).glob("*.yaml"))}
    recorded = {f.parent.name: f.parent for f in sorted(Path(runs_root).glob(f"*/{rundir.ABLATION}"))}
    lines = [
        SUMMARY_START,
        "## Verdicts at our scale",
        "",
        "Each paper claim that an ablation in `configs/ablation/` tests, and its verdict from our runs "
        "(see each table for the numbers, the spread over seeds and any warning).",
        "",
        "| ablation | claim | arms | paper difference | verdict |",
        "|---|---|---|---|---|",
    ]
    for name in sorted(set(files) | set(recorded)):
        if name in recorded:
            rec = current_claims(load_record(recorded[name]))
            results = collect(recorded[name], rec)
            verdicts = table_verdicts(rec, results, mask_reuse_warnings(recorded[name], rec.ablation))
            where = f"[{preset_dir(rec.preset)}/{name}.md]({preset_dir(rec.preset)}/{name}.md)"
            claims = rec.ablation.claims
        else:
            abl = load_ablation(files[name])
            where, claims = f"`{name}`", abl.claims
            verdicts = compute_verdicts(abl.claims, abl.paper.columns, abl.paper.rows, {}, False)
        if not claims:
            lines.append(f"| {where} | no claim listed (its file has no `claims:`) | — | — | " + ("see the table" if name in recorded else "not run yet") + " |")
        for v in verdicts:
            verdict = "not run yet" if v.reason == "not run yet" else f"**{v.verdict}**" + (f" ({v.reason})" if v.reason else "")
            verdict += f"; by {v.measure()}" if name in recorded else ""
            lines.append(f"| {where} | {_md_escape(v.claim.text)} | `{v.claim.a}` − `{v.claim.b}` | {v.paper_text()} | {verdict} |")
    lines += ["", SUMMARY_END]
    return "\n".join(lines) + "\n"


def write_summary(runs_root: str | Path, results_dir: str | Path, ablations_dir: str | Path = "configs/ablation") -> Path:
    """Put ``render_summary`` at the top of ``results_dir/README.md`` (replacing the previous
    summary between its markers; creating the file if there is none). Returns its path."""
    readme = Path(results_dir) / "README.md"
    summary = render_summary(runs_root, ablations_dir)
    old = readme.read_text() if readme.is_file() else ""
    if SUMMARY_START in old and SUMMARY_END in old:
        head, rest = old.split(SUMMARY_START, 1)
        tail = rest.split(SUMMARY_END, 1)[1].lstrip("\n")
        new = head + summary + "\n" + tail
    elif old.startswith("# "):
        title, _, body = old.partition("\n")
        new = title + "\n\n" + summary + "\n" + body.lstrip("\n")
    else:
        new = summary + ("\n" + old if old else "")
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(readme, new)
    return readme


# ----------------------------------------------------------------------------- helpers


def _shares_validation(abl: Any) -> bool:
    """False if some arm sets ``data.format`` or ``data.sentence_objective``: such arms
    build different pairs, so ``pretrain ablate`` lets their validation splits differ."""
    for over in OmegaConf.to_container(OmegaConf.create(dict(abl.arms)), resolve=True).values():
        data = (over or {}).get("data") or {}
        if "format" in data or "sentence_objective" in data:
            return False
    return True


def _paper_rest(rec: AblationRecord) -> List[str]:
    """The paper's columns that have no fine-tuning column of ours, in the paper's order."""
    ours = {c.name for c in downstream_columns(rec)}
    return [c for c in rec.ablation.paper.columns if c not in ours]


def _in_paper(rec: AblationRecord, col: Column) -> bool:
    return col.name in rec.ablation.paper.columns


def _paper_value(rec: AblationRecord, arm: str, column: str) -> Optional[float]:
    row = rec.ablation.paper.rows.get(arm)
    return None if row is None else row[list(rec.ablation.paper.columns).index(column)]


def _paper_text(v: Optional[float]) -> str:
    return "—" if v is None else str(v)  # as written in the YAML


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

