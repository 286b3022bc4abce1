"""Fine-tuning on a downstream task (GLUE sentence and pair classification, STS-B regression,
CoNLL-2003 NER) as a ``Task`` of the one training loop.

What it supplies to the loop (``pretrain.tasks.base``), for a
``pretrain.downstream.config.FinetuneConfig``:
- data: the task's training split and evaluation splits, encoded with the pretrained
  model's tokenizer (``pretrain.downstream.task_data``); read by every rank (small files);
- the trainable module: ``pretrain.models.heads.FineTuneModel``, the pretrained encoder (and
  BERT/ALBERT pooler) plus a fresh head initialised under the run's seed, or, with
  ``random_init``, the whole model from BERT's initialisation (the control row);
- batches: ``pretrain.training.batching.GlobalBatchSampler`` (a seeded permutation per
  epoch, the remainder of an epoch dropped) and padding to the longest row of the micro
  batch (``attention_mask`` 0 on padding; labels -100 there for NER);
- the criterion: ``pretrain.criterions.finetuning`` (cross-entropy per example, squared
  error per example, cross-entropy per labelled word);
- evaluation: the task's metrics on every evaluation split, keyed ``<split>_<metric>``
  (``dev_accuracy``, ``test_entity_f1`` ...), from the model as it is at that step. The
  reported number is the one after the last step; nothing is selected by dev score.
"""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
import torch
from torch import nn

from common.errors import UserError
from common.schema import IGNORE_INDEX
from pretrain.criterions.finetuning import CRITERIA
from pretrain.downstream.config import check_finetune_config
from pretrain.downstream.task_data import (
    load_task_data,
    main_metric,
    metric_names,
    score,
)
from pretrain.tasks.base import Batch, TokenRowsTask
from pretrain.training.batching import GlobalBatchSampler


def pad_batch(ids: List[np.ndarray], types: List[np.ndarray], pad_id: int) -> Dict[str, torch.Tensor]:
    """Right-pad int rows to the longest: ``input_ids``, ``token_type_ids``,
    ``attention_mask`` int64 ``[batch, seq]``."""
    width = max(len(x) for x in ids)
    out_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    out_types = np.zeros((len(ids), width), dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for i, (x, t) in enumerate(zip(ids, types)):
        out_ids[i, : len(x)] = x
        out_types[i, : len(t)] = t
        mask[i, : len(x)] = 1
    return {"input_ids": torch.from_numpy(out_ids), "token_type_ids": torch.from_numpy(out_types),
            "attention_mask": torch.from_numpy(mask)}


class FinetuningTask(TokenRowsTask):
    """Fine-tune a pretrained encoder on ``cfg.task`` (a ``FinetuneConfig``)."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        splits = list(cfg.data.eval_splits) if cfg.data.eval_splits else None
        self.primary_metric = main_metric(cfg.task, splits)
        self.summary_keys = tuple(metric_names(cfg.task, splits))

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """``pretrain.downstream.config.check_finetune_config``."""
        check_finetune_config(cfg)

    def prepare(self, world: Any) -> None:
        from pretrain.downstream.source import load_pretrained

        cfg = self.cfg
        self.pretrained = load_pretrained(cfg.pretrained, cfg.tokenizer, cfg.random_init, mlm_head=False)
        mc = self.pretrained.model_cfg
        room = mc.max_position_embeddings - mc.position_offset
        if cfg.data.max_length > room:
            raise UserError(f"data.max_length={cfg.data.max_length} exceeds the model's {room} positions; use <= {room}")
        d = cfg.data
        self.data = load_task_data(cfg.task, self.pretrained.tokenizer, d.max_length, mc.type_vocab_size, d.source,
                                   d.max_train_rows, d.max_eval_rows, list(d.eval_splits) if d.eval_splits else None)
        self.lengths = np.asarray([len(x) for x in self.data.train.input_ids], dtype=np.int64)
        self.sampler = GlobalBatchSampler(len(self.data.train), cfg.train.global_batch_size, cfg.train.seed)
        self._criterion = CRITERIA[self.data.kind]()

    def build_model(self) -> nn.Module:
        from pretrain.models.encoder import flops_per_token
        from pretrain.models.heads import FineTuneModel

        model = FineTuneModel(self.pretrained.model_cfg, self.data.head, self.data.num_labels, self.cfg.classifier_dropout)
        if not self.cfg.random_init:
            model.load_pretrained(self.pretrained.model, self.pretrained.pooler)
        self.pretrained.model = None  # copied; do not hold a second encoder through training
        self._per_token = flops_per_token(model, 0)
        self._per_token_pos = flops_per_token(model, 1) - self._per_token
        return model

    def _rows(self, enc, rows: np.ndarray) -> Batch:
        pad = self.pretrained.tokenizer.pad_id
        batch = pad_batch([enc.input_ids[r] for r in rows], [enc.token_type_ids[r] for r in rows], pad)
        if self.data.kind == "token":
            labels = torch.full(batch["input_ids"].shape, IGNORE_INDEX, dtype=torch.int64)
            for i, r in enumerate(rows):
                lab = enc.labels[r]
                labels[i, : len(lab)] = torch.from_numpy(lab)
            batch["labels"] = labels
        else:
            batch["labels"] = torch.from_numpy(np.asarray(enc.labels)[np.asarray(rows)])
        return batch

    def collate(self, rows: np.ndarray, epoch: int) -> Batch:
        return self._rows(self.data.train, rows)

    def flops(self, rows: np.ndarray) -> float:
        n = self.lengths[rows].astype(np.float64)
        return float(self._per_token * n.sum() + self._per_token_pos * (n * n).sum())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, world: Any) -> Dict[str, float]:
        """Every evaluation split scored in full; rank r runs the r-th contiguous share
        (every rank the same number of forward passes) and the outputs are gathered."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        bs = int(self.cfg.train.micro_batch_size)
        metrics: Dict[str, float] = {}
        try:
            for split, enc in self.data.evals.items():
                n = len(enc)
                share = -(-n // world.size)
                mine = np.arange(world.rank * share, min(n, (world.rank + 1) * share))
                outputs: List[np.ndarray] = []
                for s in range(0, share, bs):
                    rows = mine[s : s + bs]
                    real = len(rows)
                    if real == 0:
                        rows = np.arange(1)  # keeps ZeRO-3's collective gathers in step
                    b = self._rows(enc, rows)
                    logits = model(b["input_ids"].to(device), b["attention_mask"].to(device), b["token_type_ids"].to(device))
                    logits = logits.float().cpu().numpy()
                    for i in range(real):
                        outputs.append(logits[i, : len(enc.input_ids[rows[i]])] if self.data.kind == "token" else logits[i])
                if world.size > 1:
                    gathered: List[Any] = [None] * world.size
                    torch.distributed.all_gather_object(gathered, outputs)
                    outputs = [o for part in gathered for o in part]
                metrics.update(score(self.data, split, outputs))
        finally:
            model.train(was_training)
        return metrics

    def summary_fields(self) -> Dict[str, Any]:
        return {"task": self.cfg.task, "pretrained": self.pretrained.where, "random_init": bool(self.cfg.random_init),
                "num_train_rows": len(self.data.train), "main_metric": self.primary_metric,
                "eval_rows": {k: len(v) for k, v in self.data.evals.items()}}
