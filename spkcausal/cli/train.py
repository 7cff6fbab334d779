"""Training commands: train, average-ckpt."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from . import positive_int


def _train(args: argparse.Namespace) -> int:
    from ..nn.config import load_config, load_train_config
    from ..nn.network import check_components
    from ..train.trainer import train
    from ..utils import DataError, UsageError

    cfg = load_train_config(args.config, args.overrides, args.exp_dir)
    try:
        check_components(cfg)  # a wrong model / head / loss key fails here, not after the audio scan
    except UsageError as e:
        raise DataError(str(e), " + ".join(args.config)) from None
    if args.plan_run:  # a --plan-run that is not this experiment dir's fails now, not after training
        from ..experiments.plan import record_for

        record_for(cfg["exp_dir"], {}, False, args.plan_run)
    # train() is given the config as written (merged there the same way), so that it can tell a model.name the
    # user wrote from the default one (train.init_from adopts the source's model unless another is named)
    user = load_config(args.config, args.overrides) | ({"exp_dir": str(args.exp_dir)} if args.exp_dir else {})
    result = train(user, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":
        _write_record(result.exp_dir, args.plan_run)
    if result.history and os.environ.get("RANK", "0") == "0":
        last = result.history[-1]
        print(f"step {result.step}: epoch {last['epoch']} loss {last['loss']:.4f} acc {last['acc']:.4f}")
    return 0


def _write_record(exp_dir: Path, run: str | None) -> None:
    """run.json of a trained run (spkcausal.experiments.runs): its place in the plan, the config.yaml train
    wrote, its head's causality as the head class says (a head registered elsewhere too)."""
    from ..experiments.plan import record_for
    from ..experiments.runs import write_run
    from ..nn.config import load_yaml
    from ..nn.heads import is_causal

    cfg = load_yaml(exp_dir / "config.yaml")
    causal = is_causal(str((cfg.get("head") or {}).get("name", "aam")))
    write_run(exp_dir, record_for(exp_dir, cfg, causal, run))


def _average(args: argparse.Namespace) -> int:
    from ..nn.checkpoint import average_experiment
    from ..utils import setup_logging

    setup_logging()
    out = average_experiment(args.exp, args.num, out=args.out, paths=args.ckpts or None)
    print(out)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add train and average-ckpt."""
    p = sub.add_parser("train", help="train a speaker-embedding extractor (run under torchrun for several GPUs)",
                       description="Merged config (defaults <- --config <- key=value overrides) is written to "
                                   "<exp_dir>/config.yaml; checkpoints go to <exp_dir>/checkpoints/.")
    p.add_argument("--config", required=True, action="append", metavar="YAML",
                   help="YAML config (see docs/training.md); repeat it to merge several, each over the one before, "
                        "e.g. a system's config then a fine-tuning overlay (recipes/conf/lm.yaml)")
    p.add_argument("--exp-dir", help="override exp_dir")
    p.add_argument("--plan-run", metavar="SYSTEM@SEED",
                   help="which run of the plan this is (spkcausal plan's RUN field, e.g. aam+lm@1), recorded in "
                        "<exp_dir>/run.json; default: a run of its own, named by exp_dir, no seed")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint (a fresh start if there is none)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, values in YAML")
    p.set_defaults(func=_train)

    p = sub.add_parser("average-ckpt", help="average the last N epoch checkpoints into avg_model.pt")
    p.add_argument("--exp", required=True, help="experiment dir (holds checkpoints/)")
    p.add_argument("--num", type=positive_int, default=10, help="number of last epoch checkpoints (default 10)")
    p.add_argument("--ckpts", nargs="*", help="explicit checkpoint files instead of the last --num epochs")
    p.add_argument("--out", help="output file (default <exp>/avg_model.pt)")
    p.set_defaults(func=_average)
