"""Expected cost of every ablation in configs/ablation/ at one preset, from the composed configs
alone (nothing is trained): per table the runs (arms × seeds), tokens, training FLOPs
(``pretrain.models.encoder.flops_per_token``: 6N + 12·L·H·T per token, N the applied
parameters, so shared ALBERT layers cost what they compute) and the GPU hours at an assumed
model-FLOPs utilization of a given peak. Evaluation, data preparation and start-up are not
counted.

    python bench/suite_cost.py --preset medium [--peak 312e12] [--mfu 0.3] [key=value ...]
    python bench/suite_cost.py --preset small --tokens-per-s 8000 [key=value ...]   # CPU hours

``--tokens-per-s`` gives the hours at a measured training throughput instead (e.g. the
committed small roberta_masking run: 7,087,859 tokens in 883 s per arm on 2 CPU cores).

Prints a Markdown table (docs/ablations.md quotes it). Overrides apply to every arm, as for
``pretrain ablate`` (e.g. ``train.max_steps=992`` for roberta_batch_size at ``small``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List

from omegaconf import OmegaConf

from common.errors import UserError, run_cli
from pretrain.ablations.runner import compose_arms
from pretrain.models.describe import meta_model
from pretrain.models.encoder import flops_per_token

# roberta_batch_size needs steps divisible by 32 (its 32× arm); these presets' own are not
# (medium's 20,480 is).
STEP_FIX = {"small": ["train.max_steps=992"], "smoke": ["train.max_steps=192"]}


def table_cost(path: Path, preset: str, overrides: List[str]) -> tuple:
    """(runs, tokens, FLOPs) of one ablation at ``preset``."""
    extra = STEP_FIX.get(preset, []) if path.stem == "roberta_batch_size" else []
    _abl, cfgs = compose_arms(path, preset, [*overrides, *extra], "runs")
    tokens = flops = 0.0
    for cfg in cfgs.values():
        model_cfg = OmegaConf.to_object(cfg.model)
        if model_cfg.vocab_size is None:
            model_cfg.vocab_size = cfg.data.tokenizer.vocab_size
        seq = cfg.data.max_seq_length
        n = cfg.train.max_steps * cfg.train.global_batch_size * seq
        tokens += n
        flops += n * flops_per_token(meta_model(model_cfg, cfg.objective.sentence), seq)
    return len(cfgs), tokens, flops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--peak", type=float, default=312e12, help="peak FLOP/s of one GPU (default: A100 bf16)")
    ap.add_argument("--mfu", type=float, default=0.3, help="assumed model-FLOPs utilization (default 0.3)")
    ap.add_argument("--tokens-per-s", type=float, default=None, help="hours at this measured throughput instead")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    rate = (f"hours at {args.tokens_per_s:,.0f} tokens/s" if args.tokens_per_s
            else f"GPU hours at {args.mfu:.0%} of {args.peak / 1e12:g} TFLOP/s")
    print(f"| ablation (`--preset {args.preset}`) | runs | tokens | training PFLOP | {rate} |")
    print("|---|---|---|---|---|")
    total = 0.0
    for path in sorted(Path("configs/ablation").glob("*.yaml")):
        try:
            runs, tokens, flops = table_cost(path, args.preset, list(args.overrides))
        except UserError as e:  # e.g. a distillation ablation whose teacher run does not exist yet
            print(f"| {path.stem} | not composed: {e} | | | |")
            continue
        hours = (tokens / args.tokens_per_s if args.tokens_per_s else flops / (args.peak * args.mfu)) / 3600
        total += hours
        print(f"| {path.stem} | {runs} | {tokens / 1e6:,.0f}M | {flops / 1e15:,.1f} | {hours:.1f} |")
    print(f"| all | | | | {total:.1f} |")


if __name__ == "__main__":
    run_cli(main)
