"""The ablation runner: loading and checking ablation files, composing arms, fairness
checks, orchestration (with recording doubles of data build and trainer), and one
end-to-end smoke ablation with the real trainer."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from common.atomic import write_json_atomic
from common.errors import UserError
from data_prep.config import data_fingerprint
from pretrain.ablations.runner import (
    check_fair,
    compose_arms,
    load_ablation,
    run_ablation,
)
from pretrain.training import rundir
from conftest import child_env

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "recipe" / "roberta.yaml"
MASKING = REPO / "configs" / "ablation" / "roberta_masking.yaml"
NSP = REPO / "configs" / "ablation" / "bert_nsp.yaml"


def _ablation(tmp_path: Path, arms=None, paper=None, extra: str = "", name: str = "toy", seeds=None) -> Path:
    """Write an ablation YAML whose base is the repo's RoBERTa recipe."""
    doc = {
        "name": name,
        "title": "Toy",
        "base": str(RECIPE),  # absolute: Path(ablation).parent / abs == abs
        "arms": arms if arms is not None else {"static": {"data": {"masking": {"mode": "static"}}},
                                               "dynamic": {"data": {"masking": {"mode": "dynamic"}}}},
        "paper": paper if paper is not None else {"source": "RoBERTa Table 1", "columns": ["F1"], "rows": {"static": [78.3]}},
    }
    if seeds is not None:
        doc["seeds"] = seeds
    p = tmp_path / "abl.yaml"
    p.write_text(OmegaConf.to_yaml(OmegaConf.create(doc)) + extra)
    return p


# ------------------------------------------------------------------ loading and checks


def test_repo_ablation_loads_and_arms_differ_only_in_masking(tmp_path: Path):
    abl, cfgs = compose_arms(MASKING, "smoke", ["train.max_steps=7"], tmp_path / "runs")
    # two pretraining seeds per arm (RoBERTa Table 1's difference is small)
    assert abl.name == "roberta_masking" and list(cfgs) == ["static/seed-42", "static/seed-43", "dynamic/seed-42", "dynamic/seed-43"]
    s, d, s2 = cfgs["static/seed-42"], cfgs["dynamic/seed-42"], cfgs["static/seed-43"]
    assert (s.data.masking.mode, d.data.masking.mode) == ("static", "dynamic")
    assert s.run_dir == str(tmp_path / "runs" / "roberta_masking" / "static" / "seed-42") and s.name == "roberta_masking/static/seed-42"
    assert (s.train.seed, s2.train.seed, d.train.seed) == (42, 43, 42) and s.data.seed == s2.data.seed
    assert s.train.max_steps == 7 and s.model.hidden_size == 128  # CLI override and preset reach every arm
    check_fair(cfgs)
    bad = dict(cfgs)
    bad["dynamic/seed-42"] = cfgs["dynamic/seed-43"]
    with pytest.raises(UserError, match=r"arms use different train.seed"):
        check_fair(bad)


def test_evaluate_overrides_change_the_evaluate_section_and_bad_ones_are_one_line_errors(tmp_path: Path):
    runs = tmp_path / "runs"
    abl, _ = compose_arms(MASKING, "smoke", [], runs, ["evaluate.probes.blimp=true", "evaluate.probes.blimp_limit=5"])
    assert abl.evaluate.probes.blimp and abl.evaluate.probes.blimp_limit == 5
    assert list(abl.evaluate.tasks) == list(load_ablation(MASKING).evaluate.tasks)  # the rest as the file has it
    for bad, expected in [("evaluate.probes.blimpp=true", r"valid keys under evaluate.probes: blimp, blimp_limit"),
                          ("evaluate.probes.blimp_limit=0", r"blimp_limit=0 must be >= 1"),
                          ("evaluate.tasks=[sst2,nope]", r"evaluate.tasks has 'nope', not a fine-tuning task"),
                          ("evaluate.probes=", r"evaluate")]:
        with pytest.raises(UserError, match=expected) as e:
            compose_arms(MASKING, "smoke", [], runs, [bad])
        assert "\n" not in str(e.value) and "roberta_masking.yaml" in str(e.value)


def test_batch_size_arms_scale_batch_steps_and_lr_at_equal_tokens(tmp_path: Path):
    """RoBERTa Table 3: 8B for S/8 steps, 32B for S/32, lr ×7 and ×10 of the preset's."""
    path = REPO / "configs" / "ablation" / "roberta_batch_size.yaml"
    _abl, cfgs = compose_arms(path, "smoke", ["train.max_steps=192"], tmp_path / "runs")
    got = {a: (c.train.global_batch_size, c.train.max_steps, c.train.optimizer.lr, c.train.schedule.warmup_steps)
           for a, c in cfgs.items()}
    assert got == {"batch_1x": (32, 192, 1e-3, 20), "batch_8x": (256, 24, 7e-3, 2), "batch_32x": (1024, 6, 1e-2, 1)}
    check_fair(cfgs)
    with pytest.raises(UserError, match=r"arm .batch_32x.: train.max_steps=200 is not divisible by the batch multiple 32"):
        compose_arms(path, "smoke", [], tmp_path / "runs")


def test_every_repo_ablation_composes_at_every_preset(tmp_path: Path):
    """Each configs/ablation/*.yaml composes and is fair at smoke, small and medium (what
    `pretrain ablate` and `pretrain submit` check before anything runs)."""
    for path in sorted((REPO / "configs" / "ablation").glob("*.yaml")):
        if path.stem in ("distilbert_losses",):  # needs a trained teacher run to compose
            continue
        for preset in ("smoke", "small", "medium"):
            steps = {"smoke": ["train.max_steps=192"], "small": ["train.max_steps=992"], "medium": []}[preset]
            abl, cfgs = compose_arms(path, preset, steps if "batch_size" in path.name else [], tmp_path / "runs")
            # real_tokens needs the arms' built data (plan_arms builds them; medium's corpus is
            # not here): composed, its arms have equal sequence slots, which is what "tokens" checks.
            check_fair(cfgs, "tokens" if abl.budget == "real_tokens" else abl.budget)


def test_printed_arm_command_composes_the_same_config(tmp_path: Path):
    """The per-arm `pretrain train` line in the table must reproduce the arm exactly."""
    import shlex

    from pretrain.ablations.runner import AblationRecord, arm_command
    from pretrain.config import load_run_config, to_dict

    arms = {"a": {"data": {"masking": {"mode": "static", "mlm_probability": 0.2}}, "train": {"optimizer": {"betas": [0.9, 0.99]}}},
            "b": {}}
    p = _ablation(tmp_path, arms=arms, paper={"source": "x", "columns": [], "rows": {}})
    overrides = ["train.max_steps=30", "data.max_documents=5"]
    abl, cfgs = compose_arms(p, "smoke", overrides, "runs")
    rec = OmegaConf.structured(AblationRecord)
    rec.ablation, rec.source, rec.preset, rec.overrides = abl, str(p), "smoke", overrides
    for arm in arms:
        argv = shlex.split(arm_command(rec, arm))
        assert argv[:2] == ["pretrain", "train"] and argv[3] == "--preset"
        assert to_dict(load_run_config(argv[2], argv[4], argv[5:])) == to_dict(cfgs[arm])
    # with seeds: one command per (arm, seed), each the run's exact config
    p = _ablation(tmp_path, arms=arms, paper={"source": "x", "columns": [], "rows": {}}, seeds=[7, 8])
    abl, cfgs = compose_arms(p, "smoke", overrides, "runs")
    rec.ablation, rec.source = abl, str(p)
    for key in cfgs:
        arm, seed = key.split("/seed-")
        argv = shlex.split(arm_command(rec, arm, int(seed), key))
        assert to_dict(load_run_config(argv[2], argv[4], argv[5:])) == to_dict(cfgs[key])


def test_scaled_arm_command_reads_its_config_from_the_logs_it_is_made_from(tmp_path: Path):
    """A table regenerated from copied logs (results/runs) prints a scaled arm's batch, steps and
    lr from the copy: the runs directory the record names may be gone (another machine)."""
    import shlex

    from pretrain.ablations.runner import AblationRecord, arm_command
    from pretrain.config import load_run_config, to_dict

    p = _ablation(tmp_path, arms={"b1": {}, "b2": {}}, paper={"source": "x", "columns": [], "rows": {}},
                  extra="scale:\n  b2:\n    batch: 2\n    lr: 3.0\n")
    overrides = ["train.max_steps=30", "data.max_documents=5"]
    abl, cfgs = compose_arms(p, "smoke", overrides, tmp_path / "gone")
    rec = OmegaConf.structured(AblationRecord)
    rec.ablation, rec.source, rec.preset, rec.overrides = abl, str(p), "smoke", overrides
    rec.runs_root = str(tmp_path / "gone")
    logs = tmp_path / "copied" / "b2"
    logs.mkdir(parents=True)
    (logs / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(to_dict(cfgs["b2"]))))
    argv = shlex.split(arm_command(rec, "b2", logs=logs))
    assert "train.max_steps=15" in argv and f"run_dir={tmp_path / 'gone' / 'toy' / 'b2'}" in argv
    assert to_dict(load_run_config(argv[2], argv[4], argv[5:])) == to_dict(cfgs["b2"])
    # without the logs (the recorded directory is gone) the scaled keys cannot be printed
    assert "train.max_steps=15" not in shlex.split(arm_command(rec, "b2"))


def test_unknown_key_fails_at_load(tmp_path: Path):
    with pytest.raises(UserError, match=r"unknown key 'bogus'.*valid keys: arms, base, budget, claims, evaluate, min_steps, name, paper, scale, seeds, title"):
        load_ablation(_ablation(tmp_path, extra="bogus: 1\n"))
    p = _ablation(tmp_path, paper={"source": "x", "colums": ["F1"], "rows": {}})
    with pytest.raises(UserError, match=r"unknown key 'paper.colums'"):
        load_ablation(p)


def test_paper_row_arity_and_arm_names(tmp_path: Path):
    p = _ablation(tmp_path, paper={"source": "x", "columns": ["F1", "acc"], "rows": {"static": [78.3]}})
    with pytest.raises(UserError, match=r"paper row 'static' has 1 numbers but paper.columns has 2"):
        load_ablation(p)
    p = _ablation(tmp_path, paper={"source": "x", "columns": ["F1"], "rows": {"statik": [78.3]}})
    with pytest.raises(UserError, match=r"paper row 'statik' names no arm \(arms: static, dynamic\)"):
        load_ablation(p)


def test_arm_may_not_choose_its_run_dir(tmp_path: Path):
    with pytest.raises(UserError, match=r"arm 'a' sets 'run_dir'"):
        load_ablation(_ablation(tmp_path, arms={"a": {"run_dir": "/x"}}, paper={"source": "x", "columns": [], "rows": {}}))
    with pytest.raises(UserError, match=r"chooses each arm's name and run_dir"):
        compose_arms(_ablation(tmp_path), "smoke", ["name=foo"], tmp_path / "runs")
    with pytest.raises(UserError, match=r"^unknown preset 'smok' .* available: .*smoke"):
        compose_arms(_ablation(tmp_path), "smok", [], tmp_path / "runs")
    with pytest.raises(UserError, match=r"^override 'train.max_steps' must look like key=value"):
        compose_arms(_ablation(tmp_path), "smoke", ["train.max_steps"], tmp_path / "runs")


class _Recorder:
    """Doubles of ``data_prep.build.build`` and ``pretrain.training.loop.train`` that record
    their calls and write what the real ones would (a manifest; a finished run dir)."""

    def __init__(self, root: Path, val_sha=lambda data: "v" * 64):
        self.root, self.val_sha = root, val_sha
        self.builds, self.trains = [], []

    def build(self, cfg, force=False):
        self.builds.append(data_fingerprint(cfg))
        d = self.root / "data" / data_fingerprint(cfg)
        d.mkdir(parents=True, exist_ok=True)
        manifest = {"format_version": 1, "fingerprint": data_fingerprint(cfg),
                    "splits": {"validation": {"sha256": self.val_sha(cfg)}}}
        (d / "manifest.json").write_text(json.dumps(manifest))
        return d

    def train(self, cfg, resume=False):
        self.trains.append((cfg.name, resume))
        run = Path(cfg.run_dir)
        run.mkdir(parents=True, exist_ok=True)
        (run / rundir.CONFIG).write_text(OmegaConf.to_yaml(cfg))
        loss = 5.0 if cfg.data.masking.mode == "static" else 4.5
        ev = {"kind": "eval", "step": cfg.train.max_steps, "epoch": 1.0, "tokens_seen": 1000, "mlm_loss": loss,
              "perplexity": math.exp(loss), "mlm_accuracy": 0.2, "time_s": 1.0}
        (run / rundir.METRICS).write_text(json.dumps(ev) + "\n")
        summary = {"status": "done", "steps": cfg.train.max_steps, "tokens_seen": 1000, "epochs": 1.0, "wall_time_s": 6.0,
                   "final_eval": {k: ev[k] for k in ("mlm_loss", "perplexity", "mlm_accuracy")}}
        write_json_atomic(run / rundir.SUMMARY, summary)
        (run / rundir.CHECKPOINTS).mkdir(exist_ok=True)
        (run / rundir.CHECKPOINTS / "latest").write_text(f"step-{cfg.train.max_steps}")  # what fine-tuning loads
        return summary


@pytest.fixture()
def recorder(tmp_path: Path, monkeypatch) -> _Recorder:
    import data_prep.build
    import pretrain.training.loop

    rec = _Recorder(tmp_path)
    monkeypatch.setattr(data_prep.build, "build", rec.build)
    monkeypatch.setattr(pretrain.training.loop, "train", rec.train)  # its config checks stay real
    return rec


def test_bad_arm_override_trains_nothing(tmp_path: Path, recorder: _Recorder):
    p = _ablation(tmp_path, arms={"static": {"data": {"masking": {"mode": "static"}}},
                                  "dynamic": {"data": {"masking": {"mdoe": "dynamic"}}}})
    runs = tmp_path / "runs"
    with pytest.raises(UserError, match=r"arm 'dynamic'.*unknown key 'data.masking.mdoe'"):
        run_ablation(p, "smoke", [], runs_root=runs, results_dir=tmp_path / "results")
    assert not runs.exists() and not (tmp_path / "results").exists()
    assert recorder.builds == [] and recorder.trains == []
    # a value that fails validation (not just an unknown key) names the arm too
    p = _ablation(tmp_path, arms={"static": {"data": {"masking": {"mode": "sometimes"}}}}, paper={"source": "x", "columns": [], "rows": {}})
    with pytest.raises(UserError, match=r"arm 'static'.*masking.mode='sometimes'"):
        run_ablation(p, "smoke", [], runs_root=runs, results_dir=tmp_path / "results")
    assert not runs.exists() and recorder.trains == []


def test_trainer_config_checks_run_for_every_arm_first(tmp_path: Path, recorder: _Recorder):
    arms = {"short": {"train": {"schedule": {"warmup_steps": 5}}}, "long": {"train": {"schedule": {"warmup_steps": 20}}}}
    p = _ablation(tmp_path, arms=arms, paper={"source": "x", "columns": [], "rows": {}})
    with pytest.raises(UserError, match=r"^arm 'long': train.schedule.warmup_steps=20 must be in \[0, train.max_steps=20\)"):
        run_ablation(p, "smoke", ["train.max_steps=20"], runs_root=tmp_path / "runs", results_dir=tmp_path / "results")
    assert recorder.builds == [] and recorder.trains == [] and not (tmp_path / "runs").exists()


def test_token_budget_and_seed_checks(tmp_path: Path, recorder: _Recorder):
    same = {"a": {"train": {"max_steps": 100, "global_batch_size": 32}},
            "b": {"train": {"max_steps": 50, "global_batch_size": 64, "micro_batch_size": 64}}}
    _, cfgs = compose_arms(_ablation(tmp_path, arms=same, paper={"source": "x", "columns": [], "rows": {}}), "smoke", [], tmp_path / "r")
    check_fair(cfgs)  # 100×32 = 50×64 sequences of the same length
    unequal = {"a": {"train": {"max_steps": 100}}, "b": {"train": {"max_steps": 101}}}
    p = _ablation(tmp_path, arms=unequal, paper={"source": "x", "columns": [], "rows": {}})
    with pytest.raises(UserError, match=r"different token budgets .*a=100×32×128=409,600, b=101×32×128=413,696"):
        run_ablation(p, "smoke", [], runs_root=tmp_path / "runs", results_dir=tmp_path / "results")
    seeds = {"a": {"train": {"seed": 1}}, "b": {"train": {"seed": 2}}}
    p = _ablation(tmp_path, arms=seeds, paper={"source": "x", "columns": [], "rows": {}})
    with pytest.raises(UserError, match=r"different train.seed: a=1, b=2"):
        run_ablation(p, "smoke", [], runs_root=tmp_path / "runs", results_dir=tmp_path / "results")
    assert not (tmp_path / "runs").exists() and recorder.trains == []


def test_runner_builds_once_per_data_config_trains_resumes_and_skips(tmp_path: Path, recorder: _Recorder, capsys):
    arms = {"static": {"data": {"masking": {"mode": "static"}}},
            "dynamic": {"data": {"masking": {"mode": "dynamic"}}},
            "dynamic2": {"data": {"masking": {"mode": "dynamic"}}, "train": {"optimizer": {"lr": 5.0e-4}}}}
    p = _ablation(tmp_path, arms=arms)
    runs, results = tmp_path / "runs", tmp_path / "results"
    # dynamic2 was interrupted earlier: it has a checkpoint but no summary
    ck = runs / "toy" / "dynamic2" / rundir.CHECKPOINTS
    (ck / "step-0000010").mkdir(parents=True)
    (ck / "latest").write_text("step-0000010")
    paths = run_ablation(p, "smoke", ["train.max_steps=20", "train.schedule.warmup_steps=2"], runs_root=runs, results_dir=results)
    assert len(recorder.builds) == 2 and len(set(recorder.builds)) == 2  # dynamic and dynamic2 share data
    # every arm runs with --resume: one without a checkpoint starts fresh, none is overwritten
    assert recorder.trains == [("toy/static", True), ("toy/dynamic", True), ("toy/dynamic2", True)]
    out = capsys.readouterr().out
    assert "=== [1/3] toy / static: training" in out and "=== [3/3] toy / dynamic2: resuming from checkpoint" in out
    assert f"table: {results / 'smoke' / 'toy.md'}" in out
    assert [x.name for x in paths] == ["toy.md", "toy.csv", "toy.png"]
    md = (results / "smoke" / "toy.md").read_text()
    assert "| `static` | done | 5.0000 |" in md and "| `dynamic` | done | 4.5000 |" in md and "| F1 (paper) |" in md
    rec = OmegaConf.load(runs / "toy" / rundir.ABLATION)
    assert rec.preset == "smoke" and list(rec.overrides) == ["train.max_steps=20", "train.schedule.warmup_steps=2"] and rec.ablation.name == "toy"

    # rerun: everything done → nothing trained, table rewritten identically
    recorder.trains.clear()
    run_ablation(p, "smoke", ["train.max_steps=20", "train.schedule.warmup_steps=2"], runs_root=runs, results_dir=results)
    assert recorder.trains == [] and (results / "smoke" / "toy.md").read_text() == md
    assert "static: done, skipping" in capsys.readouterr().out
    # a rerun with other overrides would skip arms trained differently: refused
    with pytest.raises(UserError, match=r"records different arms, preset or overrides"):
        run_ablation(p, "smoke", ["train.max_steps=30", "train.schedule.warmup_steps=2"], runs_root=runs, results_dir=results)
    # evaluate.* overrides change the evaluation stages, not what an arm trains: accepted over
    # the finished arms, recorded apart from the run overrides and in the rerun command
    from pretrain.ablations.runner import plan_arms
    from pretrain.ablations.spec import ablate_command

    abl, cfgs, rec2, _ = plan_arms(p, "smoke", ["train.max_steps=20", "evaluate.probes.blimp=true",
                                              "train.schedule.warmup_steps=2"], runs, results)
    assert abl.evaluate.probes.blimp and list(rec2.overrides) == ["train.max_steps=20", "train.schedule.warmup_steps=2"]
    assert list(rec2.evaluate_overrides) == ["evaluate.probes.blimp=true"]
    assert cfgs["static"].train.max_steps == 20
    assert ablate_command(rec2).endswith("train.schedule.warmup_steps=2 evaluate.probes.blimp=true --runs "
                                         f"{runs} --results {results}")


def test_time_budget_stops_the_run_in_progress_and_a_rerun_finishes(tmp_path: Path, recorder: _Recorder, capsys):
    """--time-budget: the run in progress stops as on SIGTERM (the double raises the loop's
    Preempted after a checkpoint), no later arm starts, the table is written, Stopped exits 75
    and names the same command; the rerun resumes and the table equals an uninterrupted run's."""
    from pretrain.ablations.runner import Stopped
    from pretrain.training.preemption import Preempted

    real_train = recorder.train

    def budget_spent_in_static(cfg, resume=False):
        if cfg.name == "toy/static" and not (Path(cfg.run_dir) / rundir.CHECKPOINTS).exists():
            recorder.trains.append((cfg.name, resume))
            (Path(cfg.run_dir) / rundir.CHECKPOINTS / "step-0000007").mkdir(parents=True)
            raise Preempted(Path(cfg.run_dir), 7, "the 2h time budget")
        return real_train(cfg, resume)

    recorder.train = budget_spent_in_static
    import pretrain.training.loop

    pretrain.training.loop.train = budget_spent_in_static  # the fixture's monkeypatch restores the real one
    p = _ablation(tmp_path)
    runs, results = tmp_path / "runs", tmp_path / "results"
    with pytest.raises(Stopped) as stopped:
        run_ablation(p, "smoke", ["train.max_steps=20", "train.schedule.warmup_steps=2"], runs_root=runs, results_dir=results, time_budget="2h")
    assert stopped.value.code == 75 and recorder.trains == [("toy/static", True)]
    out = capsys.readouterr().out
    assert f"table: {results / 'smoke' / 'toy.md'}" in out
    assert (f"stopped by the 2h time budget ({runs / 'toy' / 'static'} checkpointed after step 7); continue with: "
            f"pretrain ablate {p} --preset smoke train.max_steps=20 train.schedule.warmup_steps=2 --runs {runs} --results {results} --time-budget 2h") in out
    assert "| `dynamic` | not run" in (results / "smoke" / "toy.md").read_text()

    run_ablation(p, "smoke", ["train.max_steps=20", "train.schedule.warmup_steps=2"], runs_root=runs, results_dir=results, time_budget="2h")
    assert recorder.trains[1:] == [("toy/static", True), ("toy/dynamic", True)]
    assert "static: resuming from checkpoint" in capsys.readouterr().out
    recorder.train = real_train
    pretrain.training.loop.train = real_train
    straight = tmp_path / "straight"
    run_ablation(p, "smoke", ["train.max_steps=20", "train.schedule.warmup_steps=2"], runs_root=straight / "runs", results_dir=straight / "results")
    # the tables name their runs directory; the rest is the same
    assert ((results / "smoke" / "toy.csv").read_text().replace(str(runs), "RUNS")
            == (straight / "results" / "smoke" / "toy.csv").read_text().replace(str(straight / "runs"), "RUNS"))


def test_spent_time_budget_starts_no_new_stage(tmp_path: Path, recorder: _Recorder, capsys):
    """A budget spent while a stage ran to its end: the next stage does not start."""
    from pretrain.ablations.runner import Stopped

    real_train = recorder.train

    def slow(cfg, resume=False):
        time.sleep(1.2)
        return real_train(cfg, resume)

    import pretrain.training.loop

    pretrain.training.loop.train = slow
    runs = tmp_path / "runs"
    with pytest.raises(Stopped) as stopped:
        run_ablation(_ablation(tmp_path), "smoke", [], runs_root=runs, results_dir=tmp_path / "results",
                     evaluate=False, time_budget="1s")
    assert stopped.value.code == 75 and recorder.trains == [("toy/static", True)]
    out = capsys.readouterr().out
    assert "=== [2/2] toy / dynamic: not started, the 1s time budget is spent" in out
    assert out.rstrip().endswith("--no-evaluate --time-budget 1s") and "| `dynamic` | not run" in (
        tmp_path / "results" / "smoke" / "toy.md").read_text()


@pytest.mark.parametrize("budget", ["2", "2 hours", "0m", "1h 30m"])
def test_bad_time_budget_is_one_line(tmp_path: Path, recorder: _Recorder, budget):
    with pytest.raises(UserError, match=r"^--time-budget '.*' is not a positive duration like 2h, 90m, 1h30m or 45s$"):
        run_ablation(_ablation(tmp_path), "smoke", [], runs_root=tmp_path / "runs", results_dir=tmp_path / "r",
                     time_budget=budget)
    assert recorder.trains == [] and not (tmp_path / "runs").exists()


def test_validation_data_must_match(tmp_path: Path, recorder: _Recorder):
    recorder.val_sha = lambda data: data.masking.mode * 10  # differs between the arms
    runs = tmp_path / "runs"
    with pytest.raises(UserError, match=r"validation data differ \(sha256 static=staticstatic, dynamic=dynamicdynam\)"):
        run_ablation(_ablation(tmp_path), "smoke", [], runs_root=runs, results_dir=tmp_path / "results")
    assert recorder.trains == [] and not runs.exists()


def test_distinct_data_cannot_share_output_dir(tmp_path: Path, recorder: _Recorder):
    with pytest.raises(UserError, match=r"need different data but share data.output_dir"):
        run_ablation(_ablation(tmp_path), "smoke", [f"data.output_dir={tmp_path / 'd'}"], runs_root=tmp_path / "runs",
                     results_dir=tmp_path / "results")
    assert recorder.builds == [] and recorder.trains == []


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_cheapest_repo_ablation_end_to_end(tmp_path: Path):
    """`pretrain ablate` on the cheapest ablation of the suite (bert_nsp: two arms reading one
    data build) with extra-small overrides, the real data build and trainer; the table carries
    the paper's numbers and a verdict per claim, the README summary lists every ablation of
    configs/ablation/, and `pretrain tables` rebuilds the identical table from the run
    directories; a rerun trains nothing. Its evaluation stages run for real, cut to one task
    (SST-2, 32 rows, one seed) plus the random-init control."""
    runs, results = tmp_path / "runs", tmp_path / "results"
    nsp = OmegaConf.load(NSP)
    nsp.base = str(NSP.parent / nsp.base)
    nsp.evaluate.tasks = ["sst2"]
    nsp.evaluate.overrides = ["lrs=[3e-3]", "seeds=[1]", "epochs=1", "data.max_train_rows=32", "data.max_eval_rows=32",
                              "data.max_length=32", "train.global_batch_size=8", "train.micro_batch_size=8"]
    abl_file = tmp_path / "bert_nsp.yaml"
    abl_file.write_text(OmegaConf.to_yaml(nsp))
    # Without the launcher variables an in-process train() of an earlier test left behind
    # (its MASTER_PORT is still listened on): the child picks its own world of one.
    env = child_env(DS_ACCELERATOR="cpu")
    tiny = ["data.max_documents=30", "data.tokenizer.vocab_size=800", "data.max_seq_length=64",
            "model.max_position_embeddings=66", "model.hidden_size=32", "model.num_hidden_layers=1",
            "model.num_attention_heads=2", "model.intermediate_size=64", "train.global_batch_size=8",
            "train.micro_batch_size=8", "train.max_steps=8", "train.schedule.warmup_steps=2",
            "train.eval_every=4", "train.checkpoint_every=4"]

    def pretrain(*args: str) -> subprocess.CompletedProcess:
        # cwd=REPO for configs/ablation/ (the summary lists them); the data cache goes to tmp_path
        return subprocess.run([sys.executable, "-m", "pretrain.cli", *args, f"data.output_dir={tmp_path / 'data'}"]
                              if args[0] == "ablate" else [sys.executable, "-m", "pretrain.cli", *args],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=900)

    r = pretrain("ablate", str(abl_file), "--preset", "smoke", *tiny, "--runs", str(runs), "--results", str(results))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "=== [1/5] bert_nsp / nsp: training" in r.stdout and "=== [3/5] bert_nsp / nsp / finetune sst2 (random-init" in r.stdout and f"table: {results / 'smoke' / 'bert_nsp.md'}" in r.stdout
    with open(results / "smoke" / "bert_nsp.csv", newline="") as f:
        rows = {row["arm"]: row for row in csv.DictReader(f)}
    assert list(rows) == ["nsp", "no_nsp", "random init (control)"]
    control = rows.pop("random init (control)")
    assert control["status"] == "done" and control["held-out MLM loss"] == "" and 0 <= float(control["SST-2 acc"]) <= 100
    for arm, row in rows.items():
        assert 0 <= float(row["SST-2 acc"]) <= 100 and row["SST-2 acc n"] == "1" and row["SST-2 acc (paper)"]
        assert row["status"] == "done", row
        for col in ("held-out MLM loss", "perplexity", "masked-token accuracy (%)", "epochs", "wall time (min)"):
            assert math.isfinite(float(row[col])), (arm, col, row[col])
        summary = rundir.read_summary(runs / "bert_nsp" / arm)
        assert float(row["held-out MLM loss"]) == summary["final_eval"]["mlm_loss"] and summary["steps"] == 8
    # the NSP arm reports its sentence accuracy; the arm without the loss has none
    assert 0 <= float(rows["nsp"]["NSP/SOP accuracy (%)"]) <= 100 and rows["no_nsp"]["NSP/SOP accuracy (%)"] == ""
    assert rows["nsp"]["QNLI acc (paper)"] == "88.4" and rows["no_nsp"]["QNLI acc (paper)"] == "84.9"
    md = (results / "smoke" / "bert_nsp.md").read_text()
    # one seed per arm: no spread, so every verdict is inconclusive and says why
    assert "| removing NSP hurts QNLI | `nsp` − `no_nsp` | +3.50 QNLI acc (`nsp` better) |" in md
    assert md.count("**inconclusive** (one seed: no spread to judge by)") == 2
    # `pretrain ablate` leaves any README alone; `pretrain tables` writes the verdict summary
    assert not (results / "README.md").exists()

    shutil.rmtree(results)
    r = pretrain("tables", "--runs", str(runs), "--results", str(results))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (results / "smoke" / "bert_nsp.md").read_text() == md
    readme = (results / "README.md").read_text()
    assert "[smoke/bert_nsp.md](smoke/bert_nsp.md) | removing NSP hurts QNLI" in readme
    assert "| `roberta_masking` | dynamic masking is comparable" in readme and "not run yet" in readme

    # rerunning the ablation trains nothing
    r = pretrain("ablate", str(abl_file), "--preset", "smoke", *tiny, "--runs", str(runs), "--results", str(results))
    assert r.returncode == 0 and r.stdout.count("done, skipping") == 5, r.stdout + r.stderr[-2000:]


@pytest.mark.slow
def test_time_budget_end_to_end_exits_75_and_the_rerun_matches_an_uninterrupted_run(tmp_path: Path):
    """`pretrain ablate --time-budget 3s` on a tiny two-arm ablation with the real trainer: the
    budget runs out during the start-up or a run (where depends on the machine's speed; both
    paths stop as SIGTERM would), exit 75 and the continue line; the rerun finishes and its
    table equals an uninterrupted run's except for the wall times."""
    env = child_env(DS_ACCELERATOR="cpu")
    tiny = ["data.max_documents=30", "data.tokenizer.vocab_size=800", "data.max_seq_length=64",
            "model.max_position_embeddings=66", "model.hidden_size=32", "model.num_hidden_layers=1",
            "model.num_attention_heads=2", "model.intermediate_size=64", "train.global_batch_size=8",
            "train.micro_batch_size=8", "train.max_steps=40", "train.schedule.warmup_steps=2",
            "train.eval_every=20", "train.checkpoint_every=20", f"data.output_dir={tmp_path / 'data'}"]

    def ablate(where: str, *budget: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pretrain.cli", "ablate", str(NSP), "--preset", "smoke", "--no-evaluate",
                               *tiny, "--runs", str(tmp_path / where / "runs"), "--results", str(tmp_path / where / "results"),
                               *budget], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)

    r = ablate("chunked", "--time-budget", "3s")
    assert r.returncode == 75, r.stdout[-2000:] + r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("stopped by the 3s time budget") and "--no-evaluate --time-budget 3s" in last and " ablate " in last, last
    assert (tmp_path / "chunked" / "results" / "smoke" / "bert_nsp.md").is_file()
    # rerun: the same command with a budget that covers the rest
    r = ablate("chunked", "--time-budget", "30m")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    r = ablate("straight")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]

    def rows(where: str):
        with open(tmp_path / where / "results" / "smoke" / "bert_nsp.csv", newline="") as f:
            return [{k: v for k, v in row.items() if k != "wall time (min)"} for row in csv.DictReader(f)]

    assert rows("chunked") == rows("straight") and rows("straight")[0]["status"] == "done"


# ------------------------------------------------------------------ evaluation stages

EVALUATE = '''evaluate:
  tasks: [sst2, stsb]
  overrides: ["lrs=[3e-4]", "seeds=[1,2]"]
  control: true
'''


class _FakeFinetune:
    """Double of ``pretrain.downstream.runner.finetune`` writing what the real one does to the
    default job directory: finetune.yaml (the composed config), scores.json and scores.md."""

    def __init__(self):
        self.calls = []

    def __call__(self, pretrained, task, seeds=None, preset=None, recipe=None, overrides=(), runs_root="runs",
                 random_init=False, tokenizer=None, out=None):
        from pretrain.downstream.config import load_finetune_config
        from pretrain.downstream.runner import job_directory, markdown, summarize

        self.calls.append((Path(pretrained).name, task, random_init))
        cfg = load_finetune_config("roberta", preset, overrides, {"pretrained": pretrained, "task": task, "random_init": random_init})
        job = job_directory({"run_dir": Path(pretrained)}, task, random_init, runs_root)
        job.mkdir(parents=True, exist_ok=True)
        (job / "finetune.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        metric = "dev_accuracy" if task == "sst2" else "dev_spearman"
        base = 0.5 if random_init else (0.8 if "dynamic" in str(pretrained) else 0.7)
        s = summarize(task, {3e-4: {1: {metric: base}, 2: {metric: base + 0.01}}})
        write_json_atomic(job / "scores.json", s)
        (job / "scores.md").write_text(markdown(task, pretrained, s))
        return s


@pytest.fixture()
def fake_finetune(monkeypatch, data_dir) -> _FakeFinetune:
    import pretrain.downstream.runner

    fake = _FakeFinetune()
    monkeypatch.setattr(pretrain.downstream.runner, "finetune", fake)
    return fake


def test_every_run_is_fine_tuned_after_pretraining_then_skipped_when_done(tmp_path: Path, recorder: _Recorder,
                                                                         fake_finetune: _FakeFinetune, capsys):
    p = _ablation(tmp_path, paper={"source": "P", "columns": ["SST-2 acc"], "rows": {"static": [92.5], "dynamic": [92.9]}},
                  extra=EVALUATE)
    runs, results = tmp_path / "runs", tmp_path / "results"
    over = ["train.max_steps=20", "train.schedule.warmup_steps=2"]
    run_ablation(p, "smoke", over, runs_root=runs, results_dir=results)
    assert recorder.trains == [("toy/static", True), ("toy/dynamic", True)]
    # each run's tasks after its pretraining; the one control (on the first run) after the first run's tasks
    assert fake_finetune.calls == [("static", "sst2", False), ("static", "stsb", False), ("static", "sst2", True),
                                   ("static", "stsb", True), ("dynamic", "sst2", False), ("dynamic", "stsb", False)]
    out = capsys.readouterr().out
    assert "evaluation: 6 stages (sst2, stsb per run, plus the random-init control), fine-tuning preset smoke" in out
    assert f"=== [4/8] toy / static / finetune sst2 (random-init control): fine-tuning → {runs}/toy/static/finetune/sst2-random-init" in out
    assert "=== [6/8] toy / dynamic: training" in out
    assert OmegaConf.load(runs / "toy" / rundir.ABLATION).finetune_preset == "smoke"
    md = (results / "smoke" / "toy.md").read_text()
    assert "| SST-2 acc | SST-2 acc min–max (n) | SST-2 acc (paper) | STS-B Spearman |" in md
    assert "| `dynamic` | done | 4.5000 |" in md and "| 80.50 | 80.00–81.00 (2) | 92.9 |" in md
    assert "| random init (control) | done |" in md and "| SST-2 acc | `dynamic` | +30.00 | 1.00 | yes |" in md

    # a rerun finds every stage done: nothing trained or fine-tuned
    recorder.trains.clear()
    fake_finetune.calls.clear()
    run_ablation(p, "smoke", over, runs_root=runs, results_dir=results)
    assert recorder.trains == [] and fake_finetune.calls == []
    assert "toy / dynamic / finetune stsb: done, skipping" in capsys.readouterr().out
    # an interrupted job (finetune.yaml, no scores.json) is resumed; only it runs
    (runs / "toy" / "dynamic" / "finetune" / "stsb" / "scores.json").unlink()
    run_ablation(p, "smoke", over, runs_root=runs, results_dir=results)
    assert fake_finetune.calls == [("dynamic", "stsb", False)] and "finetune stsb: resuming" in capsys.readouterr().out


def test_a_run_with_logs_but_no_checkpoint_is_refused_before_anything_trains(tmp_path: Path, recorder: _Recorder,
                                                                            fake_finetune: _FakeFinetune):
    # runs/ lost with its machine, the committed logs copied back: the finished run is skipped,
    # but its pending fine-tuning has nothing to load, which must be said before the next arm trains
    p = _ablation(tmp_path, extra=EVALUATE)
    runs = tmp_path / "runs"
    over = ["train.max_steps=20", "train.schedule.warmup_steps=2"]
    run_ablation(p, "smoke", over, runs_root=runs, results_dir=tmp_path / "results")
    shutil.rmtree(runs / "toy" / "static" / rundir.CHECKPOINTS)
    shutil.rmtree(runs / "toy" / "dynamic")
    (runs / "toy" / "static" / "finetune" / "stsb" / "scores.json").unlink()
    recorder.trains.clear()
    fake_finetune.calls.clear()
    with pytest.raises(UserError, match=r"evaluate stsb of static: .*static finished pretraining but has no checkpoint"):
        run_ablation(p, "smoke", over, runs_root=runs, results_dir=tmp_path / "results")
    assert recorder.trains == [] and fake_finetune.calls == []


def test_a_job_made_another_way_is_refused_before_anything_runs(tmp_path: Path, recorder: _Recorder,
                                                                fake_finetune: _FakeFinetune):
    p = _ablation(tmp_path, extra=EVALUATE)
    runs, results = tmp_path / "runs", tmp_path / "results"
    over = ["train.max_steps=20", "train.schedule.warmup_steps=2"]
    run_ablation(p, "smoke", over, runs_root=runs, results_dir=results)
    f = runs / "toy" / "dynamic" / "finetune" / "sst2" / "finetune.yaml"
    f.write_text(f.read_text().replace("0.0003", "0.0001"))
    (runs / "toy" / "static" / "summary.json").unlink()  # would be trained again, if anything ran
    recorder.trains.clear()
    fake_finetune.calls.clear()
    with pytest.raises(UserError, match=rf"^{f}: fine-tuning job made with another "
                                        r"config than this ablation's evaluate stage \(lrs: \[0.0001\] there, \[0.0003\] here\)"):
        run_ablation(p, "smoke", over, runs_root=runs, results_dir=results)
    assert recorder.trains == [] and fake_finetune.calls == []
    # scores without the config they were made with: refused too
    f.unlink()
    with pytest.raises(UserError, match=r"scores.json has no finetune.yaml beside it"):
        run_ablation(p, "smoke", over, runs_root=runs, results_dir=results)
    assert recorder.trains == []


@pytest.mark.parametrize("evaluate, message", [
    ("evaluate:\n  tasks: [sst2, squad]\n", r"evaluate.tasks has 'squad', not a fine-tuning task; valid: sst2, cola"),
    ("evaluate:\n  taks: [sst2]\n", r"unknown key 'evaluate.taks'; valid keys under evaluate: control, overrides, preset, probes, tasks"),
    ("evaluate:\n  tasks: [sst2]\n  overrides: [lrz=1]\n", r"evaluate sst2 of static: .*unknown key 'lrz'"),
    ("evaluate:\n  tasks: [sst2]\n  preset: tiny\n", r"unknown fine-tuning preset 'tiny'.*available: small, smoke"),
    ("evaluate:\n  tasks: [qnli]\n", r"evaluate qnli of static: .*qnli train split not found"),
])
def test_bad_evaluate_section_fails_before_any_training(tmp_path: Path, recorder: _Recorder, fake_finetune, evaluate, message):
    p = _ablation(tmp_path, extra=evaluate)
    with pytest.raises(UserError, match=message):
        run_ablation(p, "smoke", ["train.max_steps=20", "train.schedule.warmup_steps=2"], runs_root=tmp_path / "runs",
                     results_dir=tmp_path / "results")
    assert recorder.builds == [] and recorder.trains == [] and fake_finetune.calls == [] and not (tmp_path / "runs").exists()


def test_finetune_preset_follows_the_ablation_preset():
    from pretrain.ablations.stages import finetune_preset

    assert finetune_preset(None, "smoke") == "smoke" and finetune_preset(None, "small") == "small"
    assert finetune_preset(None, "medium") == "small"  # no medium fine-tuning preset
    assert finetune_preset("smoke", "medium") == "smoke" and finetune_preset(None, "configs/preset/smoke.yaml") == "smoke"


def test_no_evaluate_pretrains_only_and_leaves_the_columns_empty(tmp_path: Path, recorder: _Recorder,
                                                                 fake_finetune: _FakeFinetune):
    p = _ablation(tmp_path, extra="evaluate:\n  tasks: [sst2]\n  overrides: [lrz=1]\n")  # never composed
    run_ablation(p, "smoke", ["train.max_steps=20", "train.schedule.warmup_steps=2"], runs_root=tmp_path / "runs",
                 results_dir=tmp_path / "results", evaluate=False)
    assert len(recorder.trains) == 2 and fake_finetune.calls == []
    md = (tmp_path / "results" / "smoke" / "toy.md").read_text()
    assert "| random init (control) | not run |" in md and "| SST-2 acc |" in md


def test_probe_stages_follow_each_run_and_blimp_of_another_limit_is_refused(tmp_path: Path, recorder: _Recorder,
                                                                           fake_finetune: _FakeFinetune, monkeypatch, capsys):
    import pretrain.downstream.probe as probe

    probed = []

    def blimp(model, limit=None, runs_root="runs", random_init=False, **kw):
        probed.append(("blimp", Path(model).name, limit, random_init))
        d = Path(model) / ("eval-random-init" if random_init else "eval")
        d.mkdir(parents=True, exist_ok=True)
        write_json_atomic(d / "blimp.json", {"overall": 0.5 if random_init else 0.6, "limit": limit})

    def sentence(models, pairs=2000, runs_root="runs", **kw):
        probed.append(("sentence", Path(models[0]).name, pairs, str(runs_root)))
        (Path(models[0]) / "eval").mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(models[0]) / "eval" / "sentence.json", {"mlm": {"accuracy": 0.3}, "nsp": {"accuracy": 0.5},
                                                                       "sop": {"accuracy": 0.5}})

    monkeypatch.setattr(probe, "run_blimp", blimp)
    monkeypatch.setattr(probe, "run_sentence", sentence)
    extra = "evaluate:\n  probes: {blimp: true, blimp_limit: 5, sentence: true, sentence_pairs: 50}\n"
    p = _ablation(tmp_path, extra=extra)
    runs = tmp_path / "runs"
    over = ["train.max_steps=20", "train.schedule.warmup_steps=2"]
    run_ablation(p, "smoke", over, runs_root=runs, results_dir=tmp_path / "results")
    assert fake_finetune.calls == []
    assert probed == [("blimp", "static", 5, False), ("sentence", "static", 50, str(runs)), ("blimp", "static", 5, True),
                      ("blimp", "dynamic", 5, False), ("sentence", "dynamic", 50, str(runs))]
    assert "=== [4/7] toy / static / probe blimp (random-init control): probing" in capsys.readouterr().out
    md = (tmp_path / "results" / "smoke" / "toy.md").read_text()
    assert "| BLiMP overall | `dynamic` | +10.00 | 0.00 | yes |" in md
    probed.clear()
    run_ablation(p, "smoke", over, runs_root=runs, results_dir=tmp_path / "results")
    assert probed == []
    p = _ablation(tmp_path, extra=extra.replace("blimp_limit: 5", "blimp_limit: 6"))
    with pytest.raises(UserError, match=r"static/eval/blimp.json: BLiMP scored with limit 5, .*blimp_limit is 6"):
        run_ablation(p, "smoke", over, runs_root=runs, results_dir=tmp_path / "results")
    # a probe still to run on a finished run whose checkpoint is gone: refused before anything runs
    (runs / "toy" / "static" / "eval" / "blimp.json").unlink()
    shutil.rmtree(runs / "toy" / "static" / rundir.CHECKPOINTS)
    p = _ablation(tmp_path, extra=extra)
    with pytest.raises(UserError, match=r"evaluate.probes.blimp of static: .*static finished pretraining but has no checkpoint"):
        run_ablation(p, "smoke", over, runs_root=runs, results_dir=tmp_path / "results")
    assert probed == []


def test_real_tokens_budget_raises_the_short_row_arms_batch(tmp_path: Path, monkeypatch):
    """RoBERTa §4.2: SENTENCE-PAIR's batch grows until its real tokens per step match
    SEGMENT-PAIR's (the first arm); DOC-SENTENCES batched by tokens counts max_seq_length a
    row slot; steps stay; forward passes keep at least half of train.micro_batch_size rows."""
    from pretrain.ablations.budget import tokens_per_row
    from pretrain.ablations.runner import plan_arms
    from pretrain.ablations.spec import arm_command
    from pretrain.training.engine import split_batch

    monkeypatch.chdir(tmp_path)  # the arms' data go to data-cache/<fingerprint> here
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    path = REPO / "configs" / "ablation" / "roberta_input_format.yaml"
    abl, cfgs, rec, _ = plan_arms(path, "smoke", ["train.max_steps=8", "data.max_documents=80"], tmp_path / "runs", tmp_path)
    assert abl.budget == "real_tokens"
    per_row = {a: tokens_per_row(c) for a, c in cfgs.items()}
    seg, sent = cfgs["segment_pair"], cfgs["sentence_pair"]
    assert seg.train.global_batch_size == 32 and per_row["doc_sentences"] == 128
    assert per_row["sentence_pair"] < 0.6 * per_row["segment_pair"]  # single sentences: short rows
    assert sent.train.global_batch_size > 1.6 * 32 and all(c.train.max_steps == 8 for c in cfgs.values())
    target = 32 * per_row["segment_pair"]
    for arm, c in cfgs.items():
        assert abs(c.train.global_batch_size * per_row[arm] - target) <= 0.05 * target, arm
        # forward passes stay between half the micro batch and all of it (no prime batch of 1-row passes)
        assert split_batch(c.train.global_batch_size, c.train.micro_batch_size, 1)[0] >= c.train.micro_batch_size // 2, arm
    check_fair(cfgs, "real_tokens")
    assert rec.arm_batch["sentence_pair"] == sent.train.global_batch_size
    assert f"train.global_batch_size={sent.train.global_batch_size}" in arm_command(rec, "sentence_pair")
    sent.train.global_batch_size = 32  # equal sequence slots: SENTENCE-PAIR would see less text
    with pytest.raises(UserError, match="different numbers of real tokens"):
        check_fair(cfgs, "real_tokens")
