"""Audio I/O with soundfile: whole files, random chunks, header-only durations, resampling, atomic wav writes."""
from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf

from ..utils import DataError, PathLike, atomic_path


def audio_info(path: PathLike) -> tuple[int, int, int]:
    """(frames, sample_rate, channels) from the file header, without decoding the samples."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise DataError(f"unreadable audio ({e})", path) from None
    return info.frames, info.samplerate, info.channels


class AudioProbe(NamedTuple):
    """What probe_audio found: frames and rate of a usable file, or `problem` (then frames and rate are 0)."""

    frames: int
    sample_rate: int
    problem: str | None


def probe_audio(path: PathLike, sample_rate: int | None = None) -> AudioProbe:
    """Header check for data preparation and training: the file exists, is readable, has samples and (when
    `sample_rate` is given) that rate; a failure is returned as a one-phrase reason, never raised."""
    try:
        frames, sr, _ = audio_info(path)
    except DataError as e:
        return AudioProbe(0, 0, e.message if Path(path).exists() else "missing file")
    if sample_rate is not None and sr != sample_rate:
        return AudioProbe(0, 0, f"sample rate {sr} Hz, expected {sample_rate}")
    if frames <= 0:
        return AudioProbe(0, 0, "empty audio (0 samples)")
    return AudioProbe(frames, sr, None)


def _to_mono(x: np.ndarray) -> np.ndarray:
    return x if x.ndim == 1 else x.mean(axis=1, dtype=np.float32)


def read_audio(
    path: PathLike, start: int = 0, frames: int = -1, expect_sr: int | None = None
) -> tuple[np.ndarray, int]:
    """Read mono float32 samples in [-1, 1) (a span when `frames` >= 0); error names the file."""
    try:
        x, sr = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise DataError(f"unreadable audio ({e})", path) from None
    if expect_sr is not None and sr != expect_sr:
        raise DataError(f"sample rate {sr} Hz; expected {expect_sr} Hz (resample the corpus first)", path)
    return _to_mono(x), sr


def read_chunk(path: PathLike, num_samples: int, rng: np.random.Generator,
               expect_sr: int | None = None) -> np.ndarray:
    """A random `num_samples` span read partially from disk; shorter files are repeated to fill it."""
    frames, sr, _ = audio_info(path)
    if expect_sr is not None and sr != expect_sr:
        raise DataError(f"sample rate {sr} Hz; expected {expect_sr} Hz", path)
    if frames <= 0:
        raise DataError("empty audio file", path)
    if frames >= num_samples:
        start = int(rng.integers(0, frames - num_samples + 1))
        x, _ = read_audio(path, start=start, frames=num_samples)
        if len(x) == num_samples:
            return x
    x, _ = read_audio(path)
    if len(x) == 0:
        raise DataError("empty audio file", path)
    reps = -(-num_samples // len(x))
    x = np.tile(x, reps)
    start = int(rng.integers(0, len(x) - num_samples + 1))
    return x[start:start + num_samples]


def resample(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Polyphase resampling (scipy), float32 out."""
    if orig_sr == new_sr:
        return x.astype(np.float32, copy=False)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(orig_sr, new_sr)
    return resample_poly(x, new_sr // g, orig_sr // g).astype(np.float32)


def write_wav(path: PathLike, x: np.ndarray, sr: int, subtype: str = "PCM_16", sync: bool = True) -> None:
    """Write mono audio as wav atomically (a crash never leaves a truncated file under `path`).

    sync=False encodes in memory and skips libsndfile's fsync: same bytes, ~5x faster for many small files
    (still atomic against a crashed process, not against a power cut)."""
    with atomic_path(path) as tmp:
        if sync:
            sf.write(str(tmp), np.asarray(x), sr, subtype=subtype, format="WAV")
        else:
            buf = io.BytesIO()
            sf.write(buf, np.asarray(x), sr, subtype=subtype, format="WAV")
            tmp.write_bytes(buf.getvalue())
