"""Results commands: record-scores (EER / minDCF rows of an experiment, with intervals), report (the tables
over experiments, with differences from the baseline)."""
from __future__ import annotations

import argparse

from . import finite_float, positive_int


def _record(args: argparse.Namespace) -> int:
    from ..pipeline.steps import record_lines
    from ..utils import UsageError

    pairs = []
    for item in args.scores:
        variant, sep, path = item.partition("=")
        if not sep or not variant or not path:
            raise UsageError(f"expected VARIANT=SCORE_FILE, got {item!r}")
        pairs.append((variant, path))
    if args.label and len(pairs) > 1:
        raise UsageError("--label needs a single VARIANT=SCORE_FILE")
    if args.seen and not (args.utt2spk and args.train_data and args.many is not None and args.few is not None):
        raise UsageError("--seen needs --utt2spk (of the seen list's dir), --train-data, --many and --few")
    for line in record_lines(args.exp, pairs, args.utt2spk, args.label, args.tde_alpha, args.p_target,
                             (args.train_data, args.many, args.few) if args.seen else None, args.bootstrap, args.seed,
                             llr=True if args.llr else None):
        print(line)
    return 0


def _report(args: argparse.Namespace) -> int:
    from ..report.results import write_paper_tables, write_report
    from ..utils import UsageError

    if args.paper_map and not args.paper_table:
        raise UsageError("--paper-map sets the rows of --paper-table: give --paper-table too, or drop --paper-map")
    if args.paper_table:
        text, out = write_paper_tables(args.exps, args.out, args.paper_map, args.p_target)
        print(text, end="")
        print(f"\nwrote {out / 'paper_table.md'} and {out / 'paper_table.json'}")
        return 0

    text, out = write_report(args.exps, args.out, args.caption, args.variants, args.p_target, args.baseline,
                             args.per_seed, args.bootstrap)
    print(text, end="")
    print(f"\nwrote {out / 'report.md'} and {out / 'report.json'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add record-scores and report."""
    p = sub.add_parser("record-scores", help="EER / minDCF (95%% bootstrap intervals) of score files into "
                                             "EXP_DIR/results.json rows")
    p.add_argument("--exp", required=True, help="experiment dir")
    p.add_argument("--label", help="row label (default from the experiment's config; one score file only)")
    p.add_argument("--tde-alpha", type=finite_float, help="alpha the tde* variants used (shown in the table)")
    p.add_argument("--p-target", type=finite_float, nargs="+", default=[0.01, 0.05], help="minDCF priors")
    p.add_argument("--utt2spk", help="enrolment key -> speaker (the eval dir's utt2spk): the bootstrap resamples "
                                     "speakers (default: enrolment keys)")
    p.add_argument("--bootstrap", type=positive_int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--llr", action="store_true", help="the scores are calibrated LLRs: also Cllr, minCllr, actDCF "
                                                       "(default for the variants *_cal and *_qmf)")
    p.add_argument("--seen", action="store_true",
                   help="a seen-speaker list: EER / minDCF by shot group of the enrolment speaker (row part 'seen')")
    p.add_argument("--train-data", help="--seen: the training dir (its counts define the shot groups)")
    p.add_argument("--many", type=int, help="--seen: Many = more than this many training utterances")
    p.add_argument("--few", type=int, help="--seen: Few = fewer than this many training utterances")
    p.add_argument("scores", nargs="+", metavar="VARIANT=SCORE_FILE",
                   help="row (cosine, mean_sub, asnorm, tde, tde_mean_sub, tde_asnorm) = labelled score file")
    p.set_defaults(func=_record)

    p = sub.add_parser("report", help="tables (EER, minDCF, seen-speaker EER by shot group, Many/Medium/Few/Overall "
                                      "accuracy) with intervals and differences from the baseline")
    p.add_argument("exps", nargs="+", metavar="EXP_DIR",
                   help="experiment dirs holding results.json (<name>_seed<k> dirs are seeds of system <name>)")
    p.add_argument("--out", help="dir for report.md and report.json (default: the first EXP_DIR's parent)")
    p.add_argument("--caption", help="text put under the tables")
    p.add_argument("--variants", nargs="+", help="only these rows of each experiment (default: all)")
    p.add_argument("--p-target", type=finite_float, default=0.01, help="minDCF column's prior (default 0.01)")
    p.add_argument("--baseline", help="the system the others are compared with: an EXP_DIR (or its name without "
                                      "_seed<k>) or a row label (default: the first system)")
    p.add_argument("--per-seed", action="store_true", help="also list every seed's rows under the mean ± std rows")
    p.add_argument("--bootstrap", type=positive_int, default=1000,
                   help="resamples of the paired intervals (default 1000)")
    p.add_argument("--paper-table", action="store_true",
                   help="instead: the paper's tables (Tang et al. 2020 Table 3 rows in its order, then K = 1 / 2), "
                        "Many / Medium / Few / Overall accuracy, EER, seen Few EER, each with its interval; a row "
                        "without its system is marked 'not run' (OUT/paper_table.md)")
    p.add_argument("--paper-map", nargs="+", metavar="NAME=SYSTEM[:VARIANT]",
                   help="--paper-table: another system (experiment dir name without _seed<k>) for a row")
    p.set_defaults(func=_report)
