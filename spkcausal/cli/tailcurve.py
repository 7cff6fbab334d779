"""Long-tail protocol commands: tail-curve (the tail cost against the imbalance R, per setting, with its power
figures) and session-halves (seen-speaker EER by shot group within each session half)."""
from __future__ import annotations

import argparse

from . import finite_float, positive_int


def _curve(args: argparse.Namespace) -> int:
    from ..report.curve import CurveOptions, parse_spec, write_tail_curve
    from ..results.evidence import Intervals

    specs = [parse_spec(s) for s in args.run]
    opts = CurveOptions(args.variant, tuple(args.baseline) if args.baseline else None,
                        tuple(args.systems) if args.systems else None, args.sessions, args.test_data)
    text, _ = write_tail_curve(specs, args.out, opts, Intervals(args.p_target, args.bootstrap))
    print(text, end="")
    print(f"\nwrote {args.out}/tail_curve.md, tail_curve.json and tail_curve.png")
    return 0


def _halves(args: argparse.Namespace) -> int:
    from ..report.sessiontable import write_session_table
    from ..results.evidence import Intervals

    text, _ = write_session_table(args.exps, args.out, args.variants, args.test_data, args.train_data,
                                  Intervals(args.p_target, args.bootstrap))
    print(text, end="")
    print(f"\nwrote {args.out}/session_halves.md and session_halves.json")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add tail-curve and session-halves."""
    p = sub.add_parser("tail-curve", help="the long-tail protocol's tail cost against the imbalance R per setting: "
                                          "table (mean [95%% CI], seeds, MDE), precision, figure")
    p.add_argument("--run", action="append", required=True, metavar="SETTING:R=DIR",
                   help="an experiments dir of the protocol at imbalance R in a setting (e.g. scratch:30=out/exp, "
                        "finetune:30=ft/exp): its runs (subdirs with run.json) hold the baseline over seeds and its "
                        "balanced control; repeat for every point")
    p.add_argument("--out", required=True, help="dir for tail_curve.md, tail_curve.json and tail_curve.png")
    p.add_argument("--variant", default="cosine", help="scoring variant the cost is of (default cosine)")
    p.add_argument("--baseline", nargs="+", metavar="SYSTEM",
                   help="the baseline system's name, where a dir holds controls of several; several names for "
                        "several dirs (each dir's point takes the one its controls are of)")
    p.add_argument("--systems", nargs="+", metavar="SYSTEM",
                   help="only these systems' runs (run.json system, e.g. cnaam) beside the controls and the systems "
                        "they control, for their shares (default: every run of each DIR)")
    p.add_argument("--p-target", type=finite_float, default=0.01, help="minDCF's prior (default 0.01)")
    p.add_argument("--bootstrap", type=positive_int, default=1000,
                   help="resamples of the one-seed and session-half intervals (default 1000)")
    p.add_argument("--sessions", action="store_true",
                   help="also the seen-speaker costs within each session half (the test utterance's session in "
                        "the long-tailed training data or not), from the runs' existing score files")
    p.add_argument("--test-data", help="--sessions: the seen list's test data dir with utt2sess (default: the dir "
                                       "of the utt2spk each seen row records)")
    p.set_defaults(func=_curve)

    p = sub.add_parser("session-halves", help="seen-speaker EER by shot group within each session half (test "
                                              "utterance's session in the speaker's training data or not)")
    p.add_argument("exps", nargs="+", metavar="EXP_DIR", help="experiment dirs with seen-speaker rows (stage 5)")
    p.add_argument("--out", required=True, help="dir for session_halves.md and session_halves.json")
    p.add_argument("--variants", nargs="+", default=["cosine", "tde"], help="rows (default cosine tde)")
    p.add_argument("--test-data", help="the seen list's test data dir with utt2sess (default: the dir of the "
                                       "utt2spk each seen row records)")
    p.add_argument("--train-data", help="the training dir whose sessions count as seen (default: each row's "
                                        "shot-group dir, the run's training dir)")
    p.add_argument("--p-target", type=finite_float, default=0.01, help="minDCF's prior (default 0.01)")
    p.add_argument("--bootstrap", type=positive_int, default=1000, help="bootstrap resamples (default 1000)")
    p.set_defaults(func=_halves)
