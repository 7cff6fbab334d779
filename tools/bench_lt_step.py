#!/usr/bin/env python
"""Benchmark: the training step of every long-tail system against the AAM baseline, on the demo's model.

Each system is a demo config (recipes/mini/conf/*.yaml, recipes/mini/conf/lt/*.yaml): the network (tiny ECAPA,
64-d) and head it configures, with the demo's class counts (the synthetic corpus' long tail: 100 speakers,
60 .. 2 utterances), and its loss (logit adjustment, DRW weights switched on, ...), timed on the same random
fbank batch (64 x 100 frames x 40 mels, i.e. the demo's 1 s chunks) for forward + loss + backward + SGD.
Samplers cost nothing per step (the order is planned once an epoch), so re-sampling and progressive sampling
time as their head. Systems are timed round-robin, so machine noise hits all of them alike; the figures are
medians over rounds and the ratio is to AAM's median in the same run.

    python tools/bench_lt_step.py [--rounds 15] [--steps 5] [--threads 1] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from spkcausal.nn.config import load_yaml, merge_defaults, section_kwargs
from spkcausal.nn.losses import build_loss
from spkcausal.nn.network import build_network
from spkcausal.train.steps import train_step

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "recipes" / "mini" / "conf"
SYSTEMS = ["aam", "resample", "cnaam", "lt/reweight", "lt/focal", "lt/ldam", "lt/subcenter", "lt/feature_transfer",
           "lt/balanced_softmax", "lt/drw", "lt/progressive"]


def demo_counts(n: int = 100, n_max: int = 60, imbalance: float = 30.0) -> np.ndarray:
    """The demo corpus' per-speaker training counts (exponential profile, as spkcausal synth draws them)."""
    from spkcausal.data.subsets import target_counts

    return target_counts(n, n_max, imbalance, rounding="half_even")


def build_system(name: str, counts: np.ndarray) -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]:
    """Network, loss (at its last epoch: DRW weights on) and SGD of one demo config."""
    cfg = merge_defaults(load_yaml(CONF / f"{name}.yaml"))
    net = build_network(cfg, len(counts), class_counts=counts).train()
    if hasattr(net.head, "set_margin"):
        net.head.set_margin(float(getattr(net.head, "margin", 0.2)))
    loss = build_loss(cfg["loss"]["name"], class_counts=counts, **section_kwargs(cfg["loss"]))
    if hasattr(loss, "set_epoch"):
        loss.set_epoch(cfg["train"]["epochs"] - 1)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    return net, loss, opt


def main() -> None:
    """Time every system round-robin and print medians and ratios to AAM."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=5, help="steps per system per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--systems", nargs="+", default=SYSTEMS)
    ap.add_argument("--out", help="write the figures as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    counts = demo_counts()
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.choice(len(counts), 64, p=counts / counts.sum()))
    feats = torch.randn(64, 100, 40)
    built = {s: build_system(s, counts) for s in args.systems}
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for net, loss, opt in built.values():  # warm-up
        train_step(net, loss, opt, scaler, feats, labels)
    times: dict[str, list[float]] = {s: [] for s in args.systems}
    for _ in range(args.rounds):
        for s, (net, loss, opt) in built.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                train_step(net, loss, opt, scaler, feats, labels)
            times[s].append((time.perf_counter() - t0) / args.steps)
    base = statistics.median(times[args.systems[0]])
    rows = {s: {"median_ms": 1000 * statistics.median(v), "ratio": statistics.median(v) / base} for s, v in
            times.items()}
    print(f"training step, batch 64 x 100 frames x 40, {len(counts)} classes, {args.threads} thread(s), "
          f"median of {args.rounds} rounds x {args.steps} steps; ratio to {args.systems[0]}")
    print(f"{'system':24s} {'ms/step':>8s} {'ratio':>6s}")
    for s, r in rows.items():
        print(f"{s:24s} {r['median_ms']:8.1f} {r['ratio']:6.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
