"""bench/suite_cost.py: the evaluation stages and the real_tokens budget are counted, and
fine-tuning time is measured from finished jobs' logs when a runs directory is given."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ABLATIONS = REPO / "configs" / "ablation"
sys.path.insert(0, str(REPO / "bench"))

import suite_cost  # noqa: E402


def _finished_job(root: Path, task: str, seed: int, steps: int, tokens: int, seconds: float, status: str = "done") -> None:
    run = root / "abl" / "arm" / "finetune" / task / "lr-0.0003" / f"seed-{seed}"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"status": status, "task": task, "steps": steps,
                                                   "tokens_seen": tokens, "wall_time_s": seconds}))


def test_finetuning_jobs_are_counted_and_timed_from_finished_runs(tmp_path: Path, data_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data-cache/, no runs/ here
    _finished_job(tmp_path / "runs", "sst2", 1, 100, 50_000, 200.0)
    _finished_job(tmp_path / "runs", "sst2", 2, 100, 48_000, 100.0)
    _finished_job(tmp_path / "runs", "sst2", 3, 40, 99_999, 999.0, status="running")  # unfinished: not counted
    measured = suite_cost.measure_finetuning(tmp_path / "runs")
    assert list(measured) == ["sst2"] and (measured["sst2"].steps, measured["sst2"].seconds) == (200, 300.0)

    cost = suite_cost.table_cost(ABLATIONS / "bert_nsp.yaml", "smoke", [], measured)
    # (2 arms + the random-init control) × (mrpc, sst2) jobs, each lrs=[3e-4] × the preset's seeds
    assert cost.runs == 2 and cost.jobs == 6 and cost.loop_runs % 6 == 0 and cost.loop_runs > 0
    assert set(cost.finetune_steps) == {"mrpc", "sst2"} and cost.tokens_upper_bound  # mrpc not measured
    hours = suite_cost.finetune_hours(cost, measured, None)
    # every step at sst2's measured 1.5 s (mrpc takes the measured tasks' mean)
    assert hours == pytest.approx(sum(cost.finetune_steps.values()) * 1.5 / 3600)
    assert suite_cost.finetune_hours(cost, {}, None) is None


def test_real_tokens_without_built_data_is_a_lower_bound(tmp_path: Path, data_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cost = suite_cost.table_cost(ABLATIONS / "roberta_input_format.yaml", "smoke", [], {})
    assert cost.lower_bound and "data not built for segment_pair" in cost.notes[0]
    assert "doc_sentences" not in cost.notes[0]  # batched by tokens: needs no data to count
