"""Model commands: model-info (what a checkpoint or experiment holds; recipes ask it instead of parsing YAML)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def model_info(path: str) -> dict:
    """Head name, whether it is a Causal Norm head, model name and config source of an experiment or checkpoint."""
    from ..nn.config import load_yaml
    from ..registry import BUILTIN_HEADS

    p = Path(path)
    if p.is_dir():
        cfg, source = load_yaml(p / "config.yaml"), p / "config.yaml"
    else:
        from ..nn.checkpoint import load_checkpoint
        from ..utils import DataError

        ckpt = load_checkpoint(p)
        if "config" not in ckpt:
            raise DataError("checkpoint carries no config (not written by spkcausal train / average-ckpt)", p)
        cfg, source = ckpt["config"], p
    head = (cfg.get("head") or {}).get("name", "aam")
    if head in BUILTIN_HEADS:
        causal = BUILTIN_HEADS[head]
    else:  # a head registered elsewhere: ask its class (imports torch)
        from ..nn.heads import is_causal

        causal = is_causal(head)
    return {"source": str(source), "model": (cfg.get("model") or {}).get("name"), "head": head,
            "is_causal": causal}


def _info(args: argparse.Namespace) -> int:
    info = model_info(args.path)
    if args.get:
        value = info[args.get]
        print(json.dumps(value) if isinstance(value, bool) else value)
    else:
        print(json.dumps(info, indent=1))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add model-info."""
    p = sub.add_parser("model-info", help="what an experiment dir or checkpoint holds (head, Causal Norm or not)")
    p.add_argument("path", metavar="EXP_DIR_OR_CKPT")
    p.add_argument("--get", choices=("source", "model", "head", "is_causal"),
                   help="print only this field (is_causal prints true / false)")
    p.set_defaults(func=_info)
