"""What ``pretrain ablate`` tells the user while it runs: a header naming the arms and the
corpus they train on, and one overall progress bar over every stage (pretraining runs and
fine-tuning jobs) with an ETA for the whole ablation (each run's own bar comes from the
trainer).

The trainer does not report to the runner while an arm trains, so the overall bar follows
the arm's ``metrics.jsonl`` (a ``train`` line every ``train.log_every`` steps; see
``pretrain.training.rundir``) from a background thread.
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Tuple

from tqdm.auto import tqdm

from common.errors import launcher_rank
from pretrain.training import rundir

POLL_SECONDS = 2.0


def describe_corpus(data: Any) -> str:
    """``data.corpus`` (a DataConfig's) in words: what ``pydoc`` and ``hf:`` mean, a path
    made absolute, and ``data.max_documents`` when it limits the read."""
    spec = str(data.corpus)
    if spec == "pydoc":
        text = "pydoc (the CPython reference documentation embedded in this Python)"
    elif spec.startswith("hf:"):
        text = f"{spec} (Hugging Face datasets)"
    else:
        text = str(Path(spec).expanduser().resolve())
    if data.max_documents is not None:
        text += f", first {data.max_documents} documents"
    return text


def header(name: str, preset: str, cfgs: Dict[str, Any]) -> str:
    """``ablation NAME, preset P: N arms (a, b) on corpus C`` — or one corpus per arm when
    the arms read different corpora."""
    corpora = {arm: describe_corpus(c.data) for arm, c in cfgs.items()}
    arms = ", ".join(cfgs)
    if len(set(corpora.values())) == 1:
        where = f"on corpus {next(iter(corpora.values()))}"
    else:
        where = "on corpora " + "; ".join(f"{a}: {c}" for a, c in corpora.items())
    return f"ablation {name}, preset {preset}: {len(cfgs)} arms ({arms}) {where}"


def last_step(run: Path) -> int:
    """The last ``step`` in ``run/metrics.jsonl`` (0 if none), reading only the file's tail."""
    f = Path(run) / rundir.METRICS
    try:
        with open(f, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 8192))
            tail = fh.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(tail):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue  # a half-written last line, or the cut first line of the tail
    return 0


class AblationProgress:
    """One tqdm bar over every stage of the ablation: each run's pretraining and, with
    ``evaluate``, each fine-tuning job. A stage is a list of loop runs (run directory,
    ``train.max_steps``, token slots per step = global batch × sequence length); the bar
    counts token slots, so a fine-tuning step weighs by its own batch and length (a token
    is assumed to cost about the same in either). It starts at the work already done
    (finished stages, resumed runs' logs) and shows the ETA of the whole ablation at the
    average rate so far. Shown by rank 0 only."""

    def __init__(self, name: str, stages: Dict[str, List[Tuple[Path, int, int]]], done: Sequence[str], desc: str) -> None:
        self.stages = stages
        self.work = {key: self._measure(key, key in done) for key in stages}
        self._lock = threading.Lock()
        self.bar = tqdm(
            total=sum(self._measure(key, True) for key in stages),
            initial=sum(self.work.values()),
            unit="tok",
            unit_scale=True,
            desc=f"{name}: all {desc}",
            position=0,
            leave=True,
            dynamic_ncols=True,
            smoothing=0,  # ETA at the average rate over the ablation, not the last few seconds
            mininterval=1.0,
            disable=launcher_rank() != 0,
        )

    def _measure(self, key: str, complete: bool) -> int:
        return sum((steps if complete else min(last_step(run), steps)) * w for run, steps, w in self.stages[key])

    def _set(self, key: str, work: int) -> None:
        with self._lock:
            if work > self.work[key]:
                self.bar.update(work - self.work[key])
                self.work[key] = work

    @contextmanager
    def training(self, key: str) -> Iterator[None]:
        """Follow the stage's runs' metrics while it trains; on a normal exit count the stage
        as complete (its last steps may fall between two log lines)."""
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(POLL_SECONDS):
                self._set(key, self._measure(key, False))

        thread = threading.Thread(target=poll, name=f"progress-{key}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
        self._set(key, self._measure(key, True))

    def write(self, text: str) -> None:
        """Print a line above the bars without breaking them (rank 0 only, like the bar)."""
        if launcher_rank() == 0:
            tqdm.write(text)

    def close(self) -> None:
        self.bar.close()


def pretrain_stage(cfg: Any) -> List[Tuple[Path, int, int]]:
    """A pretraining run as a stage of AblationProgress: its one loop run."""
    return [(Path(cfg.run_dir), int(cfg.train.max_steps), int(cfg.train.global_batch_size) * int(cfg.data.max_seq_length))]
