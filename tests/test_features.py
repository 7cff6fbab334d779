"""Batched Fbank against an independent float64 Kaldi fbank (numpy), masking, dither.

The reference is float64 so the bounds measure our float32 error, not the rounding of another float32
implementation on one CPU (torchaudio's float32 fbank is itself up to 1.1e-3 off float64 on some CPUs)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as kaldi
from scipy.signal import lfilter

from spkcausal.nn.features import Fbank

EPS32 = float(np.finfo(np.float32).eps)
# Max |float32 - float64| of a log-mel on the speech-like inputs below: 2.5e-4 for ours and for torchaudio's float32
# fbank alike, under ATEN_CPU_CAPABILITY default / avx2 / avx512, MKL_ENABLE_INSTRUCTIONS SSE4_2 / AVX2 and 1-2
# threads; most of it (the same on every kernel) is the float32 mel weights. 1e-3 is 4x that.
TOL = 1e-3
# On full-range white noise the error is larger: a frame whose lowest mel band (2 FFT bins, 30 dB down after
# pre-emphasis) is by chance near-empty amplifies the rounding of the int16-scaled samples in the log. Measured
# max over 64 x 2 s: ours 6.2e-4 to 7.9e-4, torchaudio's float32 fbank 8.4e-4 to 1.1e-3, across the kernels above
# and two x86 CPUs. 2e-3 is 2.5x ours' worst.
NOISE_TOL = 2e-3


def speechlike(n: int, seed: int, sr: int = 16000) -> torch.Tensor:
    """Voiced harmonics with a gliding f0, coloured noise and a syllable-rate envelope with near-silences."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    f0 = rng.uniform(90, 250) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase + rng.uniform(0, 6.3)) / k for k in range(1, 30))
    x = x + 0.05 * lfilter([1], [1, -0.95], rng.standard_normal(n))
    env = np.clip(np.sin(2 * np.pi * rng.uniform(1, 3) * t + rng.uniform(0, 6.3)), 0.02, None)
    x = x * env
    return torch.from_numpy((0.3 * x / np.abs(x).max()).astype(np.float32))


def reference(x: torch.Tensor, n_mels: int = 80, window: str = "povey", preemphasis: float = 0.97,
              remove_dc: bool = True, low_freq: float = 20.0, high_freq: float = 0.0, cmn: bool = True,
              scale: float = 32768.0, sr: int = 16000) -> torch.Tensor:
    """Kaldi's fbank (snip_edges, 25/10 ms, no dither) in float64 with numpy, from its definitions."""
    x = x.double().numpy() * scale
    length, shift = int(sr * 0.025), int(sr * 0.010)
    n_fft = 1 << (length - 1).bit_length()
    n_frames = 1 + (len(x) - length) // shift
    frames = np.lib.stride_tricks.sliding_window_view(x, length)[::shift][:n_frames].copy()
    if remove_dc:
        frames -= frames.mean(axis=1, keepdims=True)
    frames[:, 1:] -= preemphasis * frames[:, :-1].copy()
    frames[:, 0] *= 1 - preemphasis
    n = np.arange(length)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / (length - 1))
    win = {"povey": hann ** 0.85, "hanning": hann, "hamming": 0.54 - 0.46 * np.cos(2 * np.pi * n / (length - 1)),
           "rectangular": np.ones(length)}[window]
    power = np.abs(np.fft.rfft(frames * win, n_fft)) ** 2

    def mel(f):
        return 1127.0 * np.log1p(np.asarray(f) / 700.0)

    lo = mel(low_freq)
    step = (mel(high_freq if high_freq > 0 else sr / 2 + high_freq) - lo) / (n_mels + 1)
    left = lo + step * np.arange(n_mels)[:, None]
    m = mel(sr / n_fft * np.arange(n_fft // 2))[None, :]  # Kaldi's banks leave out the Nyquist bin
    banks = np.maximum(0.0, np.minimum(m - left, left + 2 * step - m) / step)
    out = np.log(np.maximum(power[:, :n_fft // 2] @ banks.T, EPS32))
    return torch.from_numpy(out - out.mean(axis=0) if cmn else out)


def err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Max |ours - ref| (shapes must agree)."""
    assert ours.shape == ref.shape
    return (ours.double() - ref).abs().max().item()


@pytest.mark.parametrize("kw,ta_kw", [
    ({}, {}),
    (dict(window="hamming", n_mels=40, low_freq=40.0, high_freq=-400.0, cmn=False),
     dict(window_type="hamming", num_mel_bins=40, low_freq=40.0, high_freq=-400.0, subtract_mean=False)),
    (dict(window="rectangular", remove_dc=False, cmn=False),
     dict(window_type="rectangular", remove_dc_offset=False, subtract_mean=False)),
    (dict(window="hanning", preemphasis=0.0), dict(window_type="hanning", preemphasis_coefficient=0.0)),
    (dict(scale=1.0, cmn=False), dict(subtract_mean=False)),
])
def test_float64_reference_is_kaldis_fbank(kw, ta_kw):
    """The numpy reference implements Kaldi's definitions: it agrees with torchaudio's fbank run in float64."""
    x = speechlike(9000, seed=4)
    ta_kw = {"num_mel_bins": 80, "subtract_mean": True} | ta_kw
    ta = kaldi.fbank((x.double() * kw.get("scale", 32768.0))[None], dither=0.0, **ta_kw)
    # torchaudio builds its mel weights in float32 (1.4e-5 off float64): measured 1.2e-4 here, the rest is float64.
    assert err(ta, reference(x, **kw)) < 1e-3
    # a wrong definition (e.g. the Nyquist bin in the banks, or no pre-emphasis) is far beyond that
    assert err(ta, reference(x, **(kw | {"preemphasis": 0.9}))) > 1e-2


@pytest.mark.parametrize("n", [400, 401, 559, 560, 8000, 12345, 32240])
def test_parity_single_lengths(n):
    x = speechlike(n, seed=n)
    fb = Fbank()
    out = fb(x[None])[0]
    ref = reference(x)
    assert out.shape == ref.shape == (fb.num_frames(n), 80)
    assert err(out, ref) < TOL


def test_parity_without_cmn_and_other_window():
    x = speechlike(16000, seed=3)
    out = Fbank(cmn=False, window="hamming", n_mels=40, low_freq=40.0, high_freq=-400.0)(x[None])[0]
    assert err(out, reference(x, n_mels=40, window="hamming", low_freq=40.0, high_freq=-400.0, cmn=False)) < TOL
    # Without CMN the absolute level is visible: a log-mel of a 0.3-peak signal is far from zero.
    assert out.mean().item() > 5.0


@pytest.mark.parametrize("window,dc,coef", [("rectangular", False, 0.97), ("hanning", True, 0.0),
                                             ("rectangular", True, 0.5)])
def test_parity_frame_options(window, dc, coef):
    x = speechlike(9000, seed=4)
    out = Fbank(cmn=False, window=window, remove_dc_offset=dc, preemphasis=coef)(x[None])[0]
    assert err(out, reference(x, window=window, remove_dc=dc, preemphasis=coef, cmn=False)) < TOL


def test_per_frame_dither_path_matches_kaldi_order():
    """With a negligible dither the training path (per-frame, Kaldi's literal order) equals the reference."""
    x = speechlike(12000, seed=6)
    for window in ("povey", "hamming"):
        fb = Fbank(dither=1e-30, window=window).train()
        assert err(fb(x[None])[0], reference(x, window=window)) < TOL


def test_scale_flag_is_a_constant_shift_before_cmn():
    x = speechlike(8000, seed=5)
    scaled = Fbank(cmn=False)(x[None])[0]
    unscaled = Fbank(cmn=False, scale_to_int16=False)(x[None])[0]
    assert err(scaled, reference(x, cmn=False)) < TOL
    assert err(unscaled, reference(x, cmn=False, scale=1.0)) < TOL
    # power scales by 32768^2 -> log shift of 2*log(32768) wherever the epsilon floor is not near
    away = unscaled > np.log(np.finfo(np.float32).eps) + 3
    assert away.float().mean() > 0.5 and (~away).any()
    shift = (scaled - unscaled)[away]
    # exact in float64, so each side's float32 error (< TOL, above) bounds it
    assert (shift - 2 * np.log(32768.0)).abs().max().item() < 2 * TOL


def test_batch_of_different_utterances_with_lengths():
    lengths = [32240, 20000, 16123, 401, 300]
    waves = [speechlike(n, seed=10 + i) for i, n in enumerate(lengths)]
    batch = torch.zeros(len(waves), max(lengths))
    for i, w in enumerate(waves):
        batch[i, :len(w)] = w
    fb = Fbank()
    out = fb(batch, torch.tensor(lengths))
    assert out.shape == (5, fb.num_frames(max(lengths)), 80)
    fb.cpu_chunk = 2  # the CPU path in cache-sized groups: another batch shape for the FFT and the matmul
    chunked = fb(batch, torch.tensor(lengths))
    for i, (w, n) in enumerate(zip(waves, lengths)):
        nf = fb.num_frames(n)
        if nf:
            ref = reference(w)
            assert err(out[i, :nf], ref) < TOL and err(chunked[i, :nf], ref) < TOL
            # CMN over valid frames only: the valid part has zero mean per bin, up to the float32 rounding of a
            # sum of nf terms (recursive-summation bound nf * eps * max|log-mel|; pairwise sums do far better)
            bound = nf * EPS32 * reference(w, cmn=False).abs().max().item()
            assert out[i, :nf].mean(0).abs().max().item() < bound
        assert torch.all(out[i, nf:] == 0) and torch.all(chunked[i, nf:] == 0)


def test_batch_without_lengths_equals_one_by_one():
    waves = torch.stack([speechlike(24000, seed=s) for s in range(4)])
    fb = Fbank()
    out = fb(waves)
    for i in range(4):
        assert err(out[i], reference(waves[i])) < TOL


def test_num_frames_and_num_samples():
    fb = Fbank()
    assert (fb.frame_length, fb.frame_shift, fb.n_fft) == (400, 160, 512)
    for n in [0, 399, 400, 559, 560, 16000, 32240]:
        expected = kaldi.fbank(torch.ones(1, n), num_mel_bins=80).shape[0] if n >= 400 else 0
        assert fb.num_frames(n) == expected
        assert int(fb.num_frames(torch.tensor([n]))[0]) == expected
    assert fb.num_samples(200) == 32240 and fb.num_frames(fb.num_samples(200)) == 200
    assert fb.num_frames(fb.num_samples(200) - 1) == 199
    assert fb(torch.zeros(2, 100)).shape == (2, 0, 80)


def test_dither_only_in_training_and_reproducible():
    x = speechlike(8000, seed=7)[None]
    fb = Fbank(dither=1.0)
    clean = Fbank()(x)
    assert torch.equal(fb.eval()(x), clean)
    fb.train()
    a = fb(x, generator=torch.Generator().manual_seed(1))
    b = fb(x, generator=torch.Generator().manual_seed(1))
    c = fb(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # dither of 1 int16 step is tiny against speech: features barely move (measured 0.027; not a rounding bound:
    # a dither of 10 steps moves them 0.25)
    assert 0 < (a - clean).abs().mean().item() < 0.05


def test_autocast_does_not_lower_precision():
    x = speechlike(16000, seed=11)[None]
    fb = Fbank()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fb(x)
    assert out.dtype == torch.float32
    assert err(out[0], reference(x[0])) < TOL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_parity_cuda():
    lengths = [32240, 20000, 16123]
    batch = torch.zeros(3, max(lengths))
    for i, n in enumerate(lengths):
        batch[i, :n] = speechlike(n, seed=20 + i)
    out = Fbank().cuda()(batch.cuda(), torch.tensor(lengths).cuda()).cpu()
    for i, n in enumerate(lengths):
        nf = Fbank().num_frames(n)
        # cuFFT's float32 rounding differs from the CPU's, but the float32 error budget is the same
        assert err(out[i, :nf], reference(batch[i, :n])) < TOL


def test_parity_on_a_batch_of_int16_scaled_noise():
    """64 x 2 s of white noise over the full int16 range: within NOISE_TOL of the float64 Kaldi fbank.

    The worst case for float32 (see NOISE_TOL); an order of operations that rounds the large int16-scaled samples
    once more (the waveform-level pre-emphasis this module used before) is 1.2e-3 off torchaudio's float32."""
    x = torch.rand(64, 32000, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = Fbank()(x)
    ref = torch.stack([reference(w) for w in x])
    assert out.shape == ref.shape == (64, 198, 80)
    assert err(out, ref) < NOISE_TOL
