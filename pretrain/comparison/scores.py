"""Downstream scores for the comparison, from finished ``pretrain finetune`` jobs only.

A model's pretraining run is ``RUNS/<run name>`` (``--runs RUNS``; the recipe's ``name``,
as ``pretrain train`` names it) or a directory given for that model (``--run MODEL=DIR``).
Its jobs are ``<run>/finetune/<task>/scores.json`` (``pretrain.downstream.runner``): the
median over seeds at the chosen learning rate of the task's main metric. A run is used only
if its ``config.yaml`` has the shape being measured (a smoke run in ``runs/bert`` is not the
``small`` BERT); otherwise the table says why there is no score.

The int8 score change re-scores a job's fine-tuned weights, so it needs a job run with
``keep_weights=true`` (``pretrain finetune RUN --task T keep_weights=true``): for every seed
at the job's chosen learning rate, the final checkpoint is loaded (weights-only) into the
fine-tuning model, the task's evaluation split is scored with it as float32 and again after
``quantize_int8``, through ``FinetuningTask.evaluate`` — the same rows and metric as the
job. The float32 re-score is checked against the job's own final score. The per-seed scores
are written to ``<job>/int8.json`` (``INT8_JSON``), a log like ``scores.json``: a job whose
weights are gone (a committed log in ``results/runs``) gives its int8 row from that record.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from omegaconf import OmegaConf

from common.atomic import write_json_atomic
from common.configfile import read_yaml
from common.errors import UserError

INT8_JSON = "int8.json"

# The shape keys a run must share with the measured model for its scores to be its.
SHAPE_KEYS = ("family", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "embedding_size", "type_vocab_size", "sharing")


@dataclass
class JobScore:
    """A finished fine-tuning job: ``score`` is the median main metric (0-1 scale) over
    ``seeds`` seeds at ``lr``; ``job`` its directory; from its finetune.yaml, ``precision``
    (``train.precision``; None when it does not say) and ``kept_weights`` (``keep_weights``:
    the seeds' checkpoints were kept, for the int8 re-score)."""

    task: str
    metric: str
    score: float
    seeds: int
    lr: float
    job: Path
    precision: Optional[str] = None
    kept_weights: bool = False


@dataclass
class Int8Score:
    """Float32 and int8 scores (0-1) of one job's fine-tuned weights, per seed and their
    medians; ``fp32_matches_job``: every float32 re-score equals the job's final score
    (within 1e-6)."""

    task: str
    metric: str
    fp32: List[float] = field(default_factory=list)
    int8: List[float] = field(default_factory=list)
    fp32_matches_job: bool = True

    @property
    def fp32_median(self) -> float:
        return statistics.median(self.fp32)

    @property
    def int8_median(self) -> float:
        return statistics.median(self.int8)


def check_runs_root(runs_root: Optional[str | Path], explicit: Mapping[str, str | Path]) -> None:
    """Raise UserError (one line) when ``--runs`` or a ``--run`` directory does not exist."""
    if runs_root is not None and not Path(runs_root).is_dir():
        raise UserError(f"--runs {runs_root}: no such directory; pass the root holding the pretraining runs "
                        "(e.g. --runs runs) or leave --runs out (every score cell then reads 'not run')")
    for model, d in explicit.items():
        if not Path(d).is_dir():
            raise UserError(f"--run {model}={d}: no such directory; pass the model's pretraining run directory")


def parse_run_flags(pairs: List[str], models: List[str]) -> Dict[str, Path]:
    """``--run MODEL=DIR`` values → ``{model: Path}``. UserError for a bad pair or model."""
    out: Dict[str, Path] = {}
    for p in pairs:
        model, sep, d = p.partition("=")
        if not sep or not d:
            raise UserError(f"--run {p!r}: expected MODEL=DIR, e.g. --run bert=runs/small/bert")
        if model not in models:
            raise UserError(f"--run {p!r}: unknown model {model!r}; choose from: {', '.join(models)}")
        out[model] = Path(d)
    return out


def run_for(shape: Any, runs_root: Optional[Path], explicit: Mapping[str, Path]) -> Optional[Path]:
    """The pretraining run directory of ``shape`` (a ``shapes.Shape``), None when neither
    ``--runs`` nor ``--run`` names one."""
    if shape.model in explicit:
        return Path(explicit[shape.model])
    return Path(runs_root) / shape.run_name if runs_root is not None else None


def shape_mismatch(run: Path, cfg: Any) -> Optional[str]:
    """Why ``run``'s scores are not those of ModelConfig ``cfg``: no config.yaml, or the
    first shape key that differs; None when the shapes agree."""
    from pretrain.training.rundir import CONFIG

    f = run / CONFIG
    if not f.is_file():
        return f"no {f}"
    saved = read_yaml(f).get("model") or {}
    for k in SHAPE_KEYS:
        if saved.get(k) != getattr(cfg, k):
            return f"{run} has model.{k}={saved.get(k)}, this shape {getattr(cfg, k)}"
    return None


def _read_job_scores(run: Path, random_init: bool) -> Dict[str, List[JobScore]]:
    """The finished jobs under ``run/finetune/`` by task: the random-init controls
    (``<task>-random-init``, or ``random_init`` in scores.json) or all the others."""
    from pretrain.downstream.runner import FINETUNE_YAML, JOBS_DIR, SCORES_JSON, read_scores

    found: Dict[str, List[JobScore]] = {}
    for f in sorted((run / JOBS_DIR).glob(f"*/{SCORES_JSON}")):
        s = read_scores(f)
        if bool(s.get("random_init") or f.parent.name.endswith("-random-init")) != random_init:
            continue
        y = f.parent / FINETUNE_YAML
        made = read_yaml(y) if y.is_file() else OmegaConf.create({})  # read once: precision and keep_weights
        task = s.get("task", f.parent.name)
        found.setdefault(task, []).append(JobScore(
            task, s["main_metric"], float(s["score"]), int(s["num_seeds"]), float(s["chosen_lr"]), f.parent,
            OmegaConf.select(made, "train.precision", default=None), bool(made.get("keep_weights", False))))
    return found


def read_controls(run: Path) -> Dict[str, JobScore]:
    """The random-init control jobs of ``run`` (``pretrain finetune --random-init``: the
    run's shape and tokenizer from random weights), by task; the first by name where a task
    has several. UserError for a damaged scores.json."""
    return {task: min(jobs, key=lambda j: j.job.name) for task, jobs in _read_job_scores(run, True).items()}


def read_jobs(run: Path) -> Dict[str, JobScore]:
    """Every finished job under ``run/finetune/`` (its scores.json), by task; random-init
    controls (``<task>-random-init``) are left out. Where one task has several jobs (e.g. an
    ablation's bf16 ``sst2`` and a float32 ``sst2-fp32`` made with ``--out`` and
    ``keep_weights=true`` for the int8 row), the one whose weights were kept is used, so the
    score and its int8 change come from the same job; else the one named after the task, else
    the first by name. UserError for a damaged scores.json (``read_scores``)."""
    found = _read_job_scores(run, False)
    return {task: min(jobs, key=lambda j: (not j.kept_weights, j.job.name != task, j.job.name))
            for task, jobs in found.items()}


def int8_rescore(job: JobScore) -> Int8Score | str:
    """``Int8Score`` of ``job`` (module docstring), or the reason it cannot be computed (no
    kept weights). Raises UserError for a damaged checkpoint or missing task data."""
    import torch

    from common.configfile import merge_into
    from pretrain.comparison.measure import quantize_int8
    from pretrain.downstream.config import FinetuneConfig
    from pretrain.downstream.runner import lr_tag
    from pretrain.tasks.finetuning import FinetuningTask
    from pretrain.training import safeload
    from pretrain.training.checkpoint import MODEL_STATES, _resolve_checkpoint, read_client_state
    from pretrain.training.distributed import World
    from pretrain.training.rundir import CHECKPOINTS, read_summary

    seeds = sorted(d for d in (job.job / lr_tag(job.lr)).glob("seed-*") if d.is_dir())
    if not seeds or not all((d / CHECKPOINTS).is_dir() for d in seeds):
        if (job.job / INT8_JSON).is_file():
            return read_int8(job)
        return f"not run: {job.job} kept no weights (fine-tune with keep_weights=true)"
    world = World(rank=0, size=1, local_rank=0, local_size=1)
    out = Int8Score(job.task, job.metric)
    for d in seeds:
        ckpt = _resolve_checkpoint(d)
        cfg = merge_into(FinetuneConfig, read_client_state(ckpt)["config"], where=str(ckpt))
        task = FinetuningTask(cfg)
        task.prepare(world)
        model = task.build_model()
        model.load_state_dict(safeload.load_tensors(ckpt / MODEL_STATES)["module"])
        model.eval()
        with torch.inference_mode():
            fp32 = task.evaluate(model, world)[job.metric]
            int8 = task.evaluate(quantize_int8(model), world)[job.metric]
        out.fp32.append(fp32)
        out.int8.append(int8)
        final = read_summary(d)["final_eval"][job.metric]
        out.fp32_matches_job &= abs(final - fp32) <= 1e-6
    write_json_atomic(job.job / INT8_JSON, {"task": out.task, "metric": out.metric, "lr": job.lr,
                                            "seeds": [d.name for d in seeds], "fp32": out.fp32, "int8": out.int8,
                                            "fp32_matches_job": out.fp32_matches_job})
    return out


def read_int8(job: JobScore) -> Int8Score:
    """The ``Int8Score`` that ``int8_rescore`` recorded in ``job/int8.json``. Raises UserError
    (one line, naming the file) when it is unreadable, lacks a key, holds no or unequal
    numbers of scores, or was made for another task, metric or learning rate than ``job``'s
    scores.json chose (the job was redone since: re-run with its weights kept)."""
    f = job.job / INT8_JSON
    try:
        rec = json.loads(f.read_text(encoding="utf-8"))
        fp32, int8 = [float(x) for x in rec["fp32"]], [float(x) for x in rec["int8"]]
        task, metric, lr, same = str(rec["task"]), str(rec["metric"]), float(rec["lr"]), bool(rec["fp32_matches_job"])
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"{f}: unreadable int8 record ({type(e).__name__}: {e}); delete it and re-run "
                        "`pretrain compare` on the job with its kept weights") from None
    if not fp32 or len(fp32) != len(int8):
        raise UserError(f"{f}: {len(fp32)} float32 and {len(int8)} int8 scores; expected the same number, at least one")
    if (task, metric, lr) != (job.task, job.metric, job.lr):
        raise UserError(f"{f}: made for {task}/{metric} at lr {lr}, but the job's scores.json chose {job.task}/"
                        f"{job.metric} at lr {job.lr}; delete it and re-run `pretrain compare` with the job's weights")
    return Int8Score(task, metric, fp32, int8, same)
