"""Model commands: model-info (what a checkpoint or experiment holds, and what its extractor costs; recipes ask it
instead of parsing YAML)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

COST_FIELDS = ("parameters", "macs_per_second")


def model_info(path: str, cost: bool = True) -> dict:
    """Head name, whether it is a Causal Norm head, model name and config source of an experiment or checkpoint;
    with `cost`, the extractor's parameters and MACs per second of audio (nn.complexity; builds the model)."""
    from ..experiments.runs import head_is_causal
    from ..nn.config import load_yaml

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
    causal = head_is_causal(cfg)
    if causal is None:  # a head registered elsewhere: ask its class (imports torch)
        from ..nn.heads import is_causal

        causal = is_causal(head)
    info = {"source": str(source), "model": (cfg.get("model") or {}).get("name"), "head": head, "is_causal": causal}
    if cost:
        from ..nn.complexity import complexity
        from ..nn.config import merge_defaults
        from ..nn.network import build_extractor

        merged = merge_defaults(cfg)
        info.update(complexity(build_extractor(merged), merged["features"]["n_mels"]))
    return info


def _info(args: argparse.Namespace) -> int:
    info = model_info(args.path, cost=args.get in (None, *COST_FIELDS))
    if args.get:
        value = info[args.get]
        print(json.dumps(value) if isinstance(value, bool) else value)
    else:
        print(json.dumps(info, indent=1))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add model-info."""
    p = sub.add_parser("model-info", help="what an experiment dir or checkpoint holds (head, Causal Norm or not, "
                                          "parameters, MACs per second of audio)",
                       description="macs_per_second: multiply-accumulates of the extractor over 2 s (200 frames), "
                                   "halved; matrix products and convolutions only, front-end excluded "
                                   "(docs/models.md).")
    p.add_argument("path", metavar="EXP_DIR_OR_CKPT")
    p.add_argument("--get", choices=("source", "model", "head", "is_causal", *COST_FIELDS),
                   help="print only this field (is_causal prints true / false)")
    p.set_defaults(func=_info)
