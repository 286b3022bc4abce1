"""``pretrain``: train a run, run an ablation, rebuild result tables.

    pretrain train CONFIG [--preset NAME] [--resume] [key=value ...]
    pretrain ablate ABLATION --preset NAME [key=value ...]
    pretrain tables [--runs DIR] [--results DIR]
    pretrain describe MODEL [key=value ...] [--sentence none|nsp|sop] [--markdown]
    pretrain describe --all [--markdown]
    pretrain export CKPT --format hf OUT [--tokenizer PATH] [--drop-sentence-head]
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from data_prep.errors import run_cli


def _train(args: argparse.Namespace) -> None:
    from pretrain.config import load_run_config
    from pretrain.trainer import train

    cfg = load_run_config(args.config, args.preset, args.overrides)
    train(cfg, resume=args.resume)


def _ablate(args: argparse.Namespace) -> None:
    from pretrain.ablation import run_ablation

    run_ablation(args.ablation, args.preset, args.overrides, runs_root=args.runs, results_dir=args.results)


def _tables(args: argparse.Namespace) -> None:
    from pretrain.tables import rebuild_tables

    for path in rebuild_tables(args.runs, args.results):
        print(path)


def _describe(args: argparse.Namespace) -> None:
    from pretrain.describe import describe

    print(describe(args.model, args.overrides, args.sentence, all_presets=args.all, markdown=args.markdown))


def _export(args: argparse.Namespace) -> None:
    from pretrain.hf import export_checkpoint

    print(export_checkpoint(args.checkpoint, args.out, args.tokenizer, args.drop_sentence_head))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="pretrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The `deepspeed` launcher adds --local_rank=N; the trainer reads LOCAL_RANK from the env instead.
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="pretrain one run from a run config")
    t.add_argument("config", help="run config YAML (configs/recipe/*.yaml)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=100")
    t.add_argument("--preset", help="scale preset: configs/preset/NAME.yaml (smoke, small, ...)")
    t.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    t.set_defaults(fn=_train)

    a = sub.add_parser("ablate", help="run every arm of an ablation and write its table")
    a.add_argument("ablation", help="ablation YAML (configs/ablation/*.yaml)")
    a.add_argument("overrides", nargs="*", help="key=value overrides of every arm's run config")
    a.add_argument("--preset", required=True, help="scale preset (smoke, small, ...)")
    a.add_argument("--runs", default="runs", help="root of run directories")
    a.add_argument("--results", default="results", help="where tables and plots go")
    a.set_defaults(fn=_ablate)

    tb = sub.add_parser("tables", help="rebuild every result table from run directories, without training")
    tb.add_argument("--runs", default="runs")
    tb.add_argument("--results", default="results")
    tb.set_defaults(fn=_tables)

    d = sub.add_parser("describe", help="layers, sizes and parameter counts of a model preset or YAML")
    d.add_argument("model", nargs="?", help="preset name (configs/model/NAME.yaml) or a YAML path")
    d.add_argument("overrides", nargs="*", help="model key=value overrides, e.g. sharing=attention")
    d.add_argument("--sentence", choices=["none", "nsp", "sop"], help="sentence head to count (default: the family's paper)")
    d.add_argument("--all", action="store_true", help="every preset in configs/model")
    d.add_argument("--markdown", action="store_true", help="print a markdown table")
    d.set_defaults(fn=_describe)

    x = sub.add_parser("export", help="write a checkpoint as a Hugging Face model directory")
    x.add_argument("checkpoint", help="run directory, its checkpoints/ or one checkpoints/step-* directory")
    x.add_argument("out", help="output directory")
    x.add_argument("--format", choices=["hf"], required=True, help="hf: transformers model + tokenizer files")
    x.add_argument("--tokenizer", help="tokenizer.json to ship (default: the one of the run's shards)")
    x.add_argument("--drop-sentence-head", action="store_true", help="leave out the NSP/SOP head (RoBERTa has no class for it)")
    x.set_defaults(fn=_export)

    args, extra = p.parse_known_args(argv)
    # argparse stops filling a nargs="*" positional at the first option, so key=value pairs
    # typed after --preset arrive here: keep them as overrides (in order); anything else is
    # still an unrecognized argument.
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            p.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return run_cli(args.fn, args)


if __name__ == "__main__":
    sys.exit(main())
