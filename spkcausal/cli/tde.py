"""TDE commands: tde-alpha (choose alpha on a dev set), tde-apply (TDE'd copies of raw embedding stores)."""
from __future__ import annotations

import argparse
from pathlib import Path


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _tde_alpha(args: argparse.Namespace) -> int:
    from ..tde import format_alpha_curve
    from ..tde_alpha import choose_alpha
    from ..utils import setup_logging

    setup_logging(args.out and Path(args.out).with_suffix(".log"))
    res = choose_alpha(args.emb, ckpt=args.ckpt, exp_dir=args.exp, data_dir=args.data, trials=args.trials,
                       alphas=args.alphas, out=args.out, trials_emb=args.trials_emb)
    print(format_alpha_curve(res["alphas"], res.get("accuracy") or res.get("eer"), res["alpha"]))
    print(f"alpha {res['alpha']!r}")  # repr: every digit reaches tde-apply / identify
    return 0


def _tde_apply(args: argparse.Namespace) -> int:
    from ..tde import tde_store
    from ..utils import UsageError

    for item in args.pairs:
        raw, sep, out = item.partition("=")
        if not sep or not raw or not out:
            raise UsageError(f"expected RAW_STORE=OUT_STORE, got {item!r}")
        print(tde_store(raw, out, args.alpha))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add tde-alpha and tde-apply."""
    from ..tde_alpha import ALPHA_GRID
    from . import add_model_source

    p = sub.add_parser("tde-alpha", help="choose TDE's alpha on a dev set (iden val dir or dev trials), with curve")
    add_model_source(p)
    p.add_argument("--emb", required=True, help="raw embedding store of the dev utterances")
    p.add_argument("--data", help="dev data dir of training speakers: maximise identification accuracy")
    p.add_argument("--trials", help="labelled dev trial list: minimise EER (recorded beside accuracy if both)")
    p.add_argument("--trials-emb", help="raw store holding the dev trial keys (default: --emb)")
    p.add_argument("--alphas", type=_floats, default=list(ALPHA_GRID), help="values to try (0,0.1,...,2)")
    p.add_argument("--out", help="write the sweep (alpha, criterion, curve) as JSON here")
    p.set_defaults(func=_tde_alpha)

    p = sub.add_parser("tde-apply", help="TDE'd copies of raw embedding stores (one process for several stores)")
    p.add_argument("--alpha", type=float, required=True, help="TDE alpha (chosen on a dev set)")
    p.add_argument("pairs", nargs="+", metavar="RAW_STORE=OUT_STORE", help="raw store (with mean_feature.npy) = output")
    p.set_defaults(func=_tde_apply)
