"""Training-throughput benchmark, run by hand; prints a markdown table (results: bench/train.md).

    python bench/bench_train.py                          # smoke + small, fp32 + bf16, 1 and 2 threads
    python bench/bench_train.py --presets smoke --precisions bf16 --threads 2
    python bench/bench_train.py --threads 1 --steps 10      # a slow CPU: fewer steps per cell

Each cell is one real ``pretrain train configs/recipe/roberta.yaml --preset P`` run in its
own process (the RoBERTa recipe: dynamic masking, AdamW, DeepSpeed ZeRO-0, one rank) on
the embedded pydoc corpus, with ``OMP_NUM_THREADS`` set to the thread count. Throughput is
read back from the run's metrics.jsonl: non-padding training tokens per second and
milliseconds per optimizer step over every log window but the first (which holds
start-up: kernel warm-up, first-touch allocations), plus the median and the best of those
windows' rates — on a machine shared with other jobs the best window is the closest to
the machine's own speed. No eval or checkpoint falls inside a measured window. Shards and
runs go to a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import yaml

from pretrain.training.hardware import cpu_features, cpu_name

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "recipe" / "roberta.yaml"
LOG_EVERY = 5
STEPS = {"smoke": 40, "small": 20}  # optimizer steps per run, first log window discarded


def run_one(work: Path, preset: str, precision: str, threads: int, steps: int | None = None) -> Dict:
    """Train one cell for ``steps`` optimizer steps (default ``STEPS[preset]``); return its
    throughput numbers (raises CalledProcessError on failure)."""
    steps = steps or STEPS[preset]
    run = work / "runs" / f"{preset}-{precision}-t{threads}"
    cmd = [
        sys.executable, "-m", "pretrain.cli", "train", str(RECIPE), "--preset", preset,
        f"run_dir={run}", f"data.output_dir={work / 'shards' / preset}",
        f"train.precision={precision}", f"train.max_steps={steps}", f"train.log_every={LOG_EVERY}",
        f"train.eval_every={steps}", f"train.checkpoint_every={steps}", "train.eval_max_batches=1",
        "train.schedule.warmup_steps=1",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = str(threads)
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train"]
    summary = json.loads((run / "summary.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    first, last = train[0], train[-1]
    tokens = last["tokens_seen"] - first["tokens_seen"]
    seconds = last["time_s"] - first["time_s"]
    n = last["step"] - first["step"]
    windows = sorted(r["tokens_per_s"] for r in train[1:])
    return {
        "preset": preset,
        "precision": precision,
        "threads": threads,
        "params_m": summary["num_parameters"] / 1e6,
        "tokens_per_step": tokens / n,
        "tokens_per_s": tokens / seconds,
        "ms_per_step": 1000.0 * seconds / n,
        "median_window": windows[len(windows) // 2],
        "best_window": windows[-1],
        "global_batch": cfg["train"]["global_batch_size"],
    }


def main(argv: List[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="smoke,small")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--steps", type=int, default=None,
                   help=f"optimizer steps per cell, a multiple of {LOG_EVERY} and at least {2 * LOG_EVERY} "
                        f"(default: {', '.join(f'{k} {v}' for k, v in STEPS.items())})")
    args = p.parse_args(argv)
    if args.steps is not None and (args.steps % LOG_EVERY or args.steps < 2 * LOG_EVERY):
        p.error(f"--steps {args.steps}: use a multiple of {LOG_EVERY}, at least {2 * LOG_EVERY} "
                "(the first log window holds start-up and is not measured)")

    rows = []
    load_before = os.getloadavg()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for preset in args.presets.split(","):
            for precision in args.precisions.split(","):
                for threads in map(int, args.threads.split(",")):
                    r = run_one(Path(tmp), preset, precision, threads, args.steps)
                    print(f"  {preset} {precision} threads={threads}: {r['tokens_per_s']:.0f} tok/s", file=sys.stderr)
                    rows.append(r)
    load_after = os.getloadavg()

    print(f"Training throughput, RoBERTa recipe on pydoc, DeepSpeed ZeRO-0, 1 rank, CPU "
          f"({cpu_name()}; {cpu_features()}; {os.cpu_count()} cores; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
          f"{time.time() - t0:.0f} s in all)\n")
    print("| preset | params | global batch | tokens/step | precision | threads | tokens/s | ms/step "
          "| tokens/s median window | tokens/s best window |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['preset']} | {r['params_m']:.2f}M | {r['global_batch']} | {r['tokens_per_step']:.0f} | {r['precision']} "
              f"| {r['threads']} | {r['tokens_per_s']:.0f} | {r['ms_per_step']:.0f} | {r['median_window']:.0f} "
              f"| {r['best_window']:.0f} |")


if __name__ == "__main__":
    main()
