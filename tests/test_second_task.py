"""A second task through the unchanged loop: SST-2 sentence classification (GLUE, Wang et al.
2019; Socher et al. 2013) on a few hundred real rows with a tiny encoder. Everything the task
needs is in this file — a config, a word vocabulary, a [CLS] classifier, a criterion
(fairseq's contract: loss sum, example count, correct predictions) and the Task — and
``pretrain.training.loop.train`` runs it with checkpoints, metrics and a summary."""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from common.configfile import merge_into
from pretrain.config import ModelConfig, TrainConfig
from pretrain.models.encoder import Encoder
from pretrain.tasks.base import Criterion, Task
from pretrain.training import checkpoint, rundir
from pretrain.training.batching import GlobalBatchSampler
from pretrain.training.evaluate import score_split
from pretrain.training.loop import train


@dataclass
class SST2Config:
    name: str = "sst2"
    run_dir: Optional[str] = None
    glue_dir: str = MISSING
    train_rows: int = 320
    dev_rows: int = 200
    model: ModelConfig = field(default_factory=lambda: ModelConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    train: TrainConfig = field(default_factory=TrainConfig)


class Classifier(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.encoder, self.head = Encoder(cfg), nn.Linear(cfg.hidden_size, 2)

    def forward(self, input_ids, attention_mask):  # mean over the tokens: learns faster than [CLS] from scratch
        h, m = self.encoder(input_ids, attention_mask), attention_mask.unsqueeze(-1).float()
        return {"logits": self.head((h * m).sum(1) / m.sum(1))}


class ClassificationCriterion(Criterion):
    weights = {"cls": 1.0}

    def sample_size(self, batch):
        return {"cls": torch.tensor(len(batch["label"]))}

    def __call__(self, model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])["logits"].float()
        correct = (logits.argmax(-1) == batch["label"]).sum()
        return {"cls": F.cross_entropy(logits, batch["label"], reduction="sum")}, self.sample_size(batch), {"correct": correct}


class SST2Task(Task):
    summary_keys = ("accuracy", "cls_loss")
    primary_metric = "accuracy"

    def prepare(self, world):
        def read(split, n):
            with open(f"{self.cfg.glue_dir}/SST-2/{split}.tsv", newline="") as f:
                return [(r["sentence"].split(), int(r["label"])) for r in itertools.islice(
                    csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE), n)]

        train_rows, dev_rows = read("train_full", self.cfg.train_rows), read("dev", self.cfg.dev_rows)
        self.vocab = {w: i for i, w in enumerate(["[PAD]", "[CLS]", "[UNK]", *sorted({w for s, _ in train_rows for w in s})])}
        self.cfg.model.vocab_size = len(self.vocab)
        self.train_rows, self.dev_rows, self._criterion = train_rows, dev_rows, ClassificationCriterion()
        self.sampler = GlobalBatchSampler(len(train_rows), self.cfg.train.global_batch_size, self.cfg.train.seed)

    def batch(self, rows, indices):
        ids = [[1, *(self.vocab.get(w, 2) for w in rows[i][0])][: self.cfg.model.max_position_embeddings] for i in indices]
        input_ids = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.int64)
        for j, x in enumerate(ids):
            input_ids[j, : len(x)] = torch.tensor(x)
        return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long(),
                "label": torch.tensor([rows[i][1] for i in indices])}

    def build_model(self):
        model = Classifier(self.cfg.model)
        self.params = sum(p.numel() for n, p in model.named_parameters() if "word_embeddings" not in n)
        return model

    def train_sampler(self):
        return self.sampler

    def collate(self, rows, epoch):
        return self.batch(self.train_rows, rows)

    @property
    def criterion(self):
        return self._criterion

    def tokens(self, rows):
        return int(sum(1 + len(self.train_rows[i][0]) for i in rows))

    def flops(self, rows):
        return 6.0 * self.params * self.tokens(rows)

    def evaluate(self, model, world):
        s = score_split(self._criterion, model, lambda idx: self.batch(self.dev_rows, idx), len(self.dev_rows),
                        self.cfg.train.micro_batch_size, world.rank, world.size)
        n = s["sample_size"]["cls"]
        return {"accuracy": s["logs"]["correct"] / n, "cls_loss": s["loss_sum"]["cls"] / n, "num_examples": int(n)}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_sst2_trains_through_the_same_loop(tmp_path, data_dir):
    """Mechanics, not quality: from scratch on 320 rows the model learns its training rows
    (loss 0.75 → 0.22) but stays near chance on dev sentences (0.5-0.55)."""
    cfg = merge_into(SST2Config, {"glue_dir": str(data_dir / "glue"), "run_dir": str(tmp_path / "sst2"),
                                  "model": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}, "train": {
        "global_batch_size": 32, "micro_batch_size": 16, "max_steps": 80, "eval_every": 40, "log_every": 10,
        "checkpoint_every": 40, "seed": 1, "optimizer": {"lr": 1e-2, "weight_decay": 0.0}, "schedule": {"warmup_steps": 5}}})
    summary = train(cfg, task=SST2Task)
    run = tmp_path / "sst2"
    losses = [r["loss"] for r in rundir.read_metrics(run, "train")]
    assert [sorted(k for k in r if k.endswith("loss")) for r in rundir.read_metrics(run, "train")][0] == ["cls_loss", "loss"]
    assert np.mean(losses[-2:]) < losses[0] - 0.3, losses  # it learns the training rows
    evals = rundir.read_metrics(run, "eval")
    assert [r["step"] for r in evals] == [40, 80] and evals[-1]["num_examples"] == 200
    assert summary["final_eval"] == {"accuracy": evals[-1]["accuracy"], "cls_loss": evals[-1]["cls_loss"]}
    assert 0.0 <= summary["final_eval"]["accuracy"] <= 1.0 and summary["num_parameters"] > 0
    assert [d.name for d in checkpoint.list_checkpoints(run)] == ["step-0000040", "step-0000080"]
    # the config is saved with the vocabulary size the task filled in; resuming a finished run changes nothing
    assert train(cfg, resume=True, task=SST2Task)["final_eval"] == summary["final_eval"]
