"""stage: the recipes' stages 4 (decoupled systems) to 7 in one process each (spkcausal.pipeline), called once
per stage by recipes/common/stages.sh. Options are named as the recipes name their variables (--train_dir);
lists (systems, seeds, trial lists, dirs) are one space-separated word each, as the recipes pass them."""
from __future__ import annotations

import argparse


def _words(text: str | None) -> list[str]:
    return (text or "").split()


def _stage(args: argparse.Namespace) -> int:
    from ..pipeline.context import StageContext
    from ..utils import UsageError
    from .tde import floats

    try:
        seeds = [int(k) for k in _words(args.seeds)]
    except ValueError:
        raise UsageError(f"--seeds {args.seeds!r}: expected integers separated by spaces") from None
    if not _words(args.systems):
        raise UsageError("--systems names no system")
    get = lambda name: getattr(args, name, None) or ""  # noqa: E731 (options only some stages have)
    dev_dirs = _words(get("dev_dir") or get("dev_trials_dirs"))
    ctx = StageContext(
        exp=args.exp, systems=_words(args.systems), seeds=seeds, train_dir=args.train_dir,
        control_dir=args.control_dir or "", eval_dir=get("eval_dir"), val_dir=get("val_dir"),
        test_dir=get("test_dir"), trials=_words(get("trials")), enroll_map=get("enroll_map"),
        asnorm_top=get("asnorm_top") or "300", seen_trials=get("seen_trials"), seen_dir=get("seen_dir"),
        many=getattr(args, "many", None), few=getattr(args, "few", None), dev_trials=_words(get("dev_trials")),
        dev_dirs=dev_dirs,
        alphas=floats(args.alphas) if get("alphas") else None, alpha_on=get("alpha_on") or "iden_val")
    if args.stage == "decouple":
        from ..pipeline.decouple import stage_decouple

        stage_decouple(ctx)
    elif args.stage == "score":
        from ..pipeline.score import stage_score

        stage_score(ctx)
    elif args.stage == "tde":
        from ..pipeline.tde import stage_tde

        stage_tde(ctx)
    else:
        from ..pipeline.identify import stage_identify

        stage_identify(ctx)
    return 0


def _common(p: argparse.ArgumentParser, train_required: bool = True) -> None:
    p.add_argument("--exp", required=True, help="experiments dir (runs in <exp>/<run name>)")
    p.add_argument("--systems", required=True, help="system words, as for `spkcausal plan` (BASE+control: the "
                                                    "protocol's control run, on --control_dir)")
    p.add_argument("--seeds", default="", help="training seeds (none: each system once)")
    p.add_argument("--train_dir", required=train_required, default="",
                   help="the training dir (its counts define the shot groups)")
    p.add_argument("--control_dir", default="", help="the long-tail protocol's balanced control dir: the training "
                                                     "dir of the control runs (their shot groups: --train_dir's)")


def _lists(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval_dir", required=True, help="data dir of the trial lists' keys")
    p.add_argument("--trials", required=True, help="trial lists; the first one's rows are recorded")
    p.add_argument("--asnorm_top", required=True, help="AS-norm top-N: a count, a share of the cohort, or dev "
                                                       "(chosen by minDCF on the first dev list)")
    p.add_argument("--enroll_map", default="", help="`enroll utt ...` table of the lists' enrolments (enroll2utt)")
    p.add_argument("--seen_trials", default="", help="seen-speaker list, recorded by shot group")
    p.add_argument("--seen_dir", default="", help="data dir of the seen-speaker list's keys")
    p.add_argument("--many", type=int, help="Many: more than this many training utterances")
    p.add_argument("--few", type=int, help="Few: fewer than this many training utterances")


def register(sub: argparse._SubParsersAction) -> None:
    """Add stage (score, tde, identify)."""
    p = sub.add_parser("stage", help="a recipe stage over the run plan, in one process (4 decouple, 5 score, 6 tde, 7 "
                                         "identify)")
    stages = p.add_subparsers(dest="stage", metavar="STAGE")
    stages.required = True
    kw = {"allow_abbrev": False}

    s = stages.add_parser("decouple", help="stage 4's decoupled systems (BASE+crt|tau_norm|...) on their bases' "
                                           "embeddings", **kw)
    _common(s, train_required=False)
    s.add_argument("--val_dir", default="", help="iden val split (tau_norm chooses tau on it)")

    s = stages.add_parser("score", help="stage 5: cosine, mean sub., AS-norm scores, back-end, verify threshold",
                          **kw)
    _common(s)
    _lists(s)
    s.add_argument("--dev_trials", default="", help="seen-speaker dev list: AS-norm top-N, calibration, QMF, "
                                                    "the verify threshold (a missing file: no back-end)")
    s.add_argument("--dev_dir", default="", help="data dir of the dev list's keys")

    s = stages.add_parser("tde", help="stage 6: TDE alpha on a dev set, TDE'd stores and their scores", **kw)
    _common(s)
    _lists(s)
    s.add_argument("--val_dir", required=True, help="iden val split: alpha by identification accuracy")
    s.add_argument("--alphas", default="", help="alpha grid, e.g. 0,0.5,1 (default: the library's 0 to 3 by 0.25)")
    s.add_argument("--alpha_on", default="iden_val", help="iden_val, dev_eer or dev_min_dcf")
    s.add_argument("--dev_trials", default="", help="dev trial lists (curves recorded; the first: the back-end)")
    s.add_argument("--dev_trials_dirs", default="", help="data dir of each dev list's keys (default --val_dir)")

    s = stages.add_parser("identify", help="stage 7: closed-set identification by shot group", **kw)
    _common(s)
    s.add_argument("--test_dir", required=True, help="held-out utterances of the training speakers")
    s.add_argument("--many", type=int, required=True, help="Many: more than this many training utterances")
    s.add_argument("--few", type=int, required=True, help="Few: fewer than this many training utterances")
    for s in stages.choices.values():
        s.set_defaults(func=_stage)
