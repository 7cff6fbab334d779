"""Identification command: identify (closed-set accuracy by shot group with the trained head)."""
from __future__ import annotations

import argparse
import json

from . import finite_float, positive_int


def _identify(args: argparse.Namespace) -> int:
    from ..inference.identify import identify
    from ..results.records import record_identification
    from ..utils import UsageError, setup_logging, write_text_atomic

    setup_logging(args.record and f"{args.record}/identify.log")
    variants = args.variants or ["tde" if args.tde_alpha is not None else "mean_sub" if args.mean_store else "cosine"]
    if args.label and len(variants) > 1:
        raise UsageError("--label needs a single variant")
    results = {}
    pred_dir = args.predictions or (f"{args.record}/predictions" if args.record else None)
    for v in variants:
        if v not in ("cosine", "mean_sub", "tde"):
            raise UsageError(f"unknown variant {v!r} (cosine, mean_sub, tde)")
        if v == "tde" and args.tde_alpha is None or v == "mean_sub" and not args.mean_store:
            raise UsageError(f"variant {v} needs {'--tde-alpha' if v == 'tde' else '--mean-store'}")
        res = identify(args.emb, args.data, args.train_data, ckpt=args.ckpt, exp_dir=args.exp,
                       tde_alpha=args.tde_alpha if v == "tde" else None,
                       mean_store=args.mean_store if v == "mean_sub" else None, many=args.many, few=args.few,
                       predictions=f"{pred_dir}/{v}.npz" if pred_dir else None, n_boot=args.bootstrap)
        results[v] = res
        if args.record:
            record_identification(args.record, v, res, args.label)
        print(f"{v}: " + "  ".join(f"{g} {100 * res[g]:.2f} [{100 * res[g + '_ci'][0]:.1f}, "
                                   f"{100 * res[g + '_ci'][1]:.1f}]" if res[g] == res[g] else f"{g} -"
                                   for g in ("many", "medium", "few", "overall")))
    if args.out:
        write_text_atomic(args.out, json.dumps(results, indent=1) + "\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add identify."""
    from . import add_model_source

    p = sub.add_parser("identify", help="closed-set identification accuracy by shot group with the trained head")
    add_model_source(p)
    p.add_argument("--emb", required=True, help="embedding store holding the held-out utterances (raw, not TDE'd)")
    p.add_argument("--data", required=True, help="held-out data dir of training speakers (e.g. iden test)")
    p.add_argument("--train-data", required=True, help="the training data dir (its counts define the shot groups)")
    p.add_argument("--tde-alpha", type=finite_float, help="alpha of the tde variant's TDE logits (Causal Norm heads)")
    p.add_argument("--mean-store", help="mean_sub variant: subtract this store's mean embedding before the head")
    p.add_argument("--variants", nargs="+", metavar="V",
                   help="cosine (plain head), mean_sub, tde; default: the one the options imply")
    p.add_argument("--many", type=int, default=100, help="Many: more than this many training utterances (100)")
    p.add_argument("--few", type=int, default=20, help="Few: fewer than this many training utterances (20)")
    p.add_argument("--out", help="write the results ({variant: result}) as JSON here")
    p.add_argument("--record", metavar="EXP_DIR", help="store each variant's result in EXP_DIR/results.json")
    p.add_argument("--label", help="row label (default from the experiment's config; one variant only)")
    p.add_argument("--predictions", metavar="DIR",
                   help="keep per-utterance predictions as DIR/<variant>.npz (default with --record: "
                        "EXP_DIR/predictions; the report pairs systems on them)")
    p.add_argument("--bootstrap", type=positive_int, default=1000, help="resamples of the per-speaker intervals (1000)")
    p.set_defaults(func=_identify)
