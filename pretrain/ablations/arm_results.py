"""One row per arm of an ablation, read from its run directories alone (no training).

``collect`` gives the :class:`ArmResult` rows that the table (``pretrain.ablations.tables``),
the verdicts (``pretrain.ablations.verdicts``) and the results summary
(``pretrain.ablations.summary``) are made from. Every number comes from the run logs
(summary.json, metrics.jsonl; see ``pretrain.training.rundir``) or, for the fine-tuning
columns, from the jobs' logs (``pretrain.ablations.downstream``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from common.configfile import read_yaml
from pretrain.ablations import downstream
from pretrain.ablations.downstream import CONTROL_ROW, Cell, Column
from pretrain.ablations.plots import last_per_step
from pretrain.ablations.spec import AblationRecord, seed_runs
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
    train_flops: training FLOPs of the steps done, forward + backward, counted as the runner's
        ``train_flops`` budget counts them: steps × global batch × the FLOPs of one full
        ``data.max_seq_length`` sequence (``pretrain.tasks.train_flops_per_sequence``: 6N +
        12·L·H·T per token, both ELECTRA networks) — sequence slots, so an upper bound on the
        FLOPs spent on real tokens. From the run's config.yaml and summary.json.
    hardware: what the run trained on (summary.json's ``hardware``,
        ``pretrain.training.hardware.describe_hardware``); None for runs from before it was
        recorded.
    downstream: our column name → the arm's Cell there (median, min–max and n of the
        scores pooled over its runs, ``pretrain.ablations.downstream``), which the verdicts
        on those columns read.
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
    train_flops: Optional[float] = None
    hardware: Optional[str] = None
    seeds_done: Optional[int] = None
    mlm_loss_spread: Optional[float] = None
    seed_values: Optional[Dict[str, List[float]]] = None
    # What the run's held-out rows are built as: "format/sentence objective" from config.yaml
    # (None when unknown). Arms that differ here were scored on different validation rows.
    held_out: Optional[str] = None
    downstream: Dict[str, Cell] = field(default_factory=dict)


# summary.json's final_eval key → ArmResult field, for the seeds' medians and the verdicts.
METRIC_FIELDS = {"mlm_loss": "mlm_loss", "mlm_accuracy": "accuracy_pct", "sentence_accuracy": "sentence_accuracy_pct"}


def collect_arm(arm: str, run: Path) -> ArmResult:
    """Read one arm's result from its run directory (see rundir.py for the files)."""
    summary = rundir.finished_summary(run)
    if summary:
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
            train_flops=_train_flops(run, summary.get("steps")),
            hardware=summary.get("hardware"),
            held_out=_held_out(run),
        )
    records = last_per_step(rundir.read_metrics(run))
    if not run.is_dir() or (not records and not (run / rundir.CONFIG).is_file()):
        return ArmResult(arm=arm, status="not run")
    step = max((int(r["step"]) for r in records), default=0)
    res = ArmResult(arm=arm, status=f"unfinished, step {step}/{_max_steps(run) or '?'}", held_out=_held_out(run))
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
    if abl.evaluate.control:
        first = abl_dir / seed_runs(abl)[0][2]
        # the control has no sentence probe (no random-init mode): its stages are the tasks and BLiMP
        # (and GLUE avg, an average of those tasks)
        units = [*abl.evaluate.tasks, *(["blimp"] if abl.evaluate.probes.blimp else [])]
        cells = {c.name: downstream.cell([first], c, random_init=True) for c in cols if c.task in units or c.averages}
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
    for f in ("mlm_loss", "perplexity", "accuracy_pct", "tokens_seen", "epochs", "wall_min", "sentence_accuracy_pct", "parameters",
              "train_flops"):
        vals = [getattr(r, f) for r in done if getattr(r, f) is not None]
        if vals:
            # a diverged seed (NaN or inf) makes the arm's value NaN: a median that skipped it
            # would hide it, and one over it depends on the order
            med = statistics.median(vals) if all(math.isfinite(v) for v in vals) else math.nan
            setattr(res, f, int(med) if f in ("tokens_seen", "parameters") else float(med))
    res.hardware = "; ".join(sorted({r.hardware for r in done if r.hardware})) or None
    res.held_out = next((r.held_out for r in done if r.held_out), None)
    losses = [r.mlm_loss for r in done if r.mlm_loss is not None]
    res.mlm_loss_spread = (max(losses) - min(losses) if all(math.isfinite(v) for v in losses) else math.nan) if losses else None
    res.seed_values = {f: [getattr(r, f) for r in done if getattr(r, f) is not None] for f in METRIC_FIELDS.values()}
    return res


def _train_flops(run: Path, steps: Any) -> Optional[float]:
    """``ArmResult.train_flops`` of a finished run; None when its config.yaml is missing or no
    longer composes with this version's config schema (the table then shows —)."""
    from common.configfile import merge_into
    from common.errors import UserError
    from pretrain.config import RunConfig
    from pretrain.tasks import train_flops_per_sequence

    f = run / rundir.CONFIG
    if steps is None or not f.is_file():
        return None
    try:
        cfg = merge_into(RunConfig, read_yaml(f), where=str(f))
        return int(steps) * cfg.train.global_batch_size * train_flops_per_sequence(cfg)
    except UserError:
        return None


def _held_out(run: Path) -> Optional[str]:
    """``"<data.format>/<data.sentence_objective>/<data.tokenizer>"`` of the run's config.yaml:
    what its validation rows are built as and tokenized by (``pretrain.ablations.runner`` lets
    arms that differ in these have different rows; another tokenizer makes the MLM loss a loss
    per token of another vocabulary). None when config.yaml is missing or lacks them."""
    f = run / rundir.CONFIG
    if not f.is_file():
        return None
    c = read_yaml(f)
    fmt, obj = OmegaConf.select(c, "data.format"), OmegaConf.select(c, "data.sentence_objective")
    tok = OmegaConf.select(c, "data.tokenizer")
    tok = sorted(OmegaConf.to_container(tok, resolve=True).items()) if isinstance(tok, DictConfig) else tok
    return None if fmt is None or obj is None else f"{fmt}/{obj}/{tok}"


def _max_steps(run: Path) -> Optional[int]:
    f = run / rundir.CONFIG
    if not f.is_file():
        return None
    v = OmegaConf.select(read_yaml(f), "train.max_steps")
    return int(v) if v is not None else None


def _num(v: Any) -> Optional[float]:
    return float(v) if v is not None else None


def _int(v: Any) -> Optional[int]:
    return int(v) if v is not None else None


def _pct(v: Any) -> Optional[float]:
    # The trainer logs mlm_accuracy as a fraction of masked tokens predicted correctly.
    return 100.0 * float(v) if v is not None else None
