"""Scoring commands: score, eer, plot-det, import-emb, export-emb."""
from __future__ import annotations

import argparse
import json


def _score(args: argparse.Namespace) -> int:
    from ..scoring import parse_top_n, score_files
    from ..utils import UsageError

    norm = args.norm or ("asnorm" if args.cohort else "none")
    if norm != "none" and not args.cohort:
        raise UsageError(f"--norm {norm} needs --cohort STORE")
    outs = score_files(args.trials, args.emb, args.out_dir, mean_store=args.mean_store, cohort=args.cohort,
                       cohort_data=args.cohort_data, norm=norm, top_n=parse_top_n(args.asnorm_top),
                       enroll_map=args.enroll_map, allow_missing=args.allow_missing)
    for o in outs:
        print(o)
    return 0


def _eer(args: argparse.Namespace) -> int:
    from ..metrics import evaluate_score_files, format_table

    results = evaluate_score_files(args.scores, args.p_target)
    if args.json:
        for r in results:  # JSON object keys must be strings
            r["min_dcf"] = {str(k): v for k, v in r["min_dcf"].items()}
            r["min_dcf_threshold"] = {str(k): v for k, v in r["min_dcf_threshold"].items()}
        print(json.dumps(results, indent=1))
    else:
        print(format_table(results))
    return 0


def _plot_det(args: argparse.Namespace) -> int:
    from ..metrics import plot_det

    plot_det(args.scores, args.out, args.p_target, args.labels)
    print(args.out)
    return 0


def _import(args: argparse.Namespace) -> int:
    from ..embeddings import import_kaldi

    print(import_kaldi(args.src, args.out_dir))
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..embeddings import EmbeddingStore, export_kaldi

    export_kaldi(EmbeddingStore.open(args.store), args.ark, args.scp)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the scoring and metric commands."""
    p = sub.add_parser("score", help="score trial lists against an embedding store (cosine, S-norm, AS-norm)")
    p.add_argument("--trials", nargs="+", required=True, help="trial lists (Kaldi or VoxCeleb form)")
    p.add_argument("--emb", required=True, help="embedding store of the enrol and test keys")
    p.add_argument("--mean-store", help="store whose mean is subtracted from every embedding (e.g. training set)")
    p.add_argument("--cohort", help="store of cohort embeddings for --norm snorm|asnorm")
    p.add_argument("--cohort-data", help="data dir of the cohort store: use its per-speaker mean embeddings")
    p.add_argument("--norm", choices=("none", "snorm", "asnorm"), default=None,
                   help="score normalisation (default: asnorm when --cohort is given, else none)")
    p.add_argument("--asnorm-top", default="300",
                   help="AS-norm top-N: a count (300, the default) or a share of the cohort (0.1 = 10%%); "
                        "above 20%% of the cohort draws a warning; `spkcausal asnorm-top` chooses it on a dev list")
    p.add_argument("--enroll-map", help="`enroll utt utt ...` table (enroll2utt): enrol = mean of those utterances")
    p.add_argument("--allow-missing", action="store_true", help="skip trials whose keys have no embedding")
    p.add_argument("--out-dir", required=True, help="writes <out-dir>/<trial file name>.score and score.log")
    p.set_defaults(func=_score)

    p = sub.add_parser("eer", help="EER (%%) and minDCF of labelled score files, as a table")
    p.add_argument("scores", nargs="+", help="score files `enroll test score target|nontarget`")
    p.add_argument("--p-target", type=float, nargs="+", default=[0.01, 0.05], help="minDCF priors")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_eer)

    p = sub.add_parser("plot-det", help="DET curves of score files (probit axes)")
    p.add_argument("scores", nargs="+", help="labelled score files, one curve each")
    p.add_argument("--out", required=True, help="image file (png, pdf, svg)")
    p.add_argument("--labels", nargs="+", help="legend names, one per score file")
    p.add_argument("--p-target", type=float, nargs="+", default=[0.01, 0.05], help="minDCF points to mark")
    p.set_defaults(func=_plot_det)

    p = sub.add_parser("import-emb", help="convert a Kaldi ark or scp of vectors into an embedding store")
    p.add_argument("src", help="x.ark or x.scp")
    p.add_argument("out_dir", help="store directory")
    p.set_defaults(func=_import)

    p = sub.add_parser("export-emb", help="write an embedding store as Kaldi ark + scp")
    p.add_argument("store", help="store directory")
    p.add_argument("ark")
    p.add_argument("scp")
    p.set_defaults(func=_export)
