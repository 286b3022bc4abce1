"""Each downstream task as data the fine-tuning Task trains on and a scorer of predictions.

``load_task_data`` reads a task's training split and its evaluation splits
(``pretrain.downstream.glue`` / ``conll``), encodes them with the pretrained model's
tokenizer (``pretrain.downstream.encode``) and says which head, how many outputs and which
criterion the task needs. ``score`` turns the model's outputs on an evaluation split into
the task's metrics (``pretrain.downstream.metrics``), keyed ``<split>_<metric>`` (e.g.
``dev_accuracy``, ``test_entity_f1``). ``main_metric`` names the reported one.

Quick presets train on a sample of the training rows (``data.max_train_rows``): drawn with a
fixed generator (seed 0), so every seed and every model sees the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from data_prep.tokenizer import TokenizerInfo
from pretrain.downstream import conll, glue
from pretrain.downstream.encode import Encoded, encode_pairs, encode_words
from pretrain.downstream.metrics import (
    classification_scores,
    entity_scores,
    regression_scores,
)

NER_TASK = "conll2003"
SAMPLE_SEED = 0


@dataclass
class TaskData:
    """A task ready to train: ``kind`` is classification | regression | token; ``head`` the
    ``FineTuneModel`` head (sequence | token); ``evals`` maps split name → encoded rows;
    ``gold_tags`` (NER) split → gold tag sequences of every sentence."""

    name: str
    kind: str
    head: str
    num_labels: int
    train: Encoded
    evals: Dict[str, Encoded]
    gold_tags: Dict[str, List[List[str]]] = field(default_factory=dict)


def default_eval_splits(task: str) -> List[str]:
    """GLUE: dev (MNLI: dev and dev_mismatched); CoNLL-2003: dev and test (BERT Table 3
    reports both; test is the number papers compare)."""
    if task == NER_TASK:
        return ["dev", "test"]
    if task == "mnli":
        return ["dev", "dev_mismatched"]
    return ["dev"]


def main_metric(task: str, eval_splits: Optional[Sequence[str]] = None) -> str:
    """The reported metric: ``test_entity_f1`` for CoNLL-2003 (``dev_entity_f1`` when test
    is not scored), else ``<first eval split>_<GLUE main metric>``."""
    splits = list(eval_splits or default_eval_splits(task))
    if task == NER_TASK:
        return ("test" if "test" in splits else splits[0]) + "_entity_f1"
    return f"{splits[0]}_{glue.get_task(task).main}"


def metric_names(task: str, eval_splits: Optional[Sequence[str]] = None) -> List[str]:
    """Every ``<split>_<metric>`` ``score`` reports for the task."""
    splits = list(eval_splits or default_eval_splits(task))
    per = ["entity_f1", "entity_precision", "entity_recall"] if task == NER_TASK else list(glue.get_task(task).metrics)
    return [f"{s}_{m}" for s in splits for m in per]


def _sample(n: int, cap: Optional[int]) -> np.ndarray:
    if cap is None or cap >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(SAMPLE_SEED).choice(n, cap, replace=False))


def count_train_rows(task: str, source: Optional[str], max_train_rows: Optional[int]) -> int:
    """Training rows a run will use (after the ``max_train_rows`` cap), without encoding."""
    n = len(conll.load_sentences("train", source)) if task == NER_TASK else len(glue.load_examples(task, "train", source))
    return len(_sample(n, max_train_rows))


def load_task_data(
    task: str,
    info: TokenizerInfo,
    max_length: int,
    type_vocab_size: int,
    source: Optional[str] = None,
    max_train_rows: Optional[int] = None,
    max_eval_rows: Optional[int] = None,
    eval_splits: Optional[Sequence[str]] = None,
) -> TaskData:
    """Read and encode a task (module docstring). Raises UserError for missing or malformed
    data or an unknown split."""
    splits = list(eval_splits or default_eval_splits(task))
    if task == NER_TASK:
        def encode(split: str, cap: Optional[int], sample: bool) -> tuple:
            sents = conll.load_sentences(split, source)
            keep = _sample(len(sents), cap) if sample else np.arange(min(len(sents), cap or len(sents)))
            sents = [sents[i] for i in keep]
            tag_ids = [[conll.LABELS.index(t) for t in s.tags] for s in sents]
            ids, types, labels, pos = encode_words(info, [s.words for s in sents], tag_ids, max_length)
            return Encoded(ids, types, labels, pos), [list(s.tags) for s in sents]

        train, _ = encode("train", max_train_rows, True)
        evals, gold = {}, {}
        for s in splits:
            evals[s], gold[s] = encode(s, max_eval_rows, False)
        return TaskData(task, "token", "token", len(conll.LABELS), train, evals, gold)

    spec = glue.get_task(task)

    def encode_glue(split: str, cap: Optional[int], sample: bool) -> Encoded:
        ex = glue.load_examples(spec, split, source)
        keep = _sample(len(ex), cap) if sample else np.arange(min(len(ex), cap or len(ex)))
        ex = [ex[i] for i in keep]
        enc = encode_pairs(info, [e.text_a for e in ex], [e.text_b for e in ex] if spec.text_b else None, max_length, type_vocab_size)
        dtype = np.float32 if spec.is_regression else np.int64
        return Encoded([e[0] for e in enc], [e[1] for e in enc], np.asarray([e.label for e in ex], dtype=dtype))

    train = encode_glue("train", max_train_rows, True)
    evals = {s: encode_glue(s, max_eval_rows, False) for s in splits}
    kind = "regression" if spec.is_regression else "classification"
    return TaskData(task, kind, "sequence", spec.num_labels, train, evals)


def score(data: TaskData, split: str, outputs: List[np.ndarray]) -> Dict[str, float]:
    """Metrics of ``outputs`` on evaluation split ``split``, keyed ``<split>_<metric>``.

    ``outputs``: per example, in split order: logits float ``[num_labels]`` (sequence
    heads) or ``[n_tokens, num_labels]`` (token head). NER: the tag of each word is the
    argmax at its first sub-token; a word without a position (cut by ``max_length``) is
    predicted ``O``.
    """
    enc = data.evals[split]
    if len(outputs) != len(enc):
        raise ValueError(f"{len(outputs)} outputs for {len(enc)} {split} examples")
    if data.kind == "token":
        pred_tags = []
        for out, pos in zip(outputs, enc.word_positions):
            best = np.asarray(out).argmax(-1)
            pred_tags.append([conll.LABELS[int(best[p])] if p >= 0 else "O" for p in pos])
        s = entity_scores(pred_tags, data.gold_tags[split])
        s = {k: v for k, v in s.items() if k != "token_accuracy"}
    elif data.kind == "regression":
        s = regression_scores([float(np.asarray(o).reshape(-1)[0]) for o in outputs], enc.labels)
    else:
        s = classification_scores([int(np.asarray(o).argmax()) for o in outputs], enc.labels, glue.get_task(data.name).metrics)
    return {f"{split}_{k}": v for k, v in s.items()}
