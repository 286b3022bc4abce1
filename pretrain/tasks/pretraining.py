"""Masked-LM pretraining (+ NSP or SOP): BERT, RoBERTa and ALBERT recipes as a ``Task``.

What it supplies to the loop (``pretrain.tasks.base``):
- data: the shard directory of ``cfg.data``, built by rank 0 first (``data_prep.build``,
  cached by fingerprint), then opened by every rank; the tokenizer fixes
  ``model.vocab_size`` when it is null;
- the trainable module: ``pretrain.models.encoder.BertForPretraining`` (encoder, tied MLM
  head, the NSP/SOP head of ``objective.sentence``); no frozen modules;
- batches: ``pretrain.training.batching`` — the step-indexed sampler (fixed rows, or a
  constant token budget for DOC-SENTENCES, RoBERTa §4.2) and the collator (static masks
  read from the shards, dynamic masks drawn per epoch, RoBERTa §4.1);
- the criterion: ``pretrain.criterions.pretraining.PretrainingCriterion``;
- evaluation on the validation split (masked once at data-prep time with
  ``data.masking.validation_seed``, so every arm of an ablation is scored on the same
  positions): ``mlm_loss`` (nats per predicted token, a token average over the split),
  ``perplexity`` (its exp), ``mlm_accuracy``, ``num_tokens``, and with a sentence head and
  labels ``nsp_loss``/``sop_loss`` (nats per pair) and ``sentence_accuracy`` (BERT §3.1
  reports NSP accuracy, ALBERT Table 5 SOP accuracy).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
from torch import nn

from common.errors import UserError
from pretrain.criterions.pretraining import PretrainingCriterion, check_objective
from pretrain.models.encoder import build_model, check_model_fits_data
from pretrain.tasks.base import Batch, Criterion, TokenRowsTask
from pretrain.training import distributed
from pretrain.training.batching import Collator, make_sampler
from pretrain.training.evaluate import score_split
from pretrain.training.mfu import ModelFlops


class PretrainingTask(TokenRowsTask):
    """MLM (+ NSP/SOP) pretraining of a ``pretrain.config.RunConfig``."""

    summary_keys = ("mlm_loss", "perplexity", "mlm_accuracy", "sentence_accuracy")
    primary_metric = "mlm_loss"

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Sequences fit the model's positions and pair data has two token types
        (``check_model_fits_data``). Raises UserError."""
        check_model_fits_data(cfg.model, cfg.data)

    def prepare(self, world: distributed.World) -> None:
        from data_prep.shards import ShardSet
        from data_prep.tokenizer import load_tokenizer

        cfg = self.cfg
        self.data_dir = _locate_data(cfg, world)
        shards = ShardSet(self.data_dir, verify=world.is_main)
        self.train_split, self.val_split = shards["train"], shards["validation"]
        check_objective(cfg.objective.sentence, self.train_split.columns)
        tok = load_tokenizer(shards.tokenizer_path, cfg.data.tokenizer.kind)
        if cfg.model.vocab_size is None:
            cfg.model.vocab_size = tok.vocab_size
        elif cfg.model.vocab_size < tok.vocab_size:
            raise UserError(
                f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {tok.vocab_size} ids "
                f"({shards.tokenizer_path}); set model.vocab_size=null to take it from the tokenizer"
            )
        self.lengths = self.train_split.lengths()
        self.sampler = make_sampler(cfg.data, self.lengths, cfg.train.global_batch_size, cfg.train.seed)
        if len(self.val_split) == 0:
            raise UserError(f"{self.data_dir} has an empty validation split; raise data.validation_fraction")
        from data_prep.masking import Masker
        from data_prep.token_counts import masking_weights

        # DistilBERT's frequency-smoothed choice of masked tokens (data.masking.smoothing).
        weights = masking_weights(cfg.data.masking, shards, tok.vocab_size, tok.special_ids, world.is_main)
        masker = Masker.from_config(cfg.data.masking, tok.vocab_size, tok.mask_id, tok.special_ids, token_weights=weights)
        self.collate_train = Collator(self.train_split, tok.pad_id, masker, seed=cfg.train.seed)
        self.collate_val = Collator(self.val_split, tok.pad_id)
        self._criterion = PretrainingCriterion(cfg.objective.sentence)

    def build_model(self) -> nn.Module:
        model = build_model(self.cfg.model, self.cfg.objective.sentence)
        self.model_flops = ModelFlops(model)  # before ZeRO-3 partitions the weights away
        return model

    def collate(self, rows: np.ndarray, epoch: int) -> Batch:
        return self.collate_train(rows, epoch)

    def flops(self, rows: np.ndarray) -> float:
        return self.model_flops(self.lengths[rows])

    def score_validation(self, criterion: Criterion, model: nn.Module, world: distributed.World) -> Dict[str, Dict[str, float]]:
        """``criterion``'s loss sums, sample sizes and logs over the validation split, with the
        masks drawn once at data-prep time (``data.masking.validation_seed``), summed over all
        ranks (``pretrain.training.evaluate.score_split``; at most ``train.eval_max_batches``
        micro batches of ``train.micro_batch_size`` rows)."""
        t = self.cfg.train
        return score_split(criterion, model, lambda rows: self.collate_val(rows, epoch=0), len(self.val_split),
                           t.micro_batch_size, world.rank, world.size, t.eval_max_batches)

    def score_masked_validation(self, model: nn.Module, world: distributed.World) -> Tuple[Dict[str, Dict[str, float]], float]:
        """``score_validation`` of the training criterion, and the split's masked-token count
        (the ``mlm`` sample size, > 0). Raises ValueError when no token of the split is masked."""
        s = self.score_validation(self._criterion, model, world)
        count = s["sample_size"]["mlm"]
        if count == 0:
            raise ValueError("the validation split has no labelled tokens")
        return s, count

    def evaluate(self, model: nn.Module, world: distributed.World) -> Dict[str, float]:
        s, count = self.score_masked_validation(model, world)
        loss = s["loss_sum"]["mlm"] / count
        m = {"mlm_loss": loss, "perplexity": math.exp(min(loss, 700.0)), "mlm_accuracy": s["logs"]["mlm_correct"] / count,
             "num_tokens": int(count)}
        sentence = self._criterion.sentence
        pairs = s["sample_size"].get(sentence, 0)
        if pairs > 0:
            m[f"{sentence}_loss"] = s["loss_sum"][sentence] / pairs
            m["sentence_accuracy"] = s["logs"]["sentence_correct"] / pairs
        return m

    def summary_fields(self) -> Dict[str, Any]:
        return {"data_dir": str(self.data_dir), "num_train_sequences": len(self.train_split)}


def _locate_data(cfg, world: distributed.World) -> Path:
    from data_prep.build import build

    # Rank 0 builds; the others then find an up-to-date directory and only open it.
    if world.is_main:
        d = build(cfg.data)
    distributed.barrier()
    if not world.is_main:
        d = build(cfg.data)
    return Path(d).resolve()
