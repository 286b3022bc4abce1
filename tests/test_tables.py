"""Result tables from run directories fabricated here (the real ones come from training)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from common.atomic import write_json_atomic
from common.errors import UserError
from pretrain.ablations.arm_results import collect_arm
from pretrain.ablations.rebuild import rebuild_tables
from pretrain.cli import main as pretrain_main
from pretrain.training import rundir

PAPER_COLS = ["SQuAD 2.0 F1", "MNLI-m acc"]


def _write_record(abl_dir: Path, name: str = "toy", arms=("a", "b", "c")) -> None:
    rec = {
        "ablation": {
            "name": name,
            "title": f"Toy ablation {name}",
            "base": "../recipe/roberta.yaml",
            "arms": {arm: {"train": {"seed": 42}} for arm in arms},
            "paper": {"source": "Somebody et al. (Table 9)", "columns": PAPER_COLS, "rows": {"a": [78.3, 84.3], "b": [78.7, 84.0]}},
        },
        "source": "configs/ablation/toy.yaml",
        "preset": "smoke",
        "overrides": ["train.max_steps=20"],
        "runs_root": "runs",
        "results_dir": "results",
    }
    abl_dir.mkdir(parents=True, exist_ok=True)
    (abl_dir / rundir.ABLATION).write_text(OmegaConf.to_yaml(OmegaConf.create(rec)))


def _write_metrics(run: Path, lines) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / rundir.METRICS).write_text("".join(json.dumps(x) + "\n" for x in lines))
    (run / rundir.CONFIG).write_text("name: x\ntrain:\n  max_steps: 20\n")


def _train(step, loss, tokens):
    return {"kind": "train", "step": step, "epoch": step / 8, "tokens_seen": tokens, "loss": loss, "mlm_loss": loss,
            "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 100.0, "time_s": step * 1.5}


def _eval(step, loss, acc, tokens):
    return {"kind": "eval", "step": step, "epoch": step / 8, "tokens_seen": tokens, "mlm_loss": loss,
            "perplexity": 2.718281828 ** loss, "mlm_accuracy": acc, "time_s": step * 1.5}


SUMMARY_A = {
    "status": "done", "steps": 20, "tokens_seen": 81920, "epochs": 2.5123456, "wall_time_s": 95.25,
    "final_eval": {"mlm_loss": 6.123456789, "perplexity": 456.789123, "mlm_accuracy": 0.0987654321},
    "data_dir": "data-cache/x", "num_train_sequences": 256,
}


@pytest.fixture()
def fabricated(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    abl = runs / "toy"
    _write_record(abl)
    # a: finished
    _write_metrics(abl / "a", [_train(10, 7.0, 40960), _eval(10, 6.9, 0.05, 40960), _train(20, 6.2, 81920), _eval(20, 6.123456789, 0.0987654321, 81920)])
    write_json_atomic(abl / "a" / rundir.SUMMARY, SUMMARY_A)
    # b: interrupted after step 10, resumed from step 5 and killed mid-write at step 10 again:
    # the second step-10 lines win, the truncated last line is ignored.
    _write_metrics(abl / "b", [_train(5, 7.5, 20480), _train(10, 7.3, 40960), _eval(10, 7.25, 0.03, 40960),
                               _train(10, 7.1, 40960), _eval(10, 7.05, 0.04, 40960)])
    with open(abl / "b" / rundir.METRICS, "a") as f:
        f.write('{"kind": "train", "step": 11, "loss"')
    # c: never started (no directory)
    return tmp_path


def _read_csv(p: Path):
    with open(p, newline="") as f:
        return {row["arm"]: row for row in csv.DictReader(f)}


def test_values_round_trip_into_csv_and_md(fabricated: Path):
    runs, results = fabricated / "runs", fabricated / "results"
    paths = rebuild_tables(runs, results)
    assert [p.name for p in paths] == ["toy.md", "toy.csv", "toy.png", "README.md"]
    rows = _read_csv(results / "smoke" / "toy.csv")
    assert list(rows) == ["a", "b", "c"]
    a, b, c = rows["a"], rows["b"], rows["c"]
    ev = SUMMARY_A["final_eval"]
    assert a["status"] == "done"
    assert float(a["held-out MLM loss"]) == ev["mlm_loss"]
    assert float(a["perplexity"]) == ev["perplexity"]
    assert float(a["masked-token accuracy (%)"]) == pytest.approx(100 * ev["mlm_accuracy"], rel=1e-12)
    assert int(a["tokens seen"]) == SUMMARY_A["tokens_seen"]
    assert float(a["epochs"]) == SUMMARY_A["epochs"]
    assert float(a["wall time (min)"]) == pytest.approx(SUMMARY_A["wall_time_s"] / 60, rel=1e-12)
    assert float(a["SQuAD 2.0 F1 (paper)"]) == 78.3 and float(a["MNLI-m acc (paper)"]) == 84.3
    # b: the latest eval after de-duplicating the resumed steps; no wall time until done
    assert b["status"] == "unfinished, step 10/20"
    assert float(b["held-out MLM loss"]) == 7.05
    assert float(b["masked-token accuracy (%)"]) == pytest.approx(4.0)
    assert b["wall time (min)"] == ""
    assert float(b["MNLI-m acc (paper)"]) == 84.0
    assert "| 78.7 | 84.0 |" in (results / "smoke" / "toy.md").read_text()
    # c: listed, marked, empty
    assert c["status"] == "not run" and c["held-out MLM loss"] == "" and c["SQuAD 2.0 F1 (paper)"] == ""

    md = (results / "smoke" / "toy.md").read_text()
    assert md.startswith("# Toy ablation toy\n")
    assert "| SQuAD 2.0 F1 (paper) | MNLI-m acc (paper) |" in md
    row_a = next(line for line in md.splitlines() if line.startswith("| `a` |"))
    for s in ("done", "6.1235", "456.79", "9.88", "81,920", "2.51", "1.59", "78.3", "84.3"):
        assert f"| {s} |" in row_a + " |", (s, row_a)
    assert "| `b` | unfinished, step 10/20 | 7.0500 |" in md
    assert "| `c` | not run | — |" in md
    assert "Paper numbers: Somebody et al. (Table 9)." in md
    assert "not directly comparable" in md and "`smoke` preset" in md
    assert f"pretrain tables --runs {runs} --results {results}" in md
    assert "pretrain ablate configs/ablation/toy.yaml --preset smoke train.max_steps=20" in md
    assert "pretrain train configs/recipe/roberta.yaml --preset smoke train.seed=42 train.max_steps=20 name=toy/a run_dir=runs/toy/a" in md
    png = (results / "smoke" / "toy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not list((results / "smoke").glob("*.tmp"))


def test_rebuild_is_deterministic_and_covers_every_ablation(fabricated: Path):
    runs, results = fabricated / "runs", fabricated / "results"
    _write_record(runs / "other", name="other", arms=("a", "b"))
    paths = rebuild_tables(runs, results)
    assert sorted(p.name for p in paths) == sorted(["other.md", "other.csv", "other.png", "toy.md", "toy.csv", "toy.png", "README.md"])
    first = (results / "smoke" / "toy.md").read_text(), (results / "smoke" / "toy.csv").read_text()
    rebuild_tables(runs, results)
    assert ((results / "smoke" / "toy.md").read_text(), (results / "smoke" / "toy.csv").read_text()) == first
    assert "| `a` | not run |" in (results / "smoke" / "other.md").read_text()


def test_started_run_without_metrics_is_unfinished(tmp_path: Path):
    run = tmp_path / "r"
    run.mkdir()
    (run / rundir.CONFIG).write_text("train:\n  max_steps: 7\n")
    assert collect_arm("x", run).status == "unfinished, step 0/7"
    assert collect_arm("y", tmp_path / "missing").status == "not run"


def test_no_ablations_is_a_user_error(tmp_path: Path, capsys):
    with pytest.raises(UserError, match=r"no ablations found: looked for .*empty/\*/ablation\.yaml"):
        rebuild_tables(tmp_path / "empty", tmp_path / "results")
    assert pretrain_main(["tables", "--runs", str(tmp_path / "empty"), "--results", str(tmp_path / "res")]) == 2
    assert "no ablations found" in capsys.readouterr().err
    assert not (tmp_path / "res").exists()


def test_corrupt_record_is_a_user_error(tmp_path: Path):
    abl = tmp_path / "runs" / "bad"
    abl.mkdir(parents=True)
    (abl / rundir.ABLATION).write_text("ablation: {name: bad}\npreset: smoke\nsource: x.yaml\nbogus: 1\n")
    with pytest.raises(UserError, match="unknown key 'bogus'"):
        rebuild_tables(tmp_path / "runs", tmp_path / "results")


@pytest.mark.parametrize("damage", [
    '{"status": "done", "steps"', "[1, 2]",
    # parsed, but a value of the wrong type: named, not a ValueError from deep inside
    '{"status": "done", "steps": 20, "tokens_seen": "x", "wall_time_s": 1.0}',
    '{"status": "done", "steps": true}',
    '{"status": "done", "final_eval": {"mlm_loss": "low"}}',
    '{"status": ["done"]}',
])
def test_damaged_summary_is_a_one_line_error_and_writes_no_table(fabricated: Path, capsys, damage):
    (fabricated / "runs" / "toy" / "a" / rundir.SUMMARY).write_text(damage)
    args = ["tables", "--runs", str(fabricated / "runs"), "--results", str(fabricated / "results")]
    assert pretrain_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {fabricated / 'runs' / 'toy' / 'a' / rundir.SUMMARY} is damaged") and err.count("\n") == 1
    assert "delete it and rerun" in err
    assert not (fabricated / "results").exists()


@pytest.mark.parametrize("line, n", [("garbage{", 2), ("[1, 2]", 2), ("5", 5)])
def test_damaged_metrics_line_is_named_unless_it_is_a_cut_last_line(fabricated: Path, capsys, line, n):
    f = fabricated / "runs" / "toy" / "a" / rundir.METRICS
    lines = f.read_text().splitlines()
    lines.insert(n - 1, line)
    f.write_text("\n".join(lines) + "\n")
    args = ["tables", "--runs", str(fabricated / "runs"), "--results", str(fabricated / "results")]
    assert pretrain_main(args) == 2
    assert capsys.readouterr().err == (f"error: {f}:{n}: not a JSON object ({line!r}); the trainer writes one per line: "
                                       "restore the file, or delete that line\n")
    assert not [p for p in (fabricated / "results").rglob("*") if p.is_file()]  # no table without its plot


def test_a_metrics_line_without_step_or_tokens_is_named(fabricated: Path, capsys):
    f = fabricated / "runs" / "toy" / "a" / rundir.METRICS
    lines = f.read_text().splitlines()
    bad = '{"kind": "eval", "step": 5, "mlm_loss": 4.2}'
    f.write_text("\n".join([lines[0], bad, *lines[1:]]) + "\n")
    args = ["tables", "--runs", str(fabricated / "runs"), "--results", str(fabricated / "results")]
    assert pretrain_main(args) == 2
    assert capsys.readouterr().err == (f"error: {f}:2: a 'eval' line without a numeric step and tokens_seen ({bad!r}); "
                                       "the trainer writes both: restore the file, or delete that line\n")


def test_damaged_config_of_an_unfinished_run_is_one_line(fabricated: Path, capsys):
    f = fabricated / "runs" / "toy" / "b" / rundir.CONFIG  # b has no summary: its max_steps come from here
    f.write_text("train: {max_steps: [\n")
    assert pretrain_main(["tables", "--runs", str(fabricated / "runs"), "--results", str(fabricated / "results")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {f}:") and "YAML syntax error" in err and err.count("\n") == 1, err


# ------------------------------------------------------------------ seeds, verdicts, warnings, summary


def _seeded_ablation(tmp_path: Path, losses, epochs=1.0, mode_static=False, claims=None, formats=None, min_steps=0,
                     tokenizers=None) -> Path:
    """runs/seeded: arms a and b, seeds 1 and 2, each finished with the given MLM losses
    ({arm: [loss seed 1, loss seed 2]}); ``formats``: arm → data.format in its config.yaml."""
    runs = tmp_path / "runs"
    abl = runs / "seeded"
    rec = {
        "ablation": {
            "name": "seeded", "title": "Seeded", "base": "../recipe/roberta.yaml", "seeds": [1, 2],
            "arms": {"a": {"data": {"masking": {"mode": "dynamic"}}}, "b": {"data": {"masking": {"mode": "static"}}}},
            "paper": {"source": "P", "columns": ["F1"], "rows": {"a": [80.0], "b": [79.0]}},
            "claims": claims if claims is not None else [{"text": "a beats b", "a": "a", "b": "b", "paper_column": "F1"}],
            "min_steps": min_steps,
        },
        "source": str(tmp_path / "gone.yaml"), "preset": "smoke", "overrides": [], "runs_root": "runs", "results_dir": "results",
    }
    abl.mkdir(parents=True)
    (abl / rundir.ABLATION).write_text(OmegaConf.to_yaml(OmegaConf.create(rec)))
    for arm, vals in losses.items():
        for seed, loss in zip((1, 2), vals):
            run = abl / arm / f"seed-{seed}"
            mode = "static" if (arm == "b" and mode_static) else "dynamic"
            _write_metrics(run, [_eval(20, loss, 0.1, 81920)])
            fmt = f"  format: {formats[arm]}\n  sentence_objective: none\n" if formats else ""
            fmt += f"  tokenizer:\n    kind: {tokenizers[arm]}\n    vocab_size: 512\n" if tokenizers else ""
            (run / rundir.CONFIG).write_text(
                f"name: x\ntrain:\n  max_steps: 20\ndata:\n{fmt}  masking:\n    mode: {mode}\n    dupe_factor: 2\n    copies: remask\n")
            write_json_atomic(run / rundir.SUMMARY, {**SUMMARY_A, "epochs": epochs, "final_eval": {"mlm_loss": loss, "perplexity": 1.0, "mlm_accuracy": 0.1}})
    return runs


def test_seeds_give_median_and_spread_and_a_verdict(tmp_path: Path):
    # a clearly lower loss than b, beyond either arm's spread: the paper's a > b on F1 agrees
    runs = _seeded_ablation(tmp_path, {"a": [5.0, 5.2], "b": [6.0, 6.1]})
    rebuild_tables(runs, tmp_path / "results")
    rows = _read_csv(tmp_path / "results" / "smoke" / "seeded.csv")
    assert float(rows["a"]["held-out MLM loss"]) == pytest.approx(5.1) and rows["a"]["seeds done"] == "2"
    assert float(rows["a"]["MLM loss spread (max − min)"]) == pytest.approx(0.2)
    md = (tmp_path / "results" / "smoke" / "seeded.md").read_text()
    assert "| a beats b | `a` − `b` | +1.00 F1 (`a` better) | -0.9500 MLM loss, held-out (`a` better) | 0.2000 | **agrees** |" in md
    assert "pretraining seeds 1, 2" in md and "train.seed=2 name=seeded/b/seed-2 run_dir=runs/seeded/b/seed-2" in md
    summary = (tmp_path / "results" / "README.md").read_text()
    assert "| [smoke/seeded.md](smoke/seeded.md) | a beats b | `a` − `b` | +1.00 F1 (`a` better) | **agrees**; by held-out MLM loss (no fine-tuned F1 of ours) |" in summary


@pytest.mark.parametrize("losses, verdict", [
    ({"a": [6.0, 6.1], "b": [5.0, 5.1]}, "**opposite**"),
    ({"a": [5.0, 5.5], "b": [5.2, 5.3]}, "**inconclusive** (within the spread over seeds)"),
    ({"a": [5.0], "b": [6.0]}, "**inconclusive** (one seed: no spread to judge by)"),
    # a diverged seed: no arm is better, whatever the order of the seeds
    ({"a": [float("nan"), 5.0], "b": [6.0, 6.1]}, "| +nan MLM loss, held-out | nan | **inconclusive** (a value is NaN or inf: a diverged run) |"),
    ({"a": [5.0, float("inf")], "b": [6.0, 6.1]}, "**inconclusive** (a value is NaN or inf: a diverged run)"),
])
def test_verdict_opposite_and_inconclusive(tmp_path: Path, losses, verdict):
    runs = _seeded_ablation(tmp_path, losses)
    rebuild_tables(runs, tmp_path / "results")
    assert verdict in (tmp_path / "results" / "smoke" / "seeded.md").read_text()


def test_held_out_losses_of_arms_with_different_formats_do_not_make_a_verdict(tmp_path: Path):
    """Arms of two input formats are scored on different validation rows (RoBERTa Table 2):
    far apart as their losses are, the verdict is inconclusive and names no better arm."""
    runs = _seeded_ablation(tmp_path, {"a": [5.0, 5.01], "b": [6.0, 6.01]}, formats={"a": "doc_sentences", "b": "full_sentences"})
    rebuild_tables(runs, tmp_path / "results")
    md = (tmp_path / "results" / "smoke" / "seeded.md").read_text()
    assert ("| a beats b | `a` − `b` | +1.00 F1 (`a` better) | -1.0000 MLM loss, held-out | 0.0100 | **inconclusive** "
            "(held-out sets differ in format, sentence objective or tokenizer: MLM losses do not compare) |") in md
    runs = _seeded_ablation(tmp_path / "same", {"a": [5.0, 5.01], "b": [6.0, 6.01]}, formats={"a": "doc_sentences", "b": "doc_sentences"})
    rebuild_tables(runs, tmp_path / "same" / "results")
    assert "**agrees** |" in (tmp_path / "same" / "results" / "smoke" / "seeded.md").read_text()
    # one format, two tokenizers: losses per token of different vocabularies do not compare either
    runs = _seeded_ablation(tmp_path / "tok", {"a": [5.0, 5.01], "b": [6.0, 6.01]}, formats={"a": "doc_sentences", "b": "doc_sentences"},
                            tokenizers={"a": "bpe", "b": "wordpiece"})
    rebuild_tables(runs, tmp_path / "tok" / "results")
    assert "sentence objective or tokenizer: MLM losses do not compare) |" in (tmp_path / "tok" / "results" / "smoke" / "seeded.md").read_text()


def test_static_masks_never_reused_warn_and_make_the_verdict_inconclusive(tmp_path: Path):
    # 3 epochs over 2 static copies (remask): each mask seen 1.5 times < 2
    runs = _seeded_ablation(tmp_path, {"a": [5.0, 5.2], "b": [6.0, 6.1]}, epochs=3.0, mode_static=True)
    rebuild_tables(runs, tmp_path / "results")
    md = (tmp_path / "results" / "smoke" / "seeded.md").read_text()
    assert "**Warning:** run `b/seed-1` shows each static mask 1.50 times on average (3.00 epochs over dupe_factor 2" in md
    assert "**inconclusive** (the run cannot show the effect: see the warning)" in md
    # 4 epochs: 2 views, no warning
    runs2 = _seeded_ablation(tmp_path / "more", {"a": [5.0, 5.2], "b": [6.0, 6.1]}, epochs=4.0, mode_static=True)
    rebuild_tables(runs2, tmp_path / "more" / "results")
    assert "Warning" not in (tmp_path / "more" / "results" / "smoke" / "seeded.md").read_text()


def test_arms_with_fewer_steps_than_min_steps_warn_and_withhold_the_verdict(tmp_path: Path):
    # every run finished after 20 steps (SUMMARY_A); the losses alone would say "agrees"
    runs = _seeded_ablation(tmp_path, {"a": [5.0, 5.2], "b": [6.0, 6.1]}, min_steps=21)
    rebuild_tables(runs, tmp_path / "results")
    md = (tmp_path / "results" / "smoke" / "seeded.md").read_text()
    assert md.count("fewer than the 21 this ablation's min_steps asks for") == 4
    assert "**Warning:** run `a/seed-1` finished after 20 optimizer steps" in md
    assert "**inconclusive** (the run cannot show the effect: see the warning)" in md
    summary = (tmp_path / "results" / "README.md").read_text()
    assert "**inconclusive** (the run cannot show the effect: see the warning)" in summary
    runs = _seeded_ablation(tmp_path / "enough", {"a": [5.0, 5.2], "b": [6.0, 6.1]}, min_steps=20)
    rebuild_tables(runs, tmp_path / "enough" / "results")
    md = (tmp_path / "enough" / "results" / "smoke" / "seeded.md").read_text()
    assert "Warning" not in md and "**agrees** |" in md


def test_min_steps_of_the_ablation_file_applies_to_a_record_made_before_it(tmp_path: Path):
    """min_steps judges the table, like the claims: set in the ablation file after the runs
    finished, it applies to their table without retraining."""
    from pretrain.ablations.spec import load_record
    from pretrain.ablations.tables import current_claims

    runs = _seeded_ablation(tmp_path, {"a": [5.0, 5.2], "b": [6.0, 6.1]})
    rec = load_record(runs / "seeded")
    assert rec.ablation.min_steps == 0
    src = tmp_path / "seeded.yaml"
    src.write_text(OmegaConf.to_yaml(OmegaConf.create({**OmegaConf.to_container(rec.ablation), "min_steps": 250})))
    rec.source = str(src)
    assert current_claims(rec).ablation.min_steps == 250


def test_summary_states_the_training_time_counting_a_copied_run_once(tmp_path: Path):
    import shutil

    runs = _seeded_ablation(tmp_path, {"a": [5.0, 5.2], "b": [6.0, 6.1]})
    shutil.copytree(runs / "seeded", runs / "copy")
    # one run of the copy unfinished: not counted; one retrained (other logs): counted apart
    (runs / "copy" / "a" / "seed-1" / rundir.SUMMARY).unlink()
    _write_metrics(runs / "copy" / "b" / "seed-2", [_eval(20, 6.3, 0.1, 81920)])
    # fine-tuning jobs: one with its time (1.5 h), one from before the time was recorded
    scores = {"main_metric": "dev_accuracy", "score": 0.5, "num_seeds": 1, "chosen_lr": 1e-4}
    for job, extra in (("sst2", {"wall_time_s": 5400.0}), ("sst2-random-init", {})):
        (runs / "seeded" / "a" / "seed-1" / "finetune" / job).mkdir(parents=True)
        write_json_atomic(runs / "seeded" / "a" / "seed-1" / "finetune" / job / "scores.json", {**scores, **extra})
    (runs / "copy" / "b" / "seed-1" / "finetune" / "cola").mkdir(parents=True)
    write_json_atomic(runs / "copy" / "b" / "seed-1" / "finetune" / "cola" / "scores.json", scores)
    rebuild_tables(runs, tmp_path / "results")
    summary = (tmp_path / "results" / "README.md").read_text()
    hours = 95.25 / 3600
    assert f"| `copy` | 3 | {3 * hours:.2f} h on hardware not recorded | 1 job, time not recorded |" in summary
    assert f"| `seeded` | 4 | {4 * hours:.2f} h on hardware not recorded | 1.50 h (+ 1 job without a recorded time) |" in summary
    # the total: copy/b/seed-1 is seeded/b/seed-1 (same logs), its cola job counted once
    assert f"| 5 | {5 * hours:.2f} h on hardware not recorded | 1.50 h (+ 2 jobs without a recorded time) |" in summary


def test_summary_lists_unrun_ablations_and_keeps_the_rest_of_the_readme(tmp_path: Path):
    runs = _seeded_ablation(tmp_path, {"a": [5.0, 5.2], "b": [6.0, 6.1]})
    abl_dir = tmp_path / "ablations"
    abl_dir.mkdir()
    (abl_dir / "later.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create({
        "name": "later", "title": "Later", "base": "x.yaml", "arms": {"x": {}, "y": {}},
        "paper": {"source": "Q", "columns": ["acc"], "rows": {"x": [1.0], "y": [2.0]}},
        "claims": [{"text": "y beats x", "a": "y", "b": "x", "paper_column": "acc"}]})))
    results = tmp_path / "results"
    results.mkdir()
    (results / "README.md").write_text("# results/\n\nHand-written text.\n")
    rebuild_tables(runs, results, abl_dir)
    first = (results / "README.md").read_text()
    assert first.startswith("# results/\n\n<!-- verdict summary") and first.endswith("Hand-written text.\n")
    assert "| `later` | y beats x | `y` − `x` | +1.00 acc (`y` better) | not run yet |" in first
    rebuild_tables(runs, results, abl_dir)
    assert (results / "README.md").read_text() == first  # replaced in place, not stacked


def test_claims_are_checked_at_load(tmp_path: Path):
    from pretrain.ablations.spec import load_ablation

    base = {"name": "x", "title": "X", "base": "b.yaml", "arms": {"a": {}, "b": {}},
            "paper": {"source": "Q", "columns": ["acc"], "rows": {"a": [1.0], "b": [None]}}}
    for claim, msg in [({"text": "t", "a": "a", "b": "zz", "paper_column": "acc"}, r"claims\[0\] names arm 'zz'"),
                       ({"text": "t", "a": "a", "b": "b", "paper_column": "F1"}, r"paper_column 'F1' is not in paper.columns"),
                       ({"text": "t", "a": "a", "b": "b", "paper_column": "acc"}, r"the paper row has no number there"),
                       ({"text": "t", "a": "a", "b": "b", "paper_column": "acc", "metric": "bleu"}, r"metric")]:
        p = tmp_path / "x.yaml"
        p.write_text(OmegaConf.to_yaml(OmegaConf.create({**base, "claims": [claim]})))
        with pytest.raises(UserError, match=msg):
            load_ablation(p)
    p.write_text(OmegaConf.to_yaml(OmegaConf.create({**base, "min_steps": -1})))
    with pytest.raises(UserError, match=r"min_steps=-1 must be >= 0"):
        load_ablation(p)


def test_unequal_real_tokens_are_named_without_withholding_the_verdict():
    from pretrain.ablations.arm_results import ArmResult
    from pretrain.ablations.verdicts import token_warnings

    same = [ArmResult("a", "done", tokens_seen=1000), ArmResult("b", "done", tokens_seen=1090)]
    assert token_warnings(same) == []
    short = [ArmResult("a", "done", tokens_seen=1000), ArmResult("b", "done", tokens_seen=620), ArmResult("c", "not run")]
    (w,) = token_warnings(short)
    assert "(`a` 1,000, `b` 620)" in w and "sequence slots" in w
    (w,) = token_warnings(short, "real_tokens")
    assert "(`a` 1,000, `b` 620)" in w and "mean row length" in w and "sequence slots" not in w
    # equal training FLOPs means unequal tokens on purpose (ELECTRA vs MLM)
    assert token_warnings(short, "train_flops") == []


def test_note_says_whether_arms_share_validation_data():
    """Arms that set data.format or data.sentence_objective (ALBERT's NSP vs SOP) have
    validation splits of their own; the table's note must not claim one shared split."""
    from types import SimpleNamespace

    from pretrain.ablations.tables import _shares_validation, _validation_difference

    masking = SimpleNamespace(arms={"static": {"data": {"masking": {"mode": "static"}}}, "dynamic": {"data": {"masking": {"mode": "dynamic"}}}})
    objective = SimpleNamespace(arms={"nsp": {"data": {"sentence_objective": "nsp"}}, "sop": {"data": {"sentence_objective": "sop"}}})
    trainonly = SimpleNamespace(arms={"a": {"train": {"seed": 1}}, "b": None})
    assert _shares_validation(masking) and _shares_validation(trainonly) and not _shares_validation(objective)
    # the recipes ablation: other tokenizers, so other tokens; the note must not say the tokenizer is shared
    tokenizers = SimpleNamespace(arms={"roberta": {}, "bert": {"data": {"tokenizer": {"kind": "wordpiece"}, "format": "segment_pair"}}})
    assert not _shares_validation(tokenizers)
    assert "different tokenizers" in _validation_difference(tokenizers)
    assert "tokenizer and mask seed are shared" in _validation_difference(objective)


def test_an_ablation_of_your_own_needs_no_paper_section(tmp_path: Path):
    """A user's ablation with no published numbers: ``paper`` may be left out; the table
    then has only our columns and no paper note."""
    from pretrain.ablations.spec import load_ablation

    p = tmp_path / "mine.yaml"
    p.write_text(OmegaConf.to_yaml(OmegaConf.create(
        {"name": "mine", "title": "Mine", "base": "b.yaml", "arms": {"a": {}, "b": {}}})))
    abl = load_ablation(p)
    assert (abl.paper.source, list(abl.paper.columns), dict(abl.paper.rows)) == ("", [], {})

    runs = _seeded_ablation(tmp_path, {"a": [5.0, 5.2], "b": [6.0, 6.1]}, claims=[])
    rec_path = runs / "seeded" / rundir.ABLATION
    rec = OmegaConf.load(rec_path)
    del rec.ablation["paper"]
    rec_path.write_text(OmegaConf.to_yaml(rec))
    rebuild_tables(runs, tmp_path / "results")
    md = (tmp_path / "results" / "smoke" / "seeded.md").read_text()
    assert "(paper)" not in md and "Paper numbers" not in md and "`a` | done" in md


def test_training_flops_and_hardware_come_from_each_run_s_config_and_summary(tmp_path: Path):
    """The FLOPs column is steps done × global batch × one full-length sequence's training FLOPs
    of the run's own config (the runner's train_flops budget); the hardware line names what
    summary.json recorded, arm by arm when the arms differ."""
    from pretrain.ablations.arm_results import ArmResult
    from pretrain.ablations.tables import hardware_line
    from pretrain.config import load_run_config, to_dict
    from pretrain.models.encoder import build_model
    from pretrain.tasks import train_flops_per_sequence

    repo = Path(__file__).resolve().parents[1]
    cfg = load_run_config(repo / "configs" / "recipe" / "roberta.yaml", "smoke", ["model.vocab_size=1000"])
    runs = {}
    for name, steps, hw in (("a", 20, "1 × CPU (Some CPU), 1 thread"), ("b", 40, "2 × NVIDIA X")):
        run = tmp_path / name
        run.mkdir()
        (run / rundir.CONFIG).write_text(OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))
        write_json_atomic(run / rundir.SUMMARY, {**SUMMARY_A, "steps": steps, "hardware": hw})
        runs[name] = collect_arm(name, run)
    a, b = runs["a"], runs["b"]
    per_seq = train_flops_per_sequence(cfg)
    assert a.train_flops == 20 * cfg.train.global_batch_size * per_seq and b.train_flops == 2 * a.train_flops
    # at least 6 FLOPs per non-embedding weight per token (forward + backward), T tokens a sequence
    model = build_model(cfg.model, cfg.objective.sentence)
    blocks = model.encoder.block_parameters(applied=True)
    assert per_seq > 6 * blocks * cfg.data.max_seq_length
    assert a.hardware == "1 × CPU (Some CPU), 1 thread"
    assert hardware_line([a]) == "Hardware: every finished arm trained on 1 × CPU (Some CPU), 1 thread."
    assert hardware_line([a, b]) == "Hardware: `a` 1 × CPU (Some CPU), 1 thread; `b` 2 × NVIDIA X."
    old = ArmResult("c", "done")
    assert hardware_line([old]).startswith("Hardware: not recorded")
    assert hardware_line([a, old]) == "Hardware: `a` 1 × CPU (Some CPU), 1 thread (not recorded for `c`)."
    # a run whose config no longer composes shows no FLOPs instead of stopping the table
    (tmp_path / "a" / rundir.CONFIG).write_text("train:\n  no_such_key: 1\n")
    assert collect_arm("a", tmp_path / "a").train_flops is None


def test_hardware_names_the_device_kind_and_rank_count():
    import torch

    from pretrain.training.hardware import cpu_features, cpu_name, describe_hardware

    text = describe_hardware(2)
    if torch.cuda.is_available():
        assert text.startswith("2 × ") and "CPU" not in text
    else:
        # the vector ISA is named too: one model name ("AMD EPYC") covers CPUs of several speeds
        assert cpu_features().split(" + ")[0] == torch.backends.cpu.get_cpu_capability()
        assert text.startswith(f"2 × CPU ({cpu_name()}; {cpu_features()}), {torch.get_num_threads()} thread") and cpu_name()
