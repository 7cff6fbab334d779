"""Training commands: train, average-ckpt, extract."""
from __future__ import annotations

import argparse
import os


def _train(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..train import merge_defaults, train
    from ..utils import DataError

    try:
        cfg = load_config(args.config, args.overrides)
        if args.exp_dir:
            cfg["exp_dir"] = args.exp_dir
        merge_defaults(cfg)  # config mistakes become a one-line error naming the file, not a traceback
    except ValueError as e:
        if isinstance(e, DataError):
            raise
        raise DataError(str(e), args.config) from None
    result = train(cfg, resume=args.resume)
    if result.history and os.environ.get("RANK", "0") == "0":
        last = result.history[-1]
        print(f"step {result.step}: epoch {last['epoch']} loss {last['loss']:.4f} acc {last['acc']:.4f}")
    return 0


def _average(args: argparse.Namespace) -> int:
    from ..checkpoint import average_experiment
    from ..utils import setup_logging

    setup_logging()
    out = average_experiment(args.exp, args.num, out=args.out, paths=args.ckpts or None)
    print(out)
    return 0


def _extract(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from ..extract import extract, tde_store
    from ..train import init_distributed

    if args.raw:
        if args.tde_alpha is None:
            raise SystemExit("spkcausal extract: --raw needs --tde-alpha")
        print(tde_store(args.raw, args.out, args.tde_alpha))
        return 0
    if not args.data:
        raise SystemExit("spkcausal extract: --data is required (unless --raw)")
    info = init_distributed("cuda" if args.device in ("auto", "cuda") and _cuda() else "cpu")
    try:
        out = extract(args.data, args.out, ckpt=args.ckpt, exp_dir=args.exp, tde_alpha=args.tde_alpha,
                      batch_seconds=args.batch_seconds, mode=args.mode, num_workers=args.num_workers,
                      device=args.device, force=args.force)
    finally:
        if info.created and dist.is_initialized():
            dist.destroy_process_group()
    if info.is_main:
        print(out)
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def register(sub: argparse._SubParsersAction) -> None:
    """Add train, average-ckpt and extract."""
    p = sub.add_parser("train", help="train a speaker-embedding extractor (run under torchrun for several GPUs)",
                       description="Merged config (defaults <- --config <- key=value overrides) is written to "
                                   "<exp_dir>/config.yaml; checkpoints go to <exp_dir>/checkpoints/.")
    p.add_argument("--config", required=True, help="YAML config (see docs/training.md)")
    p.add_argument("--exp-dir", help="override exp_dir")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint (a fresh start if there is none)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, values in YAML")
    p.set_defaults(func=_train)

    p = sub.add_parser("average-ckpt", help="average the last N epoch checkpoints into avg_model.pt")
    p.add_argument("--exp", required=True, help="experiment dir (holds checkpoints/)")
    p.add_argument("--num", type=int, default=10, help="number of last epoch checkpoints (default 10)")
    p.add_argument("--ckpts", nargs="*", help="explicit checkpoint files instead of the last --num epochs")
    p.add_argument("--out", help="output file (default <exp>/avg_model.pt)")
    p.set_defaults(func=_average)

    p = sub.add_parser("extract", help="embeddings of every utterance of a data dir (torchrun shards it)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--exp", help="experiment dir: uses avg_model.pt, else the newest checkpoint")
    src.add_argument("--ckpt", help="a checkpoint file")
    src.add_argument("--raw", help="a raw store with mean_feature.npy: only apply TDE (no model run)")
    p.add_argument("--data", help="data dir to embed")
    p.add_argument("--out", required=True, help="output embedding store (directory)")
    p.add_argument("--tde-alpha", type=float, default=None, help="apply TDE with this alpha (Causal Norm heads)")
    p.add_argument("--batch-seconds", type=float, default=200.0, help="audio seconds per batch (default 200)")
    p.add_argument("--mode", choices=("exact", "pad"), default="exact",
                   help="exact: batch only equal-length utterances (batch-independent); pad: zero-pad neighbours")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers reading audio (default 2)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    p.add_argument("--force", action="store_true", help="redo even if the store is complete")
    p.set_defaults(func=_extract)
