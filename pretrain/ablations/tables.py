"""Result tables of ablations, rebuilt from run directories alone (no training).

For the ablation recorded in ``<runs_root>/<name>/ablation.yaml`` (written by
``pretrain.ablations.runner``) this writes ``results/<preset>/<name>.md``, ``.csv`` and the
loss-curve plot ``.png`` — one directory per preset, so a quick ``smoke`` run never
overwrites the committed ``small`` tables — one row per arm (``pretrain.ablations.arm_results``)
with our held-out MLM metrics and the paper's numbers for the same arm, labelled "(paper)".
Arms that have not finished are listed and marked, so a table can be made while an ablation
is still running. Every number comes from the run logs (summary.json, metrics.jsonl) or, for
the paper's columns, from the ablation YAML. ``pretrain.ablations.rebuild`` does this for
every recorded ablation.
"""

from __future__ import annotations

import csv
import io
import shlex
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from common.atomic import write_text_atomic
from common.errors import UserError
from pretrain.ablations import downstream
from pretrain.ablations.arm_results import ArmResult, collect, downstream_columns
from pretrain.ablations.cells import csv_cell, md_cell, md_escape, paper_text
from pretrain.ablations.downstream import CONTROL_ROW, Cell, Column
from pretrain.ablations.plots import plot_loss_curves
from pretrain.ablations.spec import AblationRecord, ablate_command, arm_command, evaluating, load_ablation, load_record, seed_runs
from pretrain.ablations.verdicts import Verdict, blocking_warnings, compute_verdicts, token_warnings


# (header, ArmResult field, markdown format). The CSV keeps full precision.
OUR_COLUMNS: List[tuple] = [
    ("held-out MLM loss", "mlm_loss", "{:.4f}"),
    ("perplexity", "perplexity", "{:.2f}"),
    ("masked-token accuracy (%)", "accuracy_pct", "{:.2f}"),
    ("tokens seen", "tokens_seen", "{:,}"),
    ("epochs", "epochs", "{:.2f}"),
    ("wall time (min)", "wall_min", "{:.2f}"),
    ("training FLOPs", "train_flops", "{:.3g}"),
]
# Shown only where they apply: a sentence objective in some arm, several pretraining seeds,
# arms of different sizes.
SENTENCE_COLUMN = ("NSP/SOP accuracy (%)", "sentence_accuracy_pct", "{:.2f}")
PARAMS_COLUMN = ("parameters", "parameters", "{:,}")
SEED_COLUMNS = [("seeds done", "seeds_done", "{}"), ("MLM loss spread (max − min)", "mlm_loss_spread", "{:.4f}")]
PAPER_SUFFIX = " (paper)"


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
    """CSV text: arm, status, our columns (full precision), hardware, then the downstream and
    paper's columns."""
    cols = our_columns(rec, results)
    dcols, rest = downstream_columns(rec), _paper_rest(rec)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["arm", "status", *[h for h, _, _ in cols], "hardware"]
    for c in dcols:
        head += [c.name, f"{c.name} min", f"{c.name} max", f"{c.name} n"] + ([c.name + PAPER_SUFFIX] if _in_paper(rec, c) else [])
    w.writerow(head + [c + PAPER_SUFFIX for c in rest])
    for r in results:
        row = [r.arm, r.status, *[csv_cell(getattr(r, f)) for _, f, _ in cols], csv_cell(r.hardware)]
        for c in dcols:
            x = r.downstream.get(c.name) or Cell()
            row += [csv_cell(x.median), csv_cell(x.low), csv_cell(x.high), str(x.n) if x.n else ""]
            row += [csv_cell(_paper_value(rec, r.arm, c.name))] if _in_paper(rec, c) else []
        w.writerow(row + [csv_cell(_paper_value(rec, r.arm, p)) for p in rest])
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
    over = " ".join(f"`{o}`" for o in [*rec.overrides, *rec.evaluate_overrides]) or "none"
    seeds = f"; pretraining seeds {', '.join(str(s) for s in abl.seeds)} (our columns: median over seeds)" if abl.seeds else ""
    lines += [f"Preset `{rec.preset}`; command-line overrides: {over}{seeds}.", ""]
    lines += [hardware_line(results), ""]
    for w in warnings:
        lines += [f"**Warning:** {w}", ""]
    lines.append("| arm | status | " + " | ".join(md_escape(h) for h in headers) + " |")
    lines.append("|" + "---|" * (len(headers) + 2))
    for r in results:
        row = [md_cell(getattr(r, f), fmt) for _, f, fmt in cols]
        for c in dcols:
            x = r.downstream.get(c.name) or Cell()
            row += [md_cell(x.median, "{:.2f}"), "—" if not x.n else f"{x.low:.2f}–{x.high:.2f} ({x.n})"]
            row += [paper_text(_paper_value(rec, r.arm, c.name))] if _in_paper(rec, c) else []
        row += [paper_text(_paper_value(rec, r.arm, p)) for p in rest]
        name = r.arm if r.arm == CONTROL_ROW else f"`{r.arm}`"
        lines.append("| " + " | ".join([name, r.status, *row]) + " |")
    lines += [
        "",
        "Ours: held-out masked-LM loss (nats per masked token), perplexity and masked-token accuracy on "
        + ("the validation split, masked once with a fixed seed and shared by every arm"
           if _shares_validation(abl) else
           "each arm's validation split (" + _validation_difference(abl) + ")")
        + ", after the last "
        "training step (for an unfinished arm: its latest evaluation); tokens seen, epochs over the training data and training wall time from the run logs; "
        "training FLOPs (forward + backward) = steps × batch × the FLOPs of one full-length sequence (6N + 12·L·H·T per "
        "token; ELECTRA: both networks; DistilBERT: the student, not the frozen teacher's forward passes), the count "
        "the runner's `train_flops` budget equalizes, an upper bound on the "
        "FLOPs spent on real (non-padding) tokens.",
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
    logs = Path(runs_root) / abl.name
    lines += [f"    {arm_command(rec, arm, seed, rel, logs / rel)}" for arm, seed, rel in seed_runs(abl)]
    return "\n".join(lines) + "\n"


def hardware_line(results: Sequence[ArmResult]) -> str:
    """One sentence naming what the finished arms trained on (summary.json's ``hardware``),
    arm by arm when they differ: wall times compare only on the same hardware."""
    done = [r for r in results if r.status != "not run" and r.arm != CONTROL_ROW]
    kinds = {r.hardware for r in done if r.hardware}
    unknown = [f"`{r.arm}`" for r in done if not r.hardware and r.status == "done"]
    if not kinds:
        return "Hardware: not recorded in these runs' summary.json (written by versions before it was)." if unknown else \
            "Hardware: no arm has finished."
    if len(kinds) == 1 and not unknown:
        text = f"Hardware: every finished arm trained on {next(iter(kinds))}"
    else:
        text = "Hardware: " + "; ".join(f"`{r.arm}` {r.hardware}" for r in done if r.hardware)
    return text + (f" (not recorded for {', '.join(unknown)})." if unknown else ".")


def render_verdicts(verdicts: Sequence[Verdict]) -> List[str]:
    """The verdict section of a table page: one row per claim."""
    lines = [
        "Verdicts (difference = first arm − second arm; ours on the column of ours the claim names, else on our "
        "fine-tuned column of the paper's name when we measure one, else on the held-out metric named; median over seeds, "
        "spread = the larger max − min over seeds of the two arms; \"inconclusive\" when our difference "
        "is within the spread, when an arm has fewer than two finished seeds, or when a warning above says the runs cannot show the effect):",
        "",
        "| claim | arms | paper difference | ours | spread | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        lines.append(
            f"| {md_escape(v.claim.text)} | `{v.claim.a}` − `{v.claim.b}` | {v.paper_text()} | {v.ours_text()} | "
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
    blocking = blocking_warnings(abl_dir, rec.ablation)
    verdicts = table_verdicts(rec, results, blocking)
    warnings = blocking + token_warnings(results, rec.ablation.budget)
    md, csv_path, png_path = table_paths(results_dir, rec.preset, rec.ablation.name)
    out = md.parent
    out.mkdir(parents=True, exist_ok=True)
    settings = downstream.job_settings(abl_dir, rec)
    warnings = warnings + downstream.settings_warning(settings)
    text = render_markdown(rec, results, str(runs_root), str(results_dir), verdicts, warnings, settings)
    rows = render_csv(rec, results)
    runs = {rel: abl_dir / rel for _arm, _seed, rel in seed_runs(rec.ablation)}
    # The plot reads every run's metrics.jsonl: a damaged one stops it before the table and
    # CSV are written, so the three files never disagree.
    png = plot_loss_curves(runs, png_path, rec.ablation.title)
    write_text_atomic(md, text)
    write_text_atomic(csv_path, rows)
    return [md, csv_path, png]


def table_verdicts(rec: AblationRecord, results: List[ArmResult], warnings: Sequence[str]) -> List[Verdict]:
    """The verdict of every claim of the ablation from the table's numbers; ``warnings``: the
    table's warnings that its runs cannot show the effect (each verdict is then inconclusive)."""
    abl = rec.ablation
    values = {r.arm: r.seed_values or {} for r in results}
    measured = {c.name: c.kind for c in downstream_columns(rec)}
    cells = {r.arm: r.downstream for r in results}
    held_out = {r.arm: r.held_out for r in results}
    return compute_verdicts(abl.claims, abl.paper.columns, abl.paper.rows, values, bool(warnings), measured, cells, held_out)


def current_claims(rec: AblationRecord) -> AblationRecord:
    """The record with the title, paper numbers, claims and min_steps of the ablation file it was run
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
    rec.ablation.min_steps = now.min_steps
    if not evaluating(rec.ablation.evaluate):
        # A record made before the file had an evaluate section: its fine-tuning jobs (run by
        # hand or by a later `pretrain ablate`) are read as the file now names them.
        rec.ablation.evaluate = now.evaluate
    return rec



# ----------------------------------------------------------------------------- helpers


def _shares_validation(abl: Any) -> bool:
    """False if some arm sets ``data.format``, ``data.sentence_objective`` or
    ``data.tokenizer``: such arms build different pairs or tokens, so ``pretrain ablate``
    lets their validation splits differ."""
    return not _arm_data_keys(abl) & {"format", "sentence_objective", "tokenizer"}


def _validation_difference(abl: Any) -> str:
    """How the arms' validation splits differ, for the table's note (see _shares_validation)."""
    keys = _arm_data_keys(abl)
    if "tokenizer" in keys:
        return ("the arms use different tokenizers, so their tokens and masked positions differ and each loss is per "
                "token of its own vocabulary; the documents are shared")
    return ("the arms differ in input format or sentence objective, so their pairs differ; the documents, tokenizer "
            "and mask seed are shared")


def _arm_data_keys(abl: Any) -> set:
    """The ``data.*`` keys any arm of ``abl`` overrides."""
    keys: set = set()
    for over in OmegaConf.to_container(OmegaConf.create(dict(abl.arms)), resolve=True).values():
        keys |= set(((over or {}).get("data") or {}).keys())
    return keys


def _paper_rest(rec: AblationRecord) -> List[str]:
    """The paper's columns that have no fine-tuning column of ours, in the paper's order."""
    ours = {c.name for c in downstream_columns(rec)}
    return [c for c in rec.ablation.paper.columns if c not in ours]


def _in_paper(rec: AblationRecord, col: Column) -> bool:
    return col.name in rec.ablation.paper.columns


def _paper_value(rec: AblationRecord, arm: str, column: str) -> Optional[float]:
    row = rec.ablation.paper.rows.get(arm)
    return None if row is None else row[list(rec.ablation.paper.columns).index(column)]

