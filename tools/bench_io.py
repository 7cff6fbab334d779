#!/usr/bin/env python3
"""Training-loader throughput from one file per example vs tar shards, and extraction speed per batching mode.

One run, one machine: generates `--files` short flac files (0.5 s, 1000 speakers) in a temporary directory, writes
their shards with `make_shards`, then reads one epoch of random chunks with (a) the file dataset (soundfile
partial reads, one file per example) and (b) the shard stream, alternating a/b `--repeats` times with the page
cache dropped before each run when the machine allows it (root and a writable /proc/sys/vm/drop_caches; the
output says whether it worked). Then extraction utterances/s of exact, bucket and crop on the CPU over
`--extract-utts` utterances of continuous length (1-3 s; crop at 2 s), median of `--repeats`. Prints medians,
ratios and the load average before and after.

    python tools/bench_io.py --files 100000 --workers 2 --repeats 2
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
SR = 16000


def _write_files(args: tuple[str, int, int, float, int]) -> list[tuple[str, str, str]]:
    """Write files [lo, hi) of the corpus; returns (utt, path, speaker) rows."""
    import soundfile as sf

    root, lo, hi, seconds, speakers = args
    rng = np.random.default_rng(lo)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    rows = []
    for i in range(lo, hi):
        spk = f"spk{i % speakers:04d}"
        f0 = 100 + (i % speakers) * 0.3
        x = 0.3 * np.sin(2 * np.pi * f0 * t + rng.uniform(0, 6)) + 0.01 * rng.standard_normal(n)
        path = Path(root) / spk / f"{i:07d}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), x.astype(np.float32), SR, format="FLAC", subtype="PCM_16")
        rows.append((f"{spk}-{i:07d}", str(path), spk))
    return rows


def make_corpus(root: Path, files: int, seconds: float, speakers: int, jobs: int) -> Path:
    """Write the flac files and a data dir; returns the data dir."""
    from spkcausal.data.datadir import DataDir

    step = -(-files // (jobs * 8))
    parts = [(str(root / "audio"), lo, min(files, lo + step), seconds, speakers) for lo in range(0, files, step)]
    with ProcessPoolExecutor(jobs) as pool:
        rows = [r for part in pool.map(_write_files, parts) for r in part]
    DataDir(wav={u: p for u, p, _ in rows}, utt2spk={u: s for u, _, s in rows}).write(root / "data")
    return root / "data"


def drop_caches() -> bool:
    """Drop the page cache (root only); False when the machine does not allow it."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def loader_rate(kind: str, data_dir: Path, shard_dir: Path, workers: int, batch: int, chunk: int) -> float:
    """Examples/s of one epoch of the training loader (files or shards)."""
    from spkcausal.data.datadir import DataDir
    from spkcausal.data.dataset import TrainChunkDataset, train_loader
    from spkcausal.data.samplers import build_sampler
    from spkcausal.data.shards import load_shards
    from spkcausal.data.shardstream import ShardTrainStream, shard_loader

    t0 = time.perf_counter()
    n = 0
    if kind == "files":
        data = DataDir.load(data_dir)
        ds = TrainChunkDataset(data, data.utts, chunk, seed=0)
        loader = train_loader(ds, build_sampler("natural", ds.labels, seed=0), batch, num_workers=workers,
                              prefetch_factor=4)
    else:
        st = ShardTrainStream(load_shards(shard_dir), chunk, batch, seed=0, streams=max(1, workers))
        loader = shard_loader(st, num_workers=workers, prefetch_factor=4)
    for waves, *_ in loader:
        n += len(waves)
    return n / (time.perf_counter() - t0)


def extraction_rates(root: Path, utts: int, repeats: int, ckpt: str | None) -> dict[str, list[float]]:
    """Utterances/s of exact, bucket, crop (2 s) over `utts` utterances of 1-3 s."""
    import soundfile as sf
    import torch

    from spkcausal.data.datadir import DataDir
    from spkcausal.inference.extract import embed_utterances
    from spkcausal.nn.assemble import assemble
    from spkcausal.nn.config import merge_defaults
    from spkcausal.nn.features import Fbank
    from spkcausal.nn.network import build_extractor

    rng = np.random.default_rng(1)
    wav, utt2spk = {}, {}
    for i in range(utts):
        p = root / "eval" / f"e{i:05d}.wav"
        p.parent.mkdir(parents=True, exist_ok=True)
        n = int(rng.uniform(1.0, 3.0) * SR)
        sf.write(str(p), (0.1 * rng.standard_normal(n)).astype(np.float32), SR, subtype="PCM_16")
        wav[f"e{i:05d}"], utt2spk[f"e{i:05d}"] = str(p), f"s{i % 50}"
    data = DataDir(wav=wav, utt2spk=utt2spk)
    if ckpt:
        trained = assemble(ckpt)
        model, fbank = trained.model, trained.frontend
    else:
        torch.manual_seed(0)
        model = build_extractor(merge_defaults({"model": {"name": "ecapa_tiny", "embed_dim": 64}})).eval()
        fbank = Fbank(n_mels=80)
    rates: dict[str, list[float]] = {"exact": [], "bucket": [], "crop 2 s": []}
    for _ in range(repeats):
        for name in rates:
            mode = name.split()[0]
            t0 = time.perf_counter()
            embed_utterances(model, fbank, data, data.utts, mode=mode, crop_seconds=2.0, num_workers=0,
                             progress=False)
            rates[name].append(utts / (time.perf_counter() - t0))
    return rates


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=100000)
    p.add_argument("--seconds", type=float, default=0.5, help="length of each file (default 0.5)")
    p.add_argument("--speakers", type=int, default=1000)
    p.add_argument("--utts-per-shard", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--jobs", type=int, default=2, help="processes writing the files")
    p.add_argument("--extract-utts", type=int, default=1500)
    p.add_argument("--ckpt", help="model for the extraction timing (default: an untrained ecapa_tiny)")
    p.add_argument("--workdir", help="keep the corpus here (default: a temporary directory, removed)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_io."))
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; work dir {root}")
    try:
        t0 = time.perf_counter()
        data_dir = root / "data"
        if not (data_dir / "wav.scp").is_file():
            make_corpus(root, args.files, args.seconds, args.speakers, args.jobs)
        t1 = time.perf_counter()
        from spkcausal.data.shards import make_shards

        shard_dir = root / "shards"
        make_shards(data_dir, shard_dir, utts_per_shard=args.utts_per_shard, seed=0)
        t2 = time.perf_counter()
        disk = sum(f.stat().st_size for f in (root / "audio").rglob("*.flac")) / 2 ** 20
        shard_mb = sum(f.stat().st_size for f in shard_dir.glob("*.tar")) / 2 ** 20
        print(f"{args.files} files of {args.seconds} s: {disk:.0f} MiB written in {t1 - t0:.0f} s; shards "
              f"{shard_mb:.0f} MiB in {t2 - t1:.0f} s")
        chunk = int(args.seconds * SR)
        rates: dict[str, list[float]] = {"files": [], "shards": []}
        dropped = []
        for _ in range(args.repeats):
            for kind in rates:
                dropped.append(drop_caches())
                rates[kind].append(loader_rate(kind, data_dir, shard_dir, args.workers, args.batch, chunk))
                print(f"  {kind}: {rates[kind][-1]:.0f} examples/s (load {os.getloadavg()[0]:.1f})", flush=True)
        cache = "dropped before each run" if all(dropped) else \
            "NOT dropped (no permission to write /proc/sys/vm/drop_caches): warm page cache"
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"training loader, {args.workers} workers, batch {args.batch}, page cache {cache}:")
        print(f"  files {med['files']:.0f} examples/s, shards {med['shards']:.0f} examples/s "
              f"(median of {args.repeats}); shards / files = {med['shards'] / med['files']:.2f}")
        ex = extraction_rates(root, args.extract_utts, args.repeats, args.ckpt)
        base = statistics.median(ex["exact"])
        print(f"extraction on CPU (1 thread), {args.extract_utts} utterances of 1-3 s, median of {args.repeats}:")
        for name, v in ex.items():
            print(f"  {name}: {statistics.median(v):.1f} utts/s ({statistics.median(v) / base:.2f}x exact); "
                  f"runs {', '.join(f'{x:.1f}' for x in v)}")
        print(f"load average at end: {os.getloadavg()[0]:.1f}")
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
