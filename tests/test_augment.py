"""On-device augmentation: SNRs measured directly, RIR alignment, FFT convolution, speed perturbation, RNG use."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import fftconvolve

from spkcausal.nn.augment import (
    SNR_RANGES,
    SPEED_FACTORS,
    Augmenter,
    NoiseBank,
    RirBank,
    fft_convolve,
    reverberate,
    speed_input_samples,
    speed_labels,
    speed_output_samples,
    speed_perturb,
)
from spkcausal.utils import DataError

SR = 16000


def sources(seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Noise files of assorted lengths (some shorter than a chunk, so segments must loop)."""
    rng = np.random.default_rng(seed)
    return {
        "noise": [rng.standard_normal(n).astype(np.float32) * a for n, a in [(3000, 0.1), (20000, 0.02)]],
        "music": [np.sin(np.arange(12000) * 0.05).astype(np.float32) * 0.3],
        "speech": [rng.standard_normal(6000).astype(np.float32) * a for a in (0.05, 0.1, 0.2, 0.3)],
    }


def chunk(batch: int = 32, length: int = 8000, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / SR
    return 0.2 * torch.sin(2 * np.pi * 220 * t) + 0.05 * torch.randn(batch, length, generator=g)


def test_snr_of_mixture_equals_drawn_snr():
    aug = Augmenter(NoiseBank(sources()), prob=1.0)
    wave = chunk(batch=60)
    out, info = aug(wave, torch.Generator().manual_seed(0), return_info=True)
    s, m = wave.double().numpy(), out.double().numpy()
    measured = 10 * np.log10(np.sum(s ** 2, axis=1) / np.sum((m - s) ** 2, axis=1))
    # dB of float32 mixtures: rounding moves a 20 dB SNR by ~1e-5 dB (measured 1.4e-6); 1e-3 dB is far above
    np.testing.assert_allclose(measured, info.snr_db.double().numpy(), atol=1e-3)
    names = np.array(info.kinds)[info.kind.numpy()]
    assert set(names) == {"noise", "music", "speech"}
    for name, (lo, hi) in SNR_RANGES.items():
        snr = measured[names == name]
        assert np.all((snr >= lo - 1e-3) & (snr <= hi + 1e-3))  # the same 1e-3 dB rounding allowance


def test_babble_has_three_to_seven_equal_power_talkers():
    rng = np.random.default_rng(3)
    bank = NoiseBank({"speech": [rng.standard_normal(50000).astype(np.float32) * a for a in (0.01, 0.1, 1.0)]})
    aug = Augmenter(bank, prob=1.0)
    babble = aug._noise("speech", 300, 8000, torch.Generator().manual_seed(0))
    power = babble.square().mean(-1).numpy()
    # independent unit-power talkers add their powers; levels of the source files do not matter
    assert set(np.round(power).astype(int)) == {3, 4, 5, 6, 7}
    # statistical, not rounding: 300 fixed-seed draws of 8000 samples (sd of 7 talkers' power ~0.1); measured 0.27
    assert np.abs(power - np.round(power)).max() < 0.3


def test_probability_zero_changes_nothing_and_rate_follows_p():
    wave = chunk()
    aug = Augmenter(NoiseBank(sources()), RirBank([np.r_[1.0, 0.3, 0.1]]), prob=0.0)
    assert torch.equal(aug(wave, torch.Generator().manual_seed(0)), wave)
    aug.prob = 0.6
    _, info = aug(chunk(batch=2000, length=400), torch.Generator().manual_seed(0), return_info=True)
    rate = (info.kind >= 0).double().mean().item()
    assert abs(rate - 0.6) < 0.05  # binomial(2000, 0.6): sd 0.011, so 0.05 is 4.5 sd
    untouched = info.kind < 0
    assert torch.isnan(info.snr_db[untouched]).all()


def test_seeded_generator_is_deterministic_and_resumable():
    aug = Augmenter(NoiseBank(sources()), RirBank([np.r_[np.zeros(7), 1.0, np.linspace(0.5, 0, 50)]]), prob=0.6)
    wave = chunk()
    g = torch.Generator().manual_seed(123)
    first = aug(wave, g)
    state = g.get_state()
    second = aug(wave, g)
    g2 = torch.Generator().manual_seed(123)
    assert torch.equal(aug(wave, g2), first)
    g3 = torch.Generator()
    g3.set_state(state)
    assert torch.equal(aug(wave, g3), second)
    assert not torch.equal(first, second)


def test_fft_convolve_matches_numpy_and_scipy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 1000))
    h = rng.standard_normal((3, 257)) * np.exp(-np.arange(257) / 40)
    out = fft_convolve(torch.from_numpy(x), torch.from_numpy(h)).numpy()
    for i in range(3):  # float32 FFT against float64 direct convolution: 3.7e-6 (measured), 27x below 1e-4
        np.testing.assert_allclose(out[i], np.convolve(x[i], h[i]), atol=1e-4)
    np.testing.assert_allclose(fft_convolve(torch.from_numpy(x), torch.from_numpy(h[0])).numpy(),
                               fftconvolve(x, h[0][None], axes=1), atol=1e-4)


@pytest.mark.parametrize("delay,gain", [(0, 1.0), (37, 0.25)])
def test_impulse_rir_returns_input_unshifted(delay, gain):
    rir = np.zeros(100, dtype=np.float32)
    rir[delay] = gain
    bank = RirBank([rir])  # stored at unit energy, so the gain disappears too
    aug = Augmenter(rir_bank=bank, prob=1.0)
    wave = chunk(batch=4)
    out, info = aug(wave, torch.Generator().manual_seed(0), return_info=True)
    assert (info.kind == 0).all()
    assert torch.allclose(out, wave, atol=1e-5)  # float32 FFT round trip of |x| < 0.4: 1.3e-7 (measured)


def test_reverberation_keeps_alignment_and_energy_normalised_rir():
    rng = np.random.default_rng(1)
    d = 25
    tail = rng.standard_normal(1500) * np.exp(-np.arange(1500) / 200) * 0.3
    rir = np.r_[np.zeros(d), 2.0, tail].astype(np.float32)
    bank = RirBank([rir])
    stored = bank.bank.data.numpy()
    # unit energy up to float32 rounding of 1526 stored taps (<= n eps / 2 ~ 1e-4 worst case, ~1e-7 typical)
    assert abs(np.sum(stored.astype(np.float64) ** 2) - 1) < 1e-5 and int(bank.peaks[0]) == d
    x = rng.standard_normal((1, 6000)).astype(np.float32)
    rirs, peaks = bank.sample(1, torch.Generator().manual_seed(0))
    out = reverberate(torch.from_numpy(x), rirs, peaks).numpy()[0]
    expected = np.convolve(x[0], stored)[d:d + 6000]
    np.testing.assert_allclose(out, expected, atol=1e-4)  # float32 FFT vs float64 direct: 8e-7 (measured)
    lags = np.arange(-50, 51)
    xc = [np.dot(out[50:-50], np.roll(x[0], k)[50:-50]) for k in lags]
    assert lags[int(np.argmax(xc))] == 0


def test_speed_perturb_duration_and_pitch():
    t = np.arange(SR) / SR
    sine = torch.from_numpy(np.sin(2 * np.pi * 1000 * t).astype(np.float32))[None]
    for f in (0.9, 1.1):
        out = speed_perturb(sine, f)[0].numpy()
        assert len(out) == speed_output_samples(SR, f) == int(np.ceil(SR / f))
        spec = np.abs(np.fft.rfft(out * np.hanning(len(out))))
        peak_hz = np.argmax(spec) * SR / len(out)
        assert abs(peak_hz - 1000 * f) < 2.0  # two FFT bins (SR / len(out) is ~1 Hz)
    assert torch.equal(speed_perturb(sine, 1.0), sine)


def test_speed_mixed_batch_input_length_and_labels():
    out_len = 32000
    n_in = speed_input_samples(out_len)
    assert all(speed_output_samples(n_in, f) >= out_len for f in SPEED_FACTORS)
    assert any(speed_output_samples(n_in - 1, f) < out_len for f in SPEED_FACTORS)
    wave = torch.randn(4, n_in)
    out = speed_perturb(wave, torch.tensor([1.0, 0.9, 1.1, 1.1]), out_len)
    assert out.shape == (4, out_len)
    assert torch.equal(out[0], wave[0, :out_len])
    for i, f in enumerate([1.0, 0.9, 1.1, 1.1]):  # grouping by factor: each row as if perturbed alone
        ref = speed_perturb(wave[i:i + 1].double(), f)[0, :out_len]  # the same resampler in float64
        alone = speed_perturb(wave[i:i + 1], f)[0, :out_len]
        # float32 resampling is 4.6e-7 * max|x| off float64 (measured, every kernel); 1e-5 * max|x| is 20x that,
        # and bounds both the grouped row and the row alone without tying one float32 rounding to another
        bound = 1e-5 * ref.abs().max().item()
        assert (out[i].double() - ref).abs().max().item() < bound and (alone.double() - ref).abs().max().item() < bound
    with pytest.raises(ValueError, match="speed_input_samples"):
        speed_perturb(torch.randn(2, out_len), [1.1, 1.0], out_len)
    labels = torch.tensor([0, 3, 5])
    assert speed_labels(labels, torch.tensor([0, 1, 2]), 10).tolist() == [0, 13, 25]


def _write(path, x, sr=SR):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, subtype="PCM_16")


def test_banks_from_dir(tmp_path):
    rng = np.random.default_rng(0)
    musan = tmp_path / "musan"
    _write(musan / "noise/free-sound/noise-free-sound-0000.wav", 0.1 * rng.standard_normal(SR))
    _write(musan / "noise/sound-bible/noise-sound-bible-0000.wav", 0.1 * rng.standard_normal(SR // 2), sr=8000)
    _write(musan / "music/fma/music-fma-0000.wav", 0.1 * rng.standard_normal(3 * SR))
    (musan / "speech/librivox").mkdir(parents=True)
    (musan / "speech/librivox/speech-librivox-0000.wav").write_bytes(b"not a wav")
    bank = NoiseBank.from_dir(tmp_path, SR, max_seconds=2.0)
    assert bank.categories == ["noise", "music"]
    assert sorted(bank.banks["noise"].lengths.tolist()) == [SR, SR]  # the 8 kHz file is resampled
    assert bank.banks["music"].lengths.tolist() == [2 * SR]
    with pytest.raises(DataError, match="musan"):
        NoiseBank.from_dir(tmp_path / "nothing", SR)

    rirs = tmp_path / "RIRS_NOISES" / "simulated_rirs"
    for room in ("smallroom", "largeroom"):
        _write(rirs / room / "Room001" / "Room001-00001.wav", np.r_[np.zeros(10), 0.9, 0.1 * rng.random(300)])
    rbank = RirBank.from_dir(tmp_path)
    assert len(rbank) == 2 and rbank.peaks.tolist() == [10, 10]
    with pytest.raises(DataError, match="simulated_rirs"):
        RirBank.from_dir(tmp_path / "musan")


def test_unknown_kind_rejected():
    with pytest.raises(ValueError, match="reverb"):
        Augmenter(NoiseBank(sources()), kinds=["reverb"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_with_cpu_generator():
    rir = np.r_[np.zeros(5), 1.0, np.linspace(0.4, 0, 200)].astype(np.float32)
    aug = Augmenter(NoiseBank(sources()), RirBank([rir]), prob=0.8)
    wave = chunk()
    cpu = aug(wave, torch.Generator().manual_seed(5))
    gpu = aug.cuda()(wave.cuda(), torch.Generator().manual_seed(5)).cpu()
    # two float32 devices: each within ~1e-6 of float64 here (|x| < 0.5), so 1e-4 bounds their sum many times over
    assert torch.allclose(cpu, gpu, atol=1e-4)
    fast = speed_perturb(wave.cuda(), [0.9] * 32).cpu()
    assert torch.allclose(fast, speed_perturb(wave, [0.9] * 32), atol=1e-4)  # as above


def test_fft_size_is_smallest_5_smooth_number():
    from spkcausal.nn.augment import _fft_size

    def smooth(m: int) -> bool:
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        return m == 1

    for n in list(range(1, 1500)) + [47999, 48001, 63999, 65537]:
        size = _fft_size(n)
        assert size >= n and smooth(size) and not any(smooth(m) for m in range(n, size))
