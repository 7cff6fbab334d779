#!/usr/bin/env python3
"""Benchmark metrics and scoring at corpus scale (run by hand; prints medians of several runs).

1. CN-Celeb size: a 3,484,292-line score file with 0.5% targets. `spkcausal eer` end to end (a fresh process,
   so imports and file reading count) against a straightforward baseline in the same run: Python line parsing
   + sklearn roc_curve. Targets: >= 2x faster than the baseline, < 3 s, peak memory < 2 GiB.
2. Vox1-E size: 579,818 trials over 145,160 embeddings of dim 256. `spkcausal score` end to end: plain
   cosine (target < 10 s) and AS-norm with a 5,994-entry cohort, top 300 (target < 60 s).

Each command runs in a subprocess; peak memory is that child's ru_maxrss and CPU its user + sys time
(os.wait4). CPU seconds are the fairer figure when other jobs load the machine.
Usage: .venv/bin/python tools/bench_scoring.py [--runs 3] [--work DIR] [--skip-eer] [--skip-score]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BASELINE = r"""
import sys
import numpy as np
from sklearn.metrics import roc_curve
scores, labels = [], []
with open(sys.argv[1]) as f:
    for line in f:
        e, t, s, lab = line.split()
        scores.append(float(s))
        labels.append(1 if lab == "target" else 0)
fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
fnr = 1 - tpr
d = (fnr - fpr)[::-1]
pm, pf = fnr[::-1], fpr[::-1]
i = int(np.flatnonzero(d >= 0)[0])
w = d[i - 1] / (d[i - 1] - d[i])
eer = pm[i - 1] + w * (pm[i] - pm[i - 1])
dcf = {p: float(np.min(p * fnr + (1 - p) * fpr) / min(p, 1 - p)) for p in (0.01, 0.05)}
print(repr(float(eer)), dcf)
"""


def run_rusage(cmd: list[str]) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds (user + sys), peak RSS (MiB, the child's own ru_maxrss) and stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.read()}")
        out.seek(0)
        return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, out.read()


def median_runs(cmds: dict[str, list[str]], runs: int) -> dict[str, dict]:
    """Run the commands interleaved (a, b, a, b, ...) so load changes hit all alike; medians and max RSS."""
    rec: dict[str, dict] = {k: {"wall": [], "cpu": [], "rss": [], "out": ""} for k in cmds}
    for r in range(runs):
        for name, cmd in cmds.items():
            w, c, m, out = run_rusage(cmd)
            rec[name]["wall"].append(w)
            rec[name]["cpu"].append(c)
            rec[name]["rss"].append(m)
            rec[name]["out"] = out
            print(f"  {name} run {r + 1}: wall {w:.2f} s, cpu {c:.2f} s, peak {m:.0f} MiB, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    return {k: {"wall": statistics.median(v["wall"]), "cpu": statistics.median(v["cpu"]), "rss": max(v["rss"]),
                "out": v["out"]} for k, v in rec.items()}


def make_score_file(path: Path, n: int = 3_484_292, seed: int = 0) -> None:
    """CN-Celeb-shaped score file: 196 enrolments x test segments, 0.5% targets."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.005
    scores = np.round(rng.normal(size=n) * 0.08 + 0.05 + 0.35 * labels, 6)
    enr = rng.integers(800, 996, n)
    words = np.array(["nontarget", "target"])[labels.astype(int)]
    with open(path, "w") as f:
        f.writelines(f"id{e:05d}-enroll id{e:05d}-speech-01-{i:07d} {s:.6f} {w}\n"
                     for i, (e, s, w) in enumerate(zip(enr, scores, words)))


def bench_eer(work: Path, runs: int) -> dict:
    """`spkcausal eer` vs Python parsing + sklearn roc_curve on the same 3.48M-line file."""
    path = work / "cnceleb_size.score"
    if not path.exists():
        print("writing 3,484,292-line score file ...", flush=True)
        make_score_file(path)
    print(f"score file: {path.stat().st_size / 2**20:.0f} MiB")
    r = median_runs({"spkcausal eer": [sys.executable, "-m", "spkcausal", "eer", str(path), "--json"],
                     "baseline": [sys.executable, "-c", BASELINE, str(path)]}, runs)
    ours, base = r["spkcausal eer"], r["baseline"]
    res = json.loads(ours["out"])[0]
    base_eer = float(base["out"].split()[0])
    print(f"EER ours {res['eer'] * 100:.4f}% vs baseline {base_eer * 100:.4f}% "
          f"(|diff| {abs(res['eer'] - base_eer):.2e}); minDCF(0.01) {res['min_dcf']['0.01']:.4f}")
    return {"eer_s": ours["wall"], "eer_cpu": ours["cpu"], "eer_peak_mib": ours["rss"], "baseline_s": base["wall"],
            "baseline_cpu": base["cpu"], "baseline_peak_mib": base["rss"], "speedup": base["wall"] / ours["wall"],
            "speedup_cpu": base["cpu"] / ours["cpu"]}


def make_vox1e(work: Path, n_emb: int = 145_160, n_trials: int = 579_818, dim: int = 256, cohort: int = 5_994,
               seed: int = 0) -> None:
    """Store of n_emb random embeddings, a VoxCeleb-format trial list over them, a cohort store."""
    from spkcausal.data.embeddings import write_store

    rng = np.random.default_rng(seed)
    keys = [f"id{10270 + i // 3700:05d}/{i:011d}/{i % 1000:05d}.wav" for i in range(n_emb)]
    write_store(work / "emb", keys, rng.normal(size=(n_emb, dim)).astype(np.float32))
    write_store(work / "cohort", [f"spk{i:05d}" for i in range(cohort)],
                rng.normal(size=(cohort, dim)).astype(np.float32))
    pairs = np.unique(rng.integers(0, n_emb, size=(int(n_trials * 1.01), 2)), axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs = pairs[rng.permutation(len(pairs))[:n_trials]]
    assert len(pairs) == n_trials
    lab = rng.integers(0, 2, n_trials)
    with open(work / "vox1e.txt", "w") as f:
        f.writelines(f"{c} {keys[a]} {keys[b]}\n" for c, (a, b) in zip(lab, pairs))


def bench_score(work: Path, runs: int) -> dict:
    """`spkcausal score` at Vox1-E size: cosine, then AS-norm (cohort 5,994, top 300)."""
    if not (work / "vox1e.txt").exists():
        print("writing Vox1-E-size store and trials ...", flush=True)
        make_vox1e(work)
    base = [sys.executable, "-m", "spkcausal", "score", "--trials", str(work / "vox1e.txt"), "--emb",
            str(work / "emb")]
    r = median_runs({"cosine": base + ["--out-dir", str(work / "out_cos")]}, runs)
    r.update(median_runs({"asnorm": base + ["--mean-store", str(work / "cohort"), "--cohort", str(work / "cohort"),
                                            "--norm", "asnorm", "--asnorm-top", "300", "--out-dir",
                                            str(work / "out_asnorm")]}, runs))
    return {"cosine_s": r["cosine"]["wall"], "cosine_cpu": r["cosine"]["cpu"], "cosine_peak_mib": r["cosine"]["rss"],
            "asnorm_s": r["asnorm"]["wall"], "asnorm_cpu": r["asnorm"]["cpu"], "asnorm_peak_mib": r["asnorm"]["rss"]}


def main() -> None:
    """Run the benchmarks and print a summary against the targets."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", help="directory for the generated files (default: a temp dir)")
    ap.add_argument("--skip-eer", action="store_true")
    ap.add_argument("--skip-score", action="store_true")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_scoring."))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir {work}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    res: dict = {}
    if not args.skip_eer:
        res.update(bench_eer(work, args.runs))
    if not args.skip_score:
        res.update(bench_score(work, args.runs))
    print(f"\nmedians of {args.runs} runs:")
    if "eer_s" in res:
        print(f"  spkcausal eer (3,484,292 lines): wall {res['eer_s']:.2f} s, cpu {res['eer_cpu']:.2f} s, peak "
              f"{res['eer_peak_mib']:.0f} MiB [targets < 3 s, < 2048 MiB]")
        print(f"  baseline (Python parsing + sklearn roc_curve): wall {res['baseline_s']:.2f} s, cpu "
              f"{res['baseline_cpu']:.2f} s, peak {res['baseline_peak_mib']:.0f} MiB")
        print(f"  speed-up {res['speedup']:.2f}x wall, {res['speedup_cpu']:.2f}x cpu [target >= 2x]")
    if "cosine_s" in res:
        print(f"  score cosine (579,818 trials, 145,160 x 256): wall {res['cosine_s']:.2f} s, cpu "
              f"{res['cosine_cpu']:.2f} s, peak {res['cosine_peak_mib']:.0f} MiB [target < 10 s]")
        print(f"  score AS-norm (cohort 5,994, top 300): wall {res['asnorm_s']:.2f} s, cpu {res['asnorm_cpu']:.2f} s, "
              f"peak {res['asnorm_peak_mib']:.0f} MiB [target < 60 s]")
    print(f"  load average at the end {os.getloadavg()[0]:.1f} (other jobs share the CPUs)")


if __name__ == "__main__":
    main()
