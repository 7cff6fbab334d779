#!/usr/bin/env python
"""Benchmark `spkcausal profile` on a VoxCeleb2-dev-sized text-only data dir (1.2M utterances, 5,994 speakers).

Each measurement runs in a fresh subprocess so that its peak RSS (ru_maxrss) is its own. Reports the median
of --runs runs for: the library call (profile_datadir + write_profile), the CLI end to end (interpreter start
included), and a straightforward pure-Python baseline (line-by-line dict counting, same statistics) measured
in the same run. Targets: <= 10 s and <= 1 GiB.

    .venv/bin/python tools/bench_profile.py [--utts 1200000 --speakers 5994 --runs 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LIB = r"""
import json, resource, sys, time
t = time.perf_counter()
from spkcausal.data.longtail import profile_datadir, write_profile
p = profile_datadir(sys.argv[1])
write_profile(p, sys.argv[2])
dt = time.perf_counter() - t
print(json.dumps({"s": dt, "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "gini": p.summary["utterances_per_speaker"]["gini"], "hours": p.summary["hours"]}))
"""

BASELINE = r"""
import json, resource, sys, time
t = time.perf_counter()
counts, secs, dur = {}, {}, {}
with open(sys.argv[1] + "/utt2dur") as f:
    for line in f:
        u, d = line.split()
        dur[u] = float(d)
with open(sys.argv[1] + "/utt2spk") as f:
    for line in f:
        u, s = line.split()
        counts[s] = counts.get(s, 0) + 1
        secs[s] = secs.get(s, 0.0) + dur[u]
x = sorted(counts.values())
n, tot = len(x), sum(x)
gini = sum((2 * k - n - 1) * v for k, v in enumerate(x, 1)) / (n * tot)
top = sum(x[-(-n // 5) * -1:]) / tot
med = x[n // 2] if n % 2 else (x[n // 2 - 1] + x[n // 2]) / 2
groups = {"many": 0, "medium": 0, "few": 0}
for v in x:
    groups["many" if v > 100 else "few" if v < 20 else "medium"] += 1
dt = time.perf_counter() - t
print(json.dumps({"s": dt, "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "gini": gini,
                  "hours": sum(secs.values()) / 3600}))
"""


def make_datadir(out: Path, n_utts: int, n_spk: int, seed: int = 0) -> None:
    """A text-only VoxCeleb2-dev-like dir: long-tailed counts (lognormal), ids `idNNNNN/<yt>/NNNNN`."""
    rng = np.random.default_rng(seed)
    w = rng.lognormal(0.0, 0.8, n_spk)
    counts = np.maximum(8, np.floor(w / w.sum() * n_utts)).astype(np.int64)
    counts[np.argmax(counts)] += n_utts - counts.sum()  # exact total
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
    out.mkdir(parents=True, exist_ok=True)
    durs = np.round(rng.uniform(4.0, 20.0, n_utts), 2)
    k = 0
    with open(out / "utt2spk", "w") as us, open(out / "utt2dur", "w") as ud, open(out / "wav.scp", "w") as ws:
        for i, c in enumerate(counts):
            spk = f"id{i + 10:05d}"
            n_videos = max(1, c // 8)
            yts = ["".join(rng.choice(alphabet, 11)) for _ in range(n_videos)]
            keys = sorted(f"{spk}/{yts[j % n_videos]}/{j // n_videos + 1:05d}" for j in range(c))
            us.writelines(f"{u} {spk}\n" for u in keys)
            ud.writelines(f"{u} {d:.2f}\n" for u, d in zip(keys, durs[k:k + c]))
            ws.writelines(f"{u} /data/voxceleb2/dev/wav/{u}.wav\n" for u in keys)
            k += c


def run_json(code: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utts", type=int, default=1_200_000)
    ap.add_argument("--speakers", type=int, default=5994)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "vox2_dev_like"
        t = time.perf_counter()
        make_datadir(d, args.utts, args.speakers)
        size = (d / "utt2spk").stat().st_size / 2**20
        print(f"generated {args.utts} utts / {args.speakers} speakers in {time.perf_counter() - t:.1f} s "
              f"(utt2spk {size:.1f} MiB)")
        lib, base, cli = [], [], []
        for _ in range(args.runs):
            lib.append(run_json(LIB, str(d), str(Path(tmp) / "prof_lib")))
            base.append(run_json(BASELINE, str(d)))
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "spkcausal", "profile", str(d), "--out", str(Path(tmp) / "p")],
                           check=True, capture_output=True)
            cli.append(time.perf_counter() - t)
        assert abs(lib[0]["gini"] - base[0]["gini"]) < 1e-9 and abs(lib[0]["hours"] - base[0]["hours"]) < 1e-6
        med = statistics.median
        lib_s, base_s = med(r["s"] for r in lib), med(r["s"] for r in base)
        lib_mb = max(r["rss_kb"] for r in lib) / 1024
        base_mb = max(r["rss_kb"] for r in base) / 1024
        print(f"library profile_datadir+write_profile: median {lib_s:.2f} s over {args.runs} runs, "
              f"peak RSS {lib_mb:.0f} MiB (incl. interpreter + numpy)")
        print(f"CLI `spkcausal profile` end to end:     median {med(cli):.2f} s (interpreter start included)")
        print(f"pure-Python baseline (dict counting):   median {base_s:.2f} s, peak RSS {base_mb:.0f} MiB")
        print(f"speed-up vs baseline: {base_s / lib_s:.2f}x; targets <= 10 s, <= 1024 MiB: "
              f"{'met' if max(lib_s, med(cli)) <= 10 and lib_mb <= 1024 else 'MISSED'}")


if __name__ == "__main__":
    main()
