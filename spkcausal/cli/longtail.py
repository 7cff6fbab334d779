"""Long-tail commands: profile, plot-longtail, longtail-subset, heldout-split."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import count, finite_float, positive_int


def _profile(args: argparse.Namespace) -> int:
    from ..data.advice import format_recommendation, recommend
    from ..data.longtail import format_profile, profile_datadir, write_profile

    prof = profile_datadir(args.data_dir, many=args.many, few=args.few)
    out = Path(args.out) if args.out else Path(args.data_dir) / "profile"
    write_profile(prof, out)
    print(format_profile(prof))
    print(f"\nwrote {out / 'speakers.tsv'} and {out / 'summary.json'}")
    print("\n" + format_recommendation(recommend(prof.summary)))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from ..data.longtail import plot_longtail
    from ..utils import UsageError

    if args.labels is not None and len(args.labels) != len(args.dirs):
        raise UsageError(f"{len(args.labels)} labels for {len(args.dirs)} dirs")
    if Path(args.out).suffix.lower() not in (".png", ".pdf"):
        raise UsageError("--out must end in .png or .pdf")
    plot_longtail(args.dirs, args.out, labels=args.labels)
    print(f"wrote {args.out}")
    return 0


def _subset(args: argparse.Namespace) -> int:
    import json

    from ..data.datadir import DataDir
    from ..data.longtail import format_profile, profile_datadir
    from ..data.subsets import balanced_control, longtail_subset
    from ..utils import setup_logging, write_text_atomic

    setup_logging()
    data = DataDir.load(args.data_dir)
    train, held = longtail_subset(data, args.imbalance, profile=args.profile, max_per_spk=args.max_per_spk,
                                  heldout_per_spk=args.heldout_per_spk, seed=args.seed, order=args.order)
    control = None
    if args.control:  # drawn before anything is written: a failed match leaves no half-made dirs
        control, info = balanced_control(data, train, seed=args.seed, exclude=set(held.utt2spk),
                                         tolerance=args.hours_tolerance)
    log = setup_logging(Path(args.out_train) / "longtail_subset.log")  # only now: a refusal leaves no dir
    if len(held):
        held.write(args.out_heldout)
    else:
        log.info("longtail-subset: --heldout-per-spk 0, no held-out dir written")
    params = {k: getattr(args, k) for k in ("data_dir", "imbalance", "profile", "max_per_spk", "heldout_per_spk",
                                            "seed", "order", "control")}
    if control is not None:
        control.write(args.control)
        write_text_atomic(Path(args.control) / "balanced_control.json",
                          json.dumps({**params, "longtail": args.out_train, **info}, indent=1) + "\n")
        ratio = info["hours_ratio"]
        print(f"balanced control {args.control}: {info['utterances']} utterances of {info['speakers']} speakers, "
              f"level {info['level']} per speaker ({info['at_level_plus_one']} at level + 1, "
              f"{info['capped_below_level']} with fewer), hours ratio control / long-tailed "
              + ("- (no utt2dur)" if ratio is None else f"{ratio:.4f}"))
    # train last: a recipe treats an existing train dir as the sign that the subset finished
    train.write(args.out_train)
    write_text_atomic(Path(args.out_train) / "longtail_subset.json", json.dumps(params, indent=1) + "\n")
    log.info("longtail-subset %s: train %d utts / %d spk -> %s, held-out %d utts -> %s", params, len(train),
             len(train.speakers), args.out_train, len(held), args.out_heldout)
    print(format_profile(profile_datadir(args.out_train)))
    return 0


def _split(args: argparse.Namespace) -> int:
    from ..data.datadir import DataDir
    from ..data.subsets import split_heldout

    train, val, test = split_heldout(DataDir.load(args.data_dir), args.val_per_spk, args.test_per_spk,
                                     args.min_train, args.seed)
    # train last: a recipe treats an existing train dir as the sign that the split finished
    for d, out in ((val, args.out_val), (test, args.out_test), (train, args.out_train)):
        if out and len(d):
            d.write(out)
            print(f"{out}: {len(d)} utterances of {len(d.speakers)} speakers")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the long-tail commands."""
    p = sub.add_parser("heldout-split", help="hold out val/test utterances of training speakers for identification")
    p.add_argument("data_dir")
    p.add_argument("--out-train", help="training dir without the held-out utterances")
    p.add_argument("--out-val", required=True, help="val dir (chooses TDE's alpha)")
    p.add_argument("--out-test", required=True, help="test dir (identification accuracy)")
    p.add_argument("--val-per-spk", type=int, default=2, help="val utterances per speaker (default 2)")
    p.add_argument("--test-per-spk", type=int, default=4, help="test utterances per speaker (default 4)")
    p.add_argument("--min-train", type=int, default=1,
                   help="a speaker is held out from only when this many utterances stay for training (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_split)

    p = sub.add_parser("profile", help="long-tail profile of a data dir: speakers.tsv, summary.json, table")
    p.add_argument("data_dir")
    p.add_argument("--many", type=int, default=100, help="many-shot: more than this many utterances")
    p.add_argument("--few", type=int, default=20, help="few-shot: fewer than this many utterances")
    p.add_argument("--out", help="output dir (default DATA_DIR/profile)")
    p.set_defaults(func=_profile)

    p = sub.add_parser("plot-longtail", help="rank plot and histogram of utterances per speaker (png/pdf)")
    p.add_argument("dirs", nargs="+", metavar="DIR_OR_PROFILE", help="data dirs or profile dirs")
    p.add_argument("--out", required=True, help="FILE.png or FILE.pdf")
    p.add_argument("--labels", nargs="+", help="legend labels, one per dir")
    p.set_defaults(func=_plot)

    p = sub.add_parser("longtail-subset", help="long-tailed training dir + balanced held-out dir (ImageNet-LT style)")
    p.add_argument("data_dir")
    p.add_argument("--out-train", required=True)
    p.add_argument("--out-heldout", required=True)
    p.add_argument("--imbalance", type=finite_float, required=True, help="max/min utterances per speaker, e.g. 100")
    p.add_argument("--profile", choices=("exp", "pareto"), default="exp")
    p.add_argument("--max-per-spk", type=positive_int,
                   help="head count n_max (default: all the head speaker has left)")
    p.add_argument("--heldout-per-spk", type=count, default=10)
    p.add_argument("--order", choices=("random", "size"), default="random",
                   help="speaker ranking: seeded random (CIFAR/ImageNet-LT) or by available utterances")
    p.add_argument("--control", metavar="DIR",
                   help="also write a balanced control: the same speakers and utterance count, spread evenly "
                        "(water-filling), hours within --hours-tolerance (docs/recipes.md, long-tail protocol)")
    p.add_argument("--hours-tolerance", type=finite_float, default=0.05,
                   help="--control: largest relative difference of total duration (default 0.05)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_subset)
