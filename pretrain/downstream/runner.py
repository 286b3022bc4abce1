"""``pretrain finetune``: one pretrained model on one task, every learning rate × seed as a run
of the training loop, then the median and spread over seeds.

Protocol (RoBERTa §5.1 / appendix: "median of five runs"; ALBERT and DistilBERT the same;
BERT §A.3 picks the lr from {5e-5, 3e-5, 2e-5} on dev): every run trains for the configured
epochs and is scored once more after its last step; that final score is the run's number
(no early stopping, no best-epoch pick). For each lr the median over seeds is taken; the
reported score is the median at the lr with the best median of the task's main metric, as
the papers choose hyperparameters on dev. Every per-seed score, every lr's median and the
choice are printed and stored, so nothing is hidden by the selection.

Layout of a job directory (default ``<pretrained run>/finetune/<task>`` for our runs,
``runs/finetune/<model dir name>/<task>`` for Hugging Face directories; ``-random-init``
appended for the control)::

    lr-3e-05/seed-1/     one loop run: config.yaml, metrics.jsonl, summary.json
    scores.json          per-seed scores, medians and spread per lr, the chosen lr, and
                         wall_time_s: the training time of its runs summed, in seconds
    scores.md            the same as a table, ending with the final score line

A run whose summary.json says done is not trained again; an interrupted one resumes
(``pretrain.training.loop.train(..., resume=True)``), so rerunning the command finishes a job.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from common.atomic import write_json_atomic, write_text_atomic
from common.errors import UserError, launcher_rank
from pretrain.downstream.config import load_finetune_config
from pretrain.downstream.task_data import count_train_rows, main_metric

JOBS_DIR = "finetune"  # a pretraining run's jobs: <run>/finetune/<task>[-random-init]/
SCORES_JSON = "scores.json"
FINETUNE_YAML = "finetune.yaml"  # the job's composed config, written first: its identity
SCORES_MD = "scores.md"
# What readers of a scores.json rely on (``read_scores``).
SCORES_KEYS = ("main_metric", "score", "num_seeds", "chosen_lr")


def read_scores(f: str | Path) -> Dict[str, Any]:
    """A job's scores.json as ``finetune`` writes it (``summarize`` plus task, pretrained ...).

    Raises:
        UserError: a file that does not parse, is not an object, or lacks a key the readers
            (``pretrain tables``, ``pretrain compare``) use, naming the file and the fix.
    """
    f = Path(f)
    try:
        s = json.loads(f.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise UserError(f"{f}: not a scores.json of `pretrain finetune` ({type(e).__name__}: {e}); rerun the job") from None
    missing = [k for k in SCORES_KEYS if k not in s] if isinstance(s, dict) else list(SCORES_KEYS)
    if missing:
        raise UserError(f"{f}: not a scores.json of `pretrain finetune` (no {', '.join(missing)}); rerun the job")
    bad = _scores_type_error(s)
    if bad:
        raise UserError(f"{f}: not a scores.json of `pretrain finetune` ({bad}); rerun the job")
    return s


def _scores_type_error(s: Dict[str, Any]) -> str:
    """What in a parsed scores.json is not of the type ``finetune`` writes, or ''."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not isinstance(s["main_metric"], str):
        return f"main_metric is {s['main_metric']!r}, not a string"
    for k in ("score", "num_seeds", "chosen_lr", "wall_time_s"):
        if k in s and not number(s[k]):
            return f"{k} is {s[k]!r}, not a number"
    per_lr = s.get("per_lr", {})
    if not isinstance(per_lr, dict):
        return f"per_lr is {per_lr!r}, not an object"
    for tag, entry in per_lr.items():
        scores = entry.get("scores", {}) if isinstance(entry, dict) else None
        if not isinstance(scores, dict):
            return f"per_lr.{tag} has no object of scores"
        for seed, metrics in scores.items():
            if not isinstance(metrics, dict):
                return f"per_lr.{tag}.scores.{seed} is {metrics!r}, not an object"
            for m, v in metrics.items():
                if v is not None and not number(v):
                    return f"per_lr.{tag}.scores.{seed}.{m} is {v!r}, not a number"
    return ""


def pretrained_identity(path: str | Path) -> Dict[str, Any]:
    """``{"family", "name", "run_dir"}`` of a pretrained model without loading weights: the
    family picks the default recipe, the name and run directory the default job directory."""
    from pretrain.downstream.source import hf_family, is_hf_dir

    p = Path(path)
    if not p.exists():
        raise UserError(f"{p} does not exist; pass a run directory, a checkpoint directory or a Hugging Face model directory")
    if is_hf_dir(p):
        return {"family": hf_family(p), "name": p.resolve().name, "run_dir": None}
    from pretrain.training.checkpoint import _resolve_checkpoint, read_client_state

    ckpt = _resolve_checkpoint(p)
    cfg = read_client_state(ckpt)["config"]
    run = ckpt.parent.parent  # <run>/checkpoints/step-*
    return {"family": cfg["model"]["family"], "name": cfg.get("name", run.name), "run_dir": run}


# The recipe (configs/finetune/NAME.yaml) a model family fine-tunes with when --recipe is not
# given. ELECTRA's discriminator is a BERT encoder, and our ELECTRA runs (model family bert)
# fine-tune with BERT's recipe; a Hugging Face ELECTRA directory, e.g. their export, does too,
# so both give the same scores. `--recipe electra` is Clark et al. 2020's own.
DEFAULT_RECIPE = {"electra": "bert"}


def default_recipe(family: str) -> str:
    """The recipe name of ``family`` (``DEFAULT_RECIPE``, else the family's own)."""
    return DEFAULT_RECIPE.get(family, family)


def job_directory(identity: Dict[str, Any], task: str, random_init: bool, runs_root: str | Path) -> Path:
    """Where a job's runs and scores go (module docstring)."""
    leaf = task + ("-random-init" if random_init else "")
    if identity["run_dir"] is not None:
        return Path(identity["run_dir"]) / JOBS_DIR / leaf
    return Path(runs_root) / JOBS_DIR / identity["name"] / leaf


def lr_tag(lr: float) -> str:
    return f"lr-{lr:g}"


def run_configs(cfg, out: Path, n_train: int) -> List[Any]:
    """One loop config per (lr, seed), with the derived keys of
    ``pretrain.downstream.config`` filled in. UserError when the batch exceeds the rows."""
    t = cfg.train
    steps_per_epoch = n_train // t.global_batch_size
    if steps_per_epoch < 1:
        raise UserError(f"{cfg.task}: {n_train} training rows, fewer than train.global_batch_size={t.global_batch_size}")
    max_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    runs = []
    for lr in cfg.lrs:
        for seed in cfg.seeds:
            r = copy.deepcopy(cfg)
            r.name = f"{cfg.task}-{lr_tag(lr)}-seed-{seed}"
            r.run_dir = str(out / lr_tag(lr) / f"seed-{seed}")
            r.train.optimizer.lr = float(lr)
            r.train.seed = int(seed)
            r.train.max_steps = max_steps
            r.train.schedule.warmup_steps = int(round(cfg.warmup_fraction * max_steps))
            r.train.eval_every = min(steps_per_epoch, max_steps)
            r.train.log_every = min(int(t.log_every), max_steps)
            r.train.checkpoint_every = max_steps
            r.train.keep_checkpoints = 1
            runs.append(r)
    return runs


def summarize(task: str, per_run: Dict[float, Dict[int, Dict[str, float]]], eval_splits: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Medians and spread over seeds per lr, and the lr with the best median main metric.

    Args:
        per_run: ``{lr: {seed: {metric: value}}}`` final scores.
    Returns:
        ``{"main_metric", "per_lr": {lr_tag: {"lr", "seeds", "scores": {seed: {...}},
        "median": {...}, "min": {...}, "max": {...}, "std": {...}}}, "chosen_lr", "score"}``;
        ``std`` is the sample standard deviation (0 with one seed).
    """
    main = main_metric(task, eval_splits)
    per_lr: Dict[str, Any] = {}
    for lr, seeds in per_run.items():
        names = sorted(set.intersection(*(set(s) for s in seeds.values())))
        cols = {m: [seeds[s][m] for s in sorted(seeds)] for m in names}
        per_lr[lr_tag(lr)] = {
            "lr": lr,
            "seeds": sorted(seeds),
            "scores": {str(s): seeds[s] for s in sorted(seeds)},
            "median": {m: statistics.median(v) for m, v in cols.items()},
            "min": {m: min(v) for m, v in cols.items()},
            "max": {m: max(v) for m, v in cols.items()},
            "std": {m: statistics.stdev(v) if len(v) > 1 else 0.0 for m, v in cols.items()},
        }
    chosen = max(per_lr, key=lambda k: per_lr[k]["median"][main])
    best = per_lr[chosen]
    return {"main_metric": main, "per_lr": per_lr, "chosen_lr": best["lr"], "score": best["median"][main],
            "score_min": best["min"][main], "score_max": best["max"][main], "score_std": best["std"][main],
            "num_seeds": len(best["seeds"])}


def score_line(task: str, source: str, s: Dict[str, Any]) -> str:
    """The final score line: ``<task> <metric> median X (min–max, n seeds) at lr L``, in %."""
    return (f"{task} {s['main_metric']} = {100 * s['score']:.2f} median of {s['num_seeds']} seeds "
            f"(min {100 * s['score_min']:.2f}, max {100 * s['score_max']:.2f}, std {100 * s['score_std']:.2f}) "
            f"at lr {s['chosen_lr']:g}; pretrained: {source}")


def markdown(task: str, source: str, s: Dict[str, Any]) -> str:
    """scores.md: per-seed main-metric scores per lr, medians, and the final line."""
    lines = [f"# {task}: {source}", "", f"Main metric: `{s['main_metric']}` (x100), final step of every run.", "",
             "| lr | seed | " + s["main_metric"] + " |", "|---|---|---|"]
    for tag, r in s["per_lr"].items():
        for seed, scores in r["scores"].items():
            lines.append(f"| {r['lr']:g} | {seed} | {100 * scores[s['main_metric']]:.2f} |")
        m = s["main_metric"]
        lines.append(f"| {r['lr']:g} | **median** | **{100 * r['median'][m]:.2f}** (min {100 * r['min'][m]:.2f}, "
                     f"max {100 * r['max'][m]:.2f}) |")
    lines += ["", score_line(task, source, s), ""]
    return "\n".join(lines)


def finetune(
    pretrained: str,
    task: str,
    seeds: Optional[int] = None,
    preset: Optional[str] = None,
    recipe: Optional[str] = None,
    overrides: Sequence[str] = (),
    runs_root: str | Path = "runs",
    random_init: bool = False,
    tokenizer: Optional[str] = None,
    out: Optional[str | Path] = None,
) -> Dict[str, Any]:
    """Fine-tune ``pretrained`` on ``task`` over lrs × seeds and write the job's scores.

    Args:
        pretrained: our run/checkpoint directory or a Hugging Face model directory.
        task: sst2 cola mrpc qqp stsb qnli rte mnli conll2003.
        seeds: use seeds 1..N (overrides the config's ``seeds``).
        preset: ``configs/finetune/preset/NAME.yaml`` (smoke, small) or a YAML path.
        recipe: ``configs/finetune/NAME.yaml`` or a YAML path; None = the model's family.
        overrides: ``key=value`` of the FinetuneConfig (e.g. ``lrs=[1e-4]``, ``train.global_batch_size=16``).
        random_init: the control: same shape and tokenizer, random weights.
        out: the job directory (default: see the module docstring).
    Returns:
        The summary written to scores.json.
    Raises:
        UserError: bad config, model or data (before any run trains).
    """
    from pretrain.tasks.finetuning import FinetuningTask
    from pretrain.training.loop import train
    from pretrain.training.rundir import finished_summary

    ident = pretrained_identity(pretrained)
    base = {"pretrained": str(pretrained), "task": task, "random_init": bool(random_init)}
    if tokenizer:
        base["tokenizer"] = str(tokenizer)
    cfg = load_finetune_config(recipe or default_recipe(ident["family"]), preset, overrides, base)
    if seeds is not None:
        if seeds < 1:
            raise UserError(f"--seeds {seeds} must be >= 1")
        cfg.seeds = list(range(1, seeds + 1))
    out = Path(out) if out else job_directory(ident, task, random_init, runs_root)
    if out.exists() and not out.is_dir():
        raise UserError(f"job directory {out} is a file; pass --out a directory (new, or a job's to resume it)")
    n_train = count_train_rows(task, cfg.data.source, cfg.data.max_train_rows)
    runs = run_configs(cfg, out, n_train)
    from pretrain.training.checks import (
        check_run,  # every run checked before the first trains
    )

    # Under torchrun every rank runs this function and trains every run together; only rank
    # 0 writes the job's files.
    main_rank = launcher_rank() == 0
    for r in runs:
        check_run(r, int(os.environ.get("WORLD_SIZE", "1")), FinetuningTask)
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / FINETUNE_YAML, OmegaConf.to_yaml(cfg, resolve=True))
    per_run: Dict[float, Dict[int, Dict[str, float]]] = {}
    wall_time_s = 0.0  # the job's training time, for the results' cost statement
    for r in runs:
        run = Path(r.run_dir)
        before = finished_summary(run)  # UserError for a damaged one
        done = before is not None
        summary = before if done else train(r, resume=True, task=FinetuningTask)
        if not cfg.keep_weights and main_rank:
            shutil.rmtree(run / "checkpoints", ignore_errors=True)  # train() returned after its last barrier
        scores = summary["final_eval"]
        wall_time_s += float(summary.get("wall_time_s") or 0.0)
        per_run.setdefault(float(r.train.optimizer.lr), {})[int(r.train.seed)] = scores
        main = main_metric(task, cfg.data.eval_splits)
        if main_rank:
            print(f"{r.name}: {main} = {100 * scores[main]:.2f}" + ("" if not done else " (done before)"))
    s = summarize(task, per_run, cfg.data.eval_splits)
    source = str(pretrained) + (" (random init)" if random_init else "")
    s.update(task=task, pretrained=source, recipe=recipe or default_recipe(ident["family"]), preset=preset, num_train_rows=n_train,
             wall_time_s=wall_time_s)
    if main_rank:
        write_json_atomic(out / SCORES_JSON, s)
        write_text_atomic(out / SCORES_MD, markdown(task, source, s))
        print(score_line(task, source, s))
    return s
