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


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="data-prep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a shard directory from a data config")
    b.add_argument("config", help="data config YAML (configs/data/*.yaml)")
    b.add_argument("overrides", nargs="*", help="key=value overrides of the data config")
    b.add_argument("--force", action="store_true", help="rebuild even if a complete directory exists")
    b.set_defaults(fn=_build)
    i = sub.add_parser("inspect", help="counts, length histogram and decoded examples of a shard directory")
    i.add_argument("directory")
    i.add_argument("--examples", type=int, default=3, help="decoded examples to show")
    i.add_argument("--split", default="train")
    i.set_defaults(fn=_inspect)
    args = p.parse_args(argv)
    return run_cli(args.fn, args)


if __name__ == "__main__":
    sys.exit(main())
