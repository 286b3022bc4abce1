"""The seam between the one training loop (``pretrain.training.loop``) and what a run trains.

A ``Task`` supplies everything that differs between runs: the data, the modules, how rows
become a batch, the loss (its ``Criterion``), the evaluation metrics and the summary keys.
The loop supplies everything that does not: the world, the DeepSpeed engine, gradient
accumulation, the loss reduction below, logging, the eval and checkpoint cadence, exact
resume, preemption, the non-finite guard and ``summary.json``. A new objective (sequence
or token classification, a distilled student beside a frozen teacher, ELECTRA's generator
and discriminator) is a new Task and Criterion, never a change to the loop.

The loop calls a Task in this order::

    Task.check_config(cfg)          # class method; no data, no torch work (pretrain check_run)
    task = TaskClass(cfg)           # cfg: a copy the task may fill in (model.vocab_size ...)
    task.prepare(world)             # data built/loaded (rank 0 first), tokenizer, data checks
    module = task.build_model()     # the trainable module; DeepSpeed wraps it
    task.frozen_modules()           # e.g. a teacher: eval mode, outside the engine
    sampler = task.train_sampler()  # global_batch(step) -> (epoch, rows); epochs(step)
    per step, per micro batch of this rank's rows:
        batch = task.collate(rows, epoch)
        task.criterion(engine, batch) -> (loss_sum, sample_size, logs)
    task.tokens(rows), task.flops(rows)         # per global batch: throughput and MFU
    task.evaluate(engine, world) -> metrics     # every train.eval_every steps and at the end
    task.summary_keys, task.summary_fields()    # what summary.json keeps

Loss reduction (fairseq's ``sample_size``, torchtitan's global valid-token count). A
criterion returns per-term SUMS, e.g. ``loss_sum = {"mlm": nats summed over the masked
tokens, "nsp": nats summed over the pairs}``, and the COUNTS they are sums over,
``sample_size = {"mlm": masked tokens, "nsp": pairs}``. Before any backward of an optimizer
step the loop asks ``criterion.sample_size(batch)`` for every micro batch of the step and
all-reduces the sums, giving the step's global sample size ``G_t`` per term. Each micro
batch then back-propagates ``Σ_t w_t · loss_sum_t / G_t`` (``normalized_loss``) times the
factor that undoes DeepSpeed's averaging over data-parallel ranks, so the gradient is the
one of

    step loss = Σ_t w_t · (Σ over micro batches and ranks of loss_sum_t) / G_t

— every masked token (pair, example) of the step weighs the same, whatever micro batch or
rank it landed in. A mean of per-micro-batch means would weight the tokens of a micro
batch with few masked tokens more (dynamic masking, DOC-SENTENCES rows of varying length).
The logged ``loss`` is that step loss; ``<term>_loss`` is ``Σ loss_sum_t / G_t``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Dict, Mapping, Protocol, Tuple

import numpy as np
import torch
from torch import nn

# A batch: named tensors, e.g. input_ids int64 [batch, seq]; one per micro batch.
Batch = Dict[str, torch.Tensor]
# Per-term scalar tensors, e.g. {"mlm": tensor(812.3), "nsp": tensor(11.0)}.
Terms = Dict[str, torch.Tensor]


class Criterion(ABC):
    """Scores a model on a batch, fairseq style: sums and the counts they are sums over.

    Attributes:
        weights: ``{term: weight}`` of every term the criterion returns; the step loss is
            ``Σ_t weights[t] · loss_sum[t] / sample_size[t]`` (e.g. ``{"mlm": 1.0, "sop":
            1.0}``: BERT appendix A.2 and ALBERT §3.1 add the two means). Terms are named
            for the metrics: term ``t`` is logged as ``<t>_loss``.
    """

    weights: Mapping[str, float]

    @abstractmethod
    def sample_size(self, batch: Batch) -> Terms:
        """Per-term counts of ``batch`` from its labels alone, before any forward pass
        (masked tokens = ``labels != -100``, pairs, examples, non-pad tokens), as int64 or
        float64 scalar tensors. Must equal the ``sample_size`` that ``__call__`` returns for
        the same batch. The loop sums these over the micro batches and ranks of a step."""

    @abstractmethod
    def __call__(self, model: nn.Module, batch: Batch) -> Tuple[Terms, Terms, Terms]:
        """Run ``model`` (the DeepSpeed engine in training, any module in evaluation) on
        ``batch`` and score it.

        Returns:
            ``(loss_sum, sample_size, logs)``: ``loss_sum`` per term, float32 scalars with a
            gradient path (nats summed over the term's items; a term with no items in this
            batch is ``0 · logits.sum()`` so every parameter stays in the graph);
            ``sample_size`` per term, as ``sample_size(batch)``; ``logs``, scalar tensors that
            are sums over the batch (e.g. ``{"mlm_correct": ..., "mlm_count": ...}``) so that
            adding them over micro batches and ranks gives split-level metrics. Logs are
            detached.
        """


class Sampler(Protocol):
    """Which training rows each optimizer step reads: a pure function of the step, so a
    resumed run reads exactly the batches an uninterrupted one would."""

    def global_batch(self, step: int) -> Tuple[int, np.ndarray]:
        """``(epoch, rows)`` of 0-based step ``step``: rows int64 ``[n]`` over all ranks;
        the loop cuts them into ``world_size × accumulation`` contiguous micro batches."""

    def epochs(self, step: int) -> float:
        """Passes over the training split after ``step`` steps (the ``epoch`` metric)."""


class Task(ABC):
    """What a run trains. Subclasses implement the abstract methods; the loop calls them
    in the order of the module docstring and never looks inside a batch or a model.

    Args:
        cfg: the run config (a structured OmegaConf object). The loop reads ``cfg.name``,
            ``cfg.run_dir`` and ``cfg.train`` (a ``pretrain.config.TrainConfig``), and saves
            ``cfg`` resolved as ``config.yaml`` and in every checkpoint AFTER ``prepare``,
            so the task may fill in values it learns from the data (``model.vocab_size``).
            The loop passes its own copy.

    Attributes:
        summary_keys: names of ``evaluate``'s metrics that ``summary.json`` keeps under
            ``final_eval`` (those present in the last evaluation).
        primary_metric: the eval metric the progress bar prints first.
    """

    summary_keys: Tuple[str, ...] = ()
    primary_metric: str = "loss"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Every check of ``cfg`` that needs no data and no torch work (shapes against
        sequence lengths, objective against data format ...), so ``check_run`` refuses a
        bad run — or a bad ablation arm, or a Slurm job — before anything is built.
        Raises ``common.errors.UserError`` naming the key."""

    @abstractmethod
    def prepare(self, world: Any) -> None:
        """Build or open the data (rank 0 first, then the others, so only one process
        writes), load the tokenizer, fill in ``cfg`` from the data, and run every
        data-dependent check. ``world`` is a ``pretrain.training.distributed.World``.
        Raises UserError for anything wrong with the data; nothing has trained yet."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The trainable module DeepSpeed wraps, its optimizer updates and its checkpoints
        hold. Called once after ``prepare``, with the global seed set (identical weights on
        every rank). Whatever ``flops`` needs of the model is taken here, before ZeRO-3
        partitions the parameters away."""

    def frozen_modules(self) -> Dict[str, nn.Module]:
        """Modules used but not trained (e.g. a distillation teacher), by name. Called once
        after ``build_model``; the loop moves them to the engine's device, puts them in eval
        mode and turns ``requires_grad`` off. They stay outside the engine and out of
        checkpoints; the criterion reaches them through the task; their forward FLOPs
        belong in ``flops``. Default: none."""
        return {}

    @abstractmethod
    def train_sampler(self) -> Sampler:
        """The training sampler (after ``prepare``)."""

    @abstractmethod
    def collate(self, rows: np.ndarray, epoch: int) -> Batch:
        """Tensors of training rows ``rows`` (int64 ``[n]``) read in ``epoch`` (dynamic
        masks depend on it): CPU tensors; the loop moves them to the device."""

    @property
    @abstractmethod
    def criterion(self) -> Criterion:
        """The training criterion (see ``Criterion``)."""

    @abstractmethod
    def tokens(self, rows: np.ndarray) -> int:
        """Non-padding tokens in training rows ``rows`` (the ``tokens_seen`` metric)."""

    @abstractmethod
    def flops(self, rows: np.ndarray) -> float:
        """Model FLOPs of one training pass (forward + backward of the trainable module,
        forward of frozen ones) over training rows ``rows`` (``pretrain.training.mfu``)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, world: Any) -> Dict[str, float]:
        """Metrics on held-out data, the same on every rank (rank ``world.rank`` scores its
        share, the sums are all-reduced). ``model`` is the engine (ZeRO-3 gathers weights
        collectively, so every rank must run the same number of forward passes); it is put
        in eval mode for the pass and back in train mode after."""

    def summary_fields(self) -> Dict[str, Any]:
        """Extra JSON-serialisable facts for ``summary.json`` (e.g. ``data_dir``,
        ``num_train_sequences``). Default: none."""
        return {}


class TokenRowsTask(Task):
    """A Task whose training rows are token sequences drawn by one sampler and scored by one
    criterion (masked-LM pretraining and its variants, fine-tuning). ``prepare`` sets
    ``self.lengths`` (int64 ``[num_train_rows]``, non-padding tokens per training row),
    ``self.sampler`` (a ``Sampler``) and ``self._criterion`` (a ``Criterion``); this class
    supplies ``train_sampler``, ``criterion`` and ``tokens`` from them."""

    lengths: np.ndarray
    sampler: Sampler
    _criterion: Criterion

    def train_sampler(self) -> Sampler:
        return self.sampler

    @property
    def criterion(self) -> Criterion:
        return self._criterion

    def tokens(self, rows: np.ndarray) -> int:
        return int(self.lengths[rows].sum())


def normalized_loss(loss_sum: Terms, sample_size: Mapping[str, float], weights: Mapping[str, float]) -> torch.Tensor:
    """``Σ_t weights[t] · loss_sum[t] / sample_size[t]`` over the terms of ``weights``.

    With a micro batch's ``loss_sum`` and the GLOBAL ``sample_size`` of the optimizer step,
    this is the micro batch's share of the step loss (its gradients add up over micro
    batches and ranks to the step loss's gradient). A term with no items in the whole step
    (``sample_size`` 0) contributes ``0 · loss_sum`` (kept in the graph). Returns a float
    scalar tensor.
    """
    total = None
    for term, w in weights.items():
        n = float(sample_size[term])
        part = loss_sum[term] * (float(w) / n if n > 0 else 0.0)
        total = part if total is None else total + part
    if total is None:
        raise ValueError("a criterion must declare at least one weighted term")
    return total
