#!/usr/bin/env python3
"""Benchmark the speaker-level bootstrap at Vox1-E size (run by hand; prints medians of several runs).

1,000 resamples of EER and minDCF (p = 0.01, 0.05) on 579,818 synthetic trials over 1,251 enrolment speakers
(half targets, a random offset per speaker), through spkcausal.scoring.bootstrap.bootstrap_verification; target:
under 30 s on 2 cores. `--paired` also times the paired bootstrap of two systems on the same trials.

The synthetic EER (`--eer`, default 5%) matters: minDCF is evaluated only at points where targets and
non-targets interleave, so a system with more overlap costs more; 0.3 is close to the worst case.
Wall seconds and CPU seconds (all threads of this process) are both printed: CPU is the fairer figure when
other jobs load the machine.
Usage: .venv/bin/python tools/bench_bootstrap.py [--runs 3] [--threads 2] [--n-boot 1000] [--eer 0.05] [--paired]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from scipy.stats import norm

from spkcausal.scoring.bootstrap import bootstrap_verification, paired_bootstrap_verification

TARGET_S = 30.0


def synthetic(n_trials: int, n_speakers: int, eer: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, labels and enrolment speaker of each trial: unit-variance classes d' apart (true EER `eer`
    without offsets), plus a per-speaker offset of sd 0.3 shared by all of that speaker's trials."""
    rng = np.random.default_rng(seed)
    spk = rng.integers(0, n_speakers, n_trials)
    labels = (rng.random(n_trials) < 0.5).astype(np.int8)
    d = -2.0 * norm.ppf(eer)
    scores = rng.normal(size=n_trials) + d * labels + 0.3 * rng.normal(size=n_speakers)[spk]
    return np.round(scores, 6), labels, spk  # 6 decimals, as score files hold them (ties included)


def main() -> None:
    """Time the bootstrap; print medians and the ratio to the 30 s target."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--trials", type=int, default=579818)
    ap.add_argument("--speakers", type=int, default=1251)
    ap.add_argument("--eer", type=float, default=0.05, help="EER of the synthetic system (default 0.05)")
    ap.add_argument("--paired", action="store_true", help="also time the paired bootstrap of two systems")
    args = ap.parse_args()

    scores, labels, spk = synthetic(args.trials, args.speakers, args.eer, 0)
    other = np.round(scores + 0.2 * np.random.default_rng(1).normal(size=len(scores)), 6)
    print(f"{len(scores):,} trials, {args.speakers:,} enrolment speakers, EER {args.eer:g}, "
          f"{args.n_boot} resamples, {args.threads} threads, load average {os.getloadavg()[0]:.2f}")
    jobs = [("single", lambda: bootstrap_verification(scores, labels, spk, n_boot=args.n_boot,
                                                      threads=args.threads))]
    if args.paired:
        jobs.append(("paired", lambda: paired_bootstrap_verification(scores, other, labels, spk,
                                                                     n_boot=args.n_boot, threads=args.threads)))
    for name, job in jobs:
        walls, cpus = [], []
        for _ in range(args.runs):
            w0, c0 = time.perf_counter(), time.process_time()
            res = job()
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        ci = res["eer_ci"] if name == "single" else res["diff_ci"]
        print(f"{name}: median wall {wall:.2f} s (runs: {', '.join(f'{w:.2f}' for w in walls)}), "
              f"median CPU {cpu:.2f} s; {wall / TARGET_S:.2f} x the {TARGET_S:g} s target; "
              f"EER interval {ci[0] * 100:.3f}..{ci[1] * 100:.3f} %")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
