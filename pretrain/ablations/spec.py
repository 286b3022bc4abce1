"""What an ablation is: its YAML definition (a base run config, the arms' overrides, the
paper's numbers) and the record ``pretrain ablate`` leaves in ``runs/<name>/ablation.yaml``,
from which ``pretrain tables`` rebuilds the table and the commands that made it. Shared by
the runner (``pretrain.ablations.runner``), the tables (``pretrain.ablations.tables``) and
Slurm submission, so none of them imports another for it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig

from common.configfile import merge_into, read_yaml
from common.errors import UserError
from pretrain.config import to_dict
from pretrain.training import rundir

# Arm and ablation names become directory names; keep them portable.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Keys the runner sets itself (where each arm's run directory is).
_RESERVED = ("name", "run_dir")


@dataclass
class PaperConfig:
    """The paper's numbers for this ablation.

    source: citation of the table, e.g. "Liu et al. 2019 (RoBERTa), Table 1".
    columns: the paper's column names (shown in our table with " (paper)" appended).
    rows: arm name → one number per column (null where the paper has none).
    """

    source: str = MISSING
    columns: List[str] = MISSING
    rows: Dict[str, List[Optional[float]]] = MISSING


@dataclass
class AblationConfig:
    """One ablation: a base run config and the arms that differ from it.

    name: directory name of the ablation under the runs root and the results directory.
    title: human-readable title (paper, section, table).
    base: run config YAML, relative to the ablation file.
    arms: arm name → override mapping of the run config (``{}`` = the base as is).
    paper: see PaperConfig.
    """

    name: str = MISSING
    title: str = MISSING
    base: str = MISSING
    arms: Dict[str, Any] = MISSING
    paper: PaperConfig = field(default_factory=PaperConfig)


@dataclass
class AblationRecord:
    """What ``runs/<name>/ablation.yaml`` holds: the definition and how it was run, so
    ``pretrain tables`` can rebuild the table (and print the run commands) from the run
    directories alone."""

    ablation: AblationConfig = field(default_factory=AblationConfig)
    source: str = MISSING  # the ablation file as given on the command line
    preset: str = MISSING
    overrides: List[str] = field(default_factory=list)
    runs_root: str = "runs"
    results_dir: str = "results"


def load_ablation(path: str | Path) -> AblationConfig:
    """Load and check an ablation YAML.

    Raises UserError (one line) for a missing/unparsable file, an unknown or missing key,
    a name that is not a portable directory name, an arm whose overrides are not a mapping
    or set ``name``/``run_dir``, or a paper row that names no arm or whose length differs
    from ``paper.columns``.
    """
    p = Path(path)
    cfg = merge_into(AblationConfig, read_yaml(p), where=str(p))
    check_ablation(cfg, where=str(p))
    return cfg


def check_ablation(cfg: AblationConfig, where: str) -> None:
    """Consistency checks of a loaded AblationConfig (see ``load_ablation``)."""
    if not _NAME_RE.match(cfg.name):
        raise UserError(f"{where}: name {cfg.name!r} must be letters, digits, '_', '-' or '.'")
    if not cfg.arms:
        raise UserError(f"{where}: 'arms' is empty; an ablation needs at least one arm")
    for arm, layer in cfg.arms.items():
        if not _NAME_RE.match(str(arm)):
            raise UserError(f"{where}: arm name {arm!r} must be letters, digits, '_', '-' or '.'")
        if layer is not None and not isinstance(layer, DictConfig):
            raise UserError(f"{where}: arm {arm!r} must be a mapping of run-config overrides, got {layer!r}")
        for key in _RESERVED:
            if layer is not None and key in layer:
                raise UserError(f"{where}: arm {arm!r} sets {key!r}; the ablation runner chooses each arm's run directory")
    ncol = len(cfg.paper.columns)
    for arm, row in cfg.paper.rows.items():
        if arm not in cfg.arms:
            raise UserError(f"{where}: paper row {arm!r} names no arm (arms: {', '.join(cfg.arms)})")
        if len(row) != ncol:
            raise UserError(f"{where}: paper row {arm!r} has {len(row)} numbers but paper.columns has {ncol}")


def load_record(abl_dir: str | Path) -> AblationRecord:
    """Load ``abl_dir/ablation.yaml`` (written by ``run_ablation``). Raises UserError."""
    p = Path(abl_dir) / rundir.ABLATION
    rec = merge_into(AblationRecord, read_yaml(p), where=str(p))
    check_ablation(rec.ablation, where=str(p))
    return rec


def base_path(source: str | Path, base: str) -> Path:
    """The base run config of an ablation: ``base`` is relative to the ablation file."""
    return Path(source).parent / base


def ablate_command(rec: AblationRecord) -> str:
    """The shell command that (re)runs an ablation as recorded."""
    parts = ["pretrain", "ablate", rec.source, "--preset", rec.preset, *rec.overrides]
    if rec.runs_root != "runs":
        parts += ["--runs", rec.runs_root]
    if rec.results_dir != "results":
        parts += ["--results", rec.results_dir]
    return shlex.join(parts)


def arm_command(rec: AblationRecord, arm: str) -> str:
    """An equivalent ``pretrain train`` command for one arm (the arm's overrides flattened
    to key=value, then the ablation's command-line overrides)."""
    layer = rec.ablation.arms[arm]
    flat = _flatten(to_dict(layer) if layer is not None else {})
    run = Path(rec.runs_root) / rec.ablation.name / arm
    base = Path(_normpath(base_path(rec.source, rec.ablation.base)))
    parts = ["pretrain", "train", str(base), "--preset", rec.preset, *flat, *rec.overrides]
    parts += [f"name={rec.ablation.name}/{arm}", f"run_dir={run}"]
    return shlex.join(parts)


def _flatten(d: Dict[str, Any], prefix: str = "") -> List[str]:
    out: List[str] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += _flatten(v, key + ".")
        else:
            out.append(f"{key}={_scalar(v)}")
    return out


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def _normpath(p: Path) -> str:
    return os.path.normpath(str(p))
