"""Fine-tuning throughput: ours (``pretrain finetune``, the training loop with the fine-tuning
task) against ``transformers.Trainer`` on the same model, task rows, sequence length and
batch; and the wall time of fine-tuning jobs read from their run directories. Run by hand;
prints markdown tables (results: bench/finetune.md).

    python bench/bench_finetune.py throughput HF_DIR [--task sst2] [--rows 2048] [--repeats 2]
    python bench/bench_finetune.py walltime JOB_DIR [JOB_DIR ...]

``throughput``: per repeat, two processes with ``OMP_NUM_THREADS=--threads``:

- ours: ``pretrain finetune HF_DIR --task T --preset small --seeds 1 lrs=[1e-4]
  data.max_train_rows=R epochs=1 train.precision=fp32`` (fp32, AdamW, DeepSpeed ZeRO-0, one rank; a micro batch is
  padded to its longest row);
- Hugging Face: ``AutoModelForSequenceClassification`` from the same directory, trained by
  ``transformers.Trainer`` on the *same encoded rows* (``pretrain.downstream.task_data``,
  the same sample, max_length and tokenizer) with ``DataCollatorWithPadding`` (pad to the
  longest row), the same batch, lr, warmup, weight decay, betas, epsilon and clipping.

Throughput is non-padding training tokens per second from the end of step ``--warmup`` to
the last step, in both. ``walltime``: per job directory (``<run>/finetune/<task>``), the
runs' ``wall_time_s`` from their summary.json and the job's total.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _env(threads: int) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def _overrides(args: argparse.Namespace) -> List[str]:
    # fp32 on both sides: the small preset's bf16 is ours alone (the Trainer side runs fp32)
    return ["lrs=[1e-4]", f"data.max_train_rows={args.rows}", "epochs=1", "train.log_every=" + str(args.warmup),
            "train.precision=fp32"]


def _config(args: argparse.Namespace):
    from pretrain.downstream.config import load_finetune_config
    from pretrain.downstream.runner import pretrained_identity

    family = pretrained_identity(args.model)["family"]
    return load_finetune_config(family, "small", _overrides(args), {"pretrained": args.model, "task": args.task})


def run_ours(args: argparse.Namespace, work: Path, repeat: int) -> Dict:
    out = work / f"ours-{repeat}"
    cmd = [sys.executable, "-m", "pretrain.cli", "finetune", args.model, "--task", args.task, "--preset", "small",
           "--seeds", "1", "--out", str(out), *_overrides(args)]
    subprocess.run(cmd, cwd=REPO, env=_env(args.threads), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (run,) = out.glob("lr-*/seed-1")
    train = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r["kind"] == "train"]
    first, last = train[0], train[-1]
    seconds = last["time_s"] - first["time_s"]
    return {"tokens_per_s": (last["tokens_seen"] - first["tokens_seen"]) / seconds,
            "ms_per_step": 1000 * seconds / (last["step"] - first["step"]), "steps": last["step"]}


def hf_worker(args: argparse.Namespace) -> None:
    """(In its own process.) transformers.Trainer on the same rows; writes JSON to --out."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        PreTrainedTokenizerFast,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from pretrain.downstream.source import load_pretrained
    from pretrain.downstream.task_data import load_task_data

    torch.set_num_threads(args.threads)
    cfg = _config(args)
    pre = load_pretrained(args.model)
    data = load_task_data(args.task, pre.tokenizer, cfg.data.max_length, pre.model_cfg.type_vocab_size,
                          cfg.data.source, cfg.data.max_train_rows, 1)
    enc = data.train
    rows = [{"input_ids": enc.input_ids[i].tolist(), "token_type_ids": enc.token_type_ids[i].tolist(),
             "attention_mask": [1] * len(enc.input_ids[i]), "labels": int(enc.labels[i])} for i in range(len(enc))]
    tok = PreTrainedTokenizerFast(tokenizer_object=pre.tokenizer.tokenizer, pad_token=pre.tokenizer.tokenizer.id_to_token(pre.tokenizer.pad_id))
    pad = DataCollatorWithPadding(tok)
    tokens: List[int] = []

    def collate(examples):
        batch = pad(examples)
        tokens.append(int(batch["attention_mask"].sum()))
        return batch

    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=data.num_labels)
    step_end: Dict[int, float] = {}

    class StepTimes(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            step_end[state.global_step] = time.perf_counter()

    t, o = cfg.train, cfg.train.optimizer
    steps = len(rows) // t.global_batch_size
    with tempfile.TemporaryDirectory(prefix="bench-ft-hf-") as out:
        targs = TrainingArguments(
            output_dir=out, max_steps=steps, per_device_train_batch_size=t.global_batch_size, learning_rate=1e-4,
            weight_decay=o.weight_decay, adam_beta1=o.betas[0], adam_beta2=o.betas[1], adam_epsilon=o.eps,
            max_grad_norm=t.gradient_clipping, lr_scheduler_type="linear", warmup_steps=round(cfg.warmup_fraction * steps),
            logging_steps=steps, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
            seed=1, disable_tqdm=True, dataloader_drop_last=True)
        Trainer(model=model, args=targs, train_dataset=rows, data_collator=collate, callbacks=[StepTimes()]).train()
    w = args.warmup
    Path(args.out).write_text(json.dumps({
        "tokens_per_s": sum(tokens[w:steps]) / (step_end[steps] - step_end[w]),
        "ms_per_step": 1000 * (step_end[steps] - step_end[w]) / (steps - w), "steps": steps}))


def run_hf(args: argparse.Namespace, work: Path, repeat: int) -> Dict:
    out = work / f"hf-{repeat}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "throughput", args.model, "--worker", "--task", args.task,
           "--rows", str(args.rows), "--threads", str(args.threads), "--warmup", str(args.warmup), "--out", str(out)]
    subprocess.run(cmd, cwd=REPO, env=_env(args.threads), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(out.read_text())


def throughput(args: argparse.Namespace) -> None:
    load_before, t0 = os.getloadavg(), time.time()
    pairs = []
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        for r in range(args.repeats):
            ours, hf = run_ours(args, Path(tmp), r), run_hf(args, Path(tmp), r)
            print(f"  #{r + 1}: ours {ours['tokens_per_s']:.0f} tok/s, Hugging Face {hf['tokens_per_s']:.0f} tok/s",
                  file=sys.stderr)
            pairs.append((ours, hf))
    cfg = _config(args)
    print(f"Fine-tuning {args.task} from {args.model}: {args.rows} rows, max_length {cfg.data.max_length}, batch "
          f"{cfg.train.global_batch_size}, fp32, {args.threads} thread(s), steps {args.warmup + 1}-{pairs[0][0]['steps']} "
          f"measured, {args.repeats} pair(s) (load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after; "
          f"{time.time() - t0:.0f} s in all)\n")
    print("| ours tokens/s | HF Trainer tokens/s | ratio | ratio per pair | ours / HF ms/step |")
    print("|---:|---:|---:|---|---:|")
    ours = statistics.median(p[0]["tokens_per_s"] for p in pairs)
    hf = statistics.median(p[1]["tokens_per_s"] for p in pairs)
    ratios = ", ".join(f"{o['tokens_per_s'] / h['tokens_per_s']:.2f}" for o, h in pairs)
    ms = (statistics.median(p[0]["ms_per_step"] for p in pairs), statistics.median(p[1]["ms_per_step"] for p in pairs))
    print(f"| {ours:.0f} | {hf:.0f} | {ours / hf:.2f}x | {ratios} | {ms[0]:.0f} / {ms[1]:.0f} |")


def walltime(jobs: List[str]) -> None:
    print("| job | runs | train rows | steps per run | wall time per run (s) | job total (s) | score |")
    print("|---|---:|---:|---:|---|---:|---|")
    grand = 0.0
    for job in map(Path, jobs):
        summaries = [json.loads(p.read_text()) for p in sorted(job.glob("lr-*/seed-*/summary.json"))]
        if not summaries:
            raise SystemExit(f"error: no runs with summary.json in {job}")
        walls = [s["wall_time_s"] for s in summaries]
        scores = json.loads((job / "scores.json").read_text()) if (job / "scores.json").is_file() else None
        score = f"{scores['main_metric']} {100 * scores['score']:.2f}" if scores else "-"
        grand += sum(walls)
        print(f"| {job} | {len(walls)} | {summaries[0]['num_train_rows']} | {summaries[0]['steps']} "
              f"| {', '.join(f'{w:.0f}' for w in walls)} | {sum(walls):.0f} | {score} |")
    print(f"\nAll jobs: {grand:.0f} s of training and evaluation ({grand / 60:.1f} min).")


def main(argv: List[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("model", help="a Hugging Face model directory (e.g. pretrain export of a checkpoint)")
    t.add_argument("--task", default="sst2")
    t.add_argument("--rows", type=int, default=2048)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--warmup", type=int, default=4, help="steps left out of the measurement")
    t.add_argument("--repeats", type=int, default=2)
    t.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    t.add_argument("--out", help=argparse.SUPPRESS)
    w = sub.add_parser("walltime")
    w.add_argument("jobs", nargs="+", help="job directories of pretrain finetune")
    args = p.parse_args(argv)
    if args.what == "walltime":
        return walltime(args.jobs)
    if args.worker:
        return hf_worker(args)
    return throughput(args)


if __name__ == "__main__":
    main()
