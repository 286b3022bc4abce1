"""``data-prep``: build shard directories from a corpus and look inside them.

    data-prep build CONFIG [key=value ...]     e.g. corpus=PATH output_dir=DIR
    data-prep inspect DIR [--examples N]
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from common.errors import run_cli


def _build(args: argparse.Namespace) -> None:
    from data_prep.build import build
    from data_prep.config import load_data_config

    cfg = load_data_config(args.config, args.overrides)
    out = build(cfg, force=args.force)
    print(out)


def _inspect(args: argparse.Namespace) -> None:
    from data_prep.inspect import inspect

    inspect(args.directory, num_examples=args.examples, split=args.split)


def build_parser() -> argparse.ArgumentParser:
    """The ``data-prep`` argument parser: every subcommand and option with its help text."""
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="data-prep", description=__doc__, formatter_class=raw)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    b = sub.add_parser("build", help="build a shard directory from a data config", formatter_class=raw,
                       description="Read the corpus, split sentences, train the tokenizer, make and mask the\n"
                                   "instances and write train/validation shards (resumable; cached by the config's\n"
                                   "fingerprint under data-cache/ unless output_dir= is set). Prints the directory.")
    b.add_argument("config", help="data config YAML (configs/data/*.yaml)")
    b.add_argument("overrides", nargs="*", metavar="key=value",
                   help="data config overrides, e.g. corpus=PATH output_dir=DIR max_documents=100")
    b.add_argument("--force", action="store_true", help="rebuild even if a complete directory exists")
    b.set_defaults(fn=_build)
    i = sub.add_parser("inspect", help="counts, length histogram and decoded examples of a shard directory",
                       formatter_class=raw, description="Summarise a shard directory made by `data-prep build`.")
    i.add_argument("directory", help="shard directory (holds manifest.json)")
    i.add_argument("--examples", type=int, default=3, help="decoded examples to show (default 3)")
    i.add_argument("--split", default="train", help="split to show: train or validation (default train)")
    i.set_defaults(fn=_inspect)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    return run_cli(args.fn, args)


if __name__ == "__main__":
    sys.exit(main())
