"""Scoring commands: score, eer, plot-det, import-emb, export-emb."""
from __future__ import annotations

import argparse
import json

from . import finite_float, positive_int


def _score(args: argparse.Namespace) -> int:
    from ..pipeline.steps import score

    outs = score(args.trials, args.emb, args.out_dir, mean_store=args.mean_store, cohort=args.cohort,
                 cohort_data=args.cohort_data, top=args.asnorm_top, enroll_map=args.enroll_map,
                 allow_missing=args.allow_missing, norm=args.norm)
    for o in outs:
        print(o)
    return 0


def _eer(args: argparse.Namespace) -> int:
    from ..scoring.metrics import evaluate_score_files, format_table
    from ..utils import UsageError

    if args.paired or args.ci is not None:
        return _eer_ci(args)
    if args.utt2spk or args.bootstrap is not None or args.seed is not None:
        raise UsageError("--utt2spk, --bootstrap and --seed go with --ci LEVEL (or --paired)")
    results = evaluate_score_files(args.scores, args.p_target)
    llr = []
    if args.llr:
        from ..scoring.calibration import evaluate_llr_files, format_llr_table

        llr = evaluate_llr_files(args.scores, args.p_target)
        for r, extra in zip(results, llr):
            r.update(cllr=extra["cllr"], min_cllr=extra["min_cllr"], act_dcf=extra["act_dcf"])
    if args.json:
        for r in results:  # JSON object keys must be strings
            for key in ("min_dcf", "min_dcf_threshold", "act_dcf"):
                if key in r:
                    r[key] = {str(k): v for k, v in r[key].items()}
        print(json.dumps(results, indent=1))
    else:
        print(format_table(results))
        if llr:
            print("\n" + format_llr_table(llr))
    return 0


def _read_labelled(paths: list[str], utt2spk: str | None) -> tuple[list, dict]:
    """Trials (with scores and labels) of each score file, and the enrolment-key -> speaker map (empty
    without --utt2spk)."""
    from ..data.datadir import read_kv
    from ..data.trialio import read_scores

    out = [read_scores(p, keys=True, need_labels=True) for p in paths]
    return out, (read_kv(utt2spk) if utt2spk else {})


def _ci_text(v: float, ci: list[float], scale: float, fmt: str) -> str:
    return f"{v * scale:{fmt}} [{ci[0] * scale:{fmt}}, {ci[1] * scale:{fmt}}]"


def _eer_ci(args: argparse.Namespace) -> int:
    from ..scoring.bootstrap import bootstrap_verification, paired_bootstrap_verification
    from ..scoring.pairing import align_scores, resampling_groups
    from ..utils import DataError, UsageError

    level = 0.95 if args.ci is None else args.ci
    n_boot = 1000 if args.bootstrap is None else args.bootstrap
    seed = 0 if args.seed is None else args.seed
    if args.paired and len(args.scores) != 2:
        raise UsageError(f"--paired compares two score files (system A, system B); got {len(args.scores)}")
    trials, u2s = _read_labelled(args.scores, args.utt2spk)
    unit = "speaker" if args.utt2spk else "enroll"
    opts = {"n_boot": n_boot, "level": level, "p_targets": args.p_target, "seed": seed, "unit": unit}
    what = f"{n_boot} resamples of {'speakers' if args.utt2spk else 'enrolment keys'}, seed {seed}"
    if args.paired:
        path_a, path_b = args.scores
        scores_b = align_scores(trials[0], trials[1], path_a, path_b)
        groups = resampling_groups(trials[0].enroll, u2s)
        try:
            r = paired_bootstrap_verification(trials[0].scores, scores_b, trials[0].labels, groups, **opts)
        except DataError as e:  # the arrays do not know their files: name them
            raise DataError(e.message, f"{path_a} / {path_b}") from None
        r.update(file_a=path_a, file_b=path_b)
        if args.json:
            for k in ("min_dcf_diff", "min_dcf_diff_ci"):
                r[k] = {str(p): v for p, v in r[k].items()}
            print(json.dumps(r, indent=1))
            return 0
        print(f"A: {path_a}  EER {r['eer_a'] * 100:.3f}%\nB: {path_b}  EER {r['eer_b'] * 100:.3f}%")
        print(f"EER(A) - EER(B) = {_ci_text(r['diff'], r['diff_ci'], 100, '.3f')} %  "
              f"({'significant' if r['significant'] else 'not significant'}: the interval "
              f"{'excludes' if r['significant'] else 'includes'} 0)")
        for p, d in r["min_dcf_diff"].items():
            print(f"minDCF({p:g})(A) - minDCF({p:g})(B) = {_ci_text(d, r['min_dcf_diff_ci'][p], 1, '.4f')}")
        print(f"{level:.0%} paired percentile intervals, {what}; {r['n_dropped']} degenerate resamples dropped")
        return 0
    results = []
    for path, t in zip(args.scores, trials):
        try:
            r = bootstrap_verification(t.scores, t.labels, resampling_groups(t.enroll, u2s), **opts)
        except DataError as e:
            raise DataError(e.message, path) from None
        r["file"] = path
        results.append(r)
    if args.json:
        for r in results:
            r["min_dcf"] = {str(p): v for p, v in r["min_dcf"].items()}
            r["min_dcf_ci"] = {str(p): v for p, v in r["min_dcf_ci"].items()}
        print(json.dumps(results, indent=1))
        return 0
    head = ["EER(%)"] + [f"minDCF({p:g})" for p in args.p_target] + ["targets", "nontargets", "dropped", "file"]
    rows = [[_ci_text(r["eer"], r["eer_ci"], 100, ".3f")]
            + [_ci_text(r["min_dcf"][float(p)], r["min_dcf_ci"][float(p)], 1, ".4f") for p in args.p_target]
            + [str(r["n_target"]), str(r["n_nontarget"]), str(r["n_dropped"]), r["file"]] for r in results]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    for row in [head, *rows]:
        print("  ".join(x.rjust(w) if i < len(head) - 1 else x for i, (x, w) in enumerate(zip(row, widths))))
    print(f"[{level:.0%} percentile interval] from {what}")
    return 0


def _plot_det(args: argparse.Namespace) -> int:
    from ..scoring.metrics import plot_det

    plot_det(args.scores, args.out, args.p_target, args.labels)
    print(args.out)
    return 0


def _import(args: argparse.Namespace) -> int:
    from ..data.embeddings import import_kaldi

    print(import_kaldi(args.src, args.out_dir))
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..data.embeddings import EmbeddingStore, export_kaldi

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

    p = sub.add_parser("eer", help="EER (%%) and minDCF of labelled score files, as a table; bootstrap intervals")
    p.add_argument("scores", nargs="+", help="score files `enroll test score target|nontarget`")
    p.add_argument("--p-target", type=finite_float, nargs="+", default=[0.01, 0.05], help="minDCF priors")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--llr", action="store_true",
                   help="the scores are log-likelihood ratios: add Cllr, minCllr and actual DCF at the Bayes "
                   "threshold (JSON keys cllr, min_cllr, act_dcf, min_dcf)")
    p.add_argument("--ci", type=finite_float, metavar="LEVEL",
                   help="bootstrap confidence intervals at this level (e.g. 0.95), resampling enrolment speakers")
    p.add_argument("--utt2spk", help="map enrolment keys to speakers (the resampling unit); keys not listed stay "
                   "their own unit (default: resample enrolment keys)")
    p.add_argument("--bootstrap", type=positive_int, metavar="N", help="number of resamples (default 1000)")
    p.add_argument("--seed", type=int, help="random seed of the resamples (default 0)")
    p.add_argument("--paired", action="store_true",
                   help="two score files A B on the same trials: interval of EER(A) - EER(B) (and of the minDCF "
                   "differences) from shared resamples; implies --ci 0.95 unless given")
    p.set_defaults(func=_eer)

    p = sub.add_parser("plot-det", help="DET curves of score files (probit axes)")
    p.add_argument("scores", nargs="+", help="labelled score files, one curve each")
    p.add_argument("--out", required=True, help="image file (png, pdf, svg)")
    p.add_argument("--labels", nargs="+", help="legend names, one per score file")
    p.add_argument("--p-target", type=finite_float, nargs="+", default=[0.01, 0.05], help="minDCF points to mark")
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
