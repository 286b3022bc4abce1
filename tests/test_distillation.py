"""DistilBERT (Sanh et al. 2019) through the loop: a smoke BERT teacher trained here, then
``pretrain train configs/recipe/distilbert.yaml --preset smoke`` with it as the teacher —
end to end on the CLI, exact after a kill or a preemption and ``--resume``, the same from
the teacher's Hugging Face export as from its checkpoint, exported as a
DistilBertForMaskedLM that gives our logits; the triple loss against Hugging Face's
``distiller.py`` formulas; the student's initialisation; config errors at load time."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from common.configfile import merge_into
from common.errors import UserError
from pretrain.config import ModelConfig, load_run_config
from pretrain.criterions.distillation import DistillationCriterion
from pretrain.models.distil import init_student, load_teacher, select_layers
from pretrain.models.encoder import build_model
from pretrain.training import checkpoint, rundir
from pretrain.training.distributed import World
from pretrain.training.loop import Preempted, train
from conftest import child_env

transformers = pytest.importorskip("transformers")
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

REPO = Path(__file__).resolve().parents[1]
BERT = REPO / "configs" / "recipe" / "bert.yaml"
DISTIL = REPO / "configs" / "recipe" / "distilbert.yaml"
# A corpus neither recipe was written for (they default to pydoc): 16 WikiText-2 articles
# (the validation file of the real data), 64-token rows.
DATA = ["data.max_documents=16", "data.validation_fraction=0.2", "data.max_seq_length=64"]
CORPUS = {}  # "path": the corpus file, set by the teacher fixture from the data_dir fixture
TEACHER = [*DATA, "model.hidden_size=32", "model.num_hidden_layers=4", "model.num_attention_heads=2",
           "model.intermediate_size=64", "data.tokenizer.vocab_size=600", "data.masking.max_predictions_per_seq=10",
           "train.max_steps=4", "train.eval_every=4", "train.global_batch_size=8", "train.micro_batch_size=8",
           "train.schedule.warmup_steps=1", "train.eval_max_batches=2"]
# Dynamic masks over several epochs, accumulation (8 = 2 × 4), dropout on, log windows that
# straddle checkpoints: what an exact resume must restore.
STUDENT = [*DATA, "train.max_steps=12", "train.global_batch_size=8", "train.micro_batch_size=4", "train.log_every=3",
           "train.eval_every=4", "train.checkpoint_every=4", "train.keep_checkpoints=3", "train.schedule.warmup_steps=2",
           "train.eval_max_batches=2"]
TIMING = ("tokens_per_s", "time_s", "model_tflops", "mfu")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, data_dir: Path) -> Path:
    CORPUS["path"] = data_dir / "wikitext-2" / "valid.txt"
    root = tmp_path_factory.mktemp("teacher")
    train(load_run_config(BERT, "smoke", [*TEACHER, f"data.corpus={CORPUS['path']}", f"run_dir={root / 'run'}",
                                          f"data.output_dir={root / 'data'}"]))
    return root / "run"


@pytest.fixture(scope="module")
def student_data(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("student-data") / "shards"


def student_overrides(run: Path, teacher: Path, data: Path, *extra: str):
    return [*STUDENT, f"data.corpus={CORPUS['path']}", f"distillation.teacher={teacher}", f"run_dir={run}",
            f"data.output_dir={data}", *extra]


def _strip(lines):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in lines]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, teacher: Path, student_data: Path):
    """The issue's command, on the CLI: ``pretrain train configs/recipe/distilbert.yaml --preset smoke``."""
    run = tmp_path_factory.mktemp("cli") / "student"
    env = child_env()
    cmd = [sys.executable, "-m", "pretrain.cli", "train", str(DISTIL), "--preset", "smoke",
           *student_overrides(run, teacher, student_data)]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"summary      {run / rundir.SUMMARY}" in p.stdout
    return run, rundir.read_summary(run)


def test_layer_selection():
    assert select_layers(12, "extract_distilbert", []) == [0, 2, 4, 7, 9, 11]  # scripts/extract_distilbert.py
    assert select_layers(12, "every_other", []) == [0, 2, 4, 6, 8, 10]
    assert select_layers(24, "extract_distilbert", []) == [0, 2, 4, 6, 8, 10, 13, 15, 17, 19, 21, 23]
    assert select_layers(4, "extract_distilbert", []) == [0, 3] and select_layers(1, "every_other", []) == [0]
    assert select_layers(12, "list", [1, 5, 11]) == [1, 5, 11]
    for bad in ([], [3, 1], [0, 0], [12]):
        with pytest.raises(UserError, match="student_layers"):
            select_layers(12, "list", bad)


def test_distilbert_smoke_trains_end_to_end(cli_run, teacher: Path):
    run, summary = cli_run
    cfg = load_run_config(run / rundir.CONFIG)
    assert cfg.task == "distillation" and cfg.model.family == "distilbert" and cfg.model.type_vocab_size == 0
    assert cfg.model.num_hidden_layers == 2 and cfg.model.hidden_size == 32  # the teacher's shape, half the layers
    assert cfg.data.tokenizer.path == str(teacher.parent / "data" / "tokenizer.json")  # the teacher's ids
    assert cfg.objective.sentence == "none" and cfg.data.masking.mode == "dynamic"
    assert summary["student_layers"] == [0, 3] and summary["steps"] == 12
    assert summary["num_parameters"] < summary["teacher_parameters"]
    train_lines = rundir.read_metrics(run, "train")
    assert {"loss", "ce_loss", "mlm_loss", "cos_loss", "model_tflops"} <= set(train_lines[0])
    for r in train_lines:  # the logged loss is the weighted sum of the released recipe's terms
        assert r["loss"] == pytest.approx(5.0 * r["ce_loss"] + 2.0 * r["mlm_loss"] + 1.0 * r["cos_loss"], rel=1e-9)
    ev = summary["final_eval"]
    assert set(ev) == {"mlm_loss", "perplexity", "mlm_accuracy", "teacher_mlm_loss", "teacher_mlm_accuracy", "ce_loss",
                       "cos_loss"}
    assert ev["ce_loss"] >= 0 and 0 <= ev["cos_loss"] <= 2


def _same_run(run: Path, reference: Path) -> None:
    assert _strip(rundir.read_metrics(run)) == _strip(rundir.read_metrics(reference))  # bit-identical
    assert rundir.read_summary(run)["final_eval"] == rundir.read_summary(reference)["final_eval"]
    _, a = checkpoint.load_model_state(reference)
    _, b = checkpoint.load_model_state(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_killed_run_resumes_exactly(tmp_path: Path, cli_run, teacher: Path, student_data: Path):
    """A run killed after its step-4 checkpoint (its later checkpoints and metric lines left
    behind as a SIGKILL leaves them) and resumed equals the uninterrupted CLI run."""
    reference, _ = cli_run
    run = tmp_path / "killed"
    shutil.copytree(reference, run)
    for d in ("step-0000008", "step-0000012"):
        shutil.rmtree(run / "checkpoints" / d)
    (run / "checkpoints" / checkpoint.LATEST).write_text("step-0000004\n")
    (run / rundir.SUMMARY).unlink()
    with open(run / rundir.METRICS, "a") as f:
        f.write('{"kind": "train", "step": 9, "loss"')  # a line cut short by the kill
    train(load_run_config(DISTIL, "smoke", student_overrides(run, teacher, student_data)), resume=True)
    _same_run(run, reference)


def test_preempted_run_resumes_exactly(tmp_path: Path, cli_run, teacher: Path, student_data: Path):
    reference, _ = cli_run
    run = tmp_path / "preempted"
    first = run / "checkpoints" / checkpoint.LATEST

    def warn_like_slurm():
        while not first.is_file():
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=warn_like_slurm, daemon=True).start()
    cfg = load_run_config(DISTIL, "smoke", student_overrides(run, teacher, student_data))
    with pytest.raises(Preempted) as stopped:
        train(cfg)
    assert 4 <= stopped.value.step < 12
    train(cfg, resume=True)
    _same_run(run, reference)


def test_hf_teacher_gives_the_same_run_as_its_checkpoint(tmp_path: Path, cli_run, teacher: Path, student_data: Path):
    """The teacher exported to a Hugging Face directory (BertForPreTraining + tokenizer) and
    used as the teacher: the config takes its tokenizer.json, and with the same data the run
    is the checkpoint teacher's, step for step (export and import are exact in fp32)."""
    from pretrain.models.hf import export_checkpoint

    reference, _ = cli_run
    hf = export_checkpoint(teacher, tmp_path / "hf-teacher")
    cfg = load_run_config(DISTIL, "smoke", student_overrides(tmp_path / "unused", hf, student_data))
    assert cfg.data.tokenizer.path == str(hf / "tokenizer.json") and cfg.data.tokenizer.kind == "wordpiece"
    assert cfg.model == load_run_config(reference / rundir.CONFIG).model
    tok = load_run_config(reference / rundir.CONFIG).data.tokenizer.path
    run = tmp_path / "from-hf"
    train(load_run_config(DISTIL, "smoke", student_overrides(run, hf, student_data, f"data.tokenizer.path={tok}")))
    _same_run(run, reference)


def test_export_is_a_distilbert_that_gives_our_logits(tmp_path: Path, cli_run):
    from pretrain.models.hf import export_checkpoint

    run, _ = cli_run
    out = export_checkpoint(run, tmp_path / "hf")
    cfg, state = checkpoint.load_model_state(run)
    ours = build_model(cfg.model, "none")
    ours.load_state_dict(state)
    ours.eval()
    hf = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert type(hf).__name__ == "DistilBertForMaskedLM" and hf.config.n_layers == 2
    assert sum(p.numel() for p in hf.parameters()) == sum(p.numel() for p in ours.parameters())  # no token types, no pooler
    enc = tok(["The team won the league in the following season.", "It was [MASK] in 1905."], padding=True,
              return_tensors="pt")
    with torch.no_grad():
        theirs = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    mine = ours.logits(enc["input_ids"], enc["attention_mask"])["mlm_logits"]
    keep = enc["attention_mask"].bool()
    torch.testing.assert_close(mine[keep], theirs[keep], rtol=1e-5, atol=1e-5)


def test_student_starts_from_the_teacher_layers(teacher: Path, student_data: Path, tmp_path: Path):
    cfg = load_run_config(DISTIL, "smoke", student_overrides(tmp_path / "s", teacher, student_data))
    _, t = load_teacher(str(teacher))
    s = build_model(cfg.model, "none")
    init_student(s, t, [0, 3])
    sd, td = s.state_dict(), t.state_dict()
    assert "encoder.embeddings.token_type_embeddings.weight" not in sd and s.sentence_head is None
    assert torch.equal(sd["encoder.attention.1.query.weight"], td["encoder.attention.3.query.weight"])
    assert torch.equal(sd["encoder.ffn.1.output.weight"], td["encoder.ffn.3.output.weight"])
    assert torch.equal(sd["encoder.attention.0.LayerNorm.bias"], td["encoder.attention.0.LayerNorm.bias"])
    assert torch.equal(sd["encoder.embeddings.word_embeddings.weight"], td["encoder.embeddings.word_embeddings.weight"])
    assert torch.equal(sd["mlm.dense.weight"], td["mlm.dense.weight"]) and torch.equal(sd["mlm.bias"], td["mlm.bias"])
    assert not torch.equal(build_model(cfg.model, "none").state_dict()["encoder.attention.1.query.weight"],
                           td["encoder.attention.3.query.weight"])


def test_task_counts_the_teacher_forward_in_flops(teacher: Path, cli_run, student_data: Path, tmp_path: Path):
    from pretrain.models.encoder import flops_per_token
    from pretrain.tasks import task_class

    cfg = load_run_config(DISTIL, "smoke", student_overrides(tmp_path / "s", teacher, student_data))
    task = task_class(cfg)(cfg)
    task.prepare(World(rank=0, size=1, local_rank=0, local_size=1))
    student = task.build_model()
    assert task.frozen_modules() == {"teacher": task.teacher} and not task.teacher.training
    rows = task.train_sampler().global_batch(0)[1]
    n = task.lengths[rows].astype(float)
    expect = sum(flops_per_token(student, int(x)) * x + flops_per_token(task.teacher, int(x)) * x / 3 for x in n)
    assert task.flops(rows) == pytest.approx(expect, rel=1e-12)


def test_triple_loss_matches_the_reference_formulas():
    """Against Hugging Face's distiller.py: KLDivLoss(batchmean)(log_softmax(s/T), softmax(t/T))·T²
    over the non-padding tokens, CrossEntropyLoss over the masked ones, CosineEmbeddingLoss
    (target 1) over the non-padding tokens' last hidden states — each a mean; ours are the
    sums and the counts."""
    torch.manual_seed(0)
    base = dict(vocab_size=50, hidden_size=16, num_attention_heads=2, intermediate_size=32, max_position_embeddings=20,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    teacher = build_model(merge_into(ModelConfig, {**base, "num_hidden_layers": 2}), "nsp").eval()
    student = build_model(merge_into(ModelConfig, {**base, "num_hidden_layers": 1, "family": "distilbert",
                                                   "type_vocab_size": 0})).eval()
    ids = torch.randint(5, 50, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 3], labels[2, 5], labels[2, 9] = 7, 8, 9, 10
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "labels": labels}
    crit = DistillationCriterion(teacher, 2.0, 5.0, 2.0, 1.0)
    loss_sum, size, _ = crit(student, batch)
    assert {k: int(v) for k, v in size.items()} == {"ce": 31, "mlm": 4, "cos": 31}
    assert {k: int(v) for k, v in crit.sample_size(batch).items()} == {k: int(v) for k, v in size.items()}
    s, t = student(ids, mask), teacher(ids, mask)
    keep = mask.bool()
    s_log, t_log = s["mlm_logits"][keep], t["mlm_logits"][keep]
    ce = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s_log / 2, -1), F.softmax(t_log / 2, -1)) * 4
    mlm = torch.nn.CrossEntropyLoss()(s["mlm_logits"].view(-1, 50), labels.view(-1))
    cos = torch.nn.CosineEmbeddingLoss()(s["hidden_states"][keep], t["hidden_states"][keep], torch.ones(31))
    torch.testing.assert_close(loss_sum["ce"] / 31, ce)
    torch.testing.assert_close(loss_sum["mlm"] / 4, mlm)
    torch.testing.assert_close(loss_sum["cos"] / 31, cos)
    restricted = DistillationCriterion(teacher, 2.0, 5.0, 2.0, 1.0, restrict_ce_to_mask=True)
    assert int(restricted(student, batch)[1]["ce"]) == 4


@pytest.mark.parametrize("override, message", [
    (["distillation.teacher=null"], "needs distillation.teacher=PATH"),
    (["distillation.teacher=/nonexistent/teacher"], "no such file or directory"),
    (["distillation.alpha_ce=0", "distillation.alpha_mlm=0", "distillation.alpha_cos=0"], "nothing to train"),
    (["distillation.temperature=0"], "temperature=0.0 must be > 0"),
    (["distillation.student_layers=[0,1]"], "set distillation.layer_selection=list"),
    (["distillation.layer_selection=list", "distillation.student_layers=[0,4]"], r"in \[0, 4\)"),
    (["distillation.layer_selection=half"], "extract_distilbert, every_other, list"),
    (["distillation.student_init=zeros"], "teacher, random"),
    (["distillation.alpha_kl=1"], "unknown key 'distillation.alpha_kl'"),
    (["data.format=segment_pair", "data.sentence_objective=nsp"], "drops NSP|without NSP"),
    (["task=pretraining"], "needs task=distillation"),
])
def test_bad_distillation_config_fails_at_load(teacher: Path, tmp_path: Path, override, message):
    with pytest.raises(UserError, match=message):
        load_run_config(DISTIL, "smoke", [f"distillation.teacher={teacher}", f"run_dir={tmp_path}", *override])


def test_ablation_arms_load(teacher: Path):
    from pretrain.ablations.runner import check_fair, compose_arms, precheck_arms

    _, cfgs = compose_arms(REPO / "configs" / "ablation" / "distilbert_losses.yaml", "smoke",
                        [f"distillation.teacher={teacher}"], "runs")
    d = {arm: c.distillation for arm, c in cfgs.items()}
    assert sorted(d) == ["no_ce", "no_cos", "no_mlm", "random_init", "triple_loss"]
    assert (d["no_ce"].alpha_ce, d["no_cos"].alpha_cos, d["no_mlm"].alpha_mlm) == (0.0, 0.0, 0.0)
    assert d["random_init"].student_init == "random" and d["triple_loss"].alpha_ce == 5.0
    check_fair(cfgs)
    precheck_arms(cfgs)
