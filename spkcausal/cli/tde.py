"""TDE commands: tde-alpha (choose alpha on a dev set), tde-apply (TDE'd copies of raw embedding stores)."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import finite_float


def floats(text: str) -> list[float]:
    """An argparse type: numbers separated by commas or spaces (an alpha grid)."""
    try:
        return [float(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _tde_alpha(args: argparse.Namespace) -> int:
    from ..inference.tde_alpha import choose_alpha
    from ..pipeline.steps import alpha_text
    from ..utils import setup_logging

    setup_logging(args.out and Path(args.out).with_suffix(".log"))
    res = choose_alpha(args.emb, ckpt=args.ckpt, exp_dir=args.exp, data_dir=args.data, trials=args.trials,
                       alphas=args.alphas, out=args.out, trials_emb=args.trials_emb, criterion=args.criterion,
                       heuristic_emb=args.heuristic_emb, heuristic=not args.no_heuristic)
    print(alpha_text(res), end="")
    return 0


def _tde_apply(args: argparse.Namespace) -> int:
    from ..inference.tde import tde_store
    from ..utils import UsageError

    for item in args.pairs:
        raw, sep, out = item.partition("=")
        if not sep or not raw or not out:
            raise UsageError(f"expected RAW_STORE=OUT_STORE, got {item!r}")
        print(tde_store(raw, out, args.alpha))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add tde-alpha and tde-apply."""
    from ..inference.tde_alpha import ALPHA_GRID, CRITERIA
    from . import add_model_source

    p = sub.add_parser("tde-alpha", help="choose TDE's alpha on a dev set (iden val dir or dev trials), with curve")
    add_model_source(p)
    p.add_argument("--emb", required=True, help="raw embedding store of the dev utterances")
    p.add_argument("--data", help="dev data dir of training speakers: maximise identification accuracy")
    p.add_argument("--trials", nargs="+", help="labelled dev trial lists: EER / minDCF curves recorded; the first "
                                               "one chooses with --criterion dev_eer / dev_min_dcf")
    p.add_argument("--trials-emb", nargs="+", help="raw store of each dev trial list's keys (default: --emb)")
    p.add_argument("--criterion", choices=CRITERIA,
                   help="iden_val: accuracy on --data (default when given); dev_eer / dev_min_dcf: the first --trials")
    p.add_argument("--alphas", type=floats, default=list(ALPHA_GRID), help="grid to try (default 0,0.25,...,3)")
    p.add_argument("--heuristic-emb", help="raw store of the training embeddings: the 1/mean-cos heuristic, an "
                                           "extra candidate, is computed on them (default: on the dev utterances)")
    p.add_argument("--no-heuristic", action="store_true", help="do not add the heuristic value as a candidate")
    p.add_argument("--out", help="write the sweep (alpha, criterion, curve) as JSON here")
    p.set_defaults(func=_tde_alpha)

    p = sub.add_parser("tde-apply", help="TDE'd copies of raw embedding stores (one process for several stores)")
    p.add_argument("--alpha", type=finite_float, required=True, help="TDE alpha (chosen on a dev set)")
    p.add_argument("pairs", nargs="+", metavar="RAW_STORE=OUT_STORE", help="raw store (with mean_feature.npy) = output")
    p.set_defaults(func=_tde_apply)
