"""Our trainer against the Hugging Face Trainer on the same model size, data, sequence length
and batch, and the model FLOPs utilization (MFU) ours reaches on this machine. Run by hand;
prints a markdown table (results: bench/train.md).

    python bench/bench_hf_trainer.py                       # small preset, fp32 + bf16, 1 thread
    python bench/bench_hf_trainer.py --precisions bf16 --steps 30 --threads 2

Per precision, three measurements, each in its own process with ``OMP_NUM_THREADS`` set to
``--threads``:

- ours: ``pretrain train configs/recipe/roberta.yaml --preset P`` (dynamic masking, AdamW,
  DeepSpeed ZeRO-0, one rank; the MLM logits are computed at the masked positions only and
  a micro batch is padded to its longest row);
- Hugging Face: ``transformers.Trainer`` on ``BertForMaskedLM`` of the same shape (layers,
  hidden, heads, feed-forward, vocabulary, positions, tied decoder, dropout), fed the *same
  unmasked rows* of the same shards through ``DataCollatorForLanguageModeling`` (15%
  masking, 80/10/10, padding to the longest row), with the same optimizer settings, global
  batch, micro batch and accumulation; ``bf16`` there means autocast, the Trainer's CPU
  mixed precision;
- the CPU peak: the best FLOP/s of a large square matmul in that precision
  (``torch.matmul``, 2·n³ FLOPs), the reference for MFU.

Throughput is non-padding tokens per second between the end of step ``--warmup`` and the
last step (start-up, first-touch allocations and the first steps are left out), in both
runs. The pair (ours, Hugging Face) runs ``--repeats`` times in turn; the table gives the
median of each and the range of the per-pair ratios, since a machine shared with other
jobs slows whichever run a neighbour's burst falls on. MFU = tokens/s × model FLOPs per token (``pretrain.training.mfu``: 6N + 12·L·H·T over each
row's own length, from ours' metrics) / measured peak; the Hugging Face MFU uses the same
model FLOPs, since the model is the same size.
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
RECIPE = REPO / "configs" / "recipe" / "roberta.yaml"
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _env(threads: int) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def _config(preset: str, shards: Path, overrides: List[str]):
    from pretrain.config import load_run_config

    return load_run_config(RECIPE, preset, [f"data.output_dir={shards}", *overrides])


def run_ours(work: Path, preset: str, precision: str, threads: int, steps: int, warmup: int, repeat: int) -> Dict:
    """One real training run of our trainer; throughput and model FLOP/s after step ``warmup``."""
    run = work / "runs" / f"ours-{precision}-{repeat}"
    cmd = [sys.executable, "-m", "pretrain.cli", "train", str(RECIPE), "--preset", preset, f"run_dir={run}",
           f"data.output_dir={work / 'shards'}", f"train.precision={precision}", f"train.max_steps={steps}",
           f"train.log_every={warmup}", f"train.eval_every={steps}", f"train.checkpoint_every={steps}",
           "train.eval_max_batches=1", "train.schedule.warmup_steps=1"]
    subprocess.run(cmd, cwd=REPO, env=_env(threads), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train"]
    first, last = train[0], train[-1]  # the first window (start-up) is only the starting point
    assert first["step"] == warmup, first
    seconds = last["time_s"] - first["time_s"]
    tokens = last["tokens_seen"] - first["tokens_seen"]
    # model_tflops is per window; weight each window by its length in seconds
    flops = sum(r["model_tflops"] * 1e12 * (r["time_s"] - p["time_s"]) for p, r in zip(train, train[1:]))
    summary = json.loads((run / "summary.json").read_text())
    return {"tokens_per_s": tokens / seconds, "ms_per_step": 1000 * seconds / (last["step"] - first["step"]),
            "flops_per_token": flops / tokens,
            "params": summary["num_parameters"]}


def hf_worker(args: argparse.Namespace) -> None:
    """(In its own process.) Train BertForMaskedLM with transformers.Trainer; write JSON."""
    import torch
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        PreTrainedTokenizerFast,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from data_prep.shards import ShardSet
    from data_prep.tokenizer import SPECIAL_TOKENS

    torch.set_num_threads(args.threads)
    cfg = _config(args.preset, Path(args.shards), [])
    m, t = cfg.model, cfg.train
    shards = ShardSet(args.shards)
    split = shards["train"]
    rows = [{"input_ids": split.row(i)["input_ids"].tolist()} for i in range(len(split))]
    roles = SPECIAL_TOKENS[cfg.data.tokenizer.kind]
    tok = PreTrainedTokenizerFast(tokenizer_file=str(shards.tokenizer_path), bos_token=roles["cls"],
                                  cls_token=roles["cls"], eos_token=roles["sep"], sep_token=roles["sep"],
                                  pad_token=roles["pad"], unk_token=roles["unk"], mask_token=roles["mask"])
    mlm = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=cfg.data.masking.mlm_probability)
    tokens_per_micro_batch: List[int] = []

    def collate(examples):
        batch = mlm(examples)
        tokens_per_micro_batch.append(int(batch["attention_mask"].sum()))
        return batch

    model = BertForMaskedLM(BertConfig(
        # the vocabulary size ours trains with (the preset's, which may exceed the trained tokenizer's)
        vocab_size=m.vocab_size or len(tok), hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads, intermediate_size=m.intermediate_size,
        max_position_embeddings=m.max_position_embeddings, type_vocab_size=m.type_vocab_size, hidden_act=m.hidden_act,
        hidden_dropout_prob=m.hidden_dropout_prob, attention_probs_dropout_prob=m.attention_probs_dropout_prob,
        layer_norm_eps=m.layer_norm_eps, pad_token_id=tok.pad_token_id, tie_word_embeddings=True))
    step_end: Dict[int, float] = {}

    class StepTimes(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            step_end[state.global_step] = time.perf_counter()

    o = t.optimizer
    accumulation = t.global_batch_size // t.micro_batch_size
    with tempfile.TemporaryDirectory(prefix="bench-hf-") as out:
        targs = TrainingArguments(
            output_dir=out, max_steps=args.steps, per_device_train_batch_size=t.micro_batch_size,
            gradient_accumulation_steps=accumulation, learning_rate=o.lr, weight_decay=o.weight_decay,
            adam_beta1=o.betas[0], adam_beta2=o.betas[1], adam_epsilon=o.eps, max_grad_norm=t.gradient_clipping,
            lr_scheduler_type="linear", warmup_steps=1, logging_steps=args.steps, save_strategy="no", report_to=[],
            bf16=args.precision == "bf16", use_cpu=True, dataloader_num_workers=0, seed=t.seed, disable_tqdm=True)
        Trainer(model=model, args=targs, train_dataset=rows, data_collator=collate, callbacks=[StepTimes()]).train()
    w = args.warmup

    def rate(a: int, b: int) -> float:  # tokens/s from the end of step a to the end of step b
        return sum(tokens_per_micro_batch[a * accumulation: b * accumulation]) / (step_end[b] - step_end[a])

    Path(args.out).write_text(json.dumps({
        "tokens_per_s": rate(w, args.steps), "ms_per_step": 1000 * (step_end[args.steps] - step_end[w]) / (args.steps - w),
        "params": sum(p.numel() for p in model.parameters())}))


def run_hf(work: Path, preset: str, precision: str, threads: int, steps: int, warmup: int) -> Dict:
    out = work / f"hf-{precision}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "hf", "--preset", preset, "--shards",
           str(work / "shards"), "--precision", precision, "--threads", str(threads), "--steps", str(steps),
           "--warmup", str(warmup), "--out", str(out)]
    subprocess.run(cmd, cwd=REPO, env=_env(threads), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(out.read_text())


def peak_worker(args: argparse.Namespace) -> None:
    """(In its own process.) Best FLOP/s of an n x n matmul in the given precision."""
    import torch

    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    n = 2048
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    best = 0.0
    for _ in range(args.steps):
        torch.matmul(a, b)  # warm-up of this round
        t0 = time.perf_counter()
        for _ in range(3):
            torch.matmul(a, b)
        best = max(best, 3 * 2 * n**3 / (time.perf_counter() - t0))
    Path(args.out).write_text(json.dumps({"flops": best}))


def run_peak(work: Path, precision: str, threads: int) -> float:
    out = work / f"peak-{precision}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "peak", "--precision", precision,
           "--threads", str(threads), "--steps", "8", "--out", str(out)]
    subprocess.run(cmd, cwd=REPO, env=_env(threads), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(out.read_text())["flops"]


def main(argv: List[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=25, help="optimizer steps per run")
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the measurement")
    p.add_argument("--repeats", type=int, default=3, help="(ours, Hugging Face) pairs per precision")
    p.add_argument("--worker", choices=["hf", "peak"], help=argparse.SUPPRESS)
    for hidden in ("--shards", "--precision", "--out"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker == "hf":
        return hf_worker(args)
    if args.worker == "peak":
        return peak_worker(args)

    from data_prep.build import build

    load_before, t0 = os.getloadavg(), time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-hf-trainer-") as tmp:
        work = Path(tmp)
        build(_config(args.preset, work / "shards", []).data)
        for precision in args.precisions.split(","):
            pairs = []
            for r in range(args.repeats):
                ours = run_ours(work, args.preset, precision, args.threads, args.steps, args.warmup, r)
                hf = run_hf(work, args.preset, precision, args.threads, args.steps, args.warmup)
                print(f"  {precision} #{r + 1}: ours {ours['tokens_per_s']:.0f} tok/s, Hugging Face "
                      f"{hf['tokens_per_s']:.0f} tok/s", file=sys.stderr)
                pairs.append((ours, hf))
            rows.append((precision, pairs, run_peak(work, precision, args.threads)))
    load_after = os.getloadavg()

    cfg = _config(args.preset, Path("unused"), [])
    m, t = cfg.model, cfg.train
    print(f"Our trainer vs transformers.Trainer, preset {args.preset} (L={m.num_hidden_layers}, H={m.hidden_size}, "
          f"A={m.num_attention_heads}, FFN={m.intermediate_size}, seq {cfg.data.max_seq_length}, global batch "
          f"{t.global_batch_size} = {t.global_batch_size // t.micro_batch_size} x {t.micro_batch_size}), pydoc, "
          f"{args.threads} thread(s), steps {args.warmup + 1}-{args.steps} measured, {args.repeats} pair(s) per "
          f"precision (load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after; {time.time() - t0:.0f} s in all)\n")
    print("| precision | ours tokens/s | HF Trainer tokens/s | ratio | ratio per pair | ours / HF ms/step "
          "| params ours / HF | model GFLOP/token | CPU peak GFLOP/s (matmul) | ours MFU | HF MFU |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for precision, pairs, peak in rows:
        def med(who: int, key: str) -> float:
            return statistics.median(p[who][key] for p in pairs)

        ours_tps, hf_tps = med(0, "tokens_per_s"), med(1, "tokens_per_s")
        fpt = statistics.median(p[0]["flops_per_token"] for p in pairs)
        ratios = ", ".join(f"{o['tokens_per_s'] / h['tokens_per_s']:.2f}" for o, h in pairs)
        print(f"| {precision} | {ours_tps:.0f} | {hf_tps:.0f} | {ours_tps / hf_tps:.2f}x | {ratios} "
              f"| {med(0, 'ms_per_step'):.0f} / {med(1, 'ms_per_step'):.0f} | {pairs[0][0]['params'] / 1e6:.2f}M / "
              f"{pairs[0][1]['params'] / 1e6:.2f}M | {fpt / 1e9:.4f} | {peak / 1e9:.0f} "
              f"| {ours_tps * fpt / peak:.1%} | {hf_tps * fpt / peak:.1%} |")

if __name__ == "__main__":
    main()
