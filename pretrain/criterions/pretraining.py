"""Pretraining objectives: the sentence-level head and the criteria that turn logits into
losses (fairseq's split: the model produces logits, a criterion scores them).

Objectives (``objective.sentence``):

- ``none``: masked LM only (Liu et al. 2019, §4.2: RoBERTa drops NSP).
- ``nsp``: next-sentence prediction (Devlin et al. 2019, §3.1 "Task #2"): is segment B the
  text that followed segment A, or a segment from another document?
- ``sop``: sentence-order prediction (Lan et al. 2020, §3.1 "Inter-sentence coherence
  loss"): are two consecutive segments of one document in their original order, or swapped?

Both sentence tasks use the same head shape: BERT's pooler ``tanh(W · h_[CLS] + b)`` then a
2-way linear classifier (Devlin et al. 2019, §3.1 and Figure 1; ALBERT keeps it, §3.1).
Labels follow the Hugging Face convention the shards use: class 0 = "B follows A in the
original text" (IsNext / in order), class 1 = "it does not" (random B / swapped). The total
loss is the sum of the mean MLM loss and the mean sentence loss (Devlin et al. 2019,
appendix A.2; Lan et al. 2020, §3.1).
"""

from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError
from common.schema import LABEL_COLUMNS, SENTENCE_OBJECTIVES


def check_sentence_objective(sentence: str) -> None:
    """Raise UserError unless ``sentence`` is one of none, nsp, sop."""
    if sentence not in SENTENCE_OBJECTIVES:
        raise UserError(f"objective.sentence={sentence!r} is not one of: {', '.join(SENTENCE_OBJECTIVES)}")


def check_objective(sentence: str, shard_columns: Sequence[str]) -> None:
    """Refuse, before any training step, an objective the shards carry no labels for.

    Args:
        sentence: ``objective.sentence`` (none | nsp | sop).
        shard_columns: column names of the training split (``SplitData.columns``).
    Raises:
        UserError: unknown objective, or e.g. SOP on FULL-SENTENCES shards that have no
            ``sentence_order_label`` column.
    """
    check_sentence_objective(sentence)
    if sentence == "none":
        return
    need = LABEL_COLUMNS[sentence]
    if need not in shard_columns:
        have = [c for c in LABEL_COLUMNS.values() if c in shard_columns]
        hint = f"they carry {have[0]}" if have else "they hold no sentence pairs"
        raise UserError(
            f"objective.sentence={sentence} needs a {need} column in the shards, but {hint}; "
            f"build pair data with data.sentence_objective={sentence} or set objective.sentence accordingly"
        )


class SentenceHead(nn.Module):
    """Pooler + 2-way classifier on the first token, shared by NSP and SOP.

    ``pooler``: Linear(H, H) then tanh on ``h[:, 0]`` (BERT's reference implementation; the
    paper's C vector, Devlin et al. 2019 §3). ``classifier``: Linear(H, 2). No dropout: the
    reference pretraining code of BERT and ALBERT applies none before this classifier.

    forward(hidden float ``[batch, seq, H]``) → logits float ``[batch, 2]``.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.pooler = nn.Linear(hidden_size, hidden_size)
        self.classifier = nn.Linear(hidden_size, 2)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.tanh(self.pooler(hidden[:, 0])))


def mlm_criterion(logits: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Masked-LM cross-entropy at the labelled positions only.

    Args:
        logits: float ``[n, vocab]`` at the n labelled positions (any float dtype; the loss
            is computed in fp32).
        target: int64 ``[n]`` original token ids.
    Returns:
        ``mlm_loss`` (float scalar, mean over the n positions; 0 with a gradient path when
        n = 0), ``mlm_correct`` and ``mlm_count`` (int64 scalars).
    """
    n = target.numel()
    if n:
        loss = F.cross_entropy(logits.float(), target)
    else:  # keeps every parameter in the graph so data-parallel reduction does not stall
        loss = logits.float().sum() * 0.0
    return {
        "mlm_loss": loss,
        "mlm_correct": (logits.argmax(-1) == target).sum(),
        "mlm_count": torch.tensor(n, device=logits.device),
    }


def sentence_criterion(sentence: str, logits: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Cross-entropy of the 2-way sentence head.

    Args:
        sentence: ``nsp`` or ``sop``; names the output keys (``nsp_loss`` / ``sop_loss``).
        logits: float ``[batch, 2]``.
        labels: int ``[batch]`` (0 = B follows A in the original text, 1 = it does not).
    Returns:
        ``{sentence}_loss`` (float scalar, batch mean), ``sentence_correct`` and
        ``sentence_count`` (int64 scalars).
    """
    labels = labels.long().view(-1)
    return {
        f"{sentence}_loss": F.cross_entropy(logits.float(), labels),
        "sentence_correct": (logits.argmax(-1) == labels).sum(),
        "sentence_count": torch.tensor(labels.numel(), device=logits.device),
    }


@torch.no_grad()
def score_sentence_task(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    task: str,
    seed: int = 0,
) -> Dict[str, float]:
    """Accuracy of a model's sentence head on labelled pairs of ``task`` (ALBERT Table 5).

    The head is reused as trained, not refitted: NSP and SOP heads have the same shape and
    the same class meaning (0 = B follows A in the original text), so an NSP-trained head
    answers the SOP question directly, which is what Lan et al. 2020 §4.6 report (an
    NSP-trained model scores 52.0% on SOP, chance level, because it learned topic
    prediction; an SOP-trained one 78.9% on NSP). A model trained without a sentence loss
    has no trained head; it is scored with a freshly initialised head (seeded by ``seed``),
    which gives the chance-level accuracy that Table 5's "None" row reports (52.4 / 53.3).

    Args:
        model: a ``pretrain.models.encoder.BertForPretraining`` (any objective); put in eval mode
            for the duration and restored afterwards.
        batches: dicts of int64 tensors: ``input_ids``, ``attention_mask``,
            ``token_type_ids`` ``[batch, seq]`` and the task's label column
            (``next_sentence_label`` for nsp, ``sentence_order_label`` for sop) ``[batch]``.
        task: ``nsp`` or ``sop``: which labels to score against.
        seed: seed of the untrained head used when the model has none.
    Returns:
        ``{"accuracy": float, "correct": int, "count": int}``.
    Raises:
        UserError: unknown task, a batch without the task's labels, or no examples.
    """
    if task not in LABEL_COLUMNS:
        raise UserError(f"sentence task {task!r} is not one of: {', '.join(LABEL_COLUMNS)}")
    column = LABEL_COLUMNS[task]
    head: Optional[nn.Module] = getattr(model, "sentence_head", None)
    if head is None:
        hidden = model.config.hidden_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = SentenceHead(hidden)
            head.apply(model.init_module)
        device = next(model.parameters()).device
        head = head.to(device)
    was_training = model.training
    model.eval()
    correct = count = 0
    try:
        for batch in batches:
            if column not in batch:
                raise UserError(f"scoring {task} needs a {column} column in every batch; got {', '.join(batch)}")
            h = model.encoder(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
            pred = head(h).argmax(-1)
            labels = batch[column].long().view(-1).to(pred.device)
            correct += int((pred == labels).sum())
            count += labels.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise UserError(f"no labelled pairs to score {task} on")
    return {"accuracy": correct / count, "correct": correct, "count": count}
