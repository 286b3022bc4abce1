"""Expected cost of every ablation in configs/ablation/ at one preset, from the composed configs
(nothing is trained): per table the pretraining runs (arms × seeds), their token slots, training
FLOPs (``pretrain.models.encoder.flops_per_token``: 6N + 12·L·H·T per token, N the applied
parameters, so shared ALBERT layers cost what they compute) and hours; then the evaluation
stages ``pretrain ablate`` runs after them (``pretrain.ablations.stages.plan_evaluation``: one
fine-tuning job per run × task, plus the random-init control, each job lrs × seeds loop runs)
and their hours. Data preparation, probes (one forward pass each) and start-up are not counted.

    python bench/suite_cost.py --preset medium [--peak 312e12] [--mfu 0.3] [key=value ...]
    python bench/suite_cost.py --preset small --tokens-per-s 8000 [--runs DIR] [key=value ...]   # CPU hours

Pretraining hours: token slots at ``--tokens-per-s`` (a measured training throughput, e.g.
the committed small roberta_masking run: 7,087,859 tokens in 883 s per arm on 2 CPU cores), or
FLOPs at ``--mfu`` of ``--peak``. An ablation with ``budget: real_tokens``
(``pretrain.ablations.budget``) is counted at the batches the runner derives from its built
data (the SENTENCE-PAIR arm's is about three times the others'); when that data is not built
(``data-cache/`` of the working directory, or ``data.output_dir``) the row says so and counts
the composed batch, marked as a lower bound (``≥``).

Fine-tuning: each loop run's steps × batch × tokens per row. Tokens per row and seconds per
step are measured, per task, from the finished fine-tuning runs under ``--runs DIR``
(``.../finetune/<job>/lr-*/seed-*/summary.json`` with status done: ``tokens_seen`` and
``wall_time_s`` over ``steps``, evaluation passes included); a task with no finished run
there counts ``data.max_length`` tokens a row (rows are padded only to the longest of their
batch, so an upper bound) and takes the measured tasks' mean seconds per step, or without any
measurement its tokens at ``--finetune-tokens-per-s`` (default ``--tokens-per-s``), or on a GPU
its FLOPs (the pretraining model's per token) at ``--mfu`` of ``--peak``. The notes column
names which tasks were measured.

Prints a Markdown table (docs/ablations.md quotes it). Overrides apply to every arm, as for
``pretrain ablate`` (e.g. ``train.max_steps=992`` for roberta_batch_size at ``small``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import OmegaConf

from common.errors import UserError, run_cli
from pretrain.ablations import stages
from data_prep.config import resolve_output_dir
from pretrain.ablations.budget import equalize_real_tokens, tokens_per_row
from pretrain.ablations.runner import compose_arms
from pretrain.models.describe import meta_model
from pretrain.models.encoder import flops_per_token

# roberta_batch_size needs steps divisible by 32 (its 32× arm); these presets' own are not
# (medium's 20,480 is).
STEP_FIX = {"small": ["train.max_steps=992"], "smoke": ["train.max_steps=192"]}


@dataclass
class TaskRate:
    """What finished fine-tuning runs of one task measured: totals over every run."""

    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    runs: int = 0


@dataclass
class Cost:
    """One ablation's cost. ``pretrain_tokens``: token slots (steps × global batch ×
    max_seq_length) of every run; ``finetune_tokens``: estimated real tokens of every
    fine-tuning loop run; ``finetune_seconds``: per task, None when it is not measured."""

    runs: int
    pretrain_tokens: float
    flops: float
    jobs: int = 0
    loop_runs: int = 0
    probes: int = 0
    finetune_tokens: float = 0.0
    finetune_steps: Dict[str, int] = field(default_factory=dict)
    finetune_task_tokens: Dict[str, float] = field(default_factory=dict)
    finetune_task_flops: Dict[str, float] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    lower_bound: bool = False
    tokens_upper_bound: bool = False


def measure_finetuning(runs_dir: Path) -> Dict[str, TaskRate]:
    """Per task, the steps, real tokens and wall seconds of every finished fine-tuning loop run
    under ``runs_dir`` (``**/finetune/*/lr-*/seed-*/summary.json`` with status done)."""
    rates: Dict[str, TaskRate] = {}
    for f in sorted(Path(runs_dir).glob("**/finetune/*/lr-*/seed-*/summary.json")):
        s = json.loads(f.read_text())
        if s.get("status") != "done" or not s.get("steps") or "task" not in s:
            continue
        r = rates.setdefault(s["task"], TaskRate())
        r.steps += int(s["steps"])
        r.tokens += int(s["tokens_seen"])
        r.seconds += float(s["wall_time_s"])
        r.runs += 1
    return rates


def table_cost(path: Path, preset: str, overrides: List[str], measured: Dict[str, TaskRate]) -> Cost:
    """The Cost of one ablation at ``preset``. Raises UserError when its arms do not compose
    (e.g. a distillation ablation whose teacher run does not exist yet) or an evaluation
    stage does not (e.g. its task data are missing)."""
    extra = STEP_FIX.get(preset, []) if path.stem == "roberta_batch_size" else []
    abl, cfgs = compose_arms(path, preset, [*overrides, *extra], "runs")
    notes: List[str] = []
    lower = False
    if abl.budget == "real_tokens":
        missing = []
        for key, c in cfgs.items():
            try:
                tokens_per_row(c)
            except UserError:
                missing.append(f"{key} ({resolve_output_dir(c.data)})")
        if missing:
            lower = True
            notes.append(f"budget real_tokens: data not built for {', '.join(missing)}; counted at the composed "
                         "batch, a lower bound (`pretrain ablate` builds the data first and derives the batches)")
        else:
            equalize_real_tokens(cfgs, build_missing=False)
            batches = ", ".join(f"{k} {c.train.global_batch_size}" for k, c in cfgs.items())
            notes.append(f"real_tokens batches from the built data: {batches}")
    tokens = flops = 0.0
    models = {}
    for key, cfg in cfgs.items():
        model_cfg = OmegaConf.to_object(cfg.model)
        if model_cfg.vocab_size is None:
            model_cfg.vocab_size = cfg.data.tokenizer.vocab_size
        seq = cfg.data.max_seq_length
        n = cfg.train.max_steps * cfg.train.global_batch_size * seq
        tokens += n
        models[key] = meta_model(model_cfg, cfg.objective.sentence)
        flops += n * flops_per_token(models[key], seq)
    cost = Cost(len(cfgs), tokens, flops, notes=notes, lower_bound=lower)
    for st in stages.plan_evaluation(abl, preset, cfgs, "runs"):
        if isinstance(st, stages.ProbeStage):
            cost.probes += 1
            continue
        cost.jobs += 1
        cost.loop_runs += len(st.runs)
        steps = sum(s for _run, s in st.runs)
        rate = measured.get(st.task)
        per_row = rate.tokens / (rate.steps * int(st.cfg.train.global_batch_size)) if rate else int(st.cfg.data.max_length)
        t = steps * int(st.cfg.train.global_batch_size) * per_row
        cost.finetune_tokens += t
        cost.tokens_upper_bound |= rate is None
        cost.finetune_steps[st.task] = cost.finetune_steps.get(st.task, 0) + steps
        cost.finetune_task_tokens[st.task] = cost.finetune_task_tokens.get(st.task, 0.0) + t
        # the pretraining model's FLOPs per token (its MLM head included: an upper bound for a
        # classifier head) at the fine-tuning length
        f = t * flops_per_token(models[st.key], int(st.cfg.data.max_length))
        cost.finetune_task_flops[st.task] = cost.finetune_task_flops.get(st.task, 0.0) + f
    return cost


def finetune_hours(cost: Cost, measured: Dict[str, TaskRate], tokens_per_s: Optional[float],
                   flops_per_s: Optional[float] = None) -> Optional[float]:
    """Hours of the ablation's fine-tuning: per task its measured seconds per step; a task
    not measured takes the mean seconds per step of the measured ones (a step's time is
    mostly per-step work, not per-token: SST-2, STS-B and CoNLL-2003 steps of 480-1,080
    tokens took 1.6-2.2 s), or without any measurement its estimated tokens at
    ``tokens_per_s``, or its FLOPs at ``flops_per_s`` (GPU: peak × MFU). None without any."""
    seconds = 0.0
    steps_all = sum(r.steps for r in measured.values())
    mean_step = sum(r.seconds for r in measured.values()) / steps_all if steps_all else None
    for task, steps in cost.finetune_steps.items():
        rate = measured.get(task)
        if rate:
            seconds += steps * rate.seconds / rate.steps
        elif mean_step is not None:
            seconds += steps * mean_step
        elif tokens_per_s:
            seconds += cost.finetune_task_tokens[task] / tokens_per_s
        elif flops_per_s:
            seconds += cost.finetune_task_flops[task] / flops_per_s
        else:
            return None
    return seconds / 3600


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--peak", type=float, default=312e12, help="peak FLOP/s of one GPU (default: A100 bf16)")
    ap.add_argument("--mfu", type=float, default=0.3, help="assumed model-FLOPs utilization (default 0.3)")
    ap.add_argument("--tokens-per-s", type=float, default=None, help="pretraining hours at this measured throughput instead")
    ap.add_argument("--runs", type=Path, default=None, metavar="DIR",
                    help="measure fine-tuning seconds per step and tokens per row from the finished jobs under DIR")
    ap.add_argument("--finetune-tokens-per-s", type=float, default=None,
                    help="fine-tuning throughput when nothing is measured under --runs (default: --tokens-per-s)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.runs is not None and not args.runs.is_dir():
        raise UserError(f"--runs {args.runs}: no such directory")
    measured = measure_finetuning(args.runs) if args.runs else {}
    ft_rate = args.finetune_tokens_per_s or args.tokens_per_s
    rate = (f"hours at {args.tokens_per_s:,.0f} tokens/s" if args.tokens_per_s
            else f"GPU hours at {args.mfu:.0%} of {args.peak / 1e12:g} TFLOP/s")
    if measured:
        detail = ", ".join(f"{t} {r.seconds / r.steps:.2f} s/step, {r.tokens / r.steps:,.0f} tokens/step ({r.runs} runs)"
                           for t, r in sorted(measured.items()))
        overall = sum(r.tokens for r in measured.values()) / sum(r.seconds for r in measured.values())
        print(f"Fine-tuning measured under {args.runs}: {detail}; {overall:,.0f} tokens/s overall.\n")
    print(f"| ablation (`--preset {args.preset}`) | runs | tokens | training PFLOP | pretraining {rate} "
          "| fine-tuning jobs (loop runs) | fine-tuning tokens | fine-tuning hours | hours | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    total = {"pre": 0.0, "ft": 0.0}
    pre_incomplete = ft_incomplete = False
    for path in sorted(Path("configs/ablation").glob("*.yaml")):
        try:
            cost = table_cost(path, args.preset, list(args.overrides), measured)
        except UserError as e:
            print(f"| {path.stem} | not composed: {e} | | | | | | | | |")
            pre_incomplete = ft_incomplete = True
            continue
        pre = (cost.pretrain_tokens / args.tokens_per_s if args.tokens_per_s
               else cost.flops / (args.peak * args.mfu)) / 3600
        ft = finetune_hours(cost, measured, ft_rate, None if ft_rate else args.peak * args.mfu)
        ge = "≥ " if cost.lower_bound else ""
        notes = list(cost.notes)
        if cost.jobs:
            where = [t for t in cost.finetune_steps if t in measured]
            rest = [t for t in cost.finetune_steps if t not in measured]
            notes.append("fine-tuning " + "; ".join(
                ([f"measured: {', '.join(where)}"] if where else [])
                + ([f"not measured, at the measured tasks' mean s/step (tokens at max_length): {', '.join(rest)}"]
                   if rest and measured else [])
                + ([f"estimated at max_length, {ft_rate:,.0f} tokens/s: {', '.join(rest)}"]
                   if rest and not measured and ft_rate else [])
                + ([f"estimated at max_length, FLOPs at the MFU above: {', '.join(rest)}"]
                   if rest and not measured and not ft_rate else [])))
        if cost.probes:
            notes.append(f"{cost.probes} probe stages not counted")
        total["pre"] += pre
        total["ft"] += ft or 0.0
        pre_incomplete |= cost.lower_bound
        ft_incomplete |= ft is None
        ft_text = "—" if ft is None else f"{ft:.2f}"
        print(f"| {path.stem} | {cost.runs} | {ge}{cost.pretrain_tokens / 1e6:,.0f}M | {ge}{cost.flops / 1e15:,.1f} "
              f"| {ge}{pre:.1f} | {cost.jobs} ({cost.loop_runs}) | {'≤ ' if cost.tokens_upper_bound else ''}"
              f"{cost.finetune_tokens / 1e6:,.1f}M | {ft_text} | {'≥ ' if cost.lower_bound or ft is None else ''}"
              f"{pre + (ft or 0.0):.1f} | {'; '.join(notes)} |")
    pre_ge, ft_ge = ("≥ " if pre_incomplete else ""), ("≥ " if ft_incomplete else "")
    print(f"| all | | | | {pre_ge}{total['pre']:.1f} | | | {ft_ge}{total['ft']:.2f} "
          f"| {'≥ ' if pre_incomplete or ft_incomplete else ''}{total['pre'] + total['ft']:.1f} | |")


if __name__ == "__main__":
    run_cli(main)
