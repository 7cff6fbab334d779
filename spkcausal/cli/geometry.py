"""Tail geometry command: tail-geometry (intra-speaker spread and nearest-speaker separation by shot group)."""
from __future__ import annotations

import argparse
import json


def _geometry(args: argparse.Namespace) -> int:
    from ..scoring.geometry import format_geometry, over_seeds, tail_geometry
    from ..utils import UsageError, write_text_atomic

    per_name: dict[str, list] = {}
    for item in args.emb:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--emb takes NAME=STORE_DIR, got {item!r}")
        per_name.setdefault(name, []).append(tail_geometry(path, args.data, args.train_data, args.many, args.few,
                                                           args.min_utts))
    rows = {name: over_seeds(res) for name, res in per_name.items()}
    table = format_geometry(rows)
    print(table, end="")
    if args.out:
        write_text_atomic(args.out, json.dumps(rows, indent=1) + "\n")
    if args.markdown:
        write_text_atomic(args.markdown, table)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add tail-geometry."""
    p = sub.add_parser("tail-geometry", help="intra-speaker spread and distance to the nearest other speaker, "
                       "by shot group, of one or more embedding stores")
    p.add_argument("--emb", nargs="+", required=True, metavar="NAME=STORE_DIR",
                   help="embedding stores of utterances of --data (e.g. each system's iden test store); a NAME "
                        "given several times (one store per training seed) is averaged over them, with a "
                        "t-interval over seeds")
    p.add_argument("--data", required=True, help="data dir whose utt2spk maps the stores' keys to speakers")
    p.add_argument("--train-data", required=True, help="training dir: its counts define the shot groups")
    p.add_argument("--many", type=int, default=100, help="Many = more than this many training utterances")
    p.add_argument("--few", type=int, default=20, help="Few = fewer than this many training utterances")
    p.add_argument("--min-utts", type=int, default=2, help="speakers with fewer utterances here are left out")
    p.add_argument("--out", help="write the figures as JSON")
    p.add_argument("--markdown", help="write the table as markdown")
    p.set_defaults(func=_geometry)
