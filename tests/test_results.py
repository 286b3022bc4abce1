"""The committed result tables are exactly what `pretrain tables` makes from the committed run
logs: no number in results/ is typed by hand. Each preset's tables live in results/<preset>/
(the committed ones are the `small` preset's), so the README's `--preset smoke` quick start
writes beside them, never over them."""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.ablations.runner import load_record
from pretrain.ablations.rebuild import rebuild_tables
from pretrain.ablations.tables import table_paths

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "results" / "runs"
RESULTS = REPO / "results"


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    """Every table rebuilt once from the committed logs: (output directory, files written)."""
    out = tmp_path_factory.mktemp("rebuilt")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)  # as the page's command runs: `pretrain tables --runs results/runs ...`
        return out, rebuild_tables("results/runs", out)


@pytest.mark.parametrize("name", sorted(p.name for p in RUNS.iterdir() if (p / "ablation.yaml").is_file()))
def test_committed_table_is_regenerated_from_committed_logs(rebuilt, name):
    tmp_path, written = rebuilt
    rec = load_record(RUNS / name)
    ours, committed = table_paths(tmp_path, rec.preset, name), table_paths(RESULTS, rec.preset, name)
    assert set(ours) <= set(written)
    for new, old in zip(ours, committed):
        assert old.is_file(), f"{old} is not committed"
        if new.suffix == ".md":
            # The page names the command that regenerates it, with the --results it was given.
            text = new.read_text().replace(f"--results {tmp_path}", "--results results")
            assert text == old.read_text()
        else:
            assert new.read_bytes() == old.read_bytes(), new.name


def test_committed_readme_summary_is_regenerated_from_committed_logs(tmp_path, monkeypatch):
    """results/README.md's verdict summary is what `pretrain tables --runs results/runs` writes:
    every claim of configs/ablation/, its verdict from the committed logs or "not run yet"."""
    from pretrain.ablations.summary import SUMMARY_END, SUMMARY_START, render_summary

    monkeypatch.chdir(REPO)
    text = (RESULTS / "README.md").read_text()
    committed = text[text.index(SUMMARY_START):text.index(SUMMARY_END) + len(SUMMARY_END)] + "\n"
    assert render_summary("results/runs", "configs/ablation") == committed
