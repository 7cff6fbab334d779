"""Back-end commands: calibrate (scores -> LLRs), qmf (calibration with quality measures),
asnorm-top (AS-norm's top-N chosen on a dev list)."""
from __future__ import annotations

import argparse

from . import finite_float


def _need(args: argparse.Namespace, cmd: str, train: tuple[str, ...], apply: tuple[str, ...]) -> str:
    """"train" or "apply", from which of --dev / --model was given (exactly one)."""
    from ..utils import UsageError

    if (args.dev is None) == (args.model is None):
        raise UsageError(f"{cmd}: give either --dev (train a model) or --model with --apply (apply one)")
    mode = "train" if args.dev else "apply"
    missing = [f"--{a.replace('_', '-')}" for a in (train if mode == "train" else apply) if getattr(args, a) is None]
    if missing:
        raise UsageError(f"{cmd} --{'dev' if mode == 'train' else 'model'} needs {' '.join(missing)}")
    return mode


def _inputs(args: argparse.Namespace):  # noqa: ANN202 (ScorerInputs; the import stays lazy)
    """The scorer stores of a back-end command (`--emb`, `--cohort`, ...)."""
    from ..scoring.cosine import ScorerInputs

    return ScorerInputs(args.emb, mean_store=args.mean_store, cohort=args.cohort, cohort_data=args.cohort_data,
                        enroll_map=args.enroll_map)


def _calibrate(args: argparse.Namespace) -> int:
    from ..pipeline.steps import train_calibration
    from ..scoring.calibration import apply_calibration_file

    if _need(args, "calibrate", ("out",), ("apply", "out")) == "train":
        print(train_calibration(args.dev, args.out, args.p_target))
    else:
        print(apply_calibration_file(args.model, args.apply, args.out))
    return 0


def _qmf(args: argparse.Namespace) -> int:
    from ..pipeline.steps import train_qmf
    from ..scoring.cosine import parse_top_n
    from ..scoring.qmf import apply_qmf_files

    inputs = _inputs(args)
    if _need(args, "qmf", ("out",), ("apply", "out")) == "train":
        print(train_qmf(args.dev, inputs.with_(top_n=parse_top_n(args.asnorm_top)), args.utt2dur, args.out,
                        p_target=args.p_target, measures=args.measures))
    else:
        print(apply_qmf_files(args.model, args.apply, inputs, args.utt2dur, args.out))
    return 0


def _asnorm_top(args: argparse.Namespace) -> int:
    from ..pipeline.steps import asnorm_top
    from ..scoring.cosine import parse_top_n

    kw = {} if args.candidates is None else {"candidates": [parse_top_n(c) for c in args.candidates]}
    print(asnorm_top(args.trials, _inputs(args), args.out, reuse=args.reuse, p_target=args.p_target,
                     allow_missing=args.allow_missing, **kw))
    return 0


def _store_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--emb", required=True, help="embedding store of the trials' keys (raw vectors, as extracted)")
    p.add_argument("--cohort", required=True, help="cohort store, as for `spkcausal score --norm asnorm`")
    p.add_argument("--cohort-data", help="data dir of the cohort store: use its per-speaker mean embeddings")
    p.add_argument("--mean-store", help="store whose mean is subtracted before scoring against the cohort")
    p.add_argument("--enroll-map", help="`enroll utt utt ...` table (enroll2utt): enrol = mean of those utterances")


def register(sub: argparse._SubParsersAction) -> None:
    """Add calibrate, qmf and asnorm-top (LLR metrics: `spkcausal eer --llr`)."""
    p = sub.add_parser("calibrate", help="train (--dev) or apply (--model --apply) linear score calibration to LLRs")
    p.add_argument("--dev", help="labelled score file to train on (`enroll test score target|nontarget`)")
    p.add_argument("--model", help="calibration model JSON to apply")
    p.add_argument("--apply", help="score file to calibrate (with --model)")
    p.add_argument("--out", help="model JSON (with --dev) or calibrated score file `enroll test llr [label]`")
    p.add_argument("--p-target", type=finite_float, default=0.01, help="training prior p_eff (default 0.01)")
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("qmf", help="train (--dev) or apply (--model --apply) calibration with quality measures")
    p.add_argument("--dev", help="labelled score file to train on; its (enroll, test) pairs are the dev trials")
    p.add_argument("--model", help="QMF model JSON to apply")
    p.add_argument("--apply", help="score file to calibrate (with --model); its pairs are the trials")
    p.add_argument("--out", help="model JSON (with --dev) or calibrated score file `enroll test llr [label]`")
    _store_options(p)
    p.add_argument("--utt2dur", nargs="+", help="utt2dur files or data dirs (utt2dur, else audio headers) "
                                                "covering every enrol and test utterance")
    p.add_argument("--asnorm-top", default="300", help="top-N of the cohort-mean measures (count or share; "
                                                       "training only, the model keeps it; default 300)")
    p.add_argument("--measures", nargs="+", metavar="MEASURE",
                   help="quality measures (training only): Q_min, Q_max, Q_enroll or Q_test with Q one of log_dur, "
                        "norm, cohort_mean (default: the _min and _max of all three)")
    p.add_argument("--p-target", type=finite_float, default=0.01, help="training prior p_eff (default 0.01)")
    p.set_defaults(func=_qmf)

    p = sub.add_parser("asnorm-top", help="choose AS-norm's top-N on a labelled dev trial list by minDCF; "
                                          "prints the count, writes the curve as JSON")
    p.add_argument("--trials", required=True, help="labelled dev trial list")
    _store_options(p)
    p.add_argument("--candidates", nargs="+", help="counts (300) and/or shares of the cohort (0.1); default "
                                                   "0.02 0.05 0.1 0.2 0.3 0.5 1.0 50 100 200 300")
    p.add_argument("--p-target", type=finite_float, default=0.01, help="minDCF prior that decides (default 0.01)")
    p.add_argument("--allow-missing", action="store_true", help="skip trials whose keys have no embedding")
    p.add_argument("--out", required=True, help="JSON: best count and minDCF / EER per candidate")
    p.add_argument("--reuse", action="store_true", help="when --out already holds a choice, print its count "
                                                        "without scoring again")
    p.set_defaults(func=_asnorm_top)
