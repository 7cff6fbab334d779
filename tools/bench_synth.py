#!/usr/bin/env python
"""Speed of the synthetic corpus generator: ms per utterance, and wall time of a corpus for nj=1 vs nj=2.

    .venv/bin/python tools/bench_synth.py            # per-utterance figures + a 50-speaker corpus, 3 runs each
    .venv/bin/python tools/bench_synth.py --full     # also the default (200-speaker) corpus once with nj=2
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from spkcausal.corpora.synthetic import SynthConfig, make_synthetic_corpus
from spkcausal.corpora.voice import session_channel, speaker_voice, synth_utterance


def per_utterance(runs: int = 5, n_utts: int = 100) -> list[float]:
    """ms per 1.75 s utterance (the default mean length), median of `runs` batches."""
    spk, sess = speaker_voice(0, 0), session_channel(0, 0, 0, 16000)
    out = []
    for r in range(runs):
        g = np.random.default_rng(r)
        t = time.perf_counter()
        for _ in range(n_utts):
            synth_utterance(spk, sess, g, 28000, 16000, (5.0, 35.0))
        out.append((time.perf_counter() - t) / n_utts * 1000)
    return out


def corpus_seconds(cfg: SynthConfig, nj: int, runs: int) -> list[float]:
    """Wall seconds of a fresh corpus, `runs` times."""
    out = []
    for _ in range(runs):
        d = Path(tempfile.mkdtemp(prefix="bench_synth_"))
        try:
            t = time.perf_counter()
            make_synthetic_corpus(d / "c", cfg, nj=nj)
            out.append(time.perf_counter() - t)
        finally:
            shutil.rmtree(d)
    return out


def main() -> None:
    """Print the figures."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--full", action="store_true", help="also time the default 200-speaker corpus (nj=2)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    ms = per_utterance()
    print(f"synth_utterance, 1.75 s at 16 kHz: median {statistics.median(ms):.2f} ms "
          f"({1750 / statistics.median(ms):.0f}x real time), runs {[round(x, 2) for x in ms]}")
    small = SynthConfig(num_speakers=50, num_test_speakers=10)
    t1, t2 = [], []
    for _ in range(args.runs):  # interleaved, so drifting load from other jobs hits both alike
        t1 += corpus_seconds(small, 1, 1)
        t2 += corpus_seconds(small, 2, 1)
    print(f"50-speaker corpus: nj=1 median {statistics.median(t1):.2f} s, nj=2 median {statistics.median(t2):.2f} s,"
          f" speed-up {statistics.median(t1) / statistics.median(t2):.2f}x")
    if args.full:
        cfg = SynthConfig()
        t = corpus_seconds(cfg, 2, 1)[0]
        print(f"default corpus ({cfg.num_speakers} + {cfg.num_test_speakers} speakers), nj=2: {t:.1f} s")


if __name__ == "__main__":
    main()
