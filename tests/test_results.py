"""The committed result tables are exactly what `pretrain tables` makes from the committed run
logs: no number in results/ is typed by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.ablations.tables import rebuild_tables

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "results" / "runs"


@pytest.mark.parametrize("name", sorted(p.name for p in RUNS.iterdir() if (p / "ablation.yaml").is_file()))
def test_committed_table_is_regenerated_from_committed_logs(tmp_path, name):
    written = rebuild_tables(RUNS, tmp_path)
    csv = tmp_path / f"{name}.csv"
    assert csv in written
    assert csv.read_text() == (REPO / "results" / f"{name}.csv").read_text()
    ours = [line for line in (tmp_path / f"{name}.md").read_text().splitlines() if line.startswith("| `")]
    committed = [line for line in (REPO / "results" / f"{name}.md").read_text().splitlines() if line.startswith("| `")]
    assert ours and ours == committed
