"""Data-dir commands: validate-data."""
from __future__ import annotations

import argparse


def _validate(args: argparse.Namespace) -> int:
    from ..data.validate import validate_datadir

    problems = validate_datadir(args.dir, trials=args.trials, check_audio=not args.no_audio_check)
    for p in problems:
        print(p)
    if problems:
        print(f"{args.dir}: {len(problems)} problem(s)")
        return 1
    print(f"{args.dir}: OK")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the data-dir commands."""
    p = sub.add_parser("validate-data", help="report every inconsistency of a Kaldi-style data dir")
    p.add_argument("dir", help="data dir (wav.scp, utt2spk, ...)")
    p.add_argument("--trials", nargs="*", default=[], help="trial lists whose keys must exist in the dir")
    p.add_argument("--no-audio-check", action="store_true", help="do not check that audio files exist")
    p.set_defaults(func=_validate)
