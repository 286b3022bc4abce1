"""``pretrain compare``: parameter counts against a hand count, shapes composed from the
recipes, the int8 copy, the table's "not run" cells and scores read from finished jobs,
the int8 re-score of kept fine-tuned weights, atomic writes and one-line errors. Tiny shapes
and one timed run: nothing here asserts a timing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from common.errors import UserError
from pretrain.comparison import measure, report, scores, shapes
from pretrain.config import ModelConfig
from conftest import write_finished_run

REPO = Path(__file__).resolve().parents[1]


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                max_position_embeddings=20, type_vocab_size=2)
    return ModelConfig(**{**base, **kw})


def test_parameter_counts_match_a_hand_count():
    V, H, L, F, P = 50, 8, 2, 16, 20
    layer = 4 * (H * H + H) + 2 * H + (H * F + F) + (F * H + H) + 2 * H  # attention + LN, feed-forward + LN
    head = (H * H + H) + (H * 2 + 2)  # pooler, two-class classifier
    bert = measure.parameter_counts(measure.classifier(tiny()))
    assert bert == {"total": V * H + P * H + 2 * H + 2 * H + L * layer + head, "non_embedding": 2 * H + 2 * H + L * layer + head}
    # DistilBERT: no token-type table
    assert measure.parameter_counts(measure.classifier(tiny(type_vocab_size=0, family="distilbert")))["total"] == \
        bert["total"] - 2 * H
    # ALBERT: E=4 tables, an E->H projection, one shared block
    E = 4
    albert = measure.parameter_counts(measure.classifier(tiny(embedding_size=E, sharing="all", family="albert")))
    emb = V * E + P * E + 2 * E + 2 * E + (E * H + H)
    assert albert == {"total": emb + layer + head, "non_embedding": emb - V * E - P * E + layer + head}


def test_shapes_are_the_recipes_composed_at_the_preset_and_at_paper_scale():
    from pretrain.config import load_run_config

    bert = load_run_config(REPO / "configs" / "recipe" / "bert.yaml", "smoke").model
    s = shapes.compose("distilbert", "smoke", REPO / "configs")
    assert (s.cfg.num_hidden_layers, s.cfg.hidden_size, s.cfg.vocab_size, s.cfg.type_vocab_size, s.cfg.family) == \
        (bert.num_hidden_layers // 2, bert.hidden_size, bert.vocab_size, 0, "distilbert")
    base = {m: shapes.compose(m, shapes.BASE, REPO / "configs") for m in shapes.MODELS}
    assert {m: (b.cfg.num_hidden_layers, b.cfg.hidden_size, b.cfg.vocab_size) for m, b in base.items()} == {
        "bert": (12, 768, 30522), "roberta": (12, 768, 50265), "albert": (12, 768, 30000),
        "distilbert": (6, 768, 30522), "electra": (12, 768, 30522)}
    assert base["electra"].generator.hidden_size == 256  # Base: 1/3 of 768
    assert measure.parameter_counts(measure.classifier(base["distilbert"].cfg))["total"] == 66_955_010
    assert measure.parameter_counts(measure.classifier(base["bert"].cfg))["total"] == 109_483_778
    with pytest.raises(UserError, match="unknown preset"):
        shapes.compose("bert", "nosuch", REPO / "configs")


def test_int8_copy_runs_and_is_smaller_on_disk(tmp_path):
    cfg = tiny(hidden_size=64, intermediate_size=256, num_attention_heads=4)
    model = measure.classifier(cfg)
    q = measure.quantize_int8(model)
    assert isinstance(model.encoder.ffn[0].intermediate, torch.nn.Linear)  # the original is left float32
    assert type(q.encoder.ffn[0].intermediate).__module__.startswith("torch.ao.nn.quantized.dynamic")
    x = measure.random_inputs(cfg, 2, 16)
    with torch.inference_mode():
        assert (q(**x) - model(**x)).abs().max() < 0.1  # close, not equal
    assert measure.torch_save_bytes(q, tmp_path) < 0.5 * measure.safetensors_bytes(model, tmp_path)
    assert list(tmp_path.iterdir()) == []  # the temporary files are removed
    t = measure.time_forward(q, cfg, 1, 16, repeats=2, warmup=0)
    assert len(t.runs) == 2 and t.calls_per_run >= 1 and t.ms_per_sequence > 0


def _table(tmp_path, *args) -> tuple:
    from pretrain.cli import main

    out = tmp_path / "cmp"
    assert main(["compare", "--presets", "smoke", "--models", "bert", "distilbert", "--repeats", "1", "--warmup", "0",
                 "--out", str(out), *args]) == 0
    return (out.parent / "cmp.md").read_text(), list(csv.DictReader((out.parent / "cmp.csv").open()))


def _section(md: str, title: str) -> str:
    return md.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_table_says_not_run_without_scores(tmp_path):
    md, rows = _table(tmp_path)
    assert md.count("`pretrain compare --presets smoke --models bert distilbert --repeats 1") == 1
    assert "torch.get_num_threads()" in md and "Load average (1/5/15 min) before:" in md
    for title in ("Downstream scores", "Dynamic int8: score change"):
        cells = [line for line in _section(md, title).splitlines() if line.startswith("| smoke |")]
        assert cells and all("not run" in c and "no runs given" in c for c in cells)
    assert "retains 97%" in md and "not run (needs both models fine-tuned on a task)" in md
    assert [(r["model"], r["variant"]) for r in rows] == [("bert", "fp32"), ("bert", "int8"), ("distilbert", "fp32"),
                                                         ("distilbert", "int8")]
    assert int(rows[1]["disk_bytes"]) < int(rows[0]["disk_bytes"]) and float(rows[0]["speedup_vs_bert_b1"]) == 1.0
    assert not any(k.endswith("_score") for k in rows[0])


def _fake_run(root: Path, cfg, task_scores: dict) -> Path:
    """A run directory with the given model shape and finished jobs' scores.json files."""
    from omegaconf import OmegaConf

    run = root / "bert"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml({"model": OmegaConf.to_container(OmegaConf.structured(cfg))}))
    for task, score in task_scores.items():
        job = run / "finetune" / task
        job.mkdir(parents=True)
        (job / "scores.json").write_text(json.dumps({"task": task, "main_metric": "dev_accuracy", "score": score,
                                                     "num_seeds": 3, "chosen_lr": 1e-4, "random_init": False}))
    return run


def test_scores_come_from_finished_jobs_of_a_run_of_the_same_shape(tmp_path):
    cfg = shapes.compose("bert", "smoke", REPO / "configs").cfg
    run = _fake_run(tmp_path / "runs", cfg, {"sst2": 0.8125})
    md, rows = _table(tmp_path, "--runs", str(tmp_path / "runs"))
    assert "81.25 (dev_accuracy, median of 3, lr 0.0001)" in _section(md, "Downstream scores")
    assert float(rows[0]["sst2_score"]) == 0.8125 and rows[2]["sst2_score"] == ""  # DistilBERT has no run
    int8 = _section(md, "Dynamic int8: score change")
    assert "kept no weights (fine-tune with keep_weights=true)" in int8
    assert "no finished job" not in int8.split("| smoke | BERT |")[1].splitlines()[0]
    assert "Random-init control" not in md and rows[0]["sst2_control_score"] == ""
    # the run's random-init control job is shown beside its score (and is not taken for its score)
    job = run / "finetune" / "sst2-random-init"
    job.mkdir()
    (job / "scores.json").write_text(json.dumps({"task": "sst2", "main_metric": "dev_accuracy", "score": 0.875,
                                                 "num_seeds": 3, "chosen_lr": 3e-4, "random_init": True}))
    (job / "finetune.yaml").write_text("train:\n  precision: bf16\n")
    md, rows = _table(tmp_path, "--runs", str(tmp_path / "runs"))
    assert "| smoke | BERT | sst2 (dev_accuracy) | 81.25 (?, lr 0.0001) | 87.50 (bf16, lr 0.0003) | -6.25 |" in md
    assert float(rows[0]["sst2_score"]) == 0.8125 and float(rows[0]["sst2_control_score"]) == 0.875
    # a run of another shape is not this shape's
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("hidden_size: 128", "hidden_size: 256"))
    md, _ = _table(tmp_path, "--run", f"bert={run}")
    assert "has model.hidden_size=256, this shape 128" in _section(md, "Downstream scores")


@pytest.mark.parametrize("damage, why", [('{"task": "sst2", "score"', "JSONDecodeError"),
                                         ('{"task": "sst2"}', "no main_metric, score, num_seeds, chosen_lr"),
                                         ('{"main_metric": "dev_accuracy", "score": "0.8", "num_seeds": 1, "chosen_lr": 1e-4}',
                                          "score is '0.8', not a number"),
                                         ('{"main_metric": "dev_accuracy", "score": 0.8, "num_seeds": 1, "chosen_lr": 1e-4, '
                                          '"per_lr": {"lr-0.0001": {"scores": {"1": {"dev_accuracy": "x"}}}}}',
                                          "per_lr.lr-0.0001.scores.1.dev_accuracy is 'x', not a number")])
def test_damaged_scores_json_is_one_line_naming_it(tmp_path, capsys, damage, why):
    from pretrain.cli import main

    cfg = shapes.compose("bert", "smoke", REPO / "configs").cfg
    run = _fake_run(tmp_path / "runs", cfg, {"sst2": 0.8125})
    (run / "finetune" / "sst2" / "scores.json").write_text(damage)
    assert main(["compare", "--models", "bert", "--presets", "smoke", "--repeats", "1", "--warmup", "0",
                 "--run", f"bert={run}", "--out", str(tmp_path / "cmp"), "--no-int8"]) == 2
    err = capsys.readouterr().err
    err = err[err.index("error: "):]  # after the measuring progress bar
    assert err.startswith(f"error: {run}/finetune/sst2/scores.json: not a scores.json of `pretrain finetune` ({why}")
    assert err.endswith("; rerun the job\n") and err.count("\n") == 1
    assert not list(tmp_path.glob("cmp*"))


def test_damaged_finetune_yaml_of_a_job_is_one_line(tmp_path):
    cfg = shapes.compose("bert", "smoke", REPO / "configs").cfg
    run = _fake_run(tmp_path / "runs", cfg, {"sst2": 0.8125})
    (run / "finetune" / "sst2" / "finetune.yaml").write_text("keep_weights: [\n")
    with pytest.raises(UserError, match=rf"^{run}/finetune/sst2/finetune.yaml:2:1: YAML syntax error"):
        scores.read_jobs(run)


def test_write_is_atomic_and_keeps_the_old_pair_when_rendering_fails(tmp_path, monkeypatch):
    md, cs = tmp_path / "t.md", tmp_path / "t.csv"
    md.write_text("old md")
    cs.write_text("old csv")
    ctx = report.Context("pretrain compare", "cpu", 1, "2", None, [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], 1, 0, 128)
    monkeypatch.setattr(report, "markdown", lambda rows, ctx: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        report.write([], ctx, tmp_path / "t")
    assert (md.read_text(), cs.read_text()) == ("old md", "old csv")
    monkeypatch.undo()
    assert report.write([], ctx, tmp_path / "t") == [md, cs]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.md"] and "pretrain compare" in md.read_text()


@pytest.mark.parametrize("args, message", [
    (["--repeats", "0"], "error: --repeats 0 must be >= 1"),
    (["--runs", "/nonexistent/runs"], "error: --runs /nonexistent/runs: no such directory"),
    (["--run", "bert"], "error: --run 'bert': expected MODEL=DIR"),
    (["--run", "gpt=/tmp"], "error: --run 'gpt=/tmp': unknown model 'gpt'"),
    (["--presets", "nosuch"], "error: unknown preset 'nosuch'"),
])
def test_bad_input_is_one_line_before_anything_is_measured(args, message, tmp_path, capsys):
    from pretrain.cli import main

    assert main(["compare", *args, "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory, data_dir):
    """A tiny BERT checkpoint (wordpiece tokenizer trained on SST-2 dev text) fine-tuned on
    SST-2 for one seed with keep_weights=true."""
    from data_prep.tokenizer import load_tokenizer, train_tokenizer
    from pretrain.config import load_run_config
    from pretrain.downstream import glue
    from pretrain.downstream.runner import finetune
    from pretrain.models.encoder import build_model

    root = tmp_path_factory.mktemp("cmp")
    text = [e.text_a for e in glue.load_examples("sst2", "dev", data_dir / "glue")]
    tok = train_tokenizer("wordpiece", text, 600, 2, root / "data" / "tokenizer.json")
    n = load_tokenizer(tok, "wordpiece").vocab_size
    cfg = load_run_config(REPO / "configs" / "recipe" / "bert.yaml", "smoke", [
        "model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2", "model.intermediate_size=64",
        "model.max_position_embeddings=64", f"model.vocab_size={n}", "data.max_seq_length=64", "name=tiny"])
    torch.manual_seed(0)
    run = root / "run"
    write_finished_run(run, cfg, build_model(cfg.model, cfg.objective.sentence).state_dict(), root / "data")
    fast = ["data.max_train_rows=32", "data.max_eval_rows=48", "data.max_length=32", "lrs=[3e-3]",
            "train.global_batch_size=8", "train.micro_batch_size=8", "epochs=4"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        finetune(str(run), "sst2", seeds=1, preset="smoke", overrides=[*fast, "keep_weights=true"])
    finally:
        torch.set_num_threads(threads)
    return run


def test_int8_rescore_evaluates_the_kept_weights_on_the_jobs_split(tiny_job):
    job = scores.read_jobs(tiny_job)["sst2"]
    r = scores.int8_rescore(job)
    assert not isinstance(r, str), r
    assert r.metric == "dev_accuracy" and len(r.fp32) == len(r.int8) == 1
    assert r.fp32_matches_job and r.fp32_median == pytest.approx(job.score, abs=1e-9)
    assert 0.0 <= r.int8_median <= 1.0 and (48 * r.int8_median) == pytest.approx(round(48 * r.int8_median))
    # the weights gone (a committed log), the re-score comes from the job's int8.json record
    import shutil

    shutil.rmtree(job.job / "lr-0.003" / "seed-1" / "checkpoints")
    again = scores.int8_rescore(job)
    assert (again.fp32, again.int8, again.fp32_matches_job) == (r.fp32, r.int8, True)
    record = job.job / scores.INT8_JSON
    good = record.read_text()
    for damage, expected in [("{", "unreadable int8 record"), ('{"task": "sst2"}', "unreadable int8 record"),
                             (good.replace('"lr": 0.003', '"lr": 0.001'), "made for sst2/dev_accuracy at lr 0.001"),
                             (json.dumps({**json.loads(good), "int8": []}), "1 float32 and 0 int8 scores")]:
        record.write_text(damage)
        with pytest.raises(UserError, match=expected) as e:
            scores.int8_rescore(job)
        assert str(record) in str(e.value) and "\n" not in str(e.value)
    # without the record either there is nothing to re-score
    record.unlink()
    assert scores.int8_rescore(job).startswith("not run: ") and "keep_weights=true" in scores.int8_rescore(job)


def test_the_regenerate_command_parses_back_to_the_same_options():
    import shlex

    from pretrain.cli import build_parser
    from pretrain.comparison.run import command_line

    cmd = command_line(["bert", "albert"], ["small", "base"], 4, 0, 1, "my runs", ["bert=runs/x y"], Path("out/t"), False)
    a = build_parser().parse_args(shlex.split(cmd)[1:])
    assert (a.command, a.models, a.presets, a.repeats, a.warmup, a.threads, a.runs, a.run, a.out, a.no_int8) == \
        ("compare", ["bert", "albert"], ["small", "base"], 4, 0, 1, "my runs", ["bert=runs/x y"], "out/t", True)


def test_a_task_with_several_jobs_scores_from_the_one_that_kept_its_weights(tmp_path):
    # an ablation's bf16 job and a float32 keep_weights job of the same task: the score and
    # its int8 change must come from one job, the one with weights to re-score
    def job(name, score, keep):
        d = tmp_path / "finetune" / name
        d.mkdir(parents=True)
        (d / "scores.json").write_text(json.dumps({"task": "sst2", "main_metric": "dev_accuracy", "score": score,
                                                   "num_seeds": 3, "chosen_lr": 3e-4}))
        (d / "finetune.yaml").write_text(f"keep_weights: {str(keep).lower()}\n")

    job("sst2", 0.70, False)
    job("sst2-fp32", 0.68, True)
    job("sst2-random-init", 0.71, False)
    picked = scores.read_jobs(tmp_path)["sst2"]
    assert picked.job.name == "sst2-fp32" and picked.score == 0.68
    (tmp_path / "finetune" / "sst2-fp32" / "finetune.yaml").write_text("keep_weights: false\n")
    assert scores.read_jobs(tmp_path)["sst2"].job.name == "sst2"
