"""Typed fine-tuning configuration: what to fine-tune from, on which task, with which recipe.

A fine-tuning config is composed like a run config (``pretrain.config``), layers merging in
this order, later wins: dataclass defaults < ``configs/finetune/<recipe>.yaml`` (the paper's
settings; the recipe defaults to the pretrained model's family) < ``--preset``
(``configs/finetune/preset/NAME.yaml``: scale for small models and quick checks) <
``key=value`` on the command line. One seed and one learning rate make one run of the
training loop (``pretrain.training.loop.train`` with ``pretrain.tasks.finetuning``); the
runner (``pretrain.downstream.runner``) expands ``lrs`` × ``seeds``.

Derived, never set by hand: ``train.max_steps`` = ``epochs`` × training rows / batch,
``train.schedule.warmup_steps`` = ``warmup_fraction`` × max_steps, ``train.optimizer.lr``
and ``train.seed`` per run, ``train.eval_every`` = one epoch, ``train.checkpoint_every`` =
max_steps (a seed's run is resumable from its end state only; fine-tuning runs are short).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, get_args

from omegaconf import OmegaConf

from common.configfile import merge_into, parse_overrides, read_yaml
from common.errors import UserError
from pretrain.config import TrainConfig, find_configs_root, read_composed

TaskName = Literal["sst2", "cola", "mrpc", "qqp", "stsb", "qnli", "rte", "mnli", "conll2003"]
TASK_NAMES = get_args(TaskName)


@dataclass
class FinetuneDataConfig:
    """Where a task's data is and how much of it is used (read by ``pretrain.tasks.finetuning``).

    source: a GLUE root (holding ``SST-2/`` ...), one task's directory, a CoNLL-2003
        directory, or ``hf:NAME`` (a Hugging Face dataset); None = ``$BERT_RECIPES_DATA/glue``
        (or ``/conll2003``), default ``../shared/data``.
    max_length: tokens per example, special tokens included (BERT ``run_classifier.py``
        and the CoNLL setups: 128); never more than the model's positions.
    max_train_rows: use a seeded sample of this many training rows (quick presets); None = all.
    max_eval_rows: score only the first this many rows of each evaluation split; None = all
        (the reported number should use all; the smoke preset caps it).
    eval_splits: the splits scored at the end and reported: None = the task's (GLUE: dev,
        MNLI: dev and dev_mismatched, CoNLL-2003: dev and test).
    """

    source: Optional[str] = None
    max_length: int = 128
    max_train_rows: Optional[int] = None
    max_eval_rows: Optional[int] = None
    eval_splits: Optional[List[str]] = None


@dataclass
class FinetuneConfig:
    """One fine-tuning job: a pretrained model on a task over ``lrs`` × ``seeds``.

    pretrained: a run directory / checkpoint directory of ours, or a Hugging Face model
        directory (``pretrain.downstream.source``).
    tokenizer: a tokenizer.json overriding the one found with the model.
    random_init: the control row: same shape and tokenizer, BERT's random initialisation.
    task: one of ``TASK_NAMES``.
    epochs: passes over the training rows (BERT §A.3: 3; RoBERTa: up to 10).
    warmup_fraction: share of the steps with linear warmup (BERT's ``run_classifier.py``
        ``warmup_proportion`` 0.1; RoBERTa appendix Table 10 and ALBERT: 6%).
    lrs: peak learning rates searched (BERT §A.3: {5e-5, 3e-5, 2e-5}); the reported score is
        the median over seeds at the lr with the best median, as the papers choose on dev.
    seeds: seeds per lr (``--seeds N``: 1 .. N); RoBERTa and ALBERT report medians of 5.
    classifier_dropout: dropout before the classifier (0.1 in all three papers' code).
    keep_weights: keep each run's final checkpoint (its fine-tuned weights); off, a finished
        run's checkpoints are deleted once its summary is written (only the scores are used).
    per_task: task name → keys of this config that apply to that task only (ALBERT's
        Table 14 sets lr, batch, steps and warmup per task); merged over the recipe, under
        the preset and the command line.
    train: the loop's settings (batch, optimizer, precision ...), see ``pretrain.config``.
    """

    name: str = "finetune"
    run_dir: Optional[str] = None
    pretrained: Optional[str] = None
    tokenizer: Optional[str] = None
    random_init: bool = False
    task: TaskName = "sst2"
    epochs: float = 3.0
    warmup_fraction: float = 0.1
    lrs: List[float] = field(default_factory=lambda: [5e-5, 3e-5, 2e-5])
    seeds: List[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    classifier_dropout: float = 0.1
    keep_weights: bool = False
    per_task: Dict[str, Any] = field(default_factory=dict)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _finetune_root() -> Path:
    return find_configs_root(Path(__file__).resolve().parents[2] / "configs") / "finetune"


def resolve(kind: str, name: str) -> Path:
    """``configs/finetune/NAME.yaml`` (kind ``recipe``) or ``configs/finetune/preset/NAME.yaml``
    (kind ``preset``), or ``name`` itself when it is a YAML path. UserError listing the
    available names otherwise."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise UserError(f"fine-tuning {kind} file not found: {p}")
        return p
    d = _finetune_root() / ("preset" if kind == "preset" else "")
    f = d / f"{name}.yaml"
    if not f.is_file():
        names = sorted(x.stem for x in d.glob("*.yaml"))
        raise UserError(f"unknown fine-tuning {kind} {name!r} (no {f}); available: {', '.join(names) or 'none'}")
    return f


def load_finetune_config(recipe: str, preset: Optional[str] = None, overrides: Sequence[str] = (), base: Optional[dict] = None) -> FinetuneConfig:
    """Compose a FinetuneConfig: defaults < ``base`` (e.g. pretrained, task from the
    command line) < recipe (its ``include: [FILE]`` first) < the recipe's ``per_task`` entry for the task < preset <
    overrides. Validated (``check_finetune_config``); raises UserError."""
    where = f"fine-tuning config ({recipe})"
    head = [OmegaConf.create(base or {}), read_composed(resolve("recipe", recipe))]  # a recipe may include another
    tail = [read_yaml(resolve("preset", preset))] if preset else []
    tail.append(parse_overrides(overrides))
    first = merge_into(FinetuneConfig, *head, *tail, where=where)
    own = first.per_task.get(first.task) if first.per_task else None
    layer = [OmegaConf.create(OmegaConf.to_container(own))] if own is not None else []
    cfg = merge_into(FinetuneConfig, *head, *layer, *tail, where=f"{where} per_task.{first.task}" if layer else where)
    check_finetune_config(cfg)
    return cfg


def check_finetune_config(cfg: FinetuneConfig) -> None:
    """Values the types cannot check. Raises UserError naming the key."""
    unknown = sorted(set(cfg.per_task) - set(TASK_NAMES))
    if unknown:
        raise UserError(f"per_task has unknown task(s) {', '.join(unknown)}; valid: {', '.join(TASK_NAMES)}")
    if not cfg.pretrained:
        raise UserError("pretrained is not set: pass a checkpoint, run directory or Hugging Face model directory")
    if not cfg.lrs or any(not lr > 0 for lr in cfg.lrs):
        raise UserError(f"lrs={list(cfg.lrs)} must be a non-empty list of positive learning rates")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise UserError(f"seeds={list(cfg.seeds)} must be a non-empty list of distinct seeds")
    if not cfg.epochs > 0:
        raise UserError(f"epochs={cfg.epochs} must be > 0")
    if not 0.0 <= cfg.warmup_fraction < 1.0:
        raise UserError(f"warmup_fraction={cfg.warmup_fraction} must be in [0, 1)")
    if not 0.0 <= cfg.classifier_dropout < 1.0:
        raise UserError(f"classifier_dropout={cfg.classifier_dropout} must be in [0, 1)")
    d = cfg.data
    if d.max_length < 8:
        raise UserError(f"data.max_length={d.max_length} must be >= 8")
    for key in ("max_train_rows", "max_eval_rows"):
        v = getattr(d, key)
        if v is not None and v < 1:
            raise UserError(f"data.{key}={v} must be >= 1 or null (all rows)")
