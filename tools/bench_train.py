#!/usr/bin/env python
"""Benchmark: model-only training step vs the full training pipeline, and batched Fbank vs a torchaudio loop.

In one run on one device:
  (a) model-only: the training step (autocast model + head + loss + SGD) on random (B, frames, 80) features;
  (b) full pipeline: DataLoader workers reading random chunks of wav files from disk (soundfile partial reads,
      pinned memory) -> speed perturbation + noise/reverb (p=0.6) + Fbank on the device -> the same step;
  their ratio (b)/(a); and batched Fbank vs torchaudio's kaldi.fbank one utterance at a time.
The wav corpus (and synthetic noise / RIR banks) are generated in a temporary directory; the page cache is
warm (the files were just written). Figures are medians over windows of steps after warm-up steps; the loader
of (b) starts after (a) and its warm-up drains the prefetch queue, so (b) is a steady-state rate. On a CPU the
device-side DSP (speed perturbation, fbank) competes with the model for the same cores, so (b)/(a) is far
below what a GPU gives; the 90% target is for GPUs.

    .venv/bin/python tools/bench_train.py                     # CPU-sized defaults (tiny model, small batch)
    .venv/bin/python tools/bench_train.py --gpu-preset        # ECAPA-1024 and ResNet34, 256 x 200, bf16, 17,982
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fbank import synthetic_augmenter, timed, torchaudio_loop  # noqa: E402

from spkcausal.data.datadir import DataDir  # noqa: E402
from spkcausal.data.dataset import TrainChunkDataset, train_loader  # noqa: E402
from spkcausal.data.samplers import build_sampler  # noqa: E402
from spkcausal.nn.features import Fbank  # noqa: E402
from spkcausal.nn.network import SpeakerNet  # noqa: E402
from spkcausal.train.steps import device_batch, train_step  # noqa: E402

SR = 16000


def make_corpus(root: Path, num_files: int, num_speakers: int, seconds: tuple[float, float], seed: int = 0) -> Path:
    """Random-length 16-bit wavs of coloured noise with a per-file tone (content does not matter for speed)."""
    rng = np.random.default_rng(seed)
    wav, utt2spk = {}, {}
    for i in range(num_files):
        n = int(rng.uniform(*seconds) * SR)
        x = np.cumsum(rng.standard_normal(n)).astype(np.float32)
        x -= np.convolve(x, np.ones(64) / 64, mode="same")
        x += np.sin(2 * np.pi * rng.uniform(100, 300) * np.arange(n) / SR)
        x = (0.3 * x / np.abs(x).max()).astype(np.float32)
        spk = f"spk{i % num_speakers:05d}"
        path = root / "wav" / spk / f"{i:06d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), x, SR, subtype="PCM_16")
        wav[f"{spk}-{i:06d}"], utt2spk[f"{spk}-{i:06d}"] = str(path), spk
    DataDir(wav=wav, utt2spk=utt2spk).write(root / "data")
    return root / "data"


def windows_rate(step_fn, batch: int, steps: int, warmup: int, device: torch.device, windows: int = 5) -> float:
    """Median samples/s over `windows` equal windows of `steps` steps, after `warmup` steps."""
    for _ in range(warmup):
        step_fn()
    per = max(1, steps // windows)
    rates = []
    for _ in range(windows):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(per):
            step_fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(per * batch / (time.perf_counter() - t0))
    return statistics.median(rates)


def sync_sites(step_fn, device: torch.device) -> Counter[str] | None:
    """The lines where one step makes the host wait for the GPU (torch's sync debug mode, as warnings), counted;
    None off CUDA. Each such wait empties the GPU's queue, so the launches after it are not overlapped with work
    already queued: the first thing to look at when the pipeline falls short of the model-only step."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step_fn()
        except Exception as e:  # a diagnosis, never a reason to lose the rates measured before it
            return Counter({f"(the check failed: {type(e).__name__}: {e})": 0})
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))


def bench_model(args: argparse.Namespace, model_name: str, device: torch.device, data_dir: Path) -> None:
    """Print (a), (b) and (b)/(a) for one extractor."""
    from spkcausal.nn.augment import speed_input_samples
    from spkcausal.nn.heads import build_head
    from spkcausal.nn.losses import build_loss
    from spkcausal.nn.models import build_model

    torch.manual_seed(0)
    amp = torch.bfloat16 if (args.bf16 and device.type == "cuda") else None
    model = build_model(model_name, n_mels=80)
    net = SpeakerNet(model, build_head(args.head, model.embed_dim, args.classes)).to(device).train()
    loss_fn = build_loss("ce").to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    bs = args.batch_size

    feats = torch.randn(bs, args.frames, 80, device=device)
    labels = torch.randint(0, args.classes, (bs,), device=device)

    def model_step() -> None:
        train_step(net, loss_fn, opt, scaler, feats, labels, amp)

    rate_a = windows_rate(model_step, bs, args.steps, args.warmup, device)

    fbank = Fbank().to(device).train()
    chunk = fbank.num_samples(args.frames)
    cfg = {"augment": {"speed_perturb": True}}
    augmenter = synthetic_augmenter().to(device)
    data = DataDir.load(data_dir)
    dataset = TrainChunkDataset(data, data.utts, speed_input_samples(chunk), seed=0)
    # The loader starts only now, and the warm-up consumes at least the whole prefetch queue, so the timed
    # windows see the steady state (a queue filled in advance would hide the reading cost).
    warm_b = max(args.warmup, args.num_workers * args.prefetch)
    sampler = build_sampler("natural", dataset.labels, seed=0, num_samples=(args.steps + warm_b + 5) * bs)
    loader = [iter(train_loader(dataset, sampler, bs, num_workers=args.num_workers, pin_memory=True,
                                prefetch_factor=args.prefetch if args.num_workers else None))]
    gen = torch.Generator(device=device).manual_seed(0)
    per_copy = args.classes // 3  # classes = 3 speed copies of the speakers

    def full_step() -> None:
        waves, lab, _, _ = next(loader[0])
        waves, lab = waves.to(device, non_blocking=True), lab.to(device, non_blocking=True)
        f, lab = device_batch(waves, lab % per_copy, cfg, chunk, per_copy, fbank, augmenter, gen)
        train_step(net, loss_fn, opt, scaler, f, lab, amp)

    rate_b = windows_rate(full_step, bs, args.steps, warm_b, device)
    syncs = {name: sync_sites(fn, device) for name, fn in (("(a)", model_step), ("(b)", full_step))}
    loader.clear()  # drops the iterator, which shuts its workers down before the next model
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{model_name:12s} ({n_params:.1f}M) batch {bs} x {args.frames} frames, {args.classes} classes, "
          f"{'bf16' if amp else 'fp32'}, {args.num_workers} workers")
    print(f"  (a) model-only step        : {rate_a:10,.0f} samples/s")
    print(f"  (b) full pipeline          : {rate_b:10,.0f} samples/s")
    print(f"  (b)/(a)                    : {100 * rate_b / rate_a:9.1f} %")
    for name, sites in syncs.items():
        if sites is None:
            continue
        where = ", ".join(f"{site} x{n}" for site, n in sites.most_common()) or "none"
        print(f"  {name} host syncs per step   : {sum(sites.values()):3d}  ({where})")


def bench_fbank(args: argparse.Namespace, device: torch.device) -> None:
    """Batched Fbank vs torchaudio's per-utterance kaldi.fbank on the same 2 s utterances."""
    g = torch.Generator().manual_seed(0)
    waves = (0.1 * torch.randn(args.fbank_utts, 2 * SR, generator=g)).to(device)
    fb = Fbank().to(device)
    t_loop, t_batch = timed([lambda: torchaudio_loop(waves), lambda: fb(waves)], device, args.fbank_runs)
    print(f"fbank, {args.fbank_utts} x 2 s utterances, median of {args.fbank_runs} runs")
    print(f"  torchaudio kaldi.fbank loop: {args.fbank_utts / t_loop:10,.0f} utts/s")
    print(f"  batched Fbank              : {args.fbank_utts / t_batch:10,.0f} utts/s")
    print(f"  speed-up                   : {t_loop / t_batch:9.1f}x")


def main() -> None:
    """Parse options, build the temporary corpus, run the benchmarks."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--models", default="resnet_tiny", help="comma list of registry names")
    ap.add_argument("--head", default="aam", help="head name (causal_norm_aam costs the same as aam)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--classes", type=int, default=600, help="classifier size (divisible by 3: speed perturbation)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--prefetch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per measurement (5 windows)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--num-files", type=int, default=200, help="wav files in the temporary corpus")
    ap.add_argument("--fbank-utts", type=int, default=64)
    ap.add_argument("--fbank-runs", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads in the training process (default 1: on a shared CPU, more intra-op "
                         "threads than free cores make OpenMP spin and timings swing by 10x; 0: torch's default)")
    ap.add_argument("--gpu-preset", action="store_true",
                    help="ecapa1024,resnet34; batch 256 x 200; bf16; 17,982 classes; 8 workers; 50 steps")
    args = ap.parse_args()
    if args.gpu_preset:
        args.models, args.batch_size, args.frames, args.classes = "ecapa1024,resnet34", 256, 200, 17982
        args.bf16, args.num_workers, args.steps, args.warmup = True, 8, 50, 10
        args.num_files, args.fbank_utts = max(args.num_files, 2000), 1024
    if args.classes % 3:
        ap.error("--classes must be divisible by 3 (speed-perturbed copies are new classes)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        t0 = time.time()
        data_dir = make_corpus(Path(tmp), args.num_files, max(1, args.classes // 3), (2.5, 6.0))
        print(f"temporary corpus: {args.num_files} wav files in {time.time() - t0:.1f} s")
        for m in args.models.split(","):
            bench_model(args, m, device, data_dir)
    bench_fbank(args, device)


if __name__ == "__main__":
    main()
