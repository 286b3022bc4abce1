"""Verdicts on the papers' claims and warnings on runs that cannot show an effect, computed
from the numbers of an ablation's table (``pretrain.ablations.tables``) and its runs' logs.

A claim (``ClaimConfig`` in ``pretrain.ablations.spec``) compares two arms: the paper's
difference ``a − b`` in one of its printed columns; ours in the claim's ``ours_column`` when it
names one (e.g. "GLUE avg" for ELECTRA's "GLUE score"), else in our fine-tuning column of the
same name when the ablation measures one (``pretrain.ablations.downstream``: e.g. "SST-2 acc",
pooled over pretraining × fine-tuning seeds), else in the claim's held-out metric (MLM loss
by default). Our difference is between the arms' medians (cells, for our columns); its noise
is the larger max − min of the two arms' cells (over the pooled seeds). Verdict:

- ``agrees``: our difference is outside that spread and favours the same arm as the paper;
- ``opposite``: outside the spread, favouring the other arm;
- ``inconclusive``: within the spread, fewer than two finished seeds for an arm (no spread
  to judge by), the paper printing no difference, a value that is not finite (a diverged
  run's NaN loss: no arm is better), a held-out metric of two arms scored on different
  validation rows (they differ in input format or sentence objective, RoBERTa Table 2, ALBERT
  Table 5: their MLM losses do not compare), or a warning that the run cannot show the effect
  (``warnings``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from common.configfile import read_yaml
from pretrain.ablations.arm_results import METRIC_FIELDS
from pretrain.ablations.downstream import PROBE_COLUMNS, Cell
from pretrain.ablations.spec import LOWER_IS_BETTER, ClaimConfig, seed_runs
from pretrain.training import rundir

# Views of one static mask below which reuse cannot matter (RoBERTa §4.1: BERT's 10 copies
# over 40 epochs show each mask 4 times).
MIN_MASK_VIEWS = 2.0
# Our columns a zero-shot probe fills (an ``ours_column`` naming one is judged "zero-shot").
PROBE_COLUMN_NAMES = frozenset(name for cols in PROBE_COLUMNS.values() for name, _ in cols)
METRIC_NAMES = {"mlm_loss": "MLM loss", "mlm_accuracy": "MLM acc. (%)", "sentence_accuracy": "NSP/SOP acc. (%)"}


@dataclass
class Verdict:
    """One claim checked. ``paper`` = paper[a] − paper[b] as printed; ``ours`` = median[a] −
    median[b] of ``claim.metric`` (nats for mlm_loss, percentage points for accuracies),
    None when an arm has no finished run; ``spread`` as in the module docstring (None with
    fewer than two finished seeds)."""

    claim: ClaimConfig
    paper: float
    ours: Optional[float]
    spread: Optional[float]
    verdict: str
    reason: str = ""
    # our fine-tuning or probe column the verdict used, or None: the held-out ``claim.metric``
    downstream: Optional[str] = None
    kind: str = "fine-tuned"  # of that column: "fine-tuned" or "zero-shot" (a probe)
    comparable: bool = True  # False: the two arms' held-out rows differ, so no arm is "better"

    def measure(self) -> str:
        """Which of our numbers the verdict used, in words."""
        if self.downstream:
            return f"{self.kind} {self.downstream}"
        return f"held-out {METRIC_NAMES[self.claim.metric]} (no fine-tuned {self.claim.paper_column} of ours)"

    def paper_text(self) -> str:
        col = self.claim.paper_column
        better = _favours(self.paper, not self.claim.paper_higher_is_better, self.claim)
        return f"{self.paper:+.2f} {col}" + (f" ({better} better)" if better else " (no difference)")

    def ours_text(self) -> str:
        if self.ours is None:
            return "—"
        if self.downstream:
            better = _favours(self.ours, False, self.claim)
            return f"{self.ours:+.2f} {self.downstream}, {self.kind}" + (f" ({better} better)" if better else "")
        better = _favours(self.ours, LOWER_IS_BETTER[self.claim.metric], self.claim) if self.comparable else ""
        return f"{self.ours:+.4f} {METRIC_NAMES[self.claim.metric]}, held-out" + (f" ({better} better)" if better else "")

    def spread_text(self) -> str:
        if self.spread is None:
            return "—"
        return f"{self.spread:.2f}" if self.downstream else f"{self.spread:.4f}"


def _favours(diff: float, lower_is_better: bool, claim: ClaimConfig) -> str:
    """The arm a difference ``a − b`` favours ('' for 0, and for NaN or ±inf: a diverged run)."""
    if diff == 0 or not math.isfinite(diff):
        return ""
    a_better = (diff < 0) if lower_is_better else (diff > 0)
    return f"`{claim.a}`" if a_better else f"`{claim.b}`"


def compute_verdicts(claims: Sequence[ClaimConfig], paper_columns: Sequence[str], paper_rows: Dict[str, Any],
                     seed_values: Dict[str, Dict[str, List[float]]], warned: bool,
                     measured: Optional[Dict[str, str]] = None,
                     cells: Optional[Dict[str, Dict[str, Cell]]] = None,
                     held_out: Optional[Dict[str, Optional[str]]] = None) -> List[Verdict]:
    """A Verdict per claim. ``seed_values``: arm → ArmResult field → one value per finished
    seed (``mlm_loss``, ``accuracy_pct``, ``sentence_accuracy_pct``); ``warned``: the table
    carries a warning that the runs cannot show the effect; ``measured``: our fine-tuning and
    probe columns → "fine-tuned" / "zero-shot" (a claim whose ``ours_column``, or else
    ``paper_column``, is one of them is judged on it, even before its jobs have run: then "not
    run yet"); ``cells``: arm → our column → its Cell (percent, higher is better);
    ``held_out``: arm → what its validation rows are built as (``ArmResult.held_out``)."""
    measured, cells, held_out = measured or {}, cells or {}, held_out or {}
    out: List[Verdict] = []
    for c in claims:
        col = list(paper_columns).index(c.paper_column)
        paper = float(paper_rows[c.a][col]) - float(paper_rows[c.b][col])
        ds = c.ours_column or (c.paper_column if c.paper_column in measured else None)
        lower = False if ds else LOWER_IS_BETTER[c.metric]
        if ds:
            xa, xb = ((cells.get(arm) or {}).get(ds) or Cell() for arm in (c.a, c.b))
        else:
            xa, xb = (Cell.of((seed_values.get(arm) or {}).get(METRIC_FIELDS[c.metric]) or []) for arm in (c.a, c.b))
        kind = measured.get(ds) or ("zero-shot" if ds in PROBE_COLUMN_NAMES else "fine-tuned")
        if not xa.n or not xb.n:
            out.append(Verdict(c, paper, None, None, "inconclusive", "not run yet", ds, kind))
            continue
        ours = xa.median - xb.median
        spread = max(xa.high - xa.low, xb.high - xb.low) if min(xa.n, xb.n) >= 2 else None
        paper_a = (paper < 0) if not c.paper_higher_is_better else (paper > 0)
        ours_a = (ours < 0) if lower else (ours > 0)
        finite = all(math.isfinite(v) for v in (xa.median, xa.low, xa.high, xb.median, xb.low, xb.high))
        comparable = bool(ds) or None in (held_out.get(c.a), held_out.get(c.b)) or held_out[c.a] == held_out[c.b]
        if paper == 0:
            verdict, reason = "inconclusive", "the paper prints no difference"
        elif not finite:
            verdict, reason = "inconclusive", "a value is NaN or inf: a diverged run"
        elif not comparable:
            verdict, reason = "inconclusive", "held-out sets differ in format, sentence objective or tokenizer: MLM losses do not compare"
        elif warned:
            verdict, reason = "inconclusive", "the run cannot show the effect: see the warning"
        elif spread is None:
            verdict, reason = "inconclusive", "one seed: no spread to judge by"
        elif abs(ours) <= spread:
            verdict, reason = "inconclusive", "within the spread over seeds"
        else:
            verdict, reason = ("agrees" if paper_a == ours_a else "opposite"), ""
        out.append(Verdict(c, paper, ours, spread, verdict, reason, ds, kind, comparable))
    return out


def _masking_ablation(abl: Any) -> bool:
    """Every arm overrides only ``data.masking`` keys (the masking tables; not e.g. the
    recipes table, whose arms differ in masking among many other things)."""
    from pretrain.ablations.spec import _flatten
    from pretrain.config import to_dict

    keys = [k for layer in abl.arms.values() if layer is not None for k in _flatten(to_dict(layer))]
    return bool(keys) and all(k.startswith("data.masking.") for k in keys)


def mask_reuse_warnings(abl_dir: Path, abl: Any) -> List[str]:
    """Warnings for a masking ablation (every arm overrides only ``data.masking``) whose arms
    differ in ``data.masking.mode``: a static arm
    whose masks are seen fewer than MIN_MASK_VIEWS times on average cannot differ from a
    dynamic one by anything but which random mask each sequence carries.

    Views of one mask = epochs / dupe_factor with ``masking.copies=remask`` (epoch e reads
    copy e % dupe_factor, ``pretrain.training.batching``), = epochs with ``copies=reference``
    (the copies are pooled into one training split, so an epoch already visits every copy).
    Epochs from each run's summary.json, or its last metrics line while it runs."""
    if not _masking_ablation(abl):
        return []
    runs = []
    for arm, _seed, rel in seed_runs(abl):
        cfg_file = abl_dir / rel / rundir.CONFIG
        if cfg_file.is_file():
            runs.append((arm, rel, read_yaml(cfg_file)))
    modes = {str(OmegaConf.select(c, "data.masking.mode")) for _, _, c in runs}
    if not {"static", "dynamic"} <= modes:
        return []
    out: List[str] = []
    for arm, rel, cfg in runs:
        if str(OmegaConf.select(cfg, "data.masking.mode")) != "static":
            continue
        epochs = _epochs(abl_dir / rel)
        if epochs is None:
            continue
        dupe = int(OmegaConf.select(cfg, "data.masking.dupe_factor"))
        copies = str(OmegaConf.select(cfg, "data.masking.copies", default="remask"))
        views = epochs / dupe if copies == "remask" else epochs
        if views < MIN_MASK_VIEWS:
            how = (f"{epochs:.2f} epochs over dupe_factor {dupe} copies, copies=remask" if copies == "remask"
                   else f"{epochs:.2f} epochs over the {dupe} pooled copies, copies=reference")
            out.append(
                f"run `{rel}` shows each static mask {views:.2f} times on average ({how}); masks repeat only from "
                f"{MIN_MASK_VIEWS:g} views on, so this run cannot show the effect of static vs. dynamic masking "
                "(train more epochs: more steps or a smaller corpus)."
            )
    return out


def blocking_warnings(abl_dir: Path, abl: Any) -> List[str]:
    """The warnings that the runs of ``abl_dir`` cannot show their ablation's effect (each
    verdict is then inconclusive): static masks never reused, arms below ``min_steps``.
    The table and the results summary both judge by these."""
    return mask_reuse_warnings(abl_dir, abl) + step_warnings(abl_dir, abl)


def step_warnings(abl_dir: Path, abl: Any) -> List[str]:
    """A warning per run that finished with fewer optimizer steps than the ablation's
    ``min_steps`` (``AblationConfig.min_steps``; steps from summary.json). Such a run is
    judged by how far it got, not by the recipe choice its arm makes, so the table's
    verdicts are withheld (the caller passes these as blocking warnings)."""
    if abl.min_steps <= 0:
        return []
    out: List[str] = []
    for _arm, _seed, rel in seed_runs(abl):
        summary = rundir.read_summary(abl_dir / rel)
        if not summary or summary.get("status") != "done" or not isinstance(summary.get("steps"), int):
            continue
        if summary["steps"] < abl.min_steps:
            out.append(
                f"run `{rel}` finished after {summary['steps']:,} optimizer steps, fewer than the {abl.min_steps:,} "
                "this ablation's min_steps asks for: its numbers measure under-training, not its arm's choice "
                "(train more steps: raise train.max_steps for every arm)."
            )
    return out


# Real (non-padding) tokens of two arms that differ by more than this share are flagged.
TOKEN_TOLERANCE = 0.10


def token_warnings(results: Sequence[Any], budget: str = "tokens") -> List[str]:
    """A warning when the finished arms' real tokens seen (``ArmResult.tokens_seen``, padding
    not counted) differ by more than TOKEN_TOLERANCE, explained by the ablation's ``budget``:
    under ``tokens`` the runner equalizes sequence slots (steps × batch × max_seq_length), and
    formats with short rows (SENTENCE-PAIR) fill fewer of them — RoBERTa §4.2 raised those
    arms' batch size instead; under ``real_tokens`` the batches were set from each arm's mean
    row length, so a gap is the rows drawn differing from that mean. Under ``train_flops`` the
    arms differ in tokens by design (ELECTRA pays for its generator with fewer steps, Clark et
    al. 2020 Table 1): no warning. Not a reason to withhold a verdict, but a confound the table
    names."""
    seen = {r.arm: r.tokens_seen for r in results if r.status == "done" and r.tokens_seen}
    if budget == "train_flops" or len(seen) < 2 or max(seen.values()) <= (1 + TOKEN_TOLERANCE) * min(seen.values()):
        return []
    detail = ", ".join(f"`{a}` {n:,}" for a, n in seen.items())
    why = ("the budget is equal in sequence slots (steps × batch × max_seq_length), so arms with shorter rows "
           "trained on less text." if budget == "tokens" else
           "each arm's batch was set from its built data's mean row length (budget real_tokens), and the rows "
           "the arms drew differ from those means by more than that.")
    return [f"the arms saw different numbers of real (non-padding) tokens ({detail}): {why}"]


def _epochs(run: Path) -> Optional[float]:
    summary = rundir.read_summary(run)
    if summary and summary.get("epochs") is not None:
        return float(summary["epochs"])
    recs = rundir.read_metrics(run)
    return float(recs[-1]["epoch"]) if recs and recs[-1].get("epoch") is not None else None
