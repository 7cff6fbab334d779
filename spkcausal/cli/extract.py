"""Extraction commands: extract (one data dir), extract-dirs (several dirs in one process, for recipes)."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import count, finite_float


def _extract(args: argparse.Namespace) -> int:
    from ..inference.extract import extract
    from ..inference.tde import tde_store
    from ..nn.distributed import distributed
    from ..utils import UsageError

    if args.raw:
        if args.tde_alpha is None:
            raise UsageError("--raw needs --tde-alpha")
        print(tde_store(args.raw, args.out, args.tde_alpha))
        return 0
    if not args.data:
        raise UsageError("--data is required (unless --raw)")
    with distributed(args.device) as info:
        out = extract(args.data, args.out, ckpt=args.ckpt, exp_dir=args.exp, tde_alpha=args.tde_alpha,
                      batch_seconds=args.batch_seconds, mode=args.mode, num_workers=args.num_workers,
                      device=args.device, force=args.force)
    if info.is_main:
        print(out)
    return 0


def _extract_dirs(args: argparse.Namespace) -> int:
    from ..inference.extract import extract
    from ..nn.distributed import distributed

    with distributed(args.device) as info:
        for d in args.data:
            out = extract(d, f"{args.out_dir}/{Path(d).name}", ckpt=args.ckpt, exp_dir=args.exp,
                          batch_seconds=args.batch_seconds, mode=args.mode, num_workers=args.num_workers,
                          device=args.device)
            if info.is_main:
                print(out)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add extract and extract-dirs."""
    from . import add_model_source

    p = sub.add_parser("extract", help="embeddings of every utterance of a data dir (torchrun shards it)")
    src = add_model_source(p)
    src.add_argument("--raw", help="a raw store with mean_feature.npy: only apply TDE (no model run)")
    p.add_argument("--data", help="data dir to embed")
    p.add_argument("--out", required=True, help="output embedding store (directory)")
    p.add_argument("--tde-alpha", type=finite_float, default=None, help="apply TDE with this alpha (Causal Norm heads)")
    p.add_argument("--batch-seconds", type=finite_float, default=200.0, help="audio seconds per batch (default 200)")
    p.add_argument("--mode", choices=("exact", "pad", "bucket", "crop"), default="exact",
                   help="exact: batch only equal-length utterances (batch-independent); bucket: equal Fbank frame "
                        "counts (same embeddings as exact, more batching); pad: zero-pad neighbours; crop: central "
                        "10 s of longer utterances, then bucket (docs/scale.md has the measured differences)")
    p.add_argument("--num-workers", type=count, default=None,
                   help="DataLoader workers reading audio (default: none on the CPU, 2 on a GPU)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    p.add_argument("--force", action="store_true", help="redo even if the store is complete")
    p.set_defaults(func=_extract)

    p = sub.add_parser("extract-dirs", help="raw embeddings of several data dirs in one process (recipes)",
                       description="Like `spkcausal extract` for each DATA dir in turn, into OUT_DIR/<dir name>; "
                                   "complete stores are skipped. Run under torchrun to shard over GPUs.")
    src = add_model_source(p)
    p.add_argument("--data", nargs="+", required=True, help="data dirs to embed")
    p.add_argument("--out-dir", required=True, help="stores go to OUT_DIR/<data dir name>")
    p.add_argument("--batch-seconds", type=finite_float, default=200.0, help="audio seconds per batch (default 200)")
    p.add_argument("--mode", choices=("exact", "pad", "bucket", "crop"), default="exact",
                   help="batching, as for `extract`")
    p.add_argument("--num-workers", type=count, default=None,
                   help="DataLoader workers reading audio (default: none on the CPU, 2 on a GPU)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    p.set_defaults(func=_extract_dirs)
