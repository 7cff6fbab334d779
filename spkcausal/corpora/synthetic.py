"""Synthetic long-tailed speaker corpus in the VoxCeleb1 layout, from a source-filter voice model.

Speaker identity is carried by the signal itself: every speaker has a fixed F0 range, vocal-tract length
(scaling all formants), per-formant idiosyncrasies, formant bandwidths, glottal open quotient, spectral tilt,
breathiness, jitter, shimmer and speaking rate. Every utterance draws a fresh random phone sequence,
intonation contour, length and SNR; every *session* (the 11-character "YouTube id" directory) has its own
channel colouring (band limits + random peaking EQ), noise colour and level, shared by its utterances, so
cross-session trials are harder than same-session ones.

Files written under `root` (the single `wav/` VoxCeleb1 release form; `prepare_voxceleb1` reads it):

- `wav/idNNNNN/<11-char session id>/NNNNN.wav`: 16-bit PCM mono; numbering restarts at 00001 per session.
  Training speakers are id10001, id10002, ... skipping the verification block, which starts at id10270
  (id10270-id10309 for 40 held-out speakers, as in VoxCeleb1).
- `vox1_meta.csv`: TAB-separated, header `VoxCeleb1 ID\\tVGGFace1 ID\\tGender\\tNationality\\tSet`;
  Set is `dev` for training speakers and `test` for verification speakers; Gender (m/f) follows the F0 range.
- `iden_split.txt`: `<1|2|3> idNNNNN/<session>/NNNNN.wav` over the training speakers only: 1 = training
  utterances (long-tailed counts), 2 = val and 3 = test (a balanced number for every training speaker).
- `veri_test2.txt`: `<1|0> <enroll> <test>` over the verification speakers only, half targets (always from two
  different sessions), half non-targets.
- `synth_speakers.tsv`: the generator's hidden truth per speaker (F0 range, vocal-tract length, counts).
- `synth_config.json`: the configuration and generator version; a re-run into the same root must match it.
- `synth.log`: the log of the runs.

Deterministic for a seed whatever `nj`: each utterance has its own RNG derived from (seed, speaker, utterance)
with numpy's SeedSequence. Resumable: wav files already complete (right length and rate) are kept.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import uniform_filter1d
from scipy.signal import butter, lfilter, sosfilt
from tqdm import tqdm

from ..audio import audio_info, write_wav
from ..longtail import target_counts
from ..utils import DataError, PathLike, UsageError, log_to_file, write_text_atomic

log = logging.getLogger("spkcausal.synth")

GENERATOR_VERSION = 2  # bump when the audio for a given config changes, so stale corpora are not resumed
FIRST_ID = 10001
VERI_FIRST_ID = 10270  # VoxCeleb1's test speakers are id10270-id10309
_YT_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
_NATIONALITIES = ["USA", "UK", "India", "Canada", "Australia", "Ireland", "Germany", "Norway", "Mexico", "Italy"]
# RNG stream tags, so that speaker, session, utterance, plan and trial draws never share a stream.
_SPK, _SESS, _UTT, _PLAN, _TRIALS = 0, 1, 2, 3, 4

# F1-F3 (Hz) for a 17.5 cm vocal tract (after Peterson & Barney's adult male means, rounded).
VOWELS: dict[str, tuple[float, float, float]] = {
    "i": (270, 2290, 3010), "I": (390, 1990, 2550), "E": (530, 1840, 2480), "ae": (660, 1720, 2410),
    "a": (730, 1090, 2440), "O": (570, 840, 2410), "U": (440, 1020, 2240), "u": (300, 870, 2240),
    "V": (640, 1190, 2390), "3": (490, 1350, 1690),
}
_VOWEL_INDEX = {v: i for i, v in enumerate(VOWELS)}
# kind, F1-F3 locus (voiced tract during the consonant), frication/burst centre (Hz, 17.5 cm tract)
CONSONANTS: dict[str, tuple[str, tuple[float, float, float], float]] = {
    "m": ("nasal", (250, 1100, 2200), 0), "n": ("nasal", (250, 1500, 2500), 0),
    "l": ("approx", (360, 1300, 2700), 0), "w": ("approx", (300, 700, 2200), 0),
    "j": ("approx", (280, 2200, 3000), 0), "r": ("approx", (350, 1100, 1600), 0),
    "s": ("fric", (400, 1700, 2600), 5500), "S": ("fric", (400, 1900, 2500), 3000),
    "f": ("fric", (400, 1100, 2400), 7000), "z": ("vfric", (300, 1700, 2600), 5500),
    "v": ("vfric", (300, 1100, 2400), 7000), "h": ("aspir", (500, 1500, 2500), 0),
    "p": ("stop", (400, 900, 2300), 900), "t": ("stop", (400, 1800, 2700), 4000),
    "k": ("stop", (400, 2000, 2500), 2200), "b": ("vstop", (300, 900, 2300), 900),
    "d": ("vstop", (300, 1700, 2600), 3500), "g": ("vstop", (300, 1900, 2400), 2000),
}
_F45 = (3500.0, 4500.0)  # F4, F5 of the 17.5 cm tract: speaker-specific, nearly phone-independent
_BW = np.array([60.0, 90.0, 130.0, 180.0, 250.0])  # formant bandwidths (Hz)


@dataclass
class SynthConfig:
    """Everything that defines a synthetic corpus; the seed makes it reproducible."""

    num_speakers: int = 200  # training speakers (closed-set identification, long-tailed)
    num_test_speakers: int = 40  # held-out verification speakers (veri_test2.txt)
    max_utts: int = 120  # training utterances of the head speaker
    imbalance: float = 40.0  # max / min training utterances per speaker
    profile: str = "exp"  # exp: n_r = max * imb^-((r/(N-1))^exponent); pareto: n_r = max * (1 + c r)^-exponent
    exponent: float = 1.0
    utt_seconds: tuple[float, float] = (1.0, 2.5)
    sessions: tuple[int, int] = (3, 6)  # sessions per speaker, inclusive range
    val_per_speaker: int = 3
    test_per_speaker: int = 5
    veri_utts_per_speaker: int = 12  # utterances of each verification speaker
    num_trials: int = 4000
    snr_db: tuple[float, float] = (5.0, 35.0)
    sample_rate: int = 16000
    seed: int = 0

    def validate(self) -> None:
        """Raise UsageError naming the first inconsistent setting."""
        if self.num_speakers < 2 or self.num_test_speakers < 2:
            raise UsageError("need at least 2 training and 2 verification speakers")
        if self.profile not in ("exp", "pareto"):
            raise UsageError(f"profile must be 'exp' or 'pareto', got {self.profile!r}")
        if self.imbalance < 1 or self.exponent <= 0:
            raise UsageError("imbalance must be >= 1 and exponent > 0")
        if self.max_utts / self.imbalance < 1:
            raise UsageError(f"max_utts / imbalance = {self.max_utts / self.imbalance:.2f}: the tail speaker "
                             "would have no utterance (raise max_utts or lower imbalance)")
        if not 0 < self.utt_seconds[0] <= self.utt_seconds[1]:
            raise UsageError(f"bad utt_seconds range {self.utt_seconds}")
        if not 1 <= self.sessions[0] <= self.sessions[1]:
            raise UsageError(f"bad sessions range {self.sessions}")
        if self.val_per_speaker < 0 or self.test_per_speaker < 0 or self.veri_utts_per_speaker < 2:
            raise UsageError("val/test per speaker must be >= 0 and veri_utts_per_speaker >= 2")
        if self.num_trials < 2 or self.snr_db[0] > self.snr_db[1] or self.sample_rate < 8000:
            raise UsageError("num_trials >= 2, snr_db (low, high) and sample_rate >= 8000 required")
        if FIRST_ID + self.num_speakers + self.num_test_speakers > 99999:
            raise UsageError("too many speakers for 5-digit VoxCeleb ids")


def train_counts(cfg: SynthConfig) -> np.ndarray:
    """Training utterances per speaker rank (descending): max_utts for rank 0, max_utts/imbalance for the last.

    Half-even rounding, as the corpus has always been generated (longtail_subset rounds half up)."""
    shape = {"exp_power": cfg.exponent} if cfg.profile == "exp" else {"pareto_alpha": cfg.exponent}
    return target_counts(cfg.num_speakers, cfg.max_utts, cfg.imbalance, cfg.profile, rounding="half_even", **shape)


def _rng(cfg_seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([cfg_seed, *key]))


# ---------------------------------------------------------------------------------------------------------
# voices, sessions, utterances


@dataclass
class Speaker:
    """A speaker's fixed voice parameters (the generator's ground truth)."""

    gender: str
    f0_lo: float
    f0_hi: float
    vtl_cm: float  # formants scale as 17.5 / vtl_cm
    formant_warp: np.ndarray  # per-formant idiosyncratic factors (5,)
    bw_scale: float
    open_quotient: float
    tilt: float  # one-pole low-pass coefficient on the glottal source
    breath: float
    jitter: float
    shimmer: float
    rate: float
    vowel_shift: np.ndarray  # (len(VOWELS), 2) idiolect: F1/F2 factors of each vowel
    vowel_prior: np.ndarray  # idiolect: how often each vowel is used


def speaker_voice(seed: int, index: int) -> Speaker:
    """The voice of global speaker `index` (training speakers first, then verification speakers)."""
    g = _rng(seed, _SPK, index)
    female = g.random() < 0.5
    centre = g.uniform(175, 240) if female else g.uniform(90, 145)
    half = g.uniform(3.0, 6.0) / 12.0  # half the F0 range, octaves
    vtl = g.uniform(13.5, 15.5) if female else g.uniform(16.0, 18.5)
    return Speaker(
        gender="f" if centre > 160 else "m", f0_lo=centre * 2 ** -half, f0_hi=centre * 2 ** half, vtl_cm=vtl,
        formant_warp=g.uniform(0.93, 1.07, 5), bw_scale=g.uniform(0.8, 1.4), open_quotient=g.uniform(0.4, 0.75),
        tilt=g.uniform(0.0, 0.75), breath=g.uniform(0.0, 0.3), jitter=g.uniform(0.003, 0.02),
        shimmer=g.uniform(0.02, 0.12), rate=g.uniform(0.8, 1.2),
        vowel_shift=g.uniform(0.92, 1.08, (len(VOWELS), 2)), vowel_prior=g.dirichlet(np.full(len(VOWELS), 2.0)),
    )


def _peaking(f0: float, gain_db: float, q: float, sr: int) -> np.ndarray:
    """RBJ peaking-EQ biquad as one sos row."""
    a = 10 ** (gain_db / 40)
    w = 2 * np.pi * f0 / sr
    alpha = np.sin(w) / (2 * q)
    b = np.array([1 + alpha * a, -2 * np.cos(w), 1 - alpha * a])
    den = np.array([1 + alpha / a, -2 * np.cos(w), 1 - alpha / a])
    return np.concatenate([b / den[0], den / den[0]])


@dataclass
class Session:
    """A recording condition shared by a session's utterances: channel filter and noise colour."""

    yt_id: str
    channel: np.ndarray  # sos
    noise_pole: float
    level_db: float


def session_channel(seed: int, spk_index: int, sess_index: int, sr: int) -> Session:
    """Channel of one session: band limits, two random peaking EQs, noise colour, recording level."""
    g = _rng(seed, _SESS, spk_index, sess_index)
    yt = "".join(g.choice(_YT_ALPHABET, 11))  # first draw: session_id() repeats it without the filter design
    hp = butter(2, g.uniform(50, 150), "highpass", fs=sr, output="sos")
    lp = butter(4, min(g.uniform(3400, 7800), 0.47 * sr), "lowpass", fs=sr, output="sos")
    eq = [_peaking(g.uniform(200, 0.4 * sr), g.uniform(-8, 8), g.uniform(0.7, 2.5), sr) for _ in range(2)]
    return Session(yt_id=yt, channel=np.vstack([hp, lp, *eq]), noise_pole=g.uniform(-0.5, 0.97),
                   level_db=g.uniform(-28, -18))


def session_id(seed: int, spk_index: int, sess_index: int) -> str:
    """The 11-character YouTube-like directory name of a session (the same as session_channel's)."""
    return "".join(_rng(seed, _SESS, spk_index, sess_index).choice(_YT_ALPHABET, 11))


def _resonator(freq: float, bw: float, sr: int, peak_norm: bool = False) -> np.ndarray:
    """Two-pole resonator as one sos row, unit gain at DC (cascade formant) or at its peak (frication)."""
    freq = min(freq, 0.46 * sr)
    r = np.exp(-np.pi * bw / sr)
    th = 2 * np.pi * freq / sr
    a = np.array([1.0, -2 * r * np.cos(th), r * r])
    z = np.exp(-1j * th) if peak_norm else 1.0
    gain = abs(a[0] + a[1] * z + a[2] * z * z)
    return np.array([gain, 0.0, 0.0, *a])


def _cascade_den(freqs: np.ndarray, bws: np.ndarray, sr: int) -> np.ndarray:
    """Denominators (rows) of the product of two-pole resonators: freqs, bws (segments, formants) in Hz."""
    r = np.exp(-np.pi * bws / sr)
    a1, a2 = -2 * r * np.cos(2 * np.pi * freqs / sr), r * r
    den = np.ones((len(freqs), 1))
    for k in range(freqs.shape[1]):
        nxt = np.zeros((len(den), den.shape[1] + 2))
        nxt[:, :-2] += den
        nxt[:, 1:-1] += den * a1[:, k:k + 1]
        nxt[:, 2:] += den * a2[:, k:k + 1]
        den = nxt
    return den


_PULSE_TABLE = 4096


@functools.lru_cache(maxsize=64)
def _rosenberg(open_quotient: float) -> np.ndarray:
    """Rosenberg glottal flow over one period (table of _PULSE_TABLE + 1 phases): opening 2/3, closing 1/3."""
    frac = np.arange(_PULSE_TABLE + 1) / _PULSE_TABLE
    op, cl = 0.66 * open_quotient, 0.34 * open_quotient
    return np.where(frac < op, 0.5 * (1 - np.cos(np.pi * frac / op)),
                    np.where(frac < op + cl, np.cos(0.5 * np.pi * np.minimum(frac - op, cl) / cl), 0.0))


def _smooth(x: np.ndarray, w: int) -> np.ndarray:
    """Moving average of width w applied twice (a triangle), same length; avoids clicks at segment edges."""
    return uniform_filter1d(uniform_filter1d(x, w, mode="nearest"), w, mode="nearest")


def _phones(g: np.random.Generator, total_s: float, rate: float, prior: np.ndarray) -> list[tuple[str, float]]:
    """Random (phone, seconds) sequence of CV(C) syllables and short pauses covering `total_s`."""
    vowels, cons = list(VOWELS), list(CONSONANTS)
    out: list[tuple[str, float]] = [("#", g.uniform(0.05, 0.15))]
    t = out[0][1]
    while t < total_s:
        for _ in range(int(g.integers(1, 4))):  # syllables of one word
            syl = []
            if g.random() < 0.7:
                syl.append(cons[g.integers(len(cons))])
            syl.append(vowels[g.choice(len(vowels), p=prior)])
            if g.random() < 0.35:
                syl.append(cons[g.integers(len(cons))])
            for p in syl:
                if p in VOWELS:
                    d = g.uniform(0.07, 0.17)
                elif CONSONANTS[p][0] in ("stop", "vstop"):
                    d = g.uniform(0.06, 0.1)
                else:
                    d = g.uniform(0.05, 0.11)
                out.append((p, d / rate))
                t += d / rate
        if g.random() < 0.3:
            out.append(("#", g.uniform(0.05, 0.2)))
            t += out[-1][1]
    return out


def synth_utterance(spk: Speaker, sess: Session, g: np.random.Generator, n: int, sr: int,
                    snr_db: tuple[float, float]) -> np.ndarray:
    """One utterance of `n` samples, float in [-1, 1]: glottal source -> formant cascade -> channel + noise."""
    rate = spk.rate * g.uniform(0.9, 1.1)
    phones = _phones(g, n / sr + 0.05, rate, spk.vowel_prior)
    scale = 17.5 / spk.vtl_cm * spk.formant_warp
    bws = _BW * spk.bw_scale

    # per-sample envelopes and the list of (start, stop, F1..F5) voiced-tract segments
    lens = np.maximum(1, np.round(np.array([d for _, d in phones]) * sr).astype(int))
    starts = np.concatenate([[0], np.cumsum(lens)])
    total = int(starts[-1])
    voice = np.zeros(len(phones))
    asp = np.zeros(len(phones))
    segs: list[tuple[int, int, np.ndarray]] = []
    fric: list[tuple[int, int, float, float]] = []  # start, stop, centre, amplitude
    prev = np.array([500.0, 1500.0, 2500.0, *_F45])
    for i, (p, _) in enumerate(phones):
        s0, s1 = int(starts[i]), int(starts[i + 1])
        if p == "#":  # silent source, but the tract keeps ringing: no click at the pause
            segs.append((s0, s1, prev))
            continue
        if p in VOWELS:
            kind, loc, fc = "vowel", VOWELS[p], 0.0
            loc = (loc[0] * spk.vowel_shift[_VOWEL_INDEX[p], 0], loc[1] * spk.vowel_shift[_VOWEL_INDEX[p], 1], loc[2])
        else:
            kind, loc, fc = CONSONANTS[p]
        target = np.array([*loc, *_F45]) * scale
        # formant transition from the previous target over the first 30 ms, in 10 ms steps
        n_tr = min(3, (s1 - s0) // int(0.01 * sr))
        step = max(1, int(0.01 * sr))
        for k in range(n_tr):
            w = (k + 1) / (n_tr + 1)
            segs.append((s0 + k * step, s0 + (k + 1) * step, (1 - w) * prev + w * target))
        segs.append((s0 + n_tr * step, s1, target))
        prev = target
        if kind in ("vowel", "approx"):
            voice[i] = 1.0 if kind == "vowel" else 0.6
        elif kind == "nasal":
            voice[i] = 0.35
        elif kind == "vfric":
            voice[i] = 0.4
            fric.append((s0, s1, fc * scale[1], 0.15))
        elif kind == "fric":
            fric.append((s0, s1, fc * scale[1], 0.3))
        elif kind == "aspir":
            asp[i] = 0.25
        else:  # stops: closure (a weak voice bar if voiced), burst, aspiration if voiceless
            burst = s0 + int(0.6 * (s1 - s0))
            voice[i] = 0.08 if kind == "vstop" else 0.0
            fric.append((burst, min(s1, burst + int(0.015 * sr)), fc * scale[1], 0.5))
            if kind == "stop":
                asp[i] = 0.15
    w = int(0.008 * sr)
    v_env = _smooth(np.repeat(voice, lens), w)
    a_env = _smooth(np.repeat(asp, lens), w)

    # intonation: declination + a few accents + optional final rise, clipped to the speaker's range
    t = np.arange(total) / sr
    dur = total / sr
    semis = g.uniform(-1.5, 1.5) + g.uniform(1, 3) * (1 - 2 * t / dur)
    for c in g.uniform(0, dur, int(g.integers(1, 4))):
        height, width = g.uniform(1, 4), g.uniform(0.06, 0.15)
        lo, hi = max(0, int((c - 4 * width) * sr)), min(total, int((c + 4 * width) * sr))
        semis[lo:hi] += height * np.exp(-0.5 * ((t[lo:hi] - c) / width) ** 2)
    if g.random() < 0.2:
        semis += 4 * np.clip((t - dur + 0.3) / 0.3, 0, 1)
    centre = np.sqrt(spk.f0_lo * spk.f0_hi)
    f0 = np.clip(centre * 2 ** (semis / 12), spk.f0_lo, spk.f0_hi)
    blk = max(1, sr // 200)  # jitter: 5 ms blocks of random period perturbation
    f0 = f0 * (1 + spk.jitter * np.repeat(g.standard_normal(total // blk + 1), blk)[:total])

    # glottal source: Rosenberg flow pulse from the accumulated phase, differentiated (lip radiation)
    phase = np.cumsum(f0 / sr)
    frac = phase - np.floor(phase)
    flow = _rosenberg(spk.open_quotient)[(frac * _PULSE_TABLE).astype(int)]
    periods = phase.astype(int)
    amp = 1 + spk.shimmer * g.standard_normal(periods[-1] + 2)
    pulse = np.diff(flow, prepend=0.0) * amp[periods]
    noise = g.standard_normal(total)
    src = v_env * (pulse + spk.breath * 0.05 * noise * (0.3 + flow)) + a_env * 0.05 * noise
    src = lfilter([1 - spk.tilt], [1, -spk.tilt], src)

    # vocal tract: 5-formant cascade (as one all-pole filter per segment), state carried across segments
    seg_f = np.array([f for _, _, f in segs])
    den = _cascade_den(np.minimum(seg_f, 0.46 * sr), np.broadcast_to(bws, seg_f.shape), sr)
    gain = den.sum(axis=1)  # unit gain at DC
    out = np.zeros(total)
    zi = np.zeros(den.shape[1] - 1)
    for (s0, s1, _), a, b0 in zip(segs, den, gain):
        if s1 > s0:
            out[s0:s1], zi = lfilter([b0], a, src[s0:s1], zi=zi)
    # frication and bursts: noise through a peak-normalised resonance, with ramps against clicks
    for s0, s1, fc, a in fric:
        if s1 - s0 < 8:
            continue
        sos = np.vstack([_resonator(fc, fc / 3, sr, True), _resonator(1.5 * fc, fc / 2, sr, True)])
        ramp = np.hanning(s1 - s0)
        out[s0:s1] += a * 0.1 * sosfilt(sos, g.standard_normal(s1 - s0)) * ramp
    out = out[:n] if total >= n else np.pad(out, (0, n - total))

    # channel: environmental noise at the drawn SNR (against the active speech), then the session's filter
    p_speech = np.mean(out[np.abs(out) > 0.05 * np.abs(out).max()] ** 2) if np.any(out) else 1.0
    bg = lfilter([1.0], [1, -sess.noise_pole], g.standard_normal(n))
    snr = g.uniform(*snr_db)
    bg *= np.sqrt(p_speech / (np.mean(bg ** 2) + 1e-12) / 10 ** (snr / 10))
    y = sosfilt(sess.channel, out + bg)
    level = sess.level_db + g.uniform(-2, 2)
    y *= 10 ** (level / 20) / (np.sqrt(np.mean(y ** 2)) + 1e-12)
    return np.clip(y, -0.99, 0.99)


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Float in [-1, 1] to int16 by rounding (exact, platform-independent bytes)."""
    return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)


# ---------------------------------------------------------------------------------------------------------
# corpus plan and rendering


@dataclass
class _Utt:
    key: str  # idNNNNN/<yt>/NNNNN.wav
    spk_index: int
    utt_index: int
    sess_index: int
    samples: int
    split: int  # 1 train, 2 val, 3 test (iden), 0 verification speaker


def speaker_ids(cfg: SynthConfig) -> tuple[list[str], list[str]]:
    """VoxCeleb1-like ids: training speakers from id10001 skipping the verification block at id10270."""
    veri = [f"id{VERI_FIRST_ID + j}" for j in range(cfg.num_test_speakers)]
    train, k = [], FIRST_ID
    while len(train) < cfg.num_speakers:
        if VERI_FIRST_ID <= k < VERI_FIRST_ID + cfg.num_test_speakers:
            k = VERI_FIRST_ID + cfg.num_test_speakers
        train.append(f"id{k}")
        k += 1
    return train, veri


def plan_corpus(cfg: SynthConfig) -> tuple[list[str], dict[str, int], list[_Utt]]:
    """Deterministic plan: speaker ids, training counts, every utterance (key, length, split)."""
    cfg.validate()
    g = _rng(cfg.seed, _PLAN)
    train_ids, veri_ids = speaker_ids(cfg)
    ids = train_ids + veri_ids
    counts = train_counts(cfg)
    counts = dict(zip(train_ids, counts[g.permutation(cfg.num_speakers)].tolist()))
    utts: list[_Utt] = []
    for si, spk in enumerate(ids):
        if si < cfg.num_speakers:
            splits = [1] * counts[spk] + [2] * cfg.val_per_speaker + [3] * cfg.test_per_speaker
            n_sess = int(g.integers(cfg.sessions[0], cfg.sessions[1] + 1))
        else:
            splits = [0] * cfg.veri_utts_per_speaker
            n_sess = max(2, int(g.integers(cfg.sessions[0], cfg.sessions[1] + 1)))
        n_sess = min(n_sess, len(splits))
        splits = list(np.array(splits)[g.permutation(len(splits))])
        sess_of = (np.arange(len(splits)) % n_sess)[g.permutation(len(splits))]
        sess: list[str] = []
        for j in range(n_sess):
            yt = session_id(cfg.seed, si, j)
            while yt in sess:  # astronomically unlikely; keeps a speaker's session paths distinct
                yt = yt[1:] + "x"
            sess.append(yt)
        per_sess = [0] * n_sess
        lo, hi = cfg.utt_seconds
        for ui, (sp, sj) in enumerate(zip(splits, sess_of)):
            per_sess[sj] += 1
            key = f"{spk}/{sess[sj]}/{per_sess[sj]:05d}.wav"
            samples = int(round(g.uniform(lo, hi) * cfg.sample_rate))
            utts.append(_Utt(key, si, ui, int(sj), samples, int(sp)))
    return ids, counts, utts


def _render_speaker(job: tuple[SynthConfig, str, list[_Utt]]) -> tuple[int, int]:
    """Write one speaker's wavs (skipping complete ones); return (written, skipped)."""
    cfg, root, utts = job
    root_p = Path(root) / "wav"
    spk = speaker_voice(cfg.seed, utts[0].spk_index)
    sess_cache: dict[int, Session] = {}
    written = skipped = 0
    for d in {(root_p / u.key).parent for u in utts}:  # temp files a killed run left behind
        for stale in d.glob(".*.tmp.wav") if d.is_dir() else []:
            stale.unlink(missing_ok=True)
    for u in utts:
        path = root_p / u.key
        if path.is_file():
            try:
                frames, sr, ch = audio_info(path)
                if frames == u.samples and sr == cfg.sample_rate and ch == 1:
                    skipped += 1
                    continue
            except DataError:
                pass
        if u.sess_index not in sess_cache:
            sess_cache[u.sess_index] = session_channel(cfg.seed, u.spk_index, u.sess_index, cfg.sample_rate)
        g = _rng(cfg.seed, _UTT, u.spk_index, u.utt_index)
        x = synth_utterance(spk, sess_cache[u.sess_index], g, u.samples, cfg.sample_rate, cfg.snr_db)
        write_wav(path, to_pcm16(x), cfg.sample_rate, sync=False)  # thousands of small files: no fsync each
        written += 1
    return written, skipped


def veri_test2_trials(cfg: SynthConfig, utts: list[_Utt]) -> list[tuple[int, str, str]]:
    """The corpus's own `veri_test2.txt`: balanced (label, enroll, test) over the verification speakers, targets
    always cross-session, no pair twice (spkcausal.trials.make_trials samples trials for any data dir instead)."""
    g = _rng(cfg.seed, _TRIALS)
    veri = [u for u in utts if u.split == 0]
    spk = np.array([u.spk_index for u in veri])
    sess = np.array([u.sess_index for u in veri])
    tgt = []  # every cross-session pair of each speaker (a speaker's pairs only: memory stays small)
    for s in np.unique(spk):
        idx = np.flatnonzero(spk == s)
        i, j = np.triu_indices(len(idx), 1)
        keep = sess[idx[i]] != sess[idx[j]]
        tgt.append(np.stack([idx[i][keep], idx[j][keep]], 1))
    tgt = np.concatenate(tgt)
    n_non = (len(veri) ** 2 - np.sum(np.unique(spk, return_counts=True)[1] ** 2)) // 2
    half = min(cfg.num_trials // 2, len(tgt), n_non)
    if half < cfg.num_trials // 2:
        log.warning("only %d cross-session target pairs exist: writing %d trials, not %d",
                    len(tgt), 2 * half, cfg.num_trials)
    pos = tgt[g.choice(len(tgt), half, replace=False)]
    non: dict[tuple[int, int], None] = {}  # insertion-ordered set: deterministic
    while len(non) < half:  # rejection sampling of distinct-speaker pairs
        a, b = g.integers(len(veri), size=(2, 2 * (half - len(non)) + 16))
        for x, y in zip(a.tolist(), b.tolist()):
            if spk[x] != spk[y] and len(non) < half:
                non.setdefault((min(x, y), max(x, y)))
    pairs = np.concatenate([pos, np.array(list(non), dtype=int).reshape(-1, 2)])
    labels = [1] * half + [0] * half
    flip = g.random(len(pairs)) < 0.5
    trials = [(lab, veri[p[1] if f else p[0]].key, veri[p[0] if f else p[1]].key)
              for lab, p, f in zip(labels, pairs, flip)]
    return sorted(trials, key=lambda t: (t[1], t[2]))


def _write_lists(root: Path, cfg: SynthConfig, ids: list[str], counts: dict[str, int], utts: list[_Utt],
                 trials: list[tuple[int, str, str]]) -> None:
    meta = ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"]
    table = ["speaker\tset\tgender\tf0_lo_hz\tf0_hi_hz\tvtl_cm\ttrain_utts"]
    g = _rng(cfg.seed, _PLAN, 1)
    for si, spk in enumerate(ids):
        v = speaker_voice(cfg.seed, si)
        st = "dev" if si < cfg.num_speakers else "test"
        nat = _NATIONALITIES[int(g.integers(len(_NATIONALITIES)))]
        meta.append(f"{spk}\tSynth_Speaker_{si + 1:05d}\t{v.gender}\t{nat}\t{st}")
        table.append(f"{spk}\t{st}\t{v.gender}\t{v.f0_lo:.1f}\t{v.f0_hi:.1f}\t{v.vtl_cm:.2f}\t{counts.get(spk, 0)}")
    write_text_atomic(root / "vox1_meta.csv", "\n".join(meta) + "\n")
    write_text_atomic(root / "synth_speakers.tsv", "\n".join(table) + "\n")
    iden = sorted((u.key, u.split) for u in utts if u.split > 0)
    write_text_atomic(root / "iden_split.txt", "".join(f"{s} {k}\n" for k, s in iden))
    write_text_atomic(root / "veri_test2.txt", "".join(f"{lab} {a} {b}\n" for lab, a, b in trials))


def _config_json(cfg: SynthConfig) -> str:
    return json.dumps({**dataclasses.asdict(cfg), "generator_version": GENERATOR_VERSION}, indent=1,
                      sort_keys=True) + "\n"


def make_synthetic_corpus(root: PathLike, cfg: SynthConfig | None = None, nj: int = 2) -> dict:
    """Generate (or finish) the corpus under `root` with `nj` processes; return a summary with counts."""
    cfg = cfg or SynthConfig()
    cfg.validate()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cfg_file = root / "synth_config.json"
    if cfg_file.is_file() and cfg_file.read_text() != _config_json(cfg):
        try:
            old = json.loads(cfg_file.read_text())
        except json.JSONDecodeError:
            old = {}
        new = json.loads(_config_json(cfg))
        diff = ", ".join(f"{k}: {old.get(k)} -> {new.get(k)}" for k in sorted(new.keys() | old.keys())
                         if old.get(k) != new.get(k))
        raise DataError(f"this directory holds a corpus made with another configuration ({diff}); use a new "
                        "output directory or the same settings", cfg_file)
    write_text_atomic(cfg_file, _config_json(cfg))
    with log_to_file(root / "synth.log"):
        return _make(root, cfg, nj)


def _make(root: Path, cfg: SynthConfig, nj: int) -> dict:
    t0 = time.perf_counter()
    ids, counts, utts = plan_corpus(cfg)
    by_spk: dict[int, list[_Utt]] = {}
    for u in utts:
        by_spk.setdefault(u.spk_index, []).append(u)
    jobs = [(cfg, str(root), by_spk[s]) for s in sorted(by_spk, key=lambda s: -len(by_spk[s]))]
    log.info("synthesising %d utterances of %d speakers into %s (nj=%d)", len(utts), len(ids), root, nj)
    written = skipped = 0
    bar = tqdm(total=len(utts), desc="synth", unit="utt", mininterval=1)
    if nj <= 1:
        results = map(_render_speaker, jobs)
        for job, (w, s) in zip(jobs, results):
            written, skipped = written + w, skipped + s
            bar.update(len(job[2]))
    else:
        with ProcessPoolExecutor(nj) as pool:
            for job, (w, s) in zip(jobs, pool.map(_render_speaker, jobs)):
                written, skipped = written + w, skipped + s
                bar.update(len(job[2]))
    bar.close()
    trials = veri_test2_trials(cfg, utts)
    _write_lists(root, cfg, ids, counts, utts, trials)  # lists last: they only ever point at finished audio
    secs = time.perf_counter() - t0
    summary = {
        "root": str(root), "train_speakers": cfg.num_speakers, "verification_speakers": cfg.num_test_speakers,
        "train_utts": sum(u.split == 1 for u in utts), "val_utts": sum(u.split == 2 for u in utts),
        "test_utts": sum(u.split == 3 for u in utts), "verification_utts": sum(u.split == 0 for u in utts),
        "trials": len(trials), "target_trials": sum(t[0] for t in trials),
        "hours": round(sum(u.samples for u in utts) / cfg.sample_rate / 3600, 3),
        "written": written, "skipped": skipped, "seconds": round(secs, 2),
    }
    log.info("done: %s", summary)
    return summary
