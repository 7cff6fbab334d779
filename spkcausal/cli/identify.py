"""Identification command: identify (closed-set accuracy by shot group with the trained head)."""
from __future__ import annotations

import argparse

from . import finite_float, positive_int


def _identify(args: argparse.Namespace) -> int:
    from ..pipeline.steps import identify_variants
    from ..utils import UsageError

    variants = args.variants or ["tde" if args.tde_alpha is not None else "mean_sub" if args.mean_store else "cosine"]
    if args.label and len(variants) > 1:
        raise UsageError("--label needs a single variant")
    identify_variants(variants, args.emb, args.data, args.train_data, ckpt=args.ckpt, exp_dir=args.exp,
                      tde_alpha=args.tde_alpha, mean_store=args.mean_store, many=args.many, few=args.few,
                      record=args.record, label=args.label, predictions=args.predictions, out=args.out,
                      n_boot=args.bootstrap)
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
