"""GLUE tasks (Wang et al. 2019): what each task reads, from a directory of GLUE TSV files or
from the Hugging Face hub.

A task's files live in ``<root>/<DIR>/`` (``DIR`` as in GLUE's download script: ``SST-2``,
``CoLA``, ``MRPC``, ``RTE``, ``STS-B``, ``QNLI``, ``MNLI``, ``QQP``), or ``root`` is that
directory itself. Each task lists the file(s) of a split in order of preference; the first
alternative whose files all exist is read, so both the GLUE layout and the copies in
``../shared/data/glue`` work:

- SST-2: ``train.tsv`` (GLUE) or ``train_full.tsv`` (the shared copy's name for it);
- CoLA: ``train.tsv`` plus ``val.tsv`` when present (the shared copy splits GLUE's train
  file into those two; together they are GLUE's 8,551 rows), ``dev.tsv`` without a header;
- MNLI: ``dev_matched.tsv`` is ``dev``; ``dev_mismatched.tsv`` is ``dev_mismatched``.

Files are read as GLUE's reference readers do (BERT ``run_classifier.py`` ``_read_tsv``):
tab-separated, no quoting (sentences contain ``"``), UTF-8 with an optional BOM (MRPC's
files start with one). A row with the wrong number of fields is an error naming file and
line, not a skipped row.

Label order per task is the one of the Hugging Face ``glue`` dataset (e.g. MNLI: entailment,
neutral, contradiction), so hub labels (integers) and TSV labels (strings) index the same
classifier rows. STS-B's label is a float score in [0, 5] (regression).

``source`` ``hf:NAME`` (e.g. ``hf:nyu-mll/glue``) reads ``datasets.load_dataset(NAME,
task)`` instead; this needs the network or a populated hub cache.
"""

from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from common.errors import UserError, not_utf8

HF_PREFIX = "hf:"
STSB_MAX = 5.0  # STS-B scores similarity from 0 (unrelated) to 5 (equivalent), Cer et al. 2017
DATA_ENV = "BERT_RECIPES_DATA"


@dataclass(frozen=True)
class PairExample:
    """One GLUE example: ``text_b`` is None for single-sentence tasks; ``label`` is the class
    index (int) or, for regression, the score (float)."""

    text_a: str
    text_b: Optional[str]
    label: Union[int, float]


@dataclass(frozen=True)
class GlueTask:
    """What one GLUE task reads and how it is scored.

    directory: GLUE's folder name. files: split → alternatives, each a tuple of files read
    one after another. columns: names of a header-less file's fields (None: the file has a
    header row naming them). text_a / text_b / label: column names (text_b None = single
    sentence). labels: class names in classifier order, None = regression.
    hub_text / hub_splits: the Hugging Face ``glue`` dataset's column names and split names.
    metrics: what ``pretrain.downstream.metrics.score`` reports; main: the one a final score
    line shows (BERT Table 1: F1 for MRPC and QQP, Spearman for STS-B, Matthews for CoLA,
    accuracy otherwise).
    """

    name: str
    directory: str
    files: Dict[str, Tuple[Tuple[str, ...], ...]]
    text_a: str
    text_b: Optional[str]
    label: str
    labels: Optional[Tuple[str, ...]]
    hub_text: Tuple[str, Optional[str]]
    hub_splits: Dict[str, str]
    metrics: Tuple[str, ...]
    main: str
    columns: Optional[Tuple[str, ...]] = None

    @property
    def num_labels(self) -> int:
        """Classifier outputs: the number of classes, 1 for regression."""
        return len(self.labels) if self.labels is not None else 1

    @property
    def is_regression(self) -> bool:
        return self.labels is None


_DEV = {"dev": (("dev.tsv",),)}
_HUB = {"train": "train", "dev": "validation"}
_BIN = ("0", "1")
_ENTAIL = ("entailment", "not_entailment")

TASKS: Dict[str, GlueTask] = {
    t.name: t
    for t in (
        GlueTask("sst2", "SST-2", {"train": (("train.tsv",), ("train_full.tsv",)), **_DEV}, "sentence", None, "label",
                 _BIN, ("sentence", None), _HUB, ("accuracy",), "accuracy"),
        GlueTask("cola", "CoLA", {"train": (("train.tsv", "val.tsv"), ("train.tsv",)), **_DEV}, "sentence", None, "label",
                 _BIN, ("sentence", None), _HUB, ("matthews", "accuracy"), "matthews",
                 columns=("source", "label", "mark", "sentence")),
        GlueTask("mrpc", "MRPC", {"train": (("train.tsv",),), **_DEV}, "#1 String", "#2 String", "Quality",
                 _BIN, ("sentence1", "sentence2"), _HUB, ("f1", "accuracy"), "f1"),
        GlueTask("qqp", "QQP", {"train": (("train.tsv",),), **_DEV}, "question1", "question2", "is_duplicate",
                 _BIN, ("question1", "question2"), _HUB, ("f1", "accuracy"), "f1"),
        GlueTask("stsb", "STS-B", {"train": (("train.tsv",),), **_DEV}, "sentence1", "sentence2", "score",
                 None, ("sentence1", "sentence2"), _HUB, ("pearson", "spearman"), "spearman"),
        GlueTask("qnli", "QNLI", {"train": (("train.tsv",),), **_DEV}, "question", "sentence", "label",
                 _ENTAIL, ("question", "sentence"), _HUB, ("accuracy",), "accuracy"),
        GlueTask("rte", "RTE", {"train": (("train.tsv",),), **_DEV}, "sentence1", "sentence2", "label",
                 _ENTAIL, ("sentence1", "sentence2"), _HUB, ("accuracy",), "accuracy"),
        GlueTask("mnli", "MNLI",
                 {"train": (("train.tsv",),), "dev": (("dev_matched.tsv",),), "dev_mismatched": (("dev_mismatched.tsv",),)},
                 "sentence1", "sentence2", "gold_label", ("entailment", "neutral", "contradiction"),
                 ("premise", "hypothesis"),
                 {"train": "train", "dev": "validation_matched", "dev_mismatched": "validation_mismatched"},
                 ("accuracy",), "accuracy"),
    )
}


def get_task(name: str) -> GlueTask:
    """The GLUE task called ``name``; UserError listing the valid names otherwise."""
    if name not in TASKS:
        raise UserError(f"unknown GLUE task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name]


def default_root() -> Path:
    """Where the shared data lives: ``$BERT_RECIPES_DATA`` or ``../shared/data``."""
    return Path(os.environ.get(DATA_ENV, "../shared/data"))


def task_directory(task: GlueTask, root: str | Path) -> Path:
    """``root/<DIR>`` if it exists, else ``root`` itself when it holds the task's dev file."""
    root = Path(root)
    d = root / task.directory
    if d.is_dir():
        return d
    if any((root / f).is_file() for alt in task.files["dev"] for f in alt):
        return root
    raise UserError(f"no GLUE {task.directory} directory in {root}; point data.source at a GLUE root holding {task.directory}/")


def split_files(task: GlueTask, split: str, root: str | Path) -> List[Path]:
    """The files of ``split`` (train | dev | dev_mismatched) under ``root``: the first
    alternative whose files all exist. UserError if the split is unknown or absent."""
    if split not in task.files:
        raise UserError(f"GLUE {task.name} has no split {split!r}; valid: {', '.join(task.files)}")
    d = task_directory(task, root)
    for alt in task.files[split]:
        paths = [d / f for f in alt]
        if all(p.is_file() for p in paths):
            return paths
    wanted = " or ".join("+".join(alt) for alt in task.files[split])
    raise UserError(
        f"GLUE {task.name} {split} split not found in {d} (looked for {wanted}); "
        "get GLUE's files or set data.source=hf:nyu-mll/glue"
    )


def read_tsv(path: Path, columns: Optional[Sequence[str]] = None) -> List[Dict[str, str]]:
    """Rows of a GLUE TSV file as dicts keyed by the header (or by ``columns`` for a
    header-less file). UserError for a row with another number of fields, naming the line,
    or for a file that is not UTF-8."""
    try:
        return _read_tsv(path, columns)
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def _read_tsv(path: Path, columns: Optional[Sequence[str]]) -> List[Dict[str, str]]:
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        names = list(columns) if columns is not None else next(reader, None)
        if not names:
            raise UserError(f"{path} is empty")
        rows = []
        for line, fields in enumerate(reader, start=1 if columns is not None else 2):
            if not fields:
                continue
            if len(fields) != len(names):
                raise UserError(f"{path}:{line}: {len(fields)} tab-separated fields, expected {len(names)} ({', '.join(names)})")
            rows.append(dict(zip(names, fields)))
    return rows


def _example(task: GlueTask, row: Dict[str, str], where: str) -> PairExample:
    for col in (task.text_a, task.text_b, task.label):
        if col is not None and col not in row:
            raise UserError(f"{where}: no column {col!r} (columns: {', '.join(row)}); is this GLUE {task.directory}?")
    raw = row[task.label].strip()
    if task.labels is None:
        try:
            label: Union[int, float] = float(raw)
        except ValueError:
            raise UserError(f"{where}: score {raw!r} is not a number") from None
        if not 0.0 <= label <= STSB_MAX:  # also refuses nan and inf, which would end training as a "non-finite loss"
            raise UserError(f"{where}: score {raw!r} is outside STS-B's 0 to {STSB_MAX:g}; fix or drop the row")
    else:
        if raw not in task.labels:
            raise UserError(f"{where}: label {raw!r} is not one of {', '.join(task.labels)}")
        label = task.labels.index(raw)
    b = row[task.text_b].strip() if task.text_b is not None else None
    return PairExample(row[task.text_a].strip(), b, label)


def load_examples(task: GlueTask | str, split: str, source: Optional[str | Path] = None) -> List[PairExample]:
    """Labelled examples of a task's split.

    Args:
        task: a ``GlueTask`` or its name (sst2, cola, mrpc, qqp, stsb, qnli, rte, mnli).
        split: ``train``, ``dev`` (MNLI: matched) or, for MNLI, ``dev_mismatched``.
        source: a GLUE root (holding ``SST-2/`` ...), a task directory, or ``hf:NAME`` for
            a Hugging Face dataset with GLUE's configs; None = ``default_root()/glue``.
    Returns:
        ``PairExample`` list in file order.
    Raises:
        UserError: unknown task or split, missing files, malformed rows, unknown labels, an
            STS-B score outside [0, 5], a file that is not UTF-8, or a hub dataset that
            cannot be loaded.
    """
    t = get_task(task) if isinstance(task, str) else task
    src = str(source) if source is not None else str(default_root() / "glue")
    if src.startswith(HF_PREFIX):
        return _from_hub(t, split, src[len(HF_PREFIX):])
    out: List[PairExample] = []
    for path in split_files(t, split, src):
        for i, row in enumerate(read_tsv(path, t.columns)):
            out.append(_example(t, row, f"{path} row {i + 1}"))
    if not out:
        raise UserError(f"GLUE {t.name} {split}: no examples in {src}")
    return out


def _from_hub(task: GlueTask, split: str, name: str) -> List[PairExample]:
    if split not in task.hub_splits:
        raise UserError(f"GLUE {task.name} has no split {split!r}; valid: {', '.join(task.hub_splits)}")
    try:
        import datasets

        ds = datasets.load_dataset(name, task.name, split=task.hub_splits[split])
    except Exception as e:  # network, unknown name or config: one line for the user
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load hf:{name} ({task.name}, {task.hub_splits[split]}): {msg}") from None
    a, b = task.hub_text
    out = []
    for i, row in enumerate(ds):
        label = row["label"]
        if task.labels is not None and not 0 <= int(label) < len(task.labels):
            raise UserError(f"hf:{name} {task.name} {split} row {i}: label {label} (unlabelled split?)")
        out.append(PairExample(row[a], row[b] if b else None, float(label) if task.labels is None else int(label)))
    return out
