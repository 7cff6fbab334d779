"""Decoupled baselines as systems: decouple (a cRT, tau-norm, NCM or LWS classifier on a trained experiment's
embeddings)."""
from __future__ import annotations

import argparse

from . import finite_float, positive_int


def _decouple(args: argparse.Namespace) -> int:
    from ..pipeline.steps import decouple_line

    print(decouple_line(args.exp, args.method, args.out, args.train_emb, args.train_data, args.val_emb, args.val_data,
                        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add decouple (the method names are checked by the library: importing it here would load torch for every
    command)."""
    p = sub.add_parser("decouple", help="cRT / tau-norm / NCM / LWS: a new classifier on a trained experiment's frozen "
                                        "embeddings, written as a new experiment (identification only changes)")
    p.add_argument("--exp", required=True, help="the trained base experiment (its avg_model.pt and emb/)")
    p.add_argument("--method", required=True, metavar="crt|tau_norm|ncm|lws|oltr",
                   help="crt: class-balanced re-training; tau_norm: tau-normalised weights, tau chosen on val; "
                        "ncm: nearest class mean (cosine); lws: learned per-class weight scales; "
                        "oltr: OLTR's meta-embedding classifier (Decouple-OLTR)")
    p.add_argument("--out", required=True, help="new experiment dir (avg_model.pt, decoupled.json, emb -> base's)")
    p.add_argument("--train-emb", required=True, help="raw store of the base's training embeddings")
    p.add_argument("--train-data", required=True, help="the training data dir (labels)")
    p.add_argument("--val-emb", help="tau_norm: raw store of the iden val split")
    p.add_argument("--val-data", help="tau_norm: the iden val data dir")
    p.add_argument("--epochs", type=positive_int, default=30, help="classifier epochs (default 30)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="batch size (default 128)")
    p.add_argument("--lr", type=finite_float, default=0.5, help="SGD learning rate, cosine decay (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and sampler (default 0)")
    p.set_defaults(func=_decouple)
