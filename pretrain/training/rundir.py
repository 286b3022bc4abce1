"""What a run directory holds — the contract between the trainer, the ablation runner and
``pretrain tables`` (which rebuilds tables from these files alone, without training)::

    runs/<ablation>/<arm>/          (or runs/<name>/ for a single run)
        config.yaml                 resolved RunConfig (all interpolations expanded)
        metrics.jsonl               one JSON object per line, see below
        summary.json                written once, atomically, when the run finishes
        checkpoints/step-0000100/   DeepSpeed checkpoint, trainer_state.json, manifest.json
                                    (``pretrain.training.checkpoint``); ``latest`` names the newest
        .lock                       while a process trains the run: its host and pid (``locked``)
        tb/                         TensorBoard event files (the numeric fields of metrics.jsonl)
    runs/<ablation>/ablation.yaml   the ablation definition the arms came from

metrics.jsonl lines have ``"kind"``:
- ``"train"`` (every ``log_every`` steps, averaged over the window): step, epoch (float,
  passes over the training split), tokens_seen (non-padding tokens), loss (total, nats),
  mlm_loss (nats per masked token), nsp_loss or sop_loss (nats per pair; with a sentence
  head), lr, grad_norm (before clipping), tokens_per_s, model_tflops (model FLOP/s per
  device / 1e12, 6N + 12LHT per token), mfu (0-1; when a peak is known), skipped_steps
  (fp16 only), time_s (training wall seconds since the run began, over resumed segments).
- ``"eval"``: step, epoch, tokens_seen, mlm_loss, perplexity (exp of mlm_loss),
  mlm_accuracy (0-1), num_tokens (masked tokens scored), nsp_loss/sop_loss and
  sentence_accuracy (with a sentence head and labels), time_s.
summary.json: status ("done"), steps, tokens_seen, epochs, wall_time_s (training time summed
over resumed segments), final_eval {mlm_loss, perplexity, mlm_accuracy[, sentence_accuracy]},
data_dir, num_train_sequences, num_parameters, hardware (``"<ranks> × <device>"``,
``pretrain.training.hardware``), skipped_steps (fp16 only).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

# Run files are written through a temporary name and a rename (a full disk: one line).
from common.atomic import write_json_atomic  # noqa: F401  (re-exported for the trainer)
from common.errors import UserError
from common.lock import DirLock

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
LATEST = "latest"  # checkpoints/latest names the newest checkpoint (``pretrain.training.checkpoint``)
PREFIX = "step-"  # checkpoints/step-NNNNNNN, one directory per saved step
TENSORBOARD = "tb"
ABLATION = "ablation.yaml"
LOCK = ".lock"


def read_metrics(run: Path, kind: Optional[str] = None) -> List[Dict[str, Any]]:
    """Lines of ``run/metrics.jsonl`` (only ``kind`` if given). A truncated last line — a
    run killed mid-write — is skipped.

    Raises:
        UserError: any other line that is not a JSON object, naming it (the trainer cuts a
            half-written line when it resumes, so one inside the file is damage); a
            ``train`` or ``eval`` line without a numeric ``step`` and ``tokens_seen`` (every
            one the trainer writes has both; the tables and plots read them).
    """
    f = Path(run) / METRICS
    if not f.is_file():
        return []
    out = []
    lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
    for n, line in enumerate(lines, start=1):
        try:
            rec = json.loads(line)
        except ValueError:
            if n == len(lines) or not line.strip():
                continue
            rec = None
        if not isinstance(rec, dict):
            raise UserError(f"{f}:{n}: not a JSON object ({line[:40]!r}); the trainer writes one per line: restore the "
                            "file, or delete that line")
        if rec.get("kind") in ("train", "eval") and not all(
            isinstance(rec.get(k), (int, float)) and not isinstance(rec.get(k), bool) for k in ("step", "tokens_seen")
        ):
            raise UserError(f"{f}:{n}: a '{rec['kind']}' line without a numeric step and tokens_seen ({line[:60]!r}); the "
                            "trainer writes both: restore the file, or delete that line")
        if kind is None or rec.get("kind") == kind:
            out.append(rec)
    return out


def read_summary(run: Path) -> Optional[Dict[str, Any]]:
    """``run/summary.json`` or None if the run has not finished.

    Raises:
        UserError: a summary.json that is not a JSON object (damaged: it is written once,
            atomically, so a reader never meets a half-written one from the trainer).
    """
    f = Path(run) / SUMMARY
    if not f.is_file():
        return None
    try:
        summary = json.loads(f.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise UserError(f"{f} is damaged ({e}); delete it and rerun: the run resumes (or starts "
                        "again) and writes it anew") from None
    if not isinstance(summary, dict):
        raise UserError(f"{f} is damaged (a JSON {type(summary).__name__}, not an object); delete it and rerun: the run "
                        "resumes (or starts again) and writes it anew")
    bad = _summary_type_error(summary)
    if bad:
        raise UserError(f"{f} is damaged ({bad}); delete it and rerun: the run resumes (or starts again) and writes it anew")
    return summary


# summary.json keys the tables, status and cost statements read as numbers (null allowed).
SUMMARY_NUMBERS = ("steps", "tokens_seen", "epochs", "wall_time_s", "num_parameters", "num_train_sequences",
                   "num_train_rows", "teacher_parameters")


def _summary_type_error(summary: Dict[str, Any]) -> str:
    """What in a parsed summary.json is not of the type the trainer writes, or ''."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if "status" in summary and not isinstance(summary["status"], str):
        return f"status is {summary['status']!r}, not a string"
    for k in SUMMARY_NUMBERS:
        if summary.get(k) is not None and not number(summary[k]):
            return f"{k} is {summary[k]!r}, not a number"
    ev = summary.get("final_eval")
    if ev is not None and not isinstance(ev, dict):
        return f"final_eval is {ev!r}, not an object"
    for k, v in (ev or {}).items():
        if v is not None and not number(v):
            return f"final_eval.{k} is {v!r}, not a number"
    return ""


def finished_summary(run: Path) -> Optional[Dict[str, Any]]:
    """``run/summary.json`` when it says the run finished (``status: done``, written by the
    trainer after its last step), else None. Raises UserError as ``read_summary``."""
    summary = read_summary(run)
    return summary if summary is not None and summary.get("status") == "done" else None


def has_checkpoint(run: Path) -> bool:
    """``checkpoints/latest`` or a ``checkpoints/step-*`` directory is there: something the
    trainer resumes from (the newest intact one, ``pretrain.training.checkpoint``) and
    fine-tuning and probes load. Existence only; integrity is checked when it is read."""
    ckpts = run / CHECKPOINTS
    return (ckpts / LATEST).is_file() or any(ckpts.glob(f"{PREFIX}*"))


def run_of(path: Path) -> Path:
    """The run directory a run, ``checkpoints/`` or ``checkpoints/step-*`` path belongs to
    (any other path: itself), from the path alone: nothing is read but whether
    ``path/checkpoints`` exists (a run may itself be named "checkpoints")."""
    p = Path(path)
    if (p / CHECKPOINTS).is_dir():
        return p
    if p.name == CHECKPOINTS:
        return p.parent
    return p.parent.parent if p.parent.name == CHECKPOINTS and p.name.startswith(PREFIX) else p


def iter_runs(root: Path) -> Iterator[Path]:
    """Every directory below ``root`` holding a config.yaml."""
    for cfg in sorted(Path(root).rglob(CONFIG)):
        yield cfg.parent


@contextmanager
def locked(run: Path) -> Iterator[None]:
    """Hold ``run/.lock`` (``common.lock.DirLock``) while the block runs, on global rank 0
    only: every rank of a job shares the run directory, and on a shared file system the
    local rank 0 of each node would lock one another out. Every rank learns rank 0's
    outcome, so a run directory in use stops the whole job with the same one line.

    Raises:
        UserError: another live process (``host ... pid ...``) holds the lock.
    """
    from pretrain.training import distributed

    world = distributed.init()
    lock = DirLock(Path(run) / LOCK, f"run directory {run}")
    error = None
    if world.is_main:
        try:
            lock.acquire()
        except UserError as e:
            error = str(e)
    error = distributed.broadcast_object(error)
    if error is not None:
        raise UserError(error)
    try:
        yield
    finally:
        lock.release()
