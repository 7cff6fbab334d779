#!/usr/bin/env python
"""Benchmark: batched Fbank (spkcausal.nn.features) vs torchaudio's Kaldi fbank one utterance at a time.

Also times the on-device augmentation chain (speed perturbation + noise/reverb at p=0.6) on the same batch,
so the cost of features + augmentation per training batch is visible next to the fbank figures.
Prints medians of several runs and ratios measured in the same run, on every device asked for.

    .venv/bin/python tools/bench_fbank.py [--num-utts 256] [--seconds 2] [--runs 5] [--devices cpu,cuda]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi

from spkcausal.nn.augment import Augmenter, NoiseBank, RirBank, draw_speed, speed_input_samples, speed_perturb
from spkcausal.nn.features import Fbank


def timed(fns: list[Callable[[], object]], device: torch.device, runs: int) -> list[float]:
    """Median wall time of each function over `runs` interleaved rounds (after a warm-up), so that load
    changes on a shared machine hit every contender alike."""
    times: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn()
    for _ in range(runs):
        for fn, acc in zip(fns, times):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            acc.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def torchaudio_loop(waves: torch.Tensor) -> list[torch.Tensor]:
    """The usual CPU-worker recipe: one utterance at a time, int16 scale, then per-utterance CMN."""
    out = []
    for w in waves:
        f = kaldi.fbank(w.unsqueeze(0) * 32768.0, num_mel_bins=80, frame_length=25, frame_shift=10, dither=0.0,
                        sample_frequency=16000)
        out.append(f - f.mean(dim=0))
    return out


def synthetic_augmenter(seed: int = 0) -> Augmenter:
    """Banks of random noise and decaying RIRs shaped like MUSAN / RIRS_NOISES (content is irrelevant to speed)."""
    rng = np.random.default_rng(seed)
    noise = {c: [rng.standard_normal(int(rng.integers(16000, 160000))).astype(np.float32) * 0.1 for _ in range(40)]
             for c in ("noise", "music", "speech")}
    rirs = [np.r_[np.zeros(int(rng.integers(0, 200))), 1.0,
                  rng.standard_normal(n) * np.exp(-np.arange(n) / (n / 6))] for n in rng.integers(2000, 16000, 40)]
    return Augmenter(NoiseBank(noise), RirBank(rirs), prob=0.6)


def bench_device(device: torch.device, num_utts: int, seconds: float, runs: int) -> tuple[float, float]:
    """Print fbank and augmentation timings on one device; returns the loop's and the batched Fbank's seconds."""
    sr = 16000
    n = int(seconds * sr)
    g = torch.Generator().manual_seed(0)
    waves = 0.1 * torch.randn(num_utts, n, generator=g)
    dev_waves = waves.to(device)
    fb = Fbank().to(device)

    t_loop, t_batch = timed([lambda: torchaudio_loop(dev_waves), lambda: fb(dev_waves)], device, runs)
    diff = max((a - b).abs().max().item() for a, b in zip(torchaudio_loop(dev_waves[:8]), fb(dev_waves[:8])))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n== {device} ({name}); {num_utts} utterances x {seconds:g} s, median of {runs} runs ==")
    print(f"torchaudio kaldi.fbank loop : {t_loop * 1e3:9.1f} ms  {num_utts / t_loop:12,.0f} utts/s")
    print(f"batched Fbank               : {t_batch * 1e3:9.1f} ms  {num_utts / t_batch:12,.0f} utts/s")
    print(f"speed-up batched / loop     : {t_loop / t_batch:9.1f}x   (max |diff| on 8 white-noise utts: {diff:.2e})")

    aug = synthetic_augmenter().to(device)
    n_in = speed_input_samples(n)
    raw = 0.1 * torch.randn(num_utts, n_in, generator=g).to(device)
    gen = torch.Generator(device=device).manual_seed(0)

    def chain() -> torch.Tensor:
        k = draw_speed(num_utts, gen, device)
        factors = torch.tensor([1.0, 0.9, 1.1], device=device)[k]
        return fb(aug(speed_perturb(raw, factors.cpu(), n), gen))

    (t_aug,) = timed([chain], device, runs)
    print(f"speed + noise/reverb + Fbank: {t_aug * 1e3:9.1f} ms  {num_utts / t_aug:12,.0f} utts/s")
    return t_loop, t_batch


def main() -> None:
    """Parse options and run every requested device."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--num-utts", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--devices", default="cpu,cuda", help="comma list; cuda is skipped when unavailable")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seconds = {}
    for dev in args.devices.split(","):
        if dev.startswith("cuda") and not torch.cuda.is_available():
            print(f"\n== {dev}: not available, skipped ==")
            continue
        seconds[dev] = bench_device(torch.device(dev), args.num_utts, args.seconds, args.runs)
    # The GPU target (docs/scale.md): batched Fbank on the GPU against the torchaudio loop on this machine's CPU.
    for dev, (_, t_batch) in seconds.items():
        if dev != "cpu" and "cpu" in seconds:
            print(f"\nbatched Fbank on {dev} / torchaudio loop on cpu: {seconds['cpu'][0] / t_batch:9.1f}x")


if __name__ == "__main__":
    main()
