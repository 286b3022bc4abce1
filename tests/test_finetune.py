"""Fine-tuning configs, the seed/lr protocol, and pretrained-model loading: our checkpoint and
its Hugging Face export give the same model, the same tokenizer and the same probe scores."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from common.errors import UserError
from pretrain.downstream.config import load_finetune_config
from pretrain.downstream.runner import run_configs, summarize
from conftest import child_env, write_finished_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir):
    """A tiny BERT (NSP head) saved as one of our checkpoints, with a wordpiece tokenizer
    trained on SST-2, CoNLL-2003 and BLiMP text; and its Hugging Face export."""
    from data_prep.tokenizer import load_tokenizer, train_tokenizer
    from pretrain.config import load_run_config
    from pretrain.downstream import blimp, conll, glue
    from pretrain.models.encoder import build_model
    from pretrain.models.hf import export_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    text = [e.text_a for e in glue.load_examples("sst2", "dev", data_dir / "glue")]
    text += [" ".join(s.words) for s in conll.load_sentences("dev", data_dir / "conll2003")[:1500]]
    text += [p.good for p in blimp.load_pairs(data_dir / "blimp", limit=10)]
    tok_dir = root / "data"
    tok = train_tokenizer("wordpiece", text, 1200, 2, tok_dir / "tokenizer.json")
    n = load_tokenizer(tok, "wordpiece").vocab_size
    overrides = ["model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
                 "model.intermediate_size=64", "model.max_position_embeddings=64", f"model.vocab_size={n}",
                 "data.max_seq_length=64", "name=tiny-bert",
                 # no dropout: 1 and 2 ranks then compute the same function (test_two_ranks_...)
                 "model.hidden_dropout_prob=0.0", "model.attention_probs_dropout_prob=0.0"]
    cfg = load_run_config(REPO / "configs" / "recipe" / "bert.yaml", "smoke", overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.objective.sentence)
    run = root / "run"
    write_finished_run(run, cfg, model.state_dict(), tok_dir)
    hf = export_checkpoint(run, root / "hf")
    return run, hf, model


@pytest.mark.usefixtures("one_thread")
def test_a_hugging_face_distilbert_fine_tunes_with_or_without_its_mlm_head(tiny_run, tmp_path):
    """Sanh et al. 2019's model as transformers saves it (DistilBertForMaskedLM), and the same
    encoder saved as DistilBertForSequenceClassification: the same SST-2 scores."""
    import shutil

    import transformers

    from pretrain.cli import main

    _, hf, _ = tiny_run
    vocab = json.loads((hf / "config.json").read_text())["vocab_size"]
    c = transformers.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64,
                                      dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    scores = []
    for cls in ("DistilBertForMaskedLM", "DistilBertForSequenceClassification"):
        d = tmp_path / cls
        src = tmp_path / "DistilBertForMaskedLM"
        if cls == "DistilBertForMaskedLM":
            transformers.DistilBertForMaskedLM(c).save_pretrained(d)
        else:
            transformers.DistilBertForSequenceClassification.from_pretrained(src).save_pretrained(d)
        shutil.copy(hf / "tokenizer.json", d / "tokenizer.json")
        out = tmp_path / f"{cls}-job"
        assert main(["finetune", str(d), "--task", "sst2", "--preset", "smoke", "--seeds", "1", "--out", str(out), *FAST]) == 0
        got = json.loads((out / "scores.json").read_text())
        assert got["recipe"] == "distilbert"  # configs/finetune/distilbert.yaml, chosen by model_type
        scores.append(got["per_lr"]["lr-0.003"]["scores"])
    assert scores[0] == scores[1]


@pytest.mark.usefixtures("one_thread")
def test_a_hugging_face_electra_discriminator_fine_tunes_as_our_electra_run_does(tmp_path, data_dir):
    """An ELECTRA run of ours and its export's discriminator directory (ElectraForPreTraining,
    E < H): the same encoder, the same default recipe (BERT's), the same scores; the probes
    refuse the discriminator (no masked-LM head)."""
    from pretrain.cli import main
    from pretrain.downstream.source import load_pretrained
    from pretrain.models.electra import ElectraForPretraining
    from pretrain.models.hf import export_checkpoint
    from conftest import write_finished_run
    from pretrain.config import load_run_config
    from data_prep.tokenizer import load_tokenizer, train_tokenizer
    from pretrain.downstream import glue

    text = [e.text_a for e in glue.load_examples("sst2", "dev", data_dir / "glue")]
    tok_dir = tmp_path / "data"
    tok = train_tokenizer("wordpiece", text, 600, 2, tok_dir / "tokenizer.json")
    n = load_tokenizer(tok, "wordpiece").vocab_size
    cfg = load_run_config(REPO / "configs" / "recipe" / "electra.yaml", "smoke", [
        "model.hidden_size=32", "model.embedding_size=16", "model.num_hidden_layers=2", "model.num_attention_heads=2",
        "model.intermediate_size=64", "model.max_position_embeddings=64", f"model.vocab_size={n}", "data.max_seq_length=64",
        "model.hidden_dropout_prob=0.0", "model.attention_probs_dropout_prob=0.0", "name=tiny-electra"])
    torch.manual_seed(0)
    run = tmp_path / "run"
    write_finished_run(run, cfg, ElectraForPretraining(cfg.model, cfg.electra).state_dict(), tok_dir)
    disc = export_checkpoint(run, tmp_path / "hf") / "discriminator"
    a, b = load_pretrained(run), load_pretrained(disc, mlm_head=False)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith("encoder."))
    with pytest.raises(UserError, match="is an ELECTRA model: its discriminator has no masked-LM head"):
        load_pretrained(disc)
    for src, out in ((run, tmp_path / "ours"), (disc, tmp_path / "theirs")):
        assert main(["finetune", str(src), "--task", "sst2", "--preset", "smoke", "--seeds", "1", "--out", str(out), *FAST]) == 0
    ours, theirs = (json.loads((tmp_path / d / "scores.json").read_text()) for d in ("ours", "theirs"))
    assert ours["recipe"] == theirs["recipe"] == "bert"
    assert ours["per_lr"]["lr-0.003"]["scores"] == theirs["per_lr"]["lr-0.003"]["scores"]


def test_every_task_name_has_a_reader():
    from pretrain.downstream import glue
    from pretrain.downstream.config import TASK_NAMES
    from pretrain.downstream.task_data import NER_TASK

    assert set(TASK_NAMES) == set(glue.TASKS) | {NER_TASK}


def test_recipe_follows_the_family_and_layers_merge_in_order():
    base = {"pretrained": "x", "task": "cola"}
    bert = load_finetune_config("bert", None, [], base)
    assert list(bert.lrs) == [5e-5, 3e-5, 2e-5] and bert.epochs == 3 and bert.train.global_batch_size == 32
    rob = load_finetune_config("roberta", None, [], base)
    assert rob.warmup_fraction == 0.06 and rob.epochs == 10 and rob.train.optimizer.weight_decay == 0.1
    # ALBERT's per-task row (Table 14: CoLA lr 1e-5, batch 16), under the preset and the command line
    alb = load_finetune_config("albert", None, [], base)
    assert list(alb.lrs) == [1e-5] and alb.train.global_batch_size == 16
    alb = load_finetune_config("albert", "smoke", ["lrs=[1e-3]"], base)
    assert list(alb.lrs) == [1e-3] and alb.train.global_batch_size == 16 and alb.data.max_train_rows == 256
    # a DistilBERT student is fine-tuned with its teacher's recipe (configs/finetune/distilbert.yaml)
    assert load_finetune_config("distilbert", None, [], base) == bert
    # ELECTRA's Table 7 (no weight decay; 10 epochs for RTE and STS-B only)
    ele = load_finetune_config("electra", None, [], base)
    assert list(ele.lrs) == [3e-4, 1e-4] and ele.epochs == 3 and ele.train.optimizer.weight_decay == 0.0
    assert load_finetune_config("electra", None, [], {**base, "task": "rte"}).epochs == 10
    with pytest.raises(UserError, match="unknown key 'epoch'; valid keys: classifier_dropout"):
        load_finetune_config("bert", None, ["epoch=3"], base)
    with pytest.raises(UserError, match="task"):
        load_finetune_config("bert", None, ["task=sst-2"], base)
    with pytest.raises(UserError, match=r"unknown fine-tuning preset 'tiny' \(no .*\); available: small, smoke"):
        load_finetune_config("bert", "tiny", [], base)
    with pytest.raises(UserError, match="pretrained is not set"):
        load_finetune_config("bert", None, [], {"task": "sst2"})


def test_runs_derive_steps_warmup_and_cadence_from_epochs(tmp_path):
    cfg = load_finetune_config("bert", None, ["lrs=[1e-4,3e-4]", "seeds=[1,2,3]"], {"pretrained": "x", "task": "rte"})
    runs = run_configs(cfg, tmp_path, 2490)
    assert len(runs) == 6 and {(r.train.optimizer.lr, r.train.seed) for r in runs} == {(lr, s) for lr in (1e-4, 3e-4) for s in (1, 2, 3)}
    r = runs[0]
    assert r.train.max_steps == 3 * (2490 // 32) == 231 and r.train.schedule.warmup_steps == 23
    assert r.train.eval_every == 77 and r.train.checkpoint_every == 231
    assert Path(r.run_dir) == tmp_path / "lr-0.0001" / "seed-1"
    with pytest.raises(UserError, match="fewer than train.global_batch_size=32"):
        run_configs(cfg, tmp_path, 20)


def test_score_is_the_median_over_seeds_at_the_lr_with_the_best_median():
    per_run = {
        1e-4: {1: {"dev_accuracy": 0.80}, 2: {"dev_accuracy": 0.90}, 3: {"dev_accuracy": 0.70}},
        3e-4: {1: {"dev_accuracy": 0.95}, 2: {"dev_accuracy": 0.50}, 3: {"dev_accuracy": 0.60}},
    }
    s = summarize("sst2", per_run)
    assert s["main_metric"] == "dev_accuracy" and s["chosen_lr"] == 1e-4  # median 0.80 beats 0.60
    assert s["score"] == pytest.approx(0.80) and (s["score_min"], s["score_max"]) == (0.70, 0.90)
    assert s["per_lr"]["lr-0.0003"]["scores"]["1"] == {"dev_accuracy": 0.95}  # every seed kept
    assert summarize("conll2003", {1e-4: {1: {"test_entity_f1": 0.5, "dev_entity_f1": 0.6}}})["main_metric"] == "test_entity_f1"


def test_checkpoint_and_its_hf_export_load_to_the_same_model_and_tokenizer(tiny_run):
    from pretrain.downstream.source import load_pretrained

    run, hf, model = tiny_run
    a, b = load_pretrained(run), load_pretrained(hf)
    assert (a.sentence, b.sentence) == ("nsp", "nsp") and a.tokenizer.vocab_size == b.tokenizer.vocab_size
    text = ["Many girls insulted themselves.", "EU rejects German call to boycott British lamb ."]
    assert a.tokenizer.encode_batch(text) == b.tokenizer.encode_batch(text)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    r = load_pretrained(run, random_init=True, seed=3)
    assert not torch.equal(r.model.encoder.embeddings.word_embeddings.weight, sa["encoder.embeddings.word_embeddings.weight"])


def test_probe_cli_gives_the_same_blimp_score_for_checkpoint_and_export(tiny_run, tmp_path):
    from pretrain.cli import main

    run, hf, _ = tiny_run
    args = ["--limit", "2", "--phenomena", "anaphor_gender_agreement", "causative", "drop_argument"]
    assert main(["probe", "blimp", str(run), *args]) == 0
    assert main(["probe", "blimp", str(hf), *args, "--out", str(tmp_path / "hf-eval")]) == 0
    ours = json.loads((run / "eval" / "blimp.json").read_text())
    theirs = json.loads((tmp_path / "hf-eval" / "blimp.json").read_text())
    assert ours["pairs"] == 6 and ours["phenomena"] == theirs["phenomena"] and ours["overall"] == theirs["overall"]
    assert main(["probe", "sentence", str(run), "--pairs", "30", "--runs", str(tmp_path)]) == 0
    rec = json.loads((run / "eval" / "sentence.json").read_text())
    assert rec["corpus"] == "pydoc" and rec["nsp"]["count"] <= 30 and rec["sentence_objective"] == "nsp"


def _losses(run: Path, key: str):
    return [json.loads(x)[key] for x in (run / "metrics.jsonl").read_text().splitlines() if json.loads(x)["kind"] == "train"]


FAST = ["data.max_train_rows=32", "data.max_eval_rows=48", "data.max_length=32", "lrs=[3e-3]",
        "train.global_batch_size=8", "train.micro_batch_size=8", "train.log_every=4", "epochs=16"]


@pytest.mark.usefixtures("one_thread")
def test_finetune_checkpoint_and_export_give_the_same_scores_through_the_loop(tiny_run, tmp_path, capsys):
    from pretrain.cli import main

    run, hf, _ = tiny_run
    assert main(["finetune", str(run), "--task", "sst2", "--preset", "smoke", "--seeds", "1", *FAST]) == 0
    job = run / "finetune" / "sst2"
    ours = json.loads((job / "scores.json").read_text())
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("sst2 dev_accuracy = ") and "median of 1 seeds" in line and "at lr 0.003" in line
    assert (job / "scores.md").read_text().strip().endswith(line)
    seed_run = job / "lr-0.003" / "seed-1"
    summary = json.loads((seed_run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["num_train_rows"] == 32 and summary["eval_rows"] == {"dev": 48}
    assert summary["steps"] == 16 * (32 // 8) and not (seed_run / "checkpoints").exists()  # weights not kept
    assert ours["wall_time_s"] == pytest.approx(summary["wall_time_s"])  # one run: the job's time is its time
    loss = _losses(seed_run, "cls_loss")
    assert loss[-1] < 0.5 * loss[0]  # 32 rows, 16 epochs: the head and encoder fit them
    assert main(["finetune", str(hf), "--task", "sst2", "--preset", "smoke", "--seeds", "1", "--out", str(tmp_path / "hf-job"), *FAST]) == 0
    theirs = json.loads((tmp_path / "hf-job" / "scores.json").read_text())
    assert theirs["per_lr"]["lr-0.003"]["scores"] == ours["per_lr"]["lr-0.003"]["scores"]
    assert _losses(tmp_path / "hf-job" / "lr-0.003" / "seed-1", "cls_loss") == pytest.approx(loss, rel=1e-5)
    # A directory of a class without the MLM head (a user's BertForSequenceClassification) holds
    # the same encoder and pooler: the same scores.
    import shutil

    import transformers

    headless = tmp_path / "seq-cls"
    transformers.BertForSequenceClassification.from_pretrained(hf).save_pretrained(headless)
    shutil.copy(hf / "tokenizer.json", headless / "tokenizer.json")
    assert main(["finetune", str(headless), "--task", "sst2", "--preset", "smoke", "--seeds", "1", "--out", str(tmp_path / "cls-job"), *FAST]) == 0
    assert json.loads((tmp_path / "cls-job" / "scores.json").read_text())["per_lr"]["lr-0.003"]["scores"] == ours["per_lr"]["lr-0.003"]["scores"]
    # a finished job is not trained again
    assert main(["finetune", str(run), "--task", "sst2", "--preset", "smoke", "--seeds", "1", *FAST]) == 0
    assert "(done before)" in capsys.readouterr().out


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("task, term, metric", [("conll2003", "tok_loss", "test_entity_f1"), ("stsb", "mse_loss", "dev_spearman")])
def test_token_and_regression_tasks_train_through_the_loop(tiny_run, tmp_path, task, term, metric):
    from pretrain.downstream.runner import finetune

    run, _, _ = tiny_run
    s = finetune(str(run), task, seeds=1, preset="smoke", overrides=FAST, out=tmp_path / task)
    assert s["main_metric"] == metric and -1.0 <= s["score"] <= 1.0
    seed_run = tmp_path / task / "lr-0.003" / "seed-1"
    loss = _losses(seed_run, term)
    assert loss[-1] < loss[0]
    evals = [json.loads(x) for x in (seed_run / "metrics.jsonl").read_text().splitlines() if json.loads(x)["kind"] == "eval"]
    assert len(evals) == 16 and metric in evals[-1]  # scored every epoch; the last one is reported
    assert json.loads((seed_run / "summary.json").read_text())["final_eval"][metric] == evals[-1][metric] == s["score"]


def test_bad_finetune_input_is_one_line_before_training(tiny_run, tmp_path, capsys):
    from pretrain.cli import main

    run, _, _ = tiny_run
    assert main(["finetune", str(run), "--task", "qnli", "--preset", "smoke"]) == 2
    assert "qnli train split not found" in capsys.readouterr().err
    assert main(["finetune", str(run), "--task", "sst2", "--preset", "smoke", "data.max_length=100"]) == 2
    assert "data.max_length=100 exceeds the model's 64 positions" in capsys.readouterr().err
    assert main(["finetune", str(tmp_path / "nothing"), "--task", "sst2"]) == 2
    assert "does not exist" in capsys.readouterr().err


def _edit_config(d: Path, **kw) -> None:
    (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()), **kw}))


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])


@pytest.mark.parametrize("damage, msg", [
    (lambda d: (d / "config.json").write_text('{"model_type": "bert",'), r"config.json is not valid JSON \(.*\); restore"),
    (lambda d: (d / "config.json").write_text("[1, 2]"), r"config.json has no model_type; .* bert, roberta, albert"),
    (lambda d: (d / "config.json").write_text('{"model_type": "gpt2"}'), r"config.json has model_type 'gpt2'; "),
    (lambda d: (d / "model.safetensors").unlink(), r"hf has no weights file \(model.safetensors or pytorch_model.bin"),
    (lambda d: _truncate(d / "model.safetensors"), r"cannot load the weights in .*hf \(.*\); the file is damaged"),
    (lambda d: _edit_config(d, hidden_size="abc"), r"cannot read .*config.json: .*'hidden_size'.* restore the model"),
    (lambda d: _edit_config(d, vocab_size=17), r"the weights in .*hf do not fit the shapes its config.json gives"),
])
def test_damaged_hf_directory_is_one_line(tiny_run, tmp_path, capsys, damage, msg):
    import shutil

    from pretrain.cli import main

    _, hf, _ = tiny_run
    d = tmp_path / "hf"
    shutil.copytree(hf, d)
    damage(d)
    assert main(["finetune", str(d), "--task", "sst2", "--preset", "smoke", "--out", str(tmp_path / "job")]) == 2
    err = capsys.readouterr().err
    err = err[err.find("error: "):]  # after transformers' loading bar and report, if it got that far
    assert re.match(f"error: .*{msg}", err) and err.count("\n") == 1, err
    assert main(["probe", "blimp", str(d), "--limit", "1", "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    err = err[err.find("error: "):]
    assert re.match(f"error: .*{msg}", err) and err.count("\n") == 1, err


def test_tokenizer_flag_names_itself_and_what_a_tokenizer_file_is(tiny_run, tmp_path, capsys):
    from pretrain.cli import main

    run, _, _ = tiny_run
    job = ["--task", "sst2", "--preset", "smoke", "--out", str(tmp_path / "job")]
    assert main(["finetune", str(run), *job, "--tokenizer", str(tmp_path / "nope.json")]) == 2
    assert capsys.readouterr().err == (f"error: --tokenizer {tmp_path / 'nope.json'}: no such file; pass the "
                                       "tokenizer.json the model was trained with\n")
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')  # a file, but not a tokenizer
    assert main(["probe", "blimp", str(run), "--limit", "1", "--tokenizer", str(tmp_path / "config.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot load tokenizer {tmp_path / 'config.json'} (") and err.count("\n") == 1
    assert err.endswith("); pass a tokenizer.json of the tokenizers library, such as the one data-prep writes beside "
                        "the shards\n")


def test_out_that_is_a_file_is_one_line_before_any_work(tiny_run, tmp_path, capsys):
    from pretrain.cli import main

    run, _, _ = tiny_run
    f = tmp_path / "taken"
    f.write_text("mine")
    assert main(["finetune", str(run), "--task", "sst2", "--preset", "smoke", "--out", str(f)]) == 2
    assert capsys.readouterr().err == f"error: job directory {f} is a file; pass --out a directory (new, or a job's to resume it)\n"
    assert main(["probe", "blimp", str(run), "--limit", "1", "--out", str(f)]) == 2
    assert capsys.readouterr().err == f"error: output directory {f} is a file; pass --out a directory for blimp.json\n"
    assert f.read_text() == "mine"


def test_damaged_summary_of_a_seed_run_is_one_line_on_rerun(tiny_run, tmp_path, capsys):
    from pretrain.cli import main

    run, _, _ = tiny_run
    seed_run = tmp_path / "job" / "lr-0.0003" / "seed-1"
    seed_run.mkdir(parents=True)
    (seed_run / "summary.json").write_text('{"status": "done", "final_eval": {"dev_acc')  # cut short
    args = ["finetune", str(run), "--task", "sst2", "--preset", "smoke", "--seeds", "1", "lrs=[3e-4]", "--out", str(tmp_path / "job")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {seed_run / 'summary.json'} is damaged (") and err.count("\n") == 1, err
    assert err.endswith("delete it and rerun: the run resumes (or starts again) and writes it anew\n")
    assert not (tmp_path / "job" / "scores.json").exists()


@pytest.mark.usefixtures("one_thread")
def test_random_init_control_has_its_own_job_directory(tiny_run):
    from pretrain.downstream.runner import finetune

    run, _, _ = tiny_run
    s = finetune(str(run), "sst2", seeds=1, preset="smoke", overrides=[*FAST, "epochs=1"], random_init=True)
    job = run / "finetune" / "sst2-random-init"
    assert s["pretrained"].endswith("(random init)") and (job / "scores.json").is_file()
    assert json.loads((job / "lr-0.003" / "seed-1" / "summary.json").read_text())["random_init"] is True


@pytest.mark.usefixtures("one_thread")
def test_two_ranks_fine_tune_and_score_as_one(tiny_run, tmp_path):
    """torchrun with 2 ranks (one micro batch of 4 each; 1 rank accumulates both) follows the
    1-rank loss trajectory within 1e-5 for NER, whose labelled-word counts differ between
    micro batches, and scores an evaluation split that does not split evenly (51 rows)."""
    import subprocess
    import sys

    from pretrain.downstream.runner import finetune
    from pretrain.training.distributed import free_port

    run, _, _ = tiny_run
    args = [*FAST, "epochs=2", "classifier_dropout=0.0", "train.micro_batch_size=4", "data.max_eval_rows=51"]
    finetune(str(run), "conll2003", seeds=1, preset="smoke", overrides=args, out=tmp_path / "one")
    env = child_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
           "-m", "pretrain.cli", "finetune", str(run), "--task", "conll2003", "--preset", "smoke", "--seeds", "1",
           "--out", str(tmp_path / "two"), *args]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (tmp_path / d / "lr-0.003" / "seed-1" for d in ("one", "two"))
    assert _losses(one, "tok_loss") == pytest.approx(_losses(two, "tok_loss"), abs=1e-5)
    a = json.loads((one / "summary.json").read_text())["final_eval"]
    b = json.loads((two / "summary.json").read_text())["final_eval"]
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-5 for k in a)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("family, kind", [("roberta", "bpe"), ("albert", "unigram")])
def test_roberta_and_albert_directories_fine_tune_on_pairs(family, kind, tmp_path, data_dir):
    """A Hugging Face RoBERTa (byte-level BPE, <s> A </s></s> B </s>, one token type, its own
    head) and ALBERT (SentencePiece-style unigram, factorized embedding, shared layers, SOP
    pooler) directory fine-tune on RTE sentence pairs."""
    from data_prep.tokenizer import load_tokenizer, train_tokenizer
    from pretrain.config import load_run_config
    from pretrain.downstream import glue
    from pretrain.downstream.runner import finetune
    from pretrain.models.encoder import build_model
    from pretrain.models.hf import export_run

    text = [t for e in glue.load_examples("rte", "dev", data_dir / "glue") for t in (e.text_a, e.text_b)]
    tok = train_tokenizer(kind, text, 800, 2, tmp_path / "tok" / "tokenizer.json")
    n = load_tokenizer(tok, kind).vocab_size
    extra = ["model.embedding_size=16"] if family == "albert" else []
    cfg = load_run_config(REPO / "configs" / "recipe" / f"{family}.yaml", "smoke",
                          ["model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
                           "model.intermediate_size=64", f"model.vocab_size={n}", *extra])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.objective.sentence)
    hf = export_run(cfg, model.state_dict(), tmp_path / "hf", tok)
    s = finetune(str(hf), "rte", seeds=1, preset="smoke", overrides=[*FAST, "epochs=1"], out=tmp_path / "job")
    assert s["main_metric"] == "dev_accuracy" and 0.0 <= s["score"] <= 1.0 and s["recipe"] == family
    loss = _losses(tmp_path / "job" / "lr-0.003" / "seed-1", "cls_loss")
    assert len(loss) == 1 and 0.0 < loss[0] < 5.0


def test_pooler_of_a_masked_lm_directory_is_fine_tuned_from(tiny_run, tmp_path):
    """bert-base-uncased names BertForMaskedLM (no pooler) but ships the NSP-trained pooler;
    fine-tuning starts from it, as BertForSequenceClassification.from_pretrained does."""
    import shutil

    from pretrain.downstream.source import load_pretrained
    from pretrain.models.heads import FineTuneModel

    run, hf, model = tiny_run
    mlm_dir = tmp_path / "mlm"
    shutil.copytree(hf, mlm_dir)
    config = json.loads((mlm_dir / "config.json").read_text())
    config["architectures"] = ["BertForMaskedLM"]
    (mlm_dir / "config.json").write_text(json.dumps(config))
    pre = load_pretrained(mlm_dir)
    assert pre.sentence == "none" and pre.pooler is not None
    m = FineTuneModel(pre.model_cfg, "sequence", 2).load_pretrained(pre.model, pre.pooler)
    assert torch.equal(m.head.pooler.weight, model.sentence_head.pooler.weight)
    assert load_pretrained(mlm_dir, random_init=True).pooler is None


@pytest.mark.usefixtures("one_thread")
def test_a_job_run_by_hand_is_a_done_stage_of_an_ablation(tiny_run, tmp_path, monkeypatch):
    """`pretrain finetune RUN --task T --preset P overrides` run by hand is exactly the
    ablation's stage (same job directory, same finetune.yaml), whether the run directory is
    named by an absolute or a relative path; a control stage runs the real random-init job."""
    from omegaconf import OmegaConf

    from pretrain.ablations import stages
    from pretrain.cli import main
    from pretrain.training.checkpoint import _resolve_checkpoint, read_client_state

    run, _, _ = tiny_run
    over = [*FAST, "epochs=1", "seeds=[1]"]
    assert main(["finetune", str(run), "--task", "rte", "--preset", "smoke", *over]) == 0
    rc = OmegaConf.create(read_client_state(_resolve_checkpoint(run))["config"])
    from pretrain.ablations.spec import EvaluateConfig

    abl = OmegaConf.create({"name": "toy", "evaluate": OmegaConf.structured(EvaluateConfig(tasks=["rte"], overrides=over))})
    for where in (str(run), os.path.relpath(run)):
        rc.run_dir = where
        plan = stages.plan_evaluation(abl, "smoke", {"a": rc})
        assert [(st.task, st.random_init, stages.stage_state(st)) for st in plan] == [("rte", False, "done"), ("rte", True, "new")]
        assert plan[0].job.resolve() == run / "finetune" / "rte"
    stages.run_stage(plan[1], "smoke", over)
    assert stages.stage_state(plan[1]) == "done" and (run / "finetune" / "rte-random-init" / "scores.json").is_file()
    abl.evaluate.overrides = [*over, "train.precision=bf16"]
    with pytest.raises(UserError, match=r"rte/finetune.yaml: fine-tuning job made with another config .*train.precision: 'fp32' there, 'bf16' here"):
        stages.plan_evaluation(abl, "smoke", {"a": rc})


def test_blimp_probe_stage_runs_for_real_and_is_then_done(tiny_run):
    from omegaconf import OmegaConf

    from pretrain.ablations import stages
    from pretrain.training.checkpoint import _resolve_checkpoint, read_client_state

    run, _, _ = tiny_run
    rc = OmegaConf.create(read_client_state(_resolve_checkpoint(run))["config"])
    rc.run_dir = str(run)
    abl = OmegaConf.create({"name": "toy", "evaluate": {"preset": None, "tasks": [], "overrides": [], "control": False,
                                                        "probes": {"blimp": True, "blimp_limit": 1, "sentence": False,
                                                                   "sentence_pairs": 10}}})
    # a blimp.json of another limit (`pretrain probe blimp RUN --limit 2`) is refused, not mixed in
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / "blimp.json").write_text(json.dumps({"overall": 0.5, "limit": 2}))
    with pytest.raises(UserError, match=r"eval/blimp.json: BLiMP scored with limit 2, .*blimp_limit is 1"):
        stages.plan_evaluation(abl, "smoke", {"a": rc})
    (run / "eval" / "blimp.json").write_text('{"overall": 0.5, "li')  # cut short: probed again, not a traceback
    (st,) = stages.plan_evaluation(abl, "smoke", {"a": rc})
    assert stages.stage_state(st) == "new" and st.out == run / "eval" / "blimp.json"
    (run / "eval" / "blimp.json").unlink()
    assert stages.stage_state(st) == "new"
    stages.run_stage(st, "smoke", [])
    table = json.loads(st.out.read_text())
    assert stages.stage_state(st) == "done" and table["limit"] == 1 and len(table["phenomena"]) == 67
