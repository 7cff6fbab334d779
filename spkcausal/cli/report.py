"""Evaluation commands the recipes chain: heldout-split, extract-dirs, identify, tde-alpha, tde-apply,
record-scores, report."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _split(args: argparse.Namespace) -> int:
    from ..datadir import DataDir
    from ..identify import split_heldout

    train, val, test = split_heldout(DataDir.load(args.data_dir), args.val_per_spk, args.test_per_spk,
                                     args.min_train, args.seed)
    # train last: a recipe treats an existing train dir as the sign that the split finished
    for d, out in ((val, args.out_val), (test, args.out_test), (train, args.out_train)):
        if out and len(d):
            d.write(out)
            print(f"{out}: {len(d)} utterances of {len(d.speakers)} speakers")
    return 0


def _identify(args: argparse.Namespace) -> int:
    from ..identify import identify
    from ..report import record_identification
    from ..utils import setup_logging, write_text_atomic

    setup_logging(args.record and f"{args.record}/identify.log")
    variants = args.variants or ["tde" if args.tde_alpha is not None else "mean_sub" if args.mean_store else "cosine"]
    if args.label and len(variants) > 1:
        raise SystemExit("spkcausal identify: --label needs a single variant")
    results = {}
    for v in variants:
        if v not in ("cosine", "mean_sub", "tde"):
            raise SystemExit(f"spkcausal identify: unknown variant {v!r} (cosine, mean_sub, tde)")
        if v == "tde" and args.tde_alpha is None or v == "mean_sub" and not args.mean_store:
            raise SystemExit(f"spkcausal identify: variant {v} needs {'--tde-alpha' if v == 'tde' else '--mean-store'}")
        res = identify(args.emb, args.data, args.train_data, ckpt=args.ckpt, exp_dir=args.exp,
                       tde_alpha=args.tde_alpha if v == "tde" else None,
                       mean_store=args.mean_store if v == "mean_sub" else None, many=args.many, few=args.few)
        results[v] = res
        if args.record:
            record_identification(args.record, v, res, args.label)
        print(f"{v}: " + " ".join(f"{g} {100 * res[g]:.2f}" if res[g] == res[g] else f"{g} -"
                                  for g in ("many", "medium", "few", "overall")))
    if args.out:
        write_text_atomic(args.out, json.dumps(results, indent=1) + "\n")
    return 0


def _tde_alpha(args: argparse.Namespace) -> int:
    from ..identify import choose_alpha
    from ..utils import setup_logging

    setup_logging(args.out and Path(args.out).with_suffix(".log"))
    res = choose_alpha(args.emb, ckpt=args.ckpt, exp_dir=args.exp, data_dir=args.data, trials=args.trials,
                       alphas=args.alphas, out=args.out, trials_emb=args.trials_emb)
    curve = res.get("accuracy") or res.get("eer")
    for a, v in zip(res["alphas"], curve):
        print(f"{a:.3f} {v:.6f}{' *' if a == res['alpha'] else ''}")
    print(f"alpha {res['alpha']:g}")
    return 0


def _record(args: argparse.Namespace) -> int:
    from ..report import record_verification

    pairs = []
    for item in args.scores:
        variant, sep, path = item.partition("=")
        if not sep or not variant or not path:
            raise SystemExit(f"spkcausal record-scores: expected VARIANT=SCORE_FILE, got {item!r}")
        pairs.append((variant, path))
    if args.label and len(pairs) > 1:
        raise SystemExit("spkcausal record-scores: --label needs a single VARIANT=SCORE_FILE")
    for variant, path in pairs:
        alpha = args.tde_alpha if variant.startswith("tde") else None
        data = record_verification(args.exp, variant, path, args.label, args.p_target, alpha)
        v = data["rows"][variant]["verification"]
        print(f"{data['rows'][variant]['label']}: EER {100 * v['eer']:.3f}% "
              + " ".join(f"minDCF({p}) {x:.4f}" for p, x in v["min_dcf"].items()))
    return 0


def _extract_dirs(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist

    from ..extract import extract
    from ..train import init_distributed

    info = init_distributed("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    try:
        for d in args.data:
            out = extract(d, f"{args.out_dir}/{Path(d).name}", ckpt=args.ckpt, exp_dir=args.exp,
                          batch_seconds=args.batch_seconds, mode=args.mode, num_workers=args.num_workers,
                          device=args.device)
            if info.is_main:
                print(out)
    finally:
        if info.created and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _tde_apply(args: argparse.Namespace) -> int:
    from ..extract import tde_store

    for item in args.pairs:
        raw, sep, out = item.partition("=")
        if not sep or not raw or not out:
            raise SystemExit(f"spkcausal tde-apply: expected RAW_STORE=OUT_STORE, got {item!r}")
        print(tde_store(raw, out, args.alpha))
    return 0


def _report(args: argparse.Namespace) -> int:
    from ..report import write_report

    text, out = write_report(args.exps, args.out, args.caption, args.variants, args.p_target)
    print(text, end="")
    print(f"\nwrote {out / 'report.md'} and {out / 'report.json'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add heldout-split, extract-dirs, identify, tde-alpha, tde-apply, record-scores and report."""
    from ..identify import DEFAULT_ALPHAS

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

    p = sub.add_parser("identify", help="closed-set identification accuracy by shot group with the trained head")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--exp", help="experiment dir (avg_model.pt, else the newest checkpoint)")
    src.add_argument("--ckpt", help="checkpoint file")
    p.add_argument("--emb", required=True, help="embedding store holding the held-out utterances (raw, not TDE'd)")
    p.add_argument("--data", required=True, help="held-out data dir of training speakers (e.g. iden test)")
    p.add_argument("--train-data", required=True, help="the training data dir (its counts define the shot groups)")
    p.add_argument("--tde-alpha", type=float, help="alpha of the tde variant's TDE logits (Causal Norm heads)")
    p.add_argument("--mean-store", help="mean_sub variant: subtract this store's mean embedding before the head")
    p.add_argument("--variants", nargs="+", metavar="V",
                   help="cosine (plain head), mean_sub, tde; default: the one the options imply")
    p.add_argument("--many", type=int, default=100, help="Many: more than this many training utterances (100)")
    p.add_argument("--few", type=int, default=20, help="Few: fewer than this many training utterances (20)")
    p.add_argument("--out", help="write the results ({variant: result}) as JSON here")
    p.add_argument("--record", metavar="EXP_DIR", help="store each variant's result in EXP_DIR/results.json")
    p.add_argument("--label", help="row label (default from the experiment's config; one variant only)")
    p.set_defaults(func=_identify)

    p = sub.add_parser("tde-alpha", help="choose TDE's alpha on a dev set (iden val dir or dev trials), with curve")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--exp", help="experiment dir")
    src.add_argument("--ckpt", help="checkpoint file")
    p.add_argument("--emb", required=True, help="raw embedding store of the dev utterances")
    p.add_argument("--data", help="dev data dir of training speakers: maximise identification accuracy")
    p.add_argument("--trials", help="labelled dev trial list: minimise EER (recorded beside accuracy if both)")
    p.add_argument("--trials-emb", help="raw store holding the dev trial keys (default: --emb)")
    p.add_argument("--alphas", type=_floats, default=list(DEFAULT_ALPHAS), help="values to try (0,0.1,...,2)")
    p.add_argument("--out", help="write the sweep (alpha, criterion, curve) as JSON here")
    p.set_defaults(func=_tde_alpha)

    p = sub.add_parser("extract-dirs", help="raw embeddings of several data dirs in one process (recipes)",
                       description="Like `spkcausal extract` for each DATA dir in turn, into OUT_DIR/<dir name>; "
                                   "complete stores are skipped. Run under torchrun to shard over GPUs.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--exp", help="experiment dir: avg_model.pt, else the newest checkpoint")
    src.add_argument("--ckpt", help="a checkpoint file")
    p.add_argument("--data", nargs="+", required=True, help="data dirs to embed")
    p.add_argument("--out-dir", required=True, help="stores go to OUT_DIR/<data dir name>")
    p.add_argument("--batch-seconds", type=float, default=200.0, help="audio seconds per batch (default 200)")
    p.add_argument("--mode", choices=("exact", "pad"), default="exact", help="batching, as for `extract`")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers reading audio (default 2)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    p.set_defaults(func=_extract_dirs)

    p = sub.add_parser("tde-apply", help="TDE'd copies of raw embedding stores (one process for several stores)")
    p.add_argument("--alpha", type=float, required=True, help="TDE alpha (chosen on a dev set)")
    p.add_argument("pairs", nargs="+", metavar="RAW_STORE=OUT_STORE", help="raw store (with mean_feature.npy) = output")
    p.set_defaults(func=_tde_apply)

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
