"""Synthetic augmentation banks in the MUSAN and RIRS_NOISES layouts, so that noise / music / babble and
reverberation can be trained and measured where the real banks cannot be downloaded (the demo, tests, CI).

Files written under `root` (what `spkcausal.nn.augment.NoiseBank.from_dir` and `RirBank.from_dir` read):

- `musan/noise/synth/noise-synth-NNNN.wav`: Gaussian noise with a power spectrum ~ 1/f^beta, beta uniform in
  [0, 2] (white to brown), under a slow sinusoidal level swing (0.1-2 Hz, depth 0-0.5).
- `musan/music/synth/music-synth-NNNN.wav`: a melody of harmonic notes (equal-tempered, 110-880 Hz, 0.15-0.6 s
  each, 6 harmonics at 1/k amplitude, attack and exponential decay), one to three voices at once.
- `musan/speech/synth/speech-synth-NNNN.wav`: one talker each, from the source-filter voices of
  `spkcausal.corpora.voice` at voice indices 10,000,000 + i: never a speaker of a synthetic corpus (indices
  there start at 0), so babble adds strangers, as MUSAN's speech does.
- `RIRS_NOISES/simulated_rirs/{small,medium,large}room/RoomNNN/RoomNNN-0000k.wav`: a direct-path impulse after
  1-10 ms, then Gaussian noise under an exponential envelope that falls 60 dB in the room's RT60 (small 0.2-0.5 s,
  medium 0.4-0.8 s, large 0.7-1.2 s, one RT60 per room), at a direct-to-reverberant ratio of -3 to +10 dB; the
  RT60 of every file is listed in `rirs.tsv`.
- `synth_aug.json`: the configuration and generator version; a re-run into the same root must match it.

Deterministic for a seed (each file has its own RNG from (seed, kind, index)); resumable: complete files are kept,
and every file is written atomically. The parameters are fixed here, not tuned to any result.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.audio import probe_audio, write_wav
from ..utils import DataError, PathLike, UsageError, log_to_file, write_text_atomic
from .voice import session_channel, speaker_voice, stream_rng, synth_utterance, to_pcm16

__all__ = ["AugBankConfig", "make_synthetic_aug_banks", "ROOM_RT60"]

GENERATOR_VERSION = 1
_NOISE, _MUSIC, _SPEECH, _RIR = 11, 12, 13, 14  # stream tags, apart from voice.py's 0-4
VOICE_OFFSET = 10_000_000
ROOM_RT60 = {"smallroom": (0.2, 0.5), "mediumroom": (0.4, 0.8), "largeroom": (0.7, 1.2)}


@dataclass(frozen=True)
class AugBankConfig:
    """How many files of each kind, how long, at which rate and seed."""

    noise_files: int = 24
    music_files: int = 12
    speech_files: int = 24
    rooms_per_size: int = 6
    rirs_per_room: int = 4
    seconds: tuple[float, float] = (3.0, 8.0)
    sample_rate: int = 16000
    seed: int = 0

    def validate(self) -> None:
        """Raise UsageError naming the first bad field."""
        for name in ("noise_files", "music_files", "speech_files", "rooms_per_size", "rirs_per_room"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must be >= 0, got {getattr(self, name)}")
        lo, hi = self.seconds
        if not 0 < lo <= hi:
            raise UsageError(f"seconds must be 0 < LOW <= HIGH, got {self.seconds}")
        if self.sample_rate < 8000:
            raise UsageError(f"sample_rate must be >= 8000, got {self.sample_rate}")


def coloured_noise(g: np.random.Generator, n: int, beta: float, sr: int) -> np.ndarray:
    """Gaussian noise of `n` samples whose power spectrum falls as 1/f^beta (the DC bin is zeroed)."""
    spec = np.fft.rfft(g.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sr)
    spec[1:] *= f[1:] ** (-beta / 2)
    spec[0] = 0.0
    x = np.fft.irfft(spec, n)
    return x / max(float(np.std(x)), 1e-12)


def _noise(g: np.random.Generator, n: int, sr: int) -> np.ndarray:
    x = coloured_noise(g, n, g.uniform(0.0, 2.0), sr)
    t = np.arange(n) / sr
    swing = 1.0 + g.uniform(0.0, 0.5) * np.sin(2 * np.pi * g.uniform(0.1, 2.0) * t + g.uniform(0, 2 * np.pi))
    return x * swing


def music_notes(g: np.random.Generator, n: int, sr: int) -> list[tuple[int, int, float]]:
    """The melody of one music file: (start sample, length, fundamental Hz) per note, 1-3 voices."""
    notes = []
    for _ in range(int(g.integers(1, 4))):
        start = 0
        while start < n:
            length = int(g.uniform(0.15, 0.6) * sr)
            notes.append((start, min(length, n - start), 110.0 * 2 ** (int(g.integers(0, 37)) / 12)))
            start += length
    return notes


def _music(g: np.random.Generator, n: int, sr: int) -> np.ndarray:
    x = np.zeros(n)
    for start, length, f0 in music_notes(g, n, sr):
        t = np.arange(length) / sr
        k = np.arange(1, 7)[:, None]
        tone = (np.sin(2 * np.pi * f0 * k * t + g.uniform(0, 2 * np.pi, (6, 1))) / k).sum(axis=0)
        env = np.minimum(1.0, t / 0.01) * np.exp(-t / g.uniform(0.1, 0.5))
        x[start:start + length] += tone * env
    return x


def _speech(cfg_seed: int, index: int, g: np.random.Generator, n: int, sr: int) -> np.ndarray:
    voice = VOICE_OFFSET + index
    return synth_utterance(speaker_voice(cfg_seed, voice), session_channel(cfg_seed, voice, 0, sr), g, n, sr,
                           (30.0, 40.0))


def room_rir(g: np.random.Generator, rt60: float, sr: int) -> np.ndarray:
    """One impulse response: a direct path, then noise decaying 60 dB in `rt60` seconds."""
    delay = int(g.uniform(0.001, 0.010) * sr)
    n = delay + int(min(2.0, 1.2 * rt60 + 0.05) * sr)
    t = np.arange(n - delay - 1) / sr
    tail = g.standard_normal(len(t)) * np.exp(-6.907755 * t / rt60)  # 10^(-3) amplitude at rt60: -60 dB
    drr_db = g.uniform(-3.0, 10.0)
    tail *= np.sqrt(10 ** (-drr_db / 10) / max(float(np.sum(tail ** 2)), 1e-30))
    h = np.zeros(n)
    h[delay] = 1.0
    h[delay + 1:] = tail
    return h


def _to_file(x: np.ndarray, peak: float = 0.5) -> np.ndarray:
    return to_pcm16(x * (peak / max(float(np.max(np.abs(x))), 1e-12)))


def _plan(cfg: AugBankConfig) -> list[tuple[str, int, str, float]]:
    """(kind, index, path relative to root, RT60 of a room's file or 0) for every file; a room's RT60 is drawn once
    per (size, room) and shared by its files."""
    files = [(kind, i, f"musan/{kind}/synth/{kind}-synth-{i:04d}.wav", 0.0)
             for kind, count in (("noise", cfg.noise_files), ("music", cfg.music_files),
                                 ("speech", cfg.speech_files)) for i in range(count)]
    i = 0
    for s, (size, (lo, hi)) in enumerate(ROOM_RT60.items()):
        for room in range(1, cfg.rooms_per_size + 1):
            rt60 = float(stream_rng(cfg.seed, _RIR, s, room).uniform(lo, hi))
            for k in range(1, cfg.rirs_per_room + 1):
                name = f"Room{room:03d}"
                files.append(("rir", i, f"RIRS_NOISES/simulated_rirs/{size}/{name}/{name}-{k:05d}.wav", rt60))
                i += 1
    return files


def _make_file(cfg: AugBankConfig, kind: str, index: int, rt60: float) -> np.ndarray:
    """One file of the plan as int16: a MUSAN-layout source (noise, music, speech) or a room's RIR."""
    sr = cfg.sample_rate
    if kind == "rir":
        return to_pcm16(0.9 * room_rir(stream_rng(cfg.seed, _RIR, index, 1), rt60, sr))
    g = stream_rng(cfg.seed, {"noise": _NOISE, "music": _MUSIC, "speech": _SPEECH}[kind], index, 1)
    n = int(g.uniform(*cfg.seconds) * sr)
    if kind == "noise":
        return _to_file(_noise(g, n, sr))
    if kind == "music":
        return _to_file(_music(g, n, sr))
    return _to_file(_speech(cfg.seed, index, g, n, sr), peak=0.7)


def make_synthetic_aug_banks(root: PathLike, cfg: AugBankConfig | None = None) -> dict:
    """Write the banks under `root` (see the module doc); returns {"musan", "rirs", "files", "made", "kept"}."""
    cfg = cfg or AugBankConfig()
    cfg.validate()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"generator_version": GENERATOR_VERSION, **dataclasses.asdict(cfg)}, sort_keys=True)
    meta_path = root / "synth_aug.json"
    if meta_path.exists() and json.loads(meta_path.read_text()) != json.loads(meta):
        raise DataError("made with another configuration or generator version; use a new directory", meta_path)
    write_text_atomic(meta_path, meta + "\n")
    with log_to_file(root / "synth_aug.log") as log:
        made = kept = 0
        rirs = ["path\trt60_s"]
        for kind, index, rel, rt60 in tqdm(_plan(cfg), desc="synth-aug", unit="file", mininterval=1):
            path = root / rel
            if kind == "rir":
                rirs.append(f"{rel}\t{rt60:.4f}")
            # files are written atomically, so one that reads at the right rate is complete
            if probe_audio(path, cfg.sample_rate).problem is None:
                kept += 1
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            write_wav(path, _make_file(cfg, kind, index, rt60), cfg.sample_rate, sync=False)
            made += 1
        write_text_atomic(root / "rirs.tsv", "\n".join(rirs) + "\n")
        log.info("synthetic augmentation banks in %s: %d files made, %d kept (seed %d)", root, made, kept, cfg.seed)
    return {"musan": str(root / "musan"), "rirs": str(root / "RIRS_NOISES"), "files": made + kept, "made": made,
            "kept": kept}
