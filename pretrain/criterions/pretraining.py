"""The pretraining criterion: masked LM plus an optional sentence-level loss, scored
fairseq style from the model's logits (``pretrain.tasks.base.Criterion``).

Objectives (``objective.sentence``):

- ``none``: masked LM only (Liu et al. 2019, §4.2: RoBERTa drops NSP).
- ``nsp``: next-sentence prediction (Devlin et al. 2019, §3.1 "Task #2"): is segment B the
  text that followed segment A, or a segment from another document?
- ``sop``: sentence-order prediction (Lan et al. 2020, §3.1 "Inter-sentence coherence
  loss"): are two consecutive segments of one document in their original order, or swapped?

Both sentence tasks use the model's ``SentenceHead`` (``pretrain.models.encoder``); labels
follow the Hugging Face convention the shards use: class 0 = "B follows A in the original
text", class 1 = "it does not". The step loss is the mean MLM loss over the step's masked
tokens plus the mean sentence loss over its pairs (Devlin et al. 2019, appendix A.2; Lan
et al. 2020, §3.1), both over the GLOBAL counts of the optimizer step (fairseq's
``sample_size``; the loop divides, ``pretrain.tasks.base``).
"""

from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError
from common.schema import IGNORE_INDEX, LABEL_COLUMNS
from pretrain.models.encoder import SentenceHead
from pretrain.tasks.base import Batch, Criterion, Terms


class PretrainingCriterion(Criterion):
    """Masked-LM cross-entropy summed over the labelled positions, plus, for ``nsp`` or
    ``sop``, the 2-way sentence cross-entropy summed over the pairs; computed in fp32
    whatever the model's dtype.

    Args:
        sentence: ``objective.sentence``: ``none``, ``nsp`` or ``sop``.

    Terms and weights: ``{"mlm": 1.0}`` plus ``{sentence: 1.0}`` (logged as ``mlm_loss``,
    ``nsp_loss`` / ``sop_loss``). Batches (``pretrain.training.batching.Collator``): int64
    ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels`` ``[batch, seq]``
    (-100 = not predicted) and the sentence label column ``[batch]``
    (``next_sentence_label`` / ``sentence_order_label``). Logs: ``mlm_correct``,
    ``mlm_count`` and, with a sentence term, ``sentence_correct``, ``sentence_count``
    (int64 scalars).
    """

    def __init__(self, sentence: str) -> None:
        self.sentence = sentence
        self.label_column: Optional[str] = LABEL_COLUMNS.get(sentence)
        self.weights = {"mlm": 1.0, **({sentence: 1.0} if self.label_column else {})}

    def _sentence_labels(self, batch: Batch) -> torch.Tensor:
        if self.label_column not in batch:
            raise ValueError(f"the {self.sentence} criterion needs a {self.label_column} column in every batch; "
                             f"got {', '.join(batch)}")
        return batch[self.label_column].long().view(-1)

    def sample_size(self, batch: Batch) -> Terms:
        sizes = {"mlm": (batch["labels"] != IGNORE_INDEX).sum()}
        if self.label_column:
            sizes[self.sentence] = torch.tensor(self._sentence_labels(batch).numel())
        return sizes

    def __call__(self, model: nn.Module, batch: Batch) -> Tuple[Terms, Terms, Terms]:
        labels = batch["labels"]
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"], labels=labels)
        target = labels[labels != IGNORE_INDEX]
        logits = out["mlm_logits"].float()
        if target.numel():
            mlm = F.cross_entropy(logits, target, reduction="sum")
        else:  # keeps every parameter in the graph so data-parallel reduction does not stall
            mlm = logits.sum() * 0.0
        loss_sum, sample_size = {"mlm": mlm}, {"mlm": torch.tensor(target.numel())}
        logs = {"mlm_correct": (logits.argmax(-1) == target).sum().detach(), "mlm_count": sample_size["mlm"]}
        if self.label_column:
            pairs = self._sentence_labels(batch).to(logits.device)
            s_logits = out["sentence_logits"].float()
            loss_sum[self.sentence] = F.cross_entropy(s_logits, pairs, reduction="sum")
            sample_size[self.sentence] = torch.tensor(pairs.numel())
            logs.update(sentence_correct=(s_logits.argmax(-1) == pairs).sum().detach(),
                        sentence_count=sample_size[self.sentence])
        return loss_sum, sample_size, logs


def check_objective(sentence: str, shard_columns: Sequence[str]) -> None:
    """Refuse, before any training step, an objective the shards carry no labels for.

    Args:
        sentence: ``objective.sentence`` (none | nsp | sop; typed, so nothing else).
        shard_columns: column names of the training split (``SplitData.columns``).
    Raises:
        UserError: e.g. SOP on FULL-SENTENCES shards that have no
            ``sentence_order_label`` column.
    """
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
