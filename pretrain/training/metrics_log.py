"""Where the loop's metric records go: ``metrics.jsonl`` and TensorBoard (field names in
``pretrain.training.rundir``). On resume, lines past the checkpoint's step — logged by a
segment that was killed later — are dropped, so the file reads as one uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from common.atomic import write_text_atomic
from common.diskspace import disk_full_error, is_disk_full
from pretrain.training.rundir import METRICS, TENSORBOARD


class MetricsLog:
    """metrics.jsonl lines and TensorBoard scalars (rank 0 only; no-ops elsewhere).

    Args:
        run: the run directory.
        enabled: False on every rank but 0.
        resume_step: the checkpoint's step when resuming (later lines are dropped), None
            for a fresh run (the file starts empty).
    """

    def __init__(self, run: Path, enabled: bool, resume_step: Optional[int]) -> None:
        self.enabled = enabled
        self.file = None
        self.tb = None
        if not enabled:
            return
        path = self.path = run / METRICS
        if resume_step is None:
            path.unlink(missing_ok=True)
        else:
            _truncate_metrics(path, resume_step)
        self.file = open(path, "a")
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides events a killed segment logged past the checkpoint.
        self.tb = SummaryWriter(str(run / TENSORBOARD), purge_step=None if resume_step is None else resume_step + 1)

    def write(self, record: Dict[str, Any]) -> None:
        """Append ``record`` (a dict with ``kind`` and ``step``) as one JSON line, flushed,
        and each numeric field as TensorBoard scalar ``<kind>/<field>`` at ``step``."""
        if not self.enabled:
            return
        line = json.dumps(record) + "\n"
        try:
            self.file.write(line)
            self.file.flush()
        except OSError as e:
            # A line cut short here is dropped when the run resumes (_truncate_metrics).
            if is_disk_full(e, self.path):
                raise disk_full_error(self.path, len(line), ", then rerun with --resume") from None
            raise
        for k, v in record.items():
            if k not in ("kind", "step") and isinstance(v, (int, float)) and v is not None:
                self.tb.add_scalar(f"{record['kind']}/{k}", v, record["step"])

    def close(self) -> None:
        """Close metrics.jsonl and flush the TensorBoard writer."""
        if self.file:
            try:
                self.file.close()
            except OSError:
                pass  # a full disk, already reported by write()
        if self.tb:
            try:
                self.tb.close()
            except OSError:
                pass  # the same full disk: metrics.jsonl is the record, TensorBoard a view of it


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the lines an uninterrupted run would have written up to ``step`` (and drop a
    line cut off by a kill), atomically."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("step", 0) <= step:
            keep.append(line + "\n")
    write_text_atomic(path, "".join(keep))
