"""Results commands: record-scores (EER / minDCF rows of an experiment), report (the table over experiments)."""
from __future__ import annotations

import argparse


def _record(args: argparse.Namespace) -> int:
    from ..report import record_verification
    from ..utils import UsageError

    pairs = []
    for item in args.scores:
        variant, sep, path = item.partition("=")
        if not sep or not variant or not path:
            raise UsageError(f"expected VARIANT=SCORE_FILE, got {item!r}")
        pairs.append((variant, path))
    if args.label and len(pairs) > 1:
        raise UsageError("--label needs a single VARIANT=SCORE_FILE")
    for variant, path in pairs:
        alpha = args.tde_alpha if variant.startswith("tde") else None
        data = record_verification(args.exp, variant, path, args.label, args.p_target, alpha)
        v = data["rows"][variant]["verification"]
        print(f"{data['rows'][variant]['label']}: EER {100 * v['eer']:.3f}% "
              + " ".join(f"minDCF({p}) {x:.4f}" for p, x in v["min_dcf"].items()))
    return 0


def _report(args: argparse.Namespace) -> int:
    from ..report import write_report

    text, out = write_report(args.exps, args.out, args.caption, args.variants, args.p_target)
    print(text, end="")
    print(f"\nwrote {out / 'report.md'} and {out / 'report.json'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add record-scores and report."""
    p = sub.add_parser("record-scores", help="EER / minDCF of score files into EXP_DIR/results.json rows")
    p.add_argument("--exp", required=True, help="experiment dir")
    p.add_argument("--label", help="row label (default from the experiment's config; one score file only)")
    p.add_argument("--tde-alpha", type=float, help="alpha the tde* variants used (shown in the table)")
    p.add_argument("--p-target", type=float, nargs="+", default=[0.01, 0.05], help="minDCF priors")
    p.add_argument("scores", nargs="+", metavar="VARIANT=SCORE_FILE",
                   help="row (cosine, mean_sub, asnorm, tde, tde_mean_sub, tde_asnorm) = labelled score file")
    p.set_defaults(func=_record)

    p = sub.add_parser("report", help="paper-style table (EER, minDCF, Many/Medium/Few/Overall) over experiments")
    p.add_argument("exps", nargs="+", metavar="EXP_DIR", help="experiment dirs holding results.json")
    p.add_argument("--out", help="dir for report.md and report.json (default: the first EXP_DIR's parent)")
    p.add_argument("--caption", help="text put under the table")
    p.add_argument("--variants", nargs="+", help="only these rows of each experiment (default: all)")
    p.add_argument("--p-target", type=float, default=0.01, help="minDCF column's prior (default 0.01)")
    p.set_defaults(func=_report)
