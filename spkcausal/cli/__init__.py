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
from collections.abc import Callable

from ..utils import USER_OS_ERRNOS, SpkcausalError, output_error, passive_omp_wait

ORDER = ["synth", "prepare", "data", "trials", "longtail", "shards", "train", "extract", "score", "calibrate",
         "tde", "identify", "stage", "geometry", "report", "model", "plan", "infer", "export"]


class Parser(argparse.ArgumentParser):
    """argparse with its errors in one line (`spkcausal CMD: error: ...`, exit 2) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print one line naming the command and the mistake, and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def finite_float(text: str) -> float:
    """An argparse type: a finite number (NaN and inf would make every comparison false)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    return parse


count = _int_at_least(0)  # argparse type: workers and the like (0 allowed)
positive_int = _int_at_least(1)  # argparse type: sizes, resamples, rates


def alpha_or_stored(text: str) -> float | str:
    """An argparse type for TDE's alpha: a finite number, or `stored` (the experiment's tde_alpha.json)."""
    return text if text == "stored" else finite_float(text)


def add_model_source(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """The --exp / --ckpt pair every command that loads a trained model takes (exactly one is required)."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--exp", help="experiment dir: avg_model.pt, else the newest complete checkpoint")
    src.add_argument("--ckpt", help="a checkpoint file")
    return src


def build_parser() -> argparse.ArgumentParser:
    """Collect every command module's subcommands into one parser."""
    parser = Parser(
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
    passive_omp_wait()  # before any command imports torch
    args = build_parser().parse_args(argv)
    import logging

    logging.raiseExceptions = False  # a log line that cannot be written (full disk) must not print a traceback
    try:
        rc = args.func(args)
    except SpkcausalError as e:
        print(f"spkcausal {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in USER_OS_ERRNOS or os.environ.get("SPKCAUSAL_DEBUG"):
            return _internal(args.command, e)
        # a full disk or an unwritable place the library did not already name: still the user's to fix
        print(f"spkcausal {args.command}: error: {output_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spkcausal {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        return _internal(args.command, e)
    return int(rc or 0)


def _internal(command: str, e: BaseException) -> int:
    """A bug of ours: one line naming the exception (its first line), exit 1; SPKCAUSAL_DEBUG=1 re-raises."""
    if os.environ.get("SPKCAUSAL_DEBUG"):
        raise e
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    print(f"spkcausal {command}: internal error: {type(e).__name__}: {first} "
          "(set SPKCAUSAL_DEBUG=1 for the traceback)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
