"""``pretrain tables``: rebuild every ablation's table, CSV and plot from its run directories
(no training), then the verdict summary of the results README."""

from __future__ import annotations

from pathlib import Path
from typing import List

from common.errors import UserError
from pretrain.ablations.summary import write_summary
from pretrain.ablations.tables import write_ablation_table
from pretrain.training import rundir


def rebuild_tables(runs_root: str | Path, results_dir: str | Path, ablations_dir: str | Path = "configs/ablation") -> List[Path]:
    """Rebuild the table, CSV and plot of every ablation under ``runs_root`` (``pretrain
    tables``) into ``results_dir/<preset>/``, then the verdict summary of
    ``results_dir/README.md`` (``write_summary``). Returns the written paths. Raises
    UserError when no ``runs_root/*/ablation.yaml`` exists."""
    found = sorted(Path(runs_root).glob(f"*/{rundir.ABLATION}"))
    if not found:
        raise UserError(
            f"no ablations found: looked for {Path(runs_root) / '*' / rundir.ABLATION}; "
            "run `pretrain ablate` first or pass --runs DIR"
        )
    written: List[Path] = []
    for f in found:
        written += write_ablation_table(f.parent, results_dir, runs_root)
    written.append(write_summary(runs_root, results_dir, ablations_dir))
    return written
