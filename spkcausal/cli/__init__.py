"""`spkcausal <command>`: argparse only; every command lives in a submodule that defines `register`.

Each submodule of this package exposes `register(subparsers)` which adds its commands and sets
`func` to a small function that calls the library. Heavy imports (torch, matplotlib) stay inside
those functions so that `spkcausal --help` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from ..utils import SpkcausalError

ORDER = ["synth", "prepare", "data", "trials", "longtail", "shards", "train", "extract", "score", "calibrate",
         "tde", "identify", "geometry", "report", "model", "infer", "export"]


def add_model_source(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """The --exp / --ckpt pair every command that loads a trained model takes (exactly one is required)."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--exp", help="experiment dir: avg_model.pt, else the newest complete checkpoint")
    src.add_argument("--ckpt", help="a checkpoint file")
    return src


def build_parser() -> argparse.ArgumentParser:
    """Collect every command module's subcommands into one parser."""
    parser = argparse.ArgumentParser(
        prog="spkcausal",
        description="Speaker verification on long-tailed corpora: data, profiles, training, TDE, scoring.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    names = [m.name for m in pkgutil.iter_modules(__path__)]
    # in pipeline order, so `spkcausal --help` reads like a recipe; a module not listed goes last
    for name in sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        module = importlib.import_module(f"{__name__}.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `spkcausal` console script: the one place where errors become messages and exit codes.

    A user's mistake (`SpkcausalError`: bad input file, bad option or config value) prints one line and exits 2;
    anything else is a bug of ours: one line naming the exception and exit 1 (SPKCAUSAL_DEBUG=1 re-raises it
    for the traceback)."""
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except SpkcausalError as e:
        print(f"spkcausal {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spkcausal {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("SPKCAUSAL_DEBUG"):
            raise
        print(f"spkcausal {args.command}: internal error: {type(e).__name__}: {e} "
              "(set SPKCAUSAL_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
