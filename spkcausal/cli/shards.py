"""Shard commands: make-shards (tar shards of a training data dir for network storage)."""
from __future__ import annotations

import argparse

from . import positive_int


def _make_shards(args: argparse.Namespace) -> int:
    from ..data.shards import make_shards
    from ..utils import setup_logging

    setup_logging()
    print(make_shards(args.data_dir, args.out, utts_per_shard=args.utts_per_shard, seed=args.seed,
                      num_threads=args.nj))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add make-shards."""
    p = sub.add_parser("make-shards", help="write a training data dir as shuffled tar shards (webdataset layout)",
                       description="Audio bytes as stored plus labels and durations, shuffled with --seed, one "
                                   "tar per --utts-per-shard utterances, index.tsv and manifest.json (written "
                                   "last). Re-running resumes: shards that match their checksum are kept. Train "
                                   "from them with data.shards=DIR (see docs/scale.md).")
    p.add_argument("data_dir", help="Kaldi-style data dir (wav.scp, utt2spk)")
    p.add_argument("--out", required=True, help="output directory for the shards")
    p.add_argument("--utts-per-shard", type=int, default=1000, help="utterances per shard (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument("--nj", type=positive_int, default=8, help="threads reading audio headers (default 8)")
    p.set_defaults(func=_make_shards)
