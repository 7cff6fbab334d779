"""A tiny speaker-distinct corpus for trainer / extraction tests: per-speaker harmonic tones plus noise."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from spkcausal.data.datadir import DataDir

SR = 16000
F0 = {"spk1": 110.0, "spk2": 170.0, "spk3": 260.0, "spk4": 390.0}


def voice(spk: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """A speaker's voice: fixed f0 and spectral tilt, random phase / jitter / amplitude, plus white noise."""
    f0 = F0[spk] * (1 + 0.02 * rng.standard_normal())
    tilt = {"spk1": 0.5, "spk2": 1.0, "spk3": 1.5, "spk4": 2.0}[spk]
    t = np.arange(n) / SR
    x = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6.3)) / k ** tilt for k in range(1, 12))
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(2, 4) * t) ** 2)
    x = x + 0.05 * rng.standard_normal(n)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def make_corpus(root: Path, utts_per_spk: int = 4, seconds: tuple[float, float] = (1.0, 1.5), seed: int = 0,
                bad: bool = False, equal_length_pairs: bool = False) -> Path:
    """Write wavs + a data dir under root; returns the data dir path.

    bad=True adds a corrupt file (garbage bytes), an empty wav and a 0.1 s wav to the data dir.
    equal_length_pairs=True makes every speaker's first two utterances the same sample count.
    """
    rng = np.random.default_rng(seed)
    wav, utt2spk = {}, {}
    for spk in F0:
        prev = 0
        for i in range(utts_per_spk):
            n = int(rng.uniform(*seconds) * SR)
            if equal_length_pairs and i == 1:
                n = prev
            prev = n
            utt = f"{spk}-u{i:02d}"
            path = root / "wav" / spk / f"u{i:02d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), voice(spk, n, rng), SR, subtype="PCM_16")
            wav[utt], utt2spk[utt] = str(path), spk
    if bad:
        corrupt = root / "wav" / "spk1" / "corrupt.wav"
        corrupt.write_bytes(b"RIFF\x00\x00garbage" + bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
        empty = root / "wav" / "spk2" / "empty.wav"
        sf.write(str(empty), np.zeros(0, np.float32), SR, subtype="PCM_16")
        short = root / "wav" / "spk3" / "short.wav"
        sf.write(str(short), voice("spk3", int(0.1 * SR), rng), SR, subtype="PCM_16")
        for name, path, spk in (("corrupt", corrupt, "spk1"), ("empty", empty, "spk2"), ("short", short, "spk3")):
            wav[f"{spk}-{name}"], utt2spk[f"{spk}-{name}"] = str(path), spk
    data_dir = root / "data"
    DataDir(wav=wav, utt2spk=utt2spk).write(data_dir)
    return data_dir


def tiny_config(data_dir: Path, exp_dir: Path, **sections) -> dict:
    """A fast CPU config: resnet_tiny, 0.5 s chunks, no augmentation, cosine head."""
    cfg = {
        "exp_dir": str(exp_dir),
        "seed": 7,
        "data": {"train": str(data_dir), "chunk_seconds": 0.5, "min_seconds": 0.5, "num_workers": 0,
                 "scan_threads": 2},
        "features": {"n_mels": 40},
        "model": {"name": "resnet_tiny", "embed_dim": 16},
        "head": {"name": "aam", "scale": 16.0, "margin": 0.1},
        "optim": {"lr": 0.2, "final_lr": 0.01, "warmup_epochs": 1, "weight_decay": 1e-4},
        "margin": {"start_epoch": 2, "end_epoch": 4},
        "train": {"epochs": 3, "batch_size": 8, "precision": "fp32", "device": "cpu", "ckpt_every_steps": 0,
                  "log_every": 10, "tensorboard": False, "progress": False},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


def make_aug_banks(root: Path, seed: int = 1) -> tuple[Path, Path]:
    """Tiny MUSAN (noise + music) and RIRS_NOISES trees in the real layouts; returns (musan, rirs) roots."""
    rng = np.random.default_rng(seed)
    musan = root / "musan"
    for cat in ("noise", "music"):
        for i in range(2):
            p = musan / cat / f"src{i}" / f"{cat}-{i:04d}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(p), (0.1 * rng.standard_normal(int(0.7 * SR))).astype(np.float32), SR, subtype="PCM_16")
    rirs = root / "RIRS_NOISES" / "simulated_rirs"
    for i in range(2):
        p = rirs / "smallroom" / f"Room{i + 1:03d}" / f"Room{i + 1:03d}-00001.wav"
        p.parent.mkdir(parents=True, exist_ok=True)
        n = int(0.05 * SR)
        h = rng.standard_normal(n) * np.exp(-np.arange(n) / (0.01 * SR))
        h[0] = 3.0
        sf.write(str(p), (0.3 * h / np.abs(h).max()).astype(np.float32), SR, subtype="PCM_16")
    return musan, root / "RIRS_NOISES"


def kill_after_checkpoint(cmd: list[str], env: dict[str, str], step: int = 5) -> None:
    """Run a training command and SIGKILL it right after it logs the checkpoint of `step` (exact-resume tests)."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "saved checkpoint" in line and f"step_{step:08d}.pt" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])


def kill_process_tree(pid: int) -> None:
    """SIGKILL a torchrun agent and every process below it (torchrun starts its workers in new sessions)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in numpy: the independent reference of the losses' tests."""
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def fake_shard_index(labels: np.ndarray, per_shard: int):
    """A ShardIndex of len(labels) 1 s examples with these class labels, per_shard to a (never read) shard."""
    from spkcausal.data.shards import ShardIndex

    n = len(labels)
    return ShardIndex(root=Path("/nonexistent"), manifest={"index_sha256": "x"},
                      shard_paths=[Path(f"/nonexistent/{i}") for i in range(-(-n // per_shard))],
                      shard=np.arange(n) // per_shard, keys=[f"k{i}" for i in range(n)],
                      utts=[f"u{i}" for i in range(n)], spks=[f"s{c:03d}" for c in labels],
                      num_samples=np.full(n, 16000), sample_rate=np.full(n, 16000), exts=["wav"] * n)


def weight_diffs(a_path: Path, b_path: Path) -> dict[tuple[str, str], float]:
    """Max abs difference of every model and head tensor of two checkpoints, by (part, key); key sets must match."""
    from spkcausal.nn.checkpoint import load_checkpoint

    a, b = load_checkpoint(a_path), load_checkpoint(b_path)
    out = {}
    for part in ("model", "head"):
        assert a[part].keys() == b[part].keys(), part
        for k in b[part]:
            out[part, k] = (a[part][k].double() - b[part][k].double()).abs().max().item()
    return out


def assert_same_weights(a_path: Path, b_path: Path, atol: float = 0.0) -> None:
    """Model and head tensors of two checkpoints equal (max abs difference <= atol), key sets included.

    Used for a resumed run against an uninterrupted one: the same float32 ops replayed on the same machine, so
    equal (atol 0, or a spare 1e-6 where a caller allows it)."""
    for key, diff in weight_diffs(a_path, b_path).items():
        assert diff <= atol, key


def python_path(*dirs: Path | str) -> str:
    """PYTHONPATH for a child process: `dirs` (default: the repository and tests/, so spkcausal and the tests'
    helpers import from any working directory), then the parent's own PYTHONPATH, so that packages an
    environment provides through it (the GPU check's wheels, tools/gpu_check.sh) reach the child too."""
    repo = Path(__file__).resolve().parents[1]
    parent = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join([str(d) for d in (dirs or (repo, repo / "tests"))] + ([parent] if parent else []))


def subprocess_env() -> dict[str, str]:
    """The environment of a `python -m spkcausal` child in the tests: one thread, spkcausal and the tests' helpers
    importable."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=python_path())


def write_long_tailed_subset(root: Path) -> DataDir:
    """make_corpus at 6 utterances a speaker, cut to 6 / 3 / 2 / 1 (head to tail), written to root/lt."""
    src = DataDir.load(make_corpus(root, utts_per_spk=6))
    keep = {"spk1": 6, "spk2": 3, "spk3": 2, "spk4": 1}
    utts = [u for u in src.utts if int(u.split("-u")[1]) < keep[src.utt2spk[u]]]
    lt = DataDir(wav={u: src.wav[u] for u in utts}, utt2spk={u: src.utt2spk[u] for u in utts})
    lt.write(root / "lt")
    return lt


# The end of every torchrun test script: leave the group, then skip interpreter finalization. Once (a CI run on
# an idle machine: both tests whose heads run collectives in forward) rank 1 aborted with SIGABRT ("terminate
# called without an active exception") right after the run's last checkpoint; 90+ runs here, idle and at load 8,
# never did. What is left after the last collective is torch's C++ teardown at exit (cf. pytorch#179291), so the
# scripts skip it once their outputs are written and closed; PYTHONFAULTHANDLER prints the Python stacks of a
# rank that aborts anywhere else.
DDP_EXIT = """
dist.destroy_process_group()
import os as _os
sys.stdout.flush(); sys.stderr.flush(); _os._exit(0)
"""


def torchrun_env(**extra: str) -> dict[str, str]:
    """Environment of a torchrun test: one thread per rank, spkcausal and the tests' helpers importable
    (python_path), and Python's stacks printed should a rank abort."""
    return {**subprocess_env(), "PYTHONFAULTHANDLER": "1", **extra}


def torchrun_script(tmp_path: Path, exp: Path, resume: bool) -> None:
    """Run tmp_path/ddp.py on two local processes (gloo): argv tmp_path, exp, 1 to resume else 0."""
    env = torchrun_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "ddp.py"), str(tmp_path), str(exp), "1" if resume else "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-8000:]
