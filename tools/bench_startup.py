"""Start-up wall time of the commands a user waits on: `spkcausal embed` and `verify` on one 3 s file, and a
training start up to its first step, against `python -c 'import torch'` measured in the same run.

    python tools/bench_startup.py --work /tmp/startup [--runs 5] [--src OTHER_CHECKOUT]

Set-up (not timed): a small synthetic data dir, one short training of the demo's tiny ECAPA (recipes/conf/
tiny_cpu.yaml) for the checkpoint that embed / verify load, and two 3 s wavs. Then the commands run in turn
(round robin, so a change of the machine's load hits them alike), each as a fresh process, `--runs` times after
one untimed warm-up (bytecode caching on, as on a user's machine); the
training start is timed until its first "step" log line (log_every 1) and then stopped. Prints medians with the
range and the ratio to the torch-import baseline, with `uptime` before and after (the load matters: on a shared
machine every figure moves with it). `--src` runs the commands from another checkout (e.g. a worktree of an
older commit) for a before / after comparison on the same data and checkpoint.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SR = 16000


def _wave(rng: np.random.Generator, seconds: float, f0: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    x = 0.3 * np.sin(2 * np.pi * f0 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(len(t))
    return x.astype(np.float32)


def make_data(work: Path, speakers: int = 8, utts: int = 4) -> Path:
    """A data dir of `speakers` x `utts` 1.5 s wavs, and a.wav / b.wav of 3 s; returns the data dir."""
    import soundfile as sf

    from spkcausal.data.datadir import DataDir

    rng = np.random.default_rng(0)
    wav, utt2spk = {}, {}
    for s in range(speakers):
        for i in range(utts):
            path = work / "wav" / f"s{s}_{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), _wave(rng, 1.5, 100 + 20 * s), SR, subtype="PCM_16")
            wav[f"s{s}-{i}"], utt2spk[f"s{s}-{i}"] = str(path), f"s{s}"
    for name, f0 in (("a", 120), ("b", 180)):
        sf.write(str(work / f"{name}.wav"), _wave(rng, 3.0, f0), SR, subtype="PCM_16")
    DataDir(wav=wav, utt2spk=utt2spk).write(work / "data")
    return work / "data"


def train_args(data: Path, exp: Path, epochs: int) -> list[str]:
    """`spkcausal train` on the demo's tiny ECAPA config, small batches, a step log line per step."""
    return ["train", "--config", str(ROOT / "recipes/conf/tiny_cpu.yaml"), f"exp_dir={exp}", f"data.train={data}",
            f"train.epochs={epochs}", "train.batch_size=8", "train.log_every=1", "train.ckpt_every_steps=0"]


def _env(src: Path) -> dict[str, str]:
    # Bytecode caching on, as on a user's machine (some sandboxes set PYTHONDONTWRITEBYTECODE, and then every
    # process compiles torch from source: several seconds that no user pays).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(src), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def _child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def time_command(cmd: list[str], env: dict[str, str], until: str | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds of a fresh process: to its exit, or (`until`) to the first stderr line containing it
    (then killed; CPU then counts the process itself, not its loader workers)."""
    c = _child_cpu()
    wall = _run(cmd, env, until)
    return wall, _child_cpu() - c


def _run(cmd: list[str], env: dict[str, str], until: str | None) -> float:
    t = time.perf_counter()
    cwd = env["PYTHONPATH"]  # `python -m` puts the working directory first on sys.path: run in the checkout timed
    if until is None:
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
        return time.perf_counter() - t
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, cwd=cwd)
    try:
        for line in p.stderr:
            if until in line:
                return time.perf_counter() - t
        raise RuntimeError(f"{' '.join(cmd)} ended (rc {p.wait()}) without a line containing {until!r}")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)  # its own session: the trainer and its loader workers
        p.wait()


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--src", type=Path, default=ROOT, help="checkout whose spkcausal the timed commands run")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    env = _env(a.src.resolve())
    py = [sys.executable]
    data, exp = a.work / "data", a.work / "exp"
    if not (exp / "avg_model.pt").exists() and not list(exp.glob("checkpoints/*.pt")):
        make_data(a.work)
        subprocess.run(py + ["-m", "spkcausal", *train_args(data, exp, 1)], env=_env(ROOT), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    wav_a, wav_b, out = str(a.work / "a.wav"), str(a.work / "b.wav"), a.work / "emb_out"
    cmds = {
        "python -c 'import torch'": (py + ["-c", "import torch"], None),
        "spkcausal verify (2 x 3 s)": (py + ["-m", "spkcausal", "verify", str(exp), wav_a, wav_b,
                                             "--threshold", "0.5", "--device", "cpu"], None),
        "spkcausal embed (1 x 3 s)": (py + ["-m", "spkcausal", "embed", str(exp), wav_a, "--out", str(out),
                                            "--device", "cpu", "--num-workers", "0"], None),
        "training start to first step": (py + ["-m", "spkcausal", *train_args(data, a.work / "exp_start", 1)],
                                         "step 1/"),
    }
    for cmd, until in cmds.values():  # warm-up, not timed: bytecode caches written, files in the page cache
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(a.work / "exp_start", ignore_errors=True)
        time_command(cmd, env, until)
    up0 = _uptime()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in cmds}
    for _ in range(a.runs):
        for name, (cmd, until) in cmds.items():
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(a.work / "exp_start", ignore_errors=True)
            times[name].append(time_command(cmd, env, until))
    up1 = _uptime()
    base = statistics.median(w for w, _ in times["python -c 'import torch'"])
    base_cpu = statistics.median(c for _, c in times["python -c 'import torch'"])
    probe = subprocess.run(py + ["-c", "import spkcausal; print(spkcausal.__file__)"], env=env, cwd=env["PYTHONPATH"],
                           capture_output=True, text=True).stdout.strip()
    print(f"start-up, {a.runs} runs each (round robin, after one warm-up), {os.cpu_count()} CPUs, OMP_NUM_THREADS "
          f"{env['OMP_NUM_THREADS']}, spkcausal from {probe}")
    print(f"uptime before: {up0}\nuptime after:  {up1}\n")
    print("| command | median wall s | min | max | x torch import | median CPU s | x torch import |\n"
          "|---|---|---|---|---|---|---|")
    for name, ts in times.items():
        walls, cpus = [w for w, _ in ts], [c for _, c in ts]
        med, cpu = statistics.median(walls), statistics.median(cpus)
        print(f"| {name} | {med:.2f} | {min(walls):.2f} | {max(walls):.2f} | {med / base:.2f} | {cpu:.2f} | "
              f"{cpu / base_cpu:.2f} |")


if __name__ == "__main__":
    main()
