"""Downstream metrics, computed by scikit-learn, SciPy and seqeval (GLUE's and CoNLL's
conventions, Wang et al. 2019 Table 1; Tjong Kim Sang & De Meulder 2003):

- ``accuracy`` (``sklearn.metrics.accuracy_score``), ``f1`` of the positive class 1
  (``f1_score``; MRPC, QQP), ``matthews`` (``matthews_corrcoef``; CoLA);
- ``pearson`` and ``spearman`` (``scipy.stats``; STS-B);
- ``entity_f1`` / ``entity_precision`` / ``entity_recall``: entity-level micro scores of
  ``seqeval`` in its default mode, which ports conlleval's chunk rules (an ``I-X`` after
  ``O`` or another type opens an entity), so IOB1 gold tags and unconstrained predicted tag
  sequences are scored as the CoNLL-2003 script scores them; ``token_accuracy`` besides.

Scores are fractions in [0, 1] (correlations in [-1, 1]); tables multiply by 100.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from common.errors import UserError

METRICS = ("accuracy", "f1", "matthews", "pearson", "spearman", "entity_f1")


def classification_scores(predictions: Sequence[int], labels: Sequence[int], names: Sequence[str]) -> Dict[str, float]:
    """Metrics ``names`` (accuracy, f1, matthews) of class predictions against labels."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    y, p = np.asarray(labels), np.asarray(predictions)
    _check(len(y), len(p))
    fns = {
        "accuracy": lambda: accuracy_score(y, p),
        "f1": lambda: f1_score(y, p, pos_label=1, average="binary", zero_division=0.0),
        "matthews": lambda: matthews_corrcoef(y, p),
    }
    return {n: float(fns[n]()) for n in names}


def regression_scores(predictions: Sequence[float], labels: Sequence[float]) -> Dict[str, float]:
    """Pearson and Spearman correlation of predicted and gold scores. A constant prediction
    has no correlation: both are reported as 0.0 (SciPy returns NaN and warns)."""
    from scipy.stats import pearsonr, spearmanr

    y, p = np.asarray(labels, dtype=np.float64), np.asarray(predictions, dtype=np.float64)
    _check(len(y), len(p))
    if np.ptp(p) == 0 or np.ptp(y) == 0:
        return {"pearson": 0.0, "spearman": 0.0}
    return {"pearson": float(pearsonr(p, y)[0]), "spearman": float(spearmanr(p, y)[0])}


def entity_scores(predictions: List[List[str]], gold: List[List[str]]) -> Dict[str, float]:
    """Entity-level micro precision, recall and F1 (conlleval rules, via seqeval) and token
    accuracy, of predicted tag sequences against gold ones (one list of tags per sentence,
    equal lengths)."""
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    _check(len(gold), len(predictions))
    for i, (g, p) in enumerate(zip(gold, predictions)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(p)} predicted tags for {len(g)} words")
    return {
        "entity_f1": float(f1_score(gold, predictions, zero_division=0)),
        "entity_precision": float(precision_score(gold, predictions, zero_division=0)),
        "entity_recall": float(recall_score(gold, predictions, zero_division=0)),
        "token_accuracy": float(accuracy_score(gold, predictions)),
    }


def _check(n_gold: int, n_pred: int) -> None:
    if n_gold != n_pred:
        raise ValueError(f"{n_pred} predictions for {n_gold} references")
    if n_gold == 0:
        raise UserError("no examples to score")
