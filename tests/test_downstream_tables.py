"""Downstream columns of an ablation table, from fabricated run directories and fine-tuning
jobs (the real ones come from `pretrain ablate` / `pretrain finetune`): our column beside the
paper's of the same name, pooled over pretraining × fine-tuning seeds, the random-init control
row, verdicts on fine-tuned scores, the control check, and byte-for-byte regeneration from the
committed log subset (`pretrain tables --collect`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from common.atomic import write_json_atomic
from common.errors import UserError
from pretrain.ablations.collect import collect_logs, log_files
from pretrain.ablations.rebuild import rebuild_tables
from pretrain.cli import main as pretrain_main
from pretrain.downstream.runner import markdown, summarize
from pretrain.training import rundir

CLAIMS = [{"text": "a beats b on SST-2", "a": "a", "b": "b", "paper_column": "SST-2 acc"},
          {"text": "a beats b on SQuAD", "a": "a", "b": "b", "paper_column": "SQuAD 2.0 F1"}]


def _job(job: Path, task: str, per_seed: dict, other_lr: float = 0.0, rows: int = 256) -> None:
    """A finished fine-tuning job: finetune.yaml, scores.json (as `summarize` makes it: lr 3e-4
    with the given main-metric scores, and an lr 1e-4 whose median is lower), scores.md, and a
    seed run directory that must not be collected."""
    metric = {"sst2": "dev_accuracy", "stsb": "dev_spearman"}[task]
    per_run = {3e-4: {s: {metric: v, "dev_pearson": v} for s, v in per_seed.items()},
               1e-4: {s: {metric: other_lr, "dev_pearson": other_lr} for s in per_seed}}
    s = summarize(task, per_run)
    s.update(task=task, pretrained="x", recipe="roberta", preset="smoke", num_train_rows=256)
    job.mkdir(parents=True)
    (job / "finetune.yaml").write_text(f"task: {task}\nlrs: [0.0003, 0.0001]\nseeds: [1, 2, 3]\nepochs: 2.0\n"
                                      f"data:\n  max_length: 64\n  max_train_rows: {rows}\n"
                                      "train:\n  global_batch_size: 16\n  precision: fp32\n")
    write_json_atomic(job / "scores.json", s)
    (job / "scores.md").write_text(markdown(task, "x", s))
    (job / "lr-0.0003" / "seed-1").mkdir(parents=True)
    (job / "lr-0.0003" / "seed-1" / "metrics.jsonl").write_text("{}\n")


def _ablation(tmp_path: Path, sst2: dict, control: dict | None = None, warn: bool = False, claims=CLAIMS) -> Path:
    """runs/ds: arms a, b × pretraining seeds 1, 2, each pretrained and fine-tuned on SST-2 and
    STS-B (STS-B scores 0.5, 0.6, 0.7 in every job); ``sst2``: arm → [[fine-tuning scores of
    seed 1's job], [seed 2's]]; ``control``: task → scores of the random-init job on a/seed-1."""
    runs = tmp_path / "runs"
    abl = runs / "ds"
    rec = {
        "ablation": {
            "name": "ds", "title": "Downstream", "base": "../recipe/roberta.yaml", "seeds": [1, 2],
            "arms": {"a": {"data": {"masking": {"mode": "dynamic"}}}, "b": {"data": {"masking": {"mode": "static"}}}},
            "paper": {"source": "P", "columns": ["SQuAD 2.0 F1", "SST-2 acc", "MNLI-m acc"],
                      "rows": {"a": [80.0, 93.0, 84.0], "b": [79.0, 92.0, 84.5]}},
            "claims": claims,
            "evaluate": {"tasks": ["sst2", "stsb"], "overrides": ["lrs=[3e-4,1e-4]"], "control": True},
        },
        "source": str(tmp_path / "gone.yaml"), "preset": "smoke", "overrides": [], "runs_root": "runs",
        "results_dir": "results", "finetune_preset": "smoke",
    }
    abl.mkdir(parents=True)
    (abl / rundir.ABLATION).write_text(OmegaConf.to_yaml(OmegaConf.create(rec)))
    for arm, jobs in sst2.items():
        for seed, scores in zip((1, 2), jobs):
            run = abl / arm / f"seed-{seed}"
            run.mkdir(parents=True)
            epochs = 1.0 if warn else 8.0
            (run / rundir.CONFIG).write_text(
                f"train:\n  max_steps: 20\ndata:\n  masking:\n    mode: {'static' if arm == 'b' else 'dynamic'}\n"
                "    dupe_factor: 2\n    copies: remask\n")
            (run / rundir.METRICS).write_text(json.dumps({"kind": "eval", "step": 20, "epoch": epochs, "tokens_seen": 100,
                                                          "mlm_loss": 5.0, "perplexity": 148.4, "mlm_accuracy": 0.1}) + "\n")
            write_json_atomic(run / rundir.SUMMARY, {"status": "done", "steps": 20, "tokens_seen": 100, "epochs": epochs,
                                                     "wall_time_s": 60.0, "final_eval": {"mlm_loss": 5.0, "perplexity": 148.4,
                                                                                         "mlm_accuracy": 0.1}})
            _job(run / "finetune" / "sst2", "sst2", dict(enumerate(scores, 1)))
            _job(run / "finetune" / "stsb", "stsb", dict(enumerate([0.5, 0.6, 0.7], 1)))
            (run / "checkpoints" / "step-20").mkdir(parents=True)  # not collected
    for task, scores in (control or {}).items():
        _job(abl / "a" / "seed-1" / "finetune" / f"{task}-random-init", task, dict(enumerate(scores, 1)))
    return runs


def _csv(p: Path):
    with open(p, newline="") as f:
        return {row["arm"]: row for row in csv.DictReader(f)}


def test_our_column_sits_beside_the_papers_with_pooled_median_and_spread(tmp_path: Path):
    runs = _ablation(tmp_path, {"a": [[0.90, 0.91, 0.92], [0.93, 0.94, 0.95]], "b": [[0.80, 0.81], [0.82, 0.83]]},
                     control={"sst2": [0.50, 0.52, 0.56], "stsb": [0.1, 0.2]})
    rebuild_tables(runs, tmp_path / "results")
    rows = _csv(tmp_path / "results" / "smoke" / "ds.csv")
    head = list(next(iter(rows.values())))
    i = head.index("SST-2 acc")
    assert head[i:i + 5] == ["SST-2 acc", "SST-2 acc min", "SST-2 acc max", "SST-2 acc n", "SST-2 acc (paper)"]
    # tasks the paper lacks get our column too; paper columns we cannot run stay paper-only, at the end
    assert "STS-B Spearman" in head and "STS-B Spearman (paper)" not in head
    assert head[-2:] == ["SQuAD 2.0 F1 (paper)", "MNLI-m acc (paper)"]
    a = rows["a"]
    # median over both pretraining seeds' scores at each job's chosen lr (3e-4; 1e-4 scored 0)
    assert float(a["SST-2 acc"]) == pytest.approx(92.5) and a["SST-2 acc n"] == "6"
    assert float(a["SST-2 acc min"]) == pytest.approx(90.0) and float(a["SST-2 acc max"]) == pytest.approx(95.0)
    assert float(a["SST-2 acc (paper)"]) == 93.0 and float(a["SQuAD 2.0 F1 (paper)"]) == 80.0
    c = rows["random init (control)"]
    assert c["status"] == "done" and c["held-out MLM loss"] == "" and c["SST-2 acc (paper)"] == ""
    assert float(c["SST-2 acc"]) == pytest.approx(52.0) and c["SST-2 acc n"] == "3"
    md = (tmp_path / "results" / "smoke" / "ds.md").read_text()
    assert "| SST-2 acc | SST-2 acc min–max (n) | SST-2 acc (paper) |" in md
    assert "| 92.50 | 90.00–95.00 (6) | 93.0 |" in md
    assert "| random init (control) | done | — |" in md
    assert "pooled over all pretraining seeds × fine-tuning seeds" in md
    assert "Paper only: SQuAD (span extraction) is not a task of `pretrain finetune`." in md
    assert "Paper only: MNLI's training set is not in ../shared/data" in md


def test_claim_on_a_measured_column_is_judged_on_fine_tuned_scores(tmp_path: Path):
    runs = _ablation(tmp_path, {"a": [[0.90, 0.91, 0.92], [0.93, 0.94, 0.95]], "b": [[0.80, 0.81], [0.82, 0.83]]})
    rebuild_tables(runs, tmp_path / "results")
    md = (tmp_path / "results" / "smoke" / "ds.md").read_text()
    # a − b = 92.5 − 81.5 = +11.00 points, beyond the larger spread (5.00): agrees with the paper's +1.00
    assert ("| a beats b on SST-2 | `a` − `b` | +1.00 SST-2 acc (`a` better) | +11.00 SST-2 acc, fine-tuned (`a` better) "
            "| 5.00 | **agrees** |") in md
    # no fine-tuned SQuAD column: the MLM loss decides (equal losses here), and says so
    assert "| a beats b on SQuAD | `a` − `b` | +1.00 SQuAD 2.0 F1 (`a` better) | +0.0000 MLM loss, held-out | 0.0000 | **inconclusive** (within the spread over seeds) |" in md
    readme = (tmp_path / "results" / "README.md").read_text()
    assert "**agrees**; by fine-tuned SST-2 acc |" in readme
    assert "; by held-out MLM loss (no fine-tuned SQuAD 2.0 F1 of ours) |" in readme
    # within the spread: inconclusive; b ahead beyond it: opposite
    runs = _ablation(tmp_path / "close", {"a": [[0.90, 0.95], [0.92]], "b": [[0.89, 0.93], [0.91]]})
    rebuild_tables(runs, tmp_path / "close" / "results")
    assert "| 5.00 | **inconclusive** (within the spread over seeds) |" in (tmp_path / "close" / "results" / "smoke" / "ds.md").read_text()
    runs = _ablation(tmp_path / "opp", {"a": [[0.70, 0.71], [0.72]], "b": [[0.90, 0.91], [0.92]]})
    rebuild_tables(runs, tmp_path / "opp" / "results")
    assert "| 2.00 | **opposite** |" in (tmp_path / "opp" / "results" / "smoke" / "ds.md").read_text()


def test_glue_avg_is_the_mean_of_the_task_medians_with_their_envelope(tmp_path: Path):
    runs = _ablation(tmp_path, {"a": [[0.90, 0.91, 0.92], [0.93, 0.94, 0.95]], "b": [[0.80, 0.81], [0.82, 0.83]]},
                     control={"sst2": [0.50, 0.52, 0.56], "stsb": [0.1, 0.2]})
    rebuild_tables(runs, tmp_path / "results")
    rows = _csv(tmp_path / "results" / "smoke" / "ds.csv")
    a, b, c = rows["a"], rows["b"], rows["random init (control)"]
    # a: SST-2 92.5 (90–95, n 6), STS-B 60 (50–70, n 6) → 76.25, (90+50)/2 – (95+70)/2, n 6
    assert [float(a[k]) for k in ("GLUE avg", "GLUE avg min", "GLUE avg max")] == pytest.approx([76.25, 70.0, 82.5])
    assert a["GLUE avg n"] == "6"
    # b: SST-2 81.5 (80–83, n 4) → the smallest n of the tasks
    assert float(b["GLUE avg"]) == pytest.approx(70.75) and b["GLUE avg n"] == "4"
    # control: SST-2 52 (50–56), STS-B 15 (10–20, n 2)
    assert [float(c[k]) for k in ("GLUE avg", "GLUE avg min", "GLUE avg max")] == pytest.approx([33.5, 30.0, 38.0])
    md = (tmp_path / "results" / "smoke" / "ds.md").read_text()
    assert "| GLUE avg | `a` | +42.75 | 12.50 | yes |" in md  # 76.25 − 33.5; spreads 12.5 and 8.0
    assert "GLUE avg: per row, the mean of the medians of SST-2 acc, STS-B Spearman" in md
    assert "Not the papers' task set: theirs also averages CoLA, MRPC, QQP, MNLI-m, QNLI, RTE" in md
    # a task without a score leaves the cell empty: the control's STS-B job has not run
    runs = _ablation(tmp_path / "half", {"a": [[0.90], [0.93]], "b": [[0.80], [0.82]]}, control={"sst2": [0.5, 0.6]})
    rebuild_tables(runs, tmp_path / "half" / "results")
    c = _csv(tmp_path / "half" / "results" / "smoke" / "ds.csv")["random init (control)"]
    assert float(c["SST-2 acc"]) == pytest.approx(55.0) and c["GLUE avg"] == c["GLUE avg n"] == ""
    assert "| GLUE avg | `a` |" not in (tmp_path / "half" / "results" / "smoke" / "ds.md").read_text()


def test_a_claim_is_judged_on_its_ours_column(tmp_path: Path):
    claims = [{**CLAIMS[0], "text": "a beats b on GLUE", "ours_column": "GLUE avg"}, CLAIMS[0]]
    runs = _ablation(tmp_path, {"a": [[0.90, 0.91, 0.92], [0.93, 0.94, 0.95]], "b": [[0.60, 0.61], [0.62, 0.63]]},
                     claims=claims)
    rebuild_tables(runs, tmp_path / "results")
    md = (tmp_path / "results" / "smoke" / "ds.md").read_text()
    # GLUE avg a 76.25 (70–82.5), b (61.5 + 60)/2 = 60.75 (55–66.5): +15.50 beyond the spread 12.50
    assert ("| a beats b on GLUE | `a` − `b` | +1.00 SST-2 acc (`a` better) | +15.50 GLUE avg, fine-tuned (`a` better) "
            "| 12.50 | **agrees** |") in md
    # the same paper column without ours_column stays on our column of its name
    assert "| +31.00 SST-2 acc, fine-tuned (`a` better) | 5.00 | **agrees** |" in md
    assert "**agrees**; by fine-tuned GLUE avg |" in (tmp_path / "results" / "README.md").read_text()


def test_an_ours_column_the_evaluate_section_does_not_give_fails_at_load(tmp_path: Path):
    from pretrain.ablations.spec import load_ablation

    abl = {"name": "x", "title": "X", "base": "b.yaml", "arms": {"a": {}, "b": {}},
           "paper": {"source": "Q", "columns": ["GLUE"], "rows": {"a": [80.0], "b": [79.0]}},
           "evaluate": {"tasks": ["sst2", "mrpc"]},
           "claims": [{"text": "t", "a": "a", "b": "b", "paper_column": "GLUE", "ours_column": "GLUE avg"}]}
    p = tmp_path / "x.yaml"
    p.write_text(OmegaConf.to_yaml(OmegaConf.create(abl)))
    assert load_ablation(p).claims[0].ours_column == "GLUE avg"
    abl["claims"][0]["ours_column"] = "GLUE average"
    p.write_text(OmegaConf.to_yaml(OmegaConf.create(abl)))
    with pytest.raises(UserError, match=r"x.yaml: claims\[0\].ours_column 'GLUE average' is not a column of ours; "
                                        r"the evaluate section gives: SST-2 acc, MRPC F1, GLUE avg$"):
        load_ablation(p)
    # one GLUE task makes no average
    abl["claims"][0]["ours_column"], abl["evaluate"]["tasks"] = "GLUE avg", ["sst2", "conll2003"]
    p.write_text(OmegaConf.to_yaml(OmegaConf.create(abl)))
    with pytest.raises(UserError, match=r"gives: SST-2 acc, CoNLL-2003 test F1$"):
        load_ablation(p)


def test_a_warning_that_masks_never_repeat_makes_the_downstream_verdict_inconclusive(tmp_path: Path):
    runs = _ablation(tmp_path, {"a": [[0.90, 0.91, 0.92], [0.93]], "b": [[0.80, 0.81], [0.82]]}, warn=True)
    rebuild_tables(runs, tmp_path / "results")
    md = (tmp_path / "results" / "smoke" / "ds.md").read_text()
    assert "fine-tuned (`a` better) | 3.00 | **inconclusive** (the run cannot show the effect: see the warning) |" in md


def test_control_check_says_whether_pretraining_beat_random_init_by_more_than_the_spread(tmp_path: Path):
    runs = _ablation(tmp_path, {"a": [[0.90, 0.91, 0.92], [0.93, 0.94, 0.95]], "b": [[0.55, 0.60], [0.62]]},
                     control={"sst2": [0.50, 0.52, 0.56]})
    rebuild_tables(runs, tmp_path / "results")
    md = (tmp_path / "results" / "smoke" / "ds.md").read_text()
    assert "| SST-2 acc | `a` | +40.50 | 6.00 | yes |" in md  # 92.5 − 52.0; spreads 5.0 and 6.0
    assert "| SST-2 acc | `b` | +8.00 | 7.00 | yes |" in md   # 60.0 − 52.0; spreads 7.0 and 6.0
    rows = _csv(tmp_path / "results" / "smoke" / "ds.csv")
    # the STS-B control job has not run: the control is half done and has no STS-B cells
    assert rows["random init (control)"]["status"] == "1/2 stages done" and rows["random init (control)"]["STS-B Spearman"] == ""
    assert "| STS-B Spearman | `a` |" not in md


def test_tables_regenerate_byte_for_byte_from_the_collected_log_subset(tmp_path: Path, capsys):
    runs = _ablation(tmp_path, {"a": [[0.90, 0.91, 0.92], [0.93]], "b": [[0.80, 0.81], [0.82]]},
                     control={"sst2": [0.5, 0.6], "stsb": [0.1, 0.2]})
    rebuild_tables(runs, tmp_path / "full")
    committed = tmp_path / "results" / "runs"
    assert pretrain_main(["tables", "--collect", str(runs), "--runs", str(committed), "--results", str(tmp_path / "sub")]) == 0
    assert "collected 43 log files" in capsys.readouterr().out
    files = sorted(str(p.relative_to(committed)) for p in committed.rglob("*") if p.is_file())
    assert files == sorted(str(Path("ds") / p) for p in log_files(runs / "ds"))
    assert "ds/a/seed-1/finetune/sst2/scores.json" in files and "ds/a/seed-1/finetune/sst2-random-init/finetune.yaml" in files
    assert not any("lr-" in f or "checkpoints" in f for f in files)
    for name in ("ds.csv", "ds.png"):
        assert (tmp_path / "sub" / "smoke" / name).read_bytes() == (tmp_path / "full" / "smoke" / name).read_bytes()
    md = (tmp_path / "sub" / "smoke" / "ds.md").read_text()
    assert md.replace(f"--runs {committed} --results {tmp_path / 'sub'}", "X") == \
        (tmp_path / "full" / "smoke" / "ds.md").read_text().replace(f"--runs {runs} --results {tmp_path / 'full'}", "X")
    # collecting again replaces the ablation's directory: a job gone from the source is gone here
    import shutil
    shutil.rmtree(runs / "ds" / "b" / "seed-2" / "finetune" / "stsb")
    collect_logs(runs, committed)
    assert not (committed / "ds" / "b" / "seed-2" / "finetune" / "stsb").exists()
    with pytest.raises(UserError, match="is the --runs directory itself"):
        collect_logs(committed, committed)
    with pytest.raises(UserError, match="nothing to collect"):
        collect_logs(tmp_path / "sub", committed)
    # a source inside the directory a collect replaces would be deleted by it: refused, kept
    inner = committed / "ds" / "old-runs"
    shutil.copytree(runs, inner)
    with pytest.raises(UserError, match=rf"--collect {inner} lies inside {committed / 'ds'}, which collecting replaces"):
        collect_logs(inner, committed)
    assert (inner / "ds" / rundir.ABLATION).is_file()


def test_probe_columns_sit_beside_albert_table_5_and_judge_its_claims(tmp_path: Path):
    """The sentence probe gives ALBERT Table 5's "MLM acc", "NSP acc", "SOP acc" beside the
    paper's, BLiMP its own column with the control; a claim on "MLM acc" is judged on it."""
    runs = tmp_path / "runs"
    abl = runs / "so"
    rec = {
        "ablation": {
            "name": "so", "title": "Sentence objective", "base": "../recipe/albert.yaml", "seeds": [1, 2],
            "arms": {"none": {"objective": {"sentence": "none"}}, "sop": {"data": {"sentence_objective": "sop"}}},
            "paper": {"source": "P", "columns": ["MLM acc", "NSP acc", "SOP acc", "Avg"],
                      "rows": {"none": [54.9, 52.4, 53.3, 79.0], "sop": [54.0, 78.9, 86.5, 80.1]}},
            "claims": [{"text": "a sentence loss costs MLM accuracy", "a": "none", "b": "sop", "paper_column": "MLM acc",
                        "metric": "mlm_accuracy"}],
            "evaluate": {"probes": {"blimp": True, "blimp_limit": 10, "sentence": True}, "control": True},
        },
        "source": str(tmp_path / "gone.yaml"), "preset": "smoke", "overrides": [], "runs_root": "runs",
        "results_dir": "results", "finetune_preset": "smoke",
    }
    abl.mkdir(parents=True)
    (abl / rundir.ABLATION).write_text(OmegaConf.to_yaml(OmegaConf.create(rec)))
    mlm = {"none": [0.40, 0.41], "sop": [0.30, 0.31]}
    for arm in ("none", "sop"):
        for i, seed in enumerate((1, 2)):
            run = abl / arm / f"seed-{seed}"
            (run / "eval").mkdir(parents=True)
            write_json_atomic(run / rundir.SUMMARY, {"status": "done", "final_eval": {"mlm_loss": 5.0, "mlm_accuracy": 0.2}})
            write_json_atomic(run / "eval" / "blimp.json", {"overall": 0.6 + 0.01 * i, "limit": 10, "pairs": 670})
            write_json_atomic(run / "eval" / "sentence.json", {"mlm": {"accuracy": mlm[arm][i]}, "nsp": {"accuracy": 0.5},
                                                               "sop": {"accuracy": 0.8 if arm == "sop" else 0.5}})
    (abl / "none" / "seed-1" / "eval-random-init").mkdir()
    write_json_atomic(abl / "none" / "seed-1" / "eval-random-init" / "blimp.json", {"overall": 0.5, "limit": 10})
    rebuild_tables(runs, tmp_path / "results")
    rows = _csv(tmp_path / "results" / "smoke" / "so.csv")
    head = list(rows["none"])
    i = head.index("MLM acc")
    assert head[i:i + 5] == ["MLM acc", "MLM acc min", "MLM acc max", "MLM acc n", "MLM acc (paper)"]
    assert head[-1] == "Avg (paper)" and "BLiMP overall" in head
    assert float(rows["sop"]["SOP acc"]) == pytest.approx(80.0) and rows["sop"]["SOP acc n"] == "2"
    control = rows["random init (control)"]
    assert control["status"] == "done" and float(control["BLiMP overall"]) == pytest.approx(50.0) and control["MLM acc"] == ""
    md = (tmp_path / "results" / "smoke" / "so.md").read_text()
    assert "| +10.00 MLM acc, zero-shot (`none` better) | 1.00 | **agrees** |" in md
    assert "| BLiMP overall | `sop` | +10.50 | 1.00 | yes |" in md
    assert "the first 10 pairs of each of the 67 phenomena" in md and "Paper only: the paper's average" in md
    files = [str(p) for p in log_files(abl)]
    assert "none/seed-1/eval/sentence.json" in files and "none/seed-1/eval-random-init/blimp.json" in files


def test_the_recorded_fine_tuning_settings_are_named_and_a_difference_is_a_warning(tmp_path: Path):
    runs = _ablation(tmp_path, {"a": [[0.90, 0.91], [0.93]], "b": [[0.80, 0.81], [0.82]]})
    rebuild_tables(runs, tmp_path / "results")
    md = (tmp_path / "results" / "smoke" / "ds.md").read_text()
    assert ("Fine-tuning settings recorded by every job (`finetune.yaml`): lrs [0.0003, 0.0001], seeds [1, 2, 3], "
            "epochs 2.0, batch 16, max length 64, training rows 256, precision fp32.") in md
    assert "Warning" not in md
    # the control fine-tuned on fewer rows (e.g. by hand): named, and the page warns
    _job(runs / "ds" / "a" / "seed-1" / "finetune" / "sst2-random-init", "sst2", {1: 0.5, 2: 0.6}, rows=2000)
    rebuild_tables(runs, tmp_path / "results")
    md = (tmp_path / "results" / "smoke" / "ds.md").read_text()
    assert "**Warning:** the fine-tuning jobs were not all run with the same settings" in md
    assert "- lrs [0.0003, 0.0001], seeds [1, 2, 3], epochs 2.0, batch 16, max length 64, training rows 2000, precision fp32: `a/seed-1/finetune/sst2-random-init`" in md
