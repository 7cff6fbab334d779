"""Synthetic augmentation banks (spkcausal synth-aug): spectra, decay times and pitch checked by independent
estimates (Welch's PSD, Schroeder's backward integration, autocorrelation), the layouts the banks' readers take,
determinism, resumption and refusals."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import find_peaks, welch

from spkcausal.cli import main
from spkcausal.corpora.augbanks import (
    ROOM_RT60,
    AugBankConfig,
    coloured_noise,
    make_synthetic_aug_banks,
    music_notes,
    room_rir,
)
from spkcausal.corpora.voice import stream_rng
from spkcausal.nn.augment import NOISE_CATEGORIES, NoiseBank, RirBank
from spkcausal.utils import DataError

SR = 16000
SMALL = AugBankConfig(noise_files=2, music_files=2, speech_files=2, rooms_per_size=2, rirs_per_room=2,
                      seconds=(1.0, 1.5), seed=3)


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0])
def test_coloured_noise_falls_as_one_over_f_to_the_beta(beta):
    x = coloured_noise(np.random.default_rng(0), 8 * SR, beta, SR)
    f, p = welch(x, SR, nperseg=4096)
    band = (f >= 100) & (f <= 4000)
    slope = np.polyfit(np.log(f[band]), np.log(p[band]), 1)[0]
    assert slope == pytest.approx(-beta, abs=0.1)
    assert np.std(x) == pytest.approx(1.0, rel=1e-9)


def _schroeder_rt60(h: np.ndarray) -> float:
    """RT60 from the T20 fit (-5 to -25 dB) of the energy decay curve of the tail after the direct path."""
    tail = h[int(np.argmax(np.abs(h))) + 1:].astype(np.float64)
    edc = np.cumsum(tail[::-1] ** 2)[::-1]
    edc = edc[edc > 0]  # a 16-bit file's last samples round to zero
    db = 10 * np.log10(edc / edc[0])
    fit = (db <= -5) & (db >= -25)
    slope = np.polyfit(np.arange(len(db))[fit] / SR, db[fit], 1)[0]
    return -60.0 / slope


@pytest.mark.parametrize("rt60", [0.25, 0.6, 1.1])
def test_room_impulse_responses_decay_60_db_in_their_rt60(rt60):
    for seed in range(3):
        h = room_rir(np.random.default_rng(seed), rt60, SR)
        assert _schroeder_rt60(h) == pytest.approx(rt60, rel=0.08)
        peak = int(np.argmax(np.abs(h)))
        assert 0.001 * SR <= peak <= 0.010 * SR and h[peak] == 1.0
        drr = 10 * np.log10(1.0 / np.sum(h[peak + 1:] ** 2))
        assert -3.0 - 1e-9 <= drr <= 10.0 + 1e-9


def test_music_is_the_harmonics_of_its_notes():
    from spkcausal.corpora.augbanks import _music

    n = 3 * SR
    notes = music_notes(np.random.default_rng(5), n, SR)
    x = _music(np.random.default_rng(5), n, SR)  # the same draws: notes first
    f, p = welch(x, SR, nperseg=8192)
    peaks, _ = find_peaks(p, height=p.max() * 0.05)
    harmonics = np.array([k * f0 for _, _, f0 in notes for k in range(1, 7)])
    for fp in f[peaks]:
        assert np.min(np.abs(harmonics - fp)) <= 2 * SR / 8192, fp
    assert all(110.0 <= f0 <= 880.0 + 1e-9 for _, _, f0 in notes)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.wav"))}


def test_banks_load_into_the_augmenter_and_list_each_rooms_rt60(tmp_path):
    out = make_synthetic_aug_banks(tmp_path / "aug", SMALL)
    assert (out["files"], out["made"], out["kept"]) == (18, 18, 0)
    noise = NoiseBank.from_dir(out["musan"])
    assert sorted(noise.categories) == sorted(NOISE_CATEGORIES)
    assert all(len(noise.banks[c]) == 2 for c in NOISE_CATEGORIES)
    assert len(RirBank.from_dir(out["rirs"])) == 12
    rows = [line.split("\t") for line in (tmp_path / "aug" / "rirs.tsv").read_text().splitlines()[1:]]
    assert len(rows) == 12
    by_room: dict[str, set[str]] = {}
    for path, rt60 in rows:
        size, room = path.split("/")[2:4]
        lo, hi = ROOM_RT60[size]
        assert lo <= float(rt60) <= hi
        by_room.setdefault(f"{size}/{room}", set()).add(rt60)
        h, sr = sf.read(str(tmp_path / "aug" / path))
        assert sr == SR and _schroeder_rt60(h) == pytest.approx(float(rt60), rel=0.1)
    assert len(by_room) == 6 and all(len(v) == 1 for v in by_room.values())  # one RT60 per room


def test_babble_talkers_are_voiced_speech():
    from spkcausal.corpora.augbanks import _speech

    x = _speech(0, 0, stream_rng(0, 99), 2 * SR, SR)
    best = 0.0
    for start in range(0, len(x) - 1024, 1024):  # the voiced frames: a clear autocorrelation peak at 1/F0
        frame = x[start:start + 1024] - x[start:start + 1024].mean()
        ac = np.correlate(frame, frame, "full")[1023:]
        if ac[0] > 0:
            lags = slice(int(SR / 400), int(SR / 60))
            best = max(best, float(ac[lags].max() / ac[0]))
    assert best > 0.5


def test_same_seed_same_bytes_resumes_and_refuses_another_config(tmp_path):
    make_synthetic_aug_banks(tmp_path / "a", SMALL)
    make_synthetic_aug_banks(tmp_path / "b", SMALL)
    first = _digest(tmp_path / "a")
    assert first == _digest(tmp_path / "b") and len(first) == 18
    other = AugBankConfig(**{**SMALL.__dict__, "seed": 4})
    make_synthetic_aug_banks(tmp_path / "c", other)
    assert all(first[k] != v for k, v in _digest(tmp_path / "c").items())
    victim = tmp_path / "a" / "musan" / "speech" / "synth" / "speech-synth-0001.wav"
    victim.unlink()
    again = make_synthetic_aug_banks(tmp_path / "a", SMALL)
    assert (again["made"], again["kept"]) == (1, 17) and _digest(tmp_path / "a") == first
    with pytest.raises(DataError, match="synth_aug.json.*another configuration"):
        make_synthetic_aug_banks(tmp_path / "a", other)


def test_the_command_refuses_bad_counts_in_one_line(tmp_path, capsys):
    assert main(["synth-aug", "--out", str(tmp_path / "x"), "--noise", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "noise_files must be >= 0, got -1" in err[0]
    assert not (tmp_path / "x").exists()
