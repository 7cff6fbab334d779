"""Batched on-device augmentation: MUSAN noise / music / babble at drawn SNRs, RIR reverberation, speed perturbation.

Every random choice comes from the ``torch.Generator`` passed in (its state is what a trainer saves to resume
exactly). Draws are made on the generator's device and moved to the data, so a CPU generator works for CUDA
batches; only small (B,)-sized tensors are drawn here.

Order in the trainer: read ``speed_input_samples(out_len)`` samples per utterance -> ``speed_perturb`` to
``out_len`` -> ``Augmenter`` -> ``Fbank``. Speed-perturbed copies are new speakers (the pitch moves with the
speed): the label of an utterance perturbed with ``SPEED_FACTORS[k]`` becomes ``label + k * num_speakers``, so
the classifier has ``len(SPEED_FACTORS) * num_speakers`` classes; ``k = 0`` (factor 1.0) keeps the original label.
With ``augment.speed_new_speakers: false`` every copy keeps its label (one class per speaker; the trainer's choice,
``spkcausal.nn.network.speed_makes_speakers``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..data.audio import read_audio, resample
from ..utils import DataError, PathLike, UsageError, get_logger

NOISE_CATEGORIES = ("noise", "speech", "music")
SNR_RANGES: dict[str, tuple[float, float]] = {"noise": (0.0, 15.0), "speech": (10.0, 30.0), "music": (5.0, 15.0)}
BABBLE_SPEAKERS = (3, 7)
SPEED_FACTORS = (1.0, 0.9, 1.1)
ROOM_SIZES = ("smallroom", "mediumroom", "largeroom")

log = get_logger(__name__)


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U[0, 1) draws from `generator` (on its own device), delivered on `device`."""
    gen_dev = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_dev).to(device)


def _randint(high: int | Tensor, shape: tuple[int, ...], generator: torch.Generator | None,
             device: torch.device) -> Tensor:
    """Integers uniform in [0, high) (high may be a per-element tensor)."""
    high_t = torch.as_tensor(high, device=device)
    return (_uniform(shape, generator, device) * high_t).long().clamp(max=high_t - 1).clamp(min=0)


class WaveBank(nn.Module):
    """Variable-length waveforms concatenated into one flat device buffer (no padding waste) with offsets."""

    def __init__(self, waves: Sequence[np.ndarray | Tensor]):
        super().__init__()
        waves = [torch.as_tensor(np.asarray(w, dtype=np.float32)).reshape(-1) for w in waves]
        waves = [w for w in waves if w.numel() > 0]
        lengths = torch.tensor([w.numel() for w in waves], dtype=torch.long)
        offsets = torch.zeros_like(lengths)
        if len(lengths) > 1:
            offsets[1:] = torch.cumsum(lengths, 0)[:-1]
        self.register_buffer("data", torch.cat(waves) if waves else torch.zeros(0), persistent=False)
        self.register_buffer("lengths", lengths, persistent=False)
        self.register_buffer("offsets", offsets, persistent=False)

    def __len__(self) -> int:
        return int(self.lengths.numel())

    def gather(self, index: Tensor, start: Tensor, length: int, wrap: bool) -> Tensor:
        """(n, length) spans of waves `index` from `start`; past the end: loop (wrap) or zeros."""
        index, start = index.to(self.data.device), start.to(self.data.device)
        lens = self.lengths[index].unsqueeze(1)
        pos = start.unsqueeze(1) + torch.arange(length, device=self.data.device).unsqueeze(0)
        if wrap:
            return self.data[self.offsets[index].unsqueeze(1) + pos % lens]
        inside = pos < lens
        return self.data[self.offsets[index].unsqueeze(1) + torch.minimum(pos, lens - 1)] * inside

    def random_segments(self, n: int, length: int, generator: torch.Generator | None) -> Tensor:
        """`n` random (file, start) segments of `length` samples; shorter files are looped."""
        dev = self.data.device
        index = _randint(len(self), (n,), generator, dev)
        lens = self.lengths[index]
        span = torch.where(lens >= length, lens - length + 1, lens)
        return self.gather(index, _randint(span, (n,), generator, dev), length, wrap=True)


def _read_bank_files(files: Sequence[Path], sample_rate: int, max_samples: int | None) -> list[np.ndarray]:
    """Read (the first `max_samples` of) each file, resampled; unreadable or empty files are skipped and logged."""
    from tqdm import tqdm

    waves, skipped = [], 0
    # disable=None: a bar on a terminal only, not in the logs of a recipe or of every DDP rank
    for path in tqdm(files, desc="loading augmentation audio", unit="file", leave=False, disable=None):
        try:
            x, sr = read_audio(path)
        except DataError as e:
            log.warning("skipping %s", e)
            skipped += 1
            continue
        if sr != sample_rate:
            x = resample(x, sr, sample_rate)
        if max_samples is not None:
            x = x[:max_samples]
        if len(x) == 0:
            skipped += 1
            continue
        waves.append(x)
    if skipped:
        log.warning("%d of %d augmentation files skipped (unreadable or empty)", skipped, len(files))
    return waves


class NoiseBank(nn.Module):
    """MUSAN-like additive sources per category ('noise', 'speech', 'music'), kept on the device."""

    def __init__(self, sources: Mapping[str, Sequence[np.ndarray | Tensor]]):
        super().__init__()
        unknown = set(sources) - set(NOISE_CATEGORIES)
        if unknown:
            raise UsageError(f"unknown noise categories {sorted(unknown)}; expected {NOISE_CATEGORIES}")
        banks = {c: WaveBank(sources[c]) for c in NOISE_CATEGORIES if sources.get(c) is not None}
        self.banks = nn.ModuleDict({c: b for c, b in banks.items() if len(b)})

    @property
    def categories(self) -> list[str]:
        """Categories that hold at least one waveform."""
        return list(self.banks)

    @classmethod
    def from_dir(cls, root: PathLike, sample_rate: int = 16000, max_seconds: float | None = 10.0) -> NoiseBank:
        """Load `musan/{music,noise,speech}/<source>/*.wav` (root is `musan/` or its parent).

        Each file is cut to its first `max_seconds` (memory: 4 bytes x sample_rate x seconds per file; MUSAN's
        2,016 files at 10 s take about 1.3 GB).
        """
        root = Path(root)
        if (root / "musan").is_dir():
            root = root / "musan"
        max_samples = None if max_seconds is None else int(max_seconds * sample_rate)
        sources = {}
        for cat in NOISE_CATEGORIES:
            files = sorted((root / cat).glob("*/*.wav"))
            if files:
                sources[cat] = _read_bank_files(files, sample_rate, max_samples)
        bank = cls(sources)
        if not bank.categories:
            raise DataError("no readable MUSAN wav files; expected musan/{music,noise,speech}/<source>/*.wav", root)
        log.info("noise bank: %s", {c: len(b) for c, b in bank.banks.items()})
        return bank


class RirBank(nn.Module):
    """Room impulse responses, each normalised to unit energy, with its direct-path (peak) index."""

    def __init__(self, rirs: Sequence[np.ndarray | Tensor]):
        super().__init__()
        normed = []
        for r in rirs:
            r = np.asarray(r, dtype=np.float64).reshape(-1)
            energy = float(np.sqrt(np.sum(r * r)))
            if energy > 0:
                normed.append((r / energy).astype(np.float32))
        self.bank = WaveBank(normed)
        if len(self.bank) == 0:
            raise DataError("RirBank needs at least one non-silent impulse response")
        peaks = [int(np.argmax(np.abs(r))) for r in normed]
        self.register_buffer("peaks", torch.tensor(peaks, dtype=torch.long), persistent=False)

    def __len__(self) -> int:
        return len(self.bank)

    @classmethod
    def from_dir(cls, root: PathLike, sample_rate: int = 16000, max_seconds: float | None = 2.0) -> RirBank:
        """Load `simulated_rirs/{small,medium,large}room/RoomNNN/*.wav` (root: that dir, RIRS_NOISES or above)."""
        root = Path(root)
        for candidate in (root / "RIRS_NOISES" / "simulated_rirs", root / "simulated_rirs"):
            if candidate.is_dir():
                root = candidate
                break
        files = [f for room in ROOM_SIZES for f in sorted((root / room).glob("*/*.wav"))]
        if not files:
            raise DataError("no RIR wav files; expected simulated_rirs/{small,medium,large}room/RoomNNN/*.wav", root)
        max_samples = None if max_seconds is None else int(max_seconds * sample_rate)
        bank = cls(_read_bank_files(files, sample_rate, max_samples))
        log.info("RIR bank: %d impulse responses", len(bank))
        return bank

    def sample(self, n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """`n` random RIRs zero-padded to the longest drawn one (n, L), and their peak indices (n,)."""
        dev = self.bank.data.device
        index = _randint(len(self), (n,), generator, dev)
        length = int(self.bank.lengths[index].max()) if n else 1
        return self.bank.gather(index, torch.zeros_like(index), length, wrap=False), self.peaks[index]


def _fft_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: as fast as a power of two for cuFFT / pocketfft, with up to ~2x less padding."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35 << max(0, (-(-n // p35) - 1).bit_length())
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


def fft_convolve(x: Tensor, h: Tensor) -> Tensor:
    """Full linear convolution of each row of `x` (B, T) with `h` (B, L) or (L,), via FFT: (B, T + L - 1)."""
    n_out = x.shape[-1] + h.shape[-1] - 1
    n_fft = _fft_size(n_out)
    spec = torch.fft.rfft(x.float(), n=n_fft) * torch.fft.rfft(h.float(), n=n_fft)
    return torch.fft.irfft(spec, n=n_fft)[..., :n_out]


def reverberate(wave: Tensor, rirs: Tensor, peaks: Tensor | None = None) -> Tensor:
    """Convolve each utterance with its RIR, keeping the direct path aligned (no delay), same length as input.

    RIRs are used as given (RirBank stores them at unit energy); `peaks` defaults to argmax |rir|.
    """
    if peaks is None:
        peaks = rirs.abs().argmax(dim=-1)
    full = fft_convolve(wave, rirs)
    idx = peaks.to(wave.device).unsqueeze(1) + torch.arange(wave.shape[-1], device=wave.device).unsqueeze(0)
    return full.gather(1, idx)


def add_noise(wave: Tensor, noise: Tensor, snr_db: Tensor) -> Tensor:
    """wave + g * noise with g chosen so that 10 log10(P_wave / P_{g noise}) = snr_db (powers over the chunk)."""
    p_wave = wave.square().mean(dim=-1)
    p_noise = noise.square().mean(dim=-1).clamp(min=1e-12)
    gain = torch.sqrt(p_wave / (p_noise * torch.pow(10.0, snr_db.to(wave.device) / 10.0)))
    return wave + gain.unsqueeze(1) * noise


@dataclass
class AugInfo:
    """What the Augmenter did to each utterance: `kind` indexes `kinds` (-1: untouched); SNR in dB or NaN."""

    kinds: list[str]
    kind: Tensor
    snr_db: Tensor


class Augmenter(nn.Module):
    """With probability `prob` per utterance apply one of: reverb, noise, music, babble ('speech'), uniformly."""

    def __init__(self, noise_bank: NoiseBank | None = None, rir_bank: RirBank | None = None, prob: float = 0.6,
                 snr_ranges: Mapping[str, tuple[float, float]] | None = None,
                 babble_speakers: tuple[int, int] = BABBLE_SPEAKERS, kinds: Sequence[str] | None = None):
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise UsageError(f"augmentation probability must be in [0, 1], got {prob}")
        self.noise_bank = noise_bank
        self.rir_bank = rir_bank
        self.prob = prob
        self.snr_ranges = {**SNR_RANGES, **(snr_ranges or {})}
        self.babble_speakers = babble_speakers
        available = (["reverb"] if rir_bank is not None else []) + (noise_bank.categories if noise_bank else [])
        self.kinds = list(available if kinds is None else kinds)
        missing = set(self.kinds) - set(available)
        if missing:
            raise UsageError(f"augmentation kinds {sorted(missing)} have no bank loaded (available: {available})")

    def forward(self, wave: Tensor, generator: torch.Generator | None = None, return_info: bool = False,
                prob: Tensor | None = None) -> Tensor | tuple[Tensor, AugInfo]:
        """(B, T) fixed-length chunks -> augmented (B, T); optionally with what was drawn. `prob` (B,) replaces
        the module's probability row by row (tail-aware augmentation)."""
        batch, length = wave.shape
        dev = wave.device
        kind = torch.full((batch,), -1, dtype=torch.long, device=dev)
        snr = torch.full((batch,), math.nan, device=dev)
        out = wave
        if self.kinds and (self.prob > 0 or prob is not None):
            apply = _uniform((batch,), generator, dev) < (self.prob if prob is None else prob.to(dev))
            drawn = _randint(len(self.kinds), (batch,), generator, dev)
            kind = torch.where(apply, drawn, kind)
            out = wave.clone()
            for k, name in enumerate(self.kinds):
                rows = (kind == k).nonzero().squeeze(1)
                if rows.numel() == 0:
                    continue
                if name == "reverb":
                    rirs, peaks = self.rir_bank.sample(rows.numel(), generator)
                    out[rows] = reverberate(wave[rows], rirs.to(dev), peaks)
                else:
                    lo, hi = self.snr_ranges[name]
                    snr_rows = lo + (hi - lo) * _uniform((rows.numel(),), generator, dev)
                    noise = self._noise(name, rows.numel(), length, generator).to(dev)
                    out[rows] = add_noise(wave[rows], noise, snr_rows)
                    snr[rows] = snr_rows
        return (out, AugInfo(self.kinds, kind, snr)) if return_info else out

    def _noise(self, category: str, n: int, length: int, generator: torch.Generator | None) -> Tensor:
        """One noise/music segment per row, or for 'speech' a babble of 3-7 equal-power talkers."""
        bank = self.noise_bank.banks[category]
        if category != "speech":
            return bank.random_segments(n, length, generator)
        lo, hi = self.babble_speakers
        talkers = bank.random_segments(n * hi, length, generator).view(n, hi, length)
        talkers = talkers / talkers.square().mean(dim=-1, keepdim=True).clamp(min=1e-12).sqrt()
        count = lo + _randint(hi - lo + 1, (n,), generator, talkers.device)
        used = torch.arange(hi, device=talkers.device).unsqueeze(0) < count.unsqueeze(1)
        return (talkers * used.unsqueeze(-1)).sum(dim=1)


def _ratio(factor: float) -> tuple[int, int]:
    """(orig_freq, new_freq) integers with new/orig = 1/factor, for torchaudio's resampler."""
    frac = Fraction(factor).limit_denominator(1000)
    if frac <= 0:
        raise UsageError(f"speed factor must be positive, got {factor}")
    return frac.numerator, frac.denominator


def speed_output_samples(num_samples: int, factor: float) -> int:
    """Samples after speed perturbation by `factor` (speed 1.1 -> about 1/1.1 as long)."""
    orig, new = _ratio(factor)
    return -(-num_samples * new // orig)


def speed_input_samples(out_samples: int, factors: Sequence[float] = SPEED_FACTORS) -> int:
    """Samples the loader must read so that every factor in `factors` still yields `out_samples` samples."""
    need = 0
    for f in factors:
        orig, new = _ratio(f)
        # smallest n with ceil(n * new / orig) >= out_samples
        need = max(need, (out_samples - 1) * orig // new + 1)
    return need


def draw_speed(batch: int, generator: torch.Generator | None, device: torch.device | str = "cpu",
               num_factors: int = len(SPEED_FACTORS)) -> Tensor:
    """Index k into SPEED_FACTORS per utterance, uniform."""
    return _randint(num_factors, (batch,), generator, torch.device(device))


def draw_speed_by_row(prob: Tensor, generator: torch.Generator | None,
                      num_factors: int = len(SPEED_FACTORS)) -> Tensor:
    """Index k into SPEED_FACTORS per utterance: a perturbed factor (uniform over k >= 1) with its row's
    probability `prob` (B,), else 0 (tail-aware augmentation)."""
    dev = prob.device
    perturb = _uniform(tuple(prob.shape), generator, dev) < prob
    return torch.where(perturb, 1 + _randint(num_factors - 1, tuple(prob.shape), generator, dev), 0)


def speed_labels(labels: Tensor, k: Tensor, num_speakers: int) -> Tensor:
    """Speed-perturbed copies are new speakers: label + k * num_speakers."""
    return labels + k.to(labels.device) * num_speakers


def speed_perturb(wave: Tensor, factors: Tensor | Sequence[float] | float, out_len: int | None = None) -> Tensor:
    """Resample each row by its factor (sox `speed`: tempo and pitch scale together), cropped to `out_len`.

    `out_len` defaults to the shortest perturbed length in the batch; rows are cut from their start.
    """
    batch, length = wave.shape
    factors = torch.as_tensor(factors, dtype=torch.float64).reshape(-1).cpu()
    if factors.numel() == 1:
        factors = factors.expand(batch)
    if factors.numel() != batch:
        raise ValueError(f"{factors.numel()} speed factors for a batch of {batch}")
    values = sorted(set(factors.tolist()))
    shortest = min(speed_output_samples(length, f) for f in values)
    out_len = shortest if out_len is None else out_len
    if out_len > shortest:
        raise ValueError(f"out_len {out_len} > {shortest} samples available after speed perturbation; "
                         f"read speed_input_samples({out_len}) samples per utterance")
    out = wave.new_empty(batch, out_len)
    for f in values:
        rows = (factors == f).nonzero().squeeze(1).to(wave.device)
        if f == 1.0:
            out[rows] = wave[rows, :out_len]
            continue
        import torchaudio.functional as AF

        orig, new = _ratio(f)
        out[rows] = AF.resample(wave[rows], orig, new)[:, :out_len]
    return out
