"""The log subset of an ablation that its tables are made from, and copying it from a runs
directory into the committed ``results/runs/`` (``pretrain tables --collect SRC --runs DST``).

``pretrain tables`` reads nothing else, so these files regenerate every table byte for byte:

    <ablation>/ablation.yaml                                 the record of `pretrain ablate`
    <ablation>/<run>/{config.yaml,metrics.jsonl,summary.json}     each pretraining run
    <ablation>/<run>/finetune/<job>/{finetune.yaml,scores.json,scores.md}   each fine-tuning job
    <ablation>/<run>/finetune/<job>/int8.json       its int8 re-score, if `pretrain compare` made one
    <ablation>/<run>/eval[-random-init]/{blimp.json,sentence.json}          each probe

Checkpoints, TensorBoard logs, Slurm logs and the fine-tuning jobs' ``lr-*/seed-*`` runs stay
behind (their per-seed scores are in ``scores.json``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List

from common.atomic import replace_dir
from common.errors import UserError
from pretrain.ablations.spec import load_record, seed_runs
from pretrain.comparison.scores import INT8_JSON
from pretrain.downstream.runner import FINETUNE_YAML, JOBS_DIR, SCORES_JSON, SCORES_MD
from pretrain.training import rundir

RUN_FILES = (rundir.CONFIG, rundir.METRICS, rundir.SUMMARY)
JOB_FILES = (FINETUNE_YAML, SCORES_JSON, SCORES_MD, INT8_JSON)
PROBE_FILES = ("blimp.json", "sentence.json")


def log_files(abl_dir: str | Path) -> List[Path]:
    """The subset of ``abl_dir`` (one ablation's runs directory) that its table is made
    from, as paths relative to ``abl_dir``; only files that exist. UserError if
    ``abl_dir/ablation.yaml`` is missing or invalid."""
    abl_dir = Path(abl_dir)
    rec = load_record(abl_dir)
    out = [Path(rundir.ABLATION)]
    for _arm, _seed, rel in seed_runs(rec.ablation):
        run = abl_dir / rel
        out += [Path(rel) / f for f in RUN_FILES if (run / f).is_file()]
        for job in sorted(p for p in (run / JOBS_DIR).glob("*") if p.is_dir()):
            out += [Path(rel) / JOBS_DIR / job.name / f for f in JOB_FILES if (job / f).is_file()]
        for d in ("eval", "eval-random-init"):
            out += [Path(rel) / d / f for f in PROBE_FILES if (run / d / f).is_file()]
    return out


def collect_logs(src_root: str | Path, dst_root: str | Path) -> List[Path]:
    """Copy the log subset (``log_files``) of every ``src_root/*/ablation.yaml`` into
    ``dst_root/<ablation>/``, replacing that directory as a whole (copied to a temporary name
    first, then renamed), so it holds exactly the source's subset. Returns the copied files.
    Raises UserError when ``src_root`` has no ablation, is ``dst_root`` itself, or lies
    inside a ``dst_root/<ablation>`` that would be replaced (nothing is copied then)."""
    src_root, dst_root = Path(src_root), Path(dst_root)
    if src_root.resolve() == dst_root.resolve():
        raise UserError(f"--collect {src_root} is the --runs directory itself; collect from another runs directory")
    found = sorted(src_root.glob(f"*/{rundir.ABLATION}"))
    if not found:
        raise UserError(f"nothing to collect: no {src_root / '*' / rundir.ABLATION}; pass the runs directory of `pretrain ablate`")
    for f in found:
        # DST/<name> is replaced as a whole: if the source lies inside it, that would delete it
        dst = (dst_root / f.parent.name).resolve()
        if dst == f.parent.resolve() or dst in f.parent.resolve().parents:
            raise UserError(f"--collect {src_root} lies inside {dst_root / f.parent.name}, which collecting replaces; "
                            "collect into a --runs directory outside the source")
    written: List[Path] = []
    for f in found:
        name = f.parent.name
        tmp, dst = dst_root / f".{name}.collect-tmp", dst_root / name
        shutil.rmtree(tmp, ignore_errors=True)
        for rel in log_files(f.parent):
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f.parent / rel, tmp / rel)
            written.append(dst / rel)
        replace_dir(tmp, dst)
    return written
