"""The source-filter voice model behind the synthetic corpus: speakers, session channels and utterances.

Speaker identity is carried by the signal itself: every speaker has a fixed F0 range, vocal-tract length
(scaling all formants), per-formant idiosyncrasies, formant bandwidths, glottal open quotient, spectral tilt,
breathiness, jitter, shimmer and speaking rate. Every utterance draws a fresh random phone sequence,
intonation contour, length and SNR; every session has its own channel colouring (band limits + random
peaking EQ), noise colour and level. `spkcausal.corpora.synthetic` lays the corpus out on disk.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter1d
from scipy.signal import butter, lfilter, sosfilt

_YT_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
# RNG stream tags, so that speaker, session, utterance, plan and trial draws never share a stream.
SPK, SESS, UTT, PLAN, TRIALS = 0, 1, 2, 3, 4

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


def stream_rng(cfg_seed: int, *key: int) -> np.random.Generator:
    """An independent generator for (seed, stream tag, indices...): draws never share a stream."""
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
    g = stream_rng(seed, SPK, index)
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
    g = stream_rng(seed, SESS, spk_index, sess_index)
    yt = "".join(g.choice(_YT_ALPHABET, 11))  # first draw: session_id() repeats it without the filter design
    hp = butter(2, g.uniform(50, 150), "highpass", fs=sr, output="sos")
    lp = butter(4, min(g.uniform(3400, 7800), 0.47 * sr), "lowpass", fs=sr, output="sos")
    eq = [_peaking(g.uniform(200, 0.4 * sr), g.uniform(-8, 8), g.uniform(0.7, 2.5), sr) for _ in range(2)]
    return Session(yt_id=yt, channel=np.vstack([hp, lp, *eq]), noise_pole=g.uniform(-0.5, 0.97),
                   level_db=g.uniform(-28, -18))


def session_id(seed: int, spk_index: int, sess_index: int) -> str:
    """The 11-character YouTube-like directory name of a session (the same as session_channel's)."""
    return "".join(stream_rng(seed, SESS, spk_index, sess_index).choice(_YT_ALPHABET, 11))


def _resonator(freq: float, bw: float, sr: int, peak_norm: bool = False) -> np.ndarray:
    """Two-pole resonator as one sos row, unit gain at DC (cascade formant) or at its peak (frication)."""
    freq = min(freq, 0.46 * sr)
    r = np.exp(-np.pi * bw / sr)
    theta = 2 * np.pi * freq / sr
    a = np.array([1.0, -2 * r * np.cos(theta), r * r])
    z = np.exp(-1j * theta) if peak_norm else 1.0
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


_Segments = list[tuple[int, int, np.ndarray]]  # (start, stop, F1..F5) voiced-tract segments
_Fric = list[tuple[int, int, float, float]]  # start, stop, centre, amplitude


def _articulation(spk: Speaker, phones: list, scale: np.ndarray, sr: int
                  ) -> tuple[np.ndarray, _Segments, _Fric, np.ndarray, np.ndarray]:
    """Per-phone sample lengths, tract segments, frication bursts and voicing / aspiration levels."""
    lens = np.maximum(1, np.round(np.array([d for _, d in phones]) * sr).astype(int))
    starts = np.concatenate([[0], np.cumsum(lens)])
    voice = np.zeros(len(phones))
    asp = np.zeros(len(phones))
    segs: _Segments = []
    fric: _Fric = []
    prev = np.array([500.0, 1500.0, 2500.0, *_F45])
    for i, (p, _) in enumerate(phones):
        s0, s1 = int(starts[i]), int(starts[i + 1])
        if p == "#":  # silent source, but the tract keeps ringing: no click at the pause
            segs.append((s0, s1, prev))
            continue
        kind, target, fc = _phone_target(spk, p, scale)
        segs.extend(_transition(prev, target, s0, s1, sr))
        prev = target
        voice[i], asp[i], burst = _source_levels(kind, s0, s1, fc * scale[1], sr)
        fric.extend(burst)
    return lens, segs, fric, voice, asp


def _phone_target(spk: Speaker, p: str, scale: np.ndarray) -> tuple[str, np.ndarray, float]:
    """(kind, F1..F5 target in Hz for this speaker, frication centre before scaling) of phone `p`."""
    if p in VOWELS:
        kind, loc, fc = "vowel", VOWELS[p], 0.0
        loc = (loc[0] * spk.vowel_shift[_VOWEL_INDEX[p], 0], loc[1] * spk.vowel_shift[_VOWEL_INDEX[p], 1], loc[2])
    else:
        kind, loc, fc = CONSONANTS[p]
    return kind, np.array([*loc, *_F45]) * scale, fc


def _transition(prev: np.ndarray, target: np.ndarray, s0: int, s1: int, sr: int) -> _Segments:
    """Formant transition from the previous target over the first 30 ms in 10 ms steps, then the target."""
    n_tr = min(3, (s1 - s0) // int(0.01 * sr))
    step = max(1, int(0.01 * sr))
    segs = []
    for k in range(n_tr):
        w = (k + 1) / (n_tr + 1)
        segs.append((s0 + k * step, s0 + (k + 1) * step, (1 - w) * prev + w * target))
    segs.append((s0 + n_tr * step, s1, target))
    return segs


def _source_levels(kind: str, s0: int, s1: int, fc: float, sr: int) -> tuple[float, float, _Fric]:
    """(voicing, aspiration, frication bursts) of one phone of `kind` spanning samples s0..s1."""
    if kind in ("vowel", "approx"):
        return (1.0 if kind == "vowel" else 0.6), 0.0, []
    if kind == "nasal":
        return 0.35, 0.0, []
    if kind == "vfric":
        return 0.4, 0.0, [(s0, s1, fc, 0.15)]
    if kind == "fric":
        return 0.0, 0.0, [(s0, s1, fc, 0.3)]
    if kind == "aspir":
        return 0.0, 0.25, []
    # stops: closure (a weak voice bar if voiced), burst, aspiration if voiceless
    burst = s0 + int(0.6 * (s1 - s0))
    return (0.08 if kind == "vstop" else 0.0), (0.15 if kind == "stop" else 0.0), \
        [(burst, min(s1, burst + int(0.015 * sr)), fc, 0.5)]


def _f0_contour(spk: Speaker, g: np.random.Generator, total: int, sr: int) -> np.ndarray:
    """Intonation: declination + a few accents + optional final rise, clipped to the speaker's range; jitter."""
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
    return f0 * (1 + spk.jitter * np.repeat(g.standard_normal(total // blk + 1), blk)[:total])


def _glottal_source(spk: Speaker, g: np.random.Generator, f0: np.ndarray, v_env: np.ndarray,
                    a_env: np.ndarray, sr: int) -> np.ndarray:
    """Rosenberg flow pulse from the accumulated phase, differentiated (lip radiation), plus breath noise."""
    phase = np.cumsum(f0 / sr)
    frac = phase - np.floor(phase)
    flow = _rosenberg(spk.open_quotient)[(frac * _PULSE_TABLE).astype(int)]
    periods = phase.astype(int)
    amp = 1 + spk.shimmer * g.standard_normal(periods[-1] + 2)
    pulse = np.diff(flow, prepend=0.0) * amp[periods]
    noise = g.standard_normal(len(f0))
    src = v_env * (pulse + spk.breath * 0.05 * noise * (0.3 + flow)) + a_env * 0.05 * noise
    return lfilter([1 - spk.tilt], [1, -spk.tilt], src)


def _vocal_tract(src: np.ndarray, segs: _Segments, bws: np.ndarray, sr: int) -> np.ndarray:
    """5-formant cascade (as one all-pole filter per segment), state carried across segments."""
    seg_f = np.array([f for _, _, f in segs])
    den = _cascade_den(np.minimum(seg_f, 0.46 * sr), np.broadcast_to(bws, seg_f.shape), sr)
    gain = den.sum(axis=1)  # unit gain at DC
    out = np.zeros(len(src))
    zi = np.zeros(den.shape[1] - 1)
    for (s0, s1, _), a, b0 in zip(segs, den, gain):
        if s1 > s0:
            out[s0:s1], zi = lfilter([b0], a, src[s0:s1], zi=zi)
    return out


def _add_frication(out: np.ndarray, fric: _Fric, g: np.random.Generator, sr: int) -> None:
    """Frication and bursts: noise through a peak-normalised resonance, with ramps against clicks (in place)."""
    for s0, s1, fc, a in fric:
        if s1 - s0 < 8:
            continue
        sos = np.vstack([_resonator(fc, fc / 3, sr, True), _resonator(1.5 * fc, fc / 2, sr, True)])
        ramp = np.hanning(s1 - s0)
        out[s0:s1] += a * 0.1 * sosfilt(sos, g.standard_normal(s1 - s0)) * ramp


def _channel(out: np.ndarray, sess: Session, g: np.random.Generator, snr_db: tuple[float, float]) -> np.ndarray:
    """Environmental noise at the drawn SNR (against the active speech), then the session's filter and level."""
    n = len(out)
    p_speech = np.mean(out[np.abs(out) > 0.05 * np.abs(out).max()] ** 2) if np.any(out) else 1.0
    bg = lfilter([1.0], [1, -sess.noise_pole], g.standard_normal(n))
    snr = g.uniform(*snr_db)
    bg *= np.sqrt(p_speech / (np.mean(bg ** 2) + 1e-12) / 10 ** (snr / 10))
    y = sosfilt(sess.channel, out + bg)
    level = sess.level_db + g.uniform(-2, 2)
    y *= 10 ** (level / 20) / (np.sqrt(np.mean(y ** 2)) + 1e-12)
    return np.clip(y, -0.99, 0.99)


def synth_utterance(spk: Speaker, sess: Session, g: np.random.Generator, n: int, sr: int,
                    snr_db: tuple[float, float]) -> np.ndarray:
    """One utterance of `n` samples, float in [-1, 1]: glottal source -> formant cascade -> channel + noise.

    The draws from `g` happen in one fixed order (phones, intonation, jitter, shimmer, source noise,
    frication, background, SNR, level): the corpus is a function of its seed."""
    rate = spk.rate * g.uniform(0.9, 1.1)
    phones = _phones(g, n / sr + 0.05, rate, spk.vowel_prior)
    scale = 17.5 / spk.vtl_cm * spk.formant_warp
    lens, segs, fric, voice, asp = _articulation(spk, phones, scale, sr)
    w = int(0.008 * sr)
    v_env = _smooth(np.repeat(voice, lens), w)
    a_env = _smooth(np.repeat(asp, lens), w)
    f0 = _f0_contour(spk, g, int(lens.sum()), sr)
    src = _glottal_source(spk, g, f0, v_env, a_env, sr)
    out = _vocal_tract(src, segs, _BW * spk.bw_scale, sr)
    _add_frication(out, fric, g, sr)
    out = out[:n] if len(out) >= n else np.pad(out, (0, n - len(out)))
    return _channel(out, sess, g, snr_db)


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Float in [-1, 1] to int16 by rounding (exact, platform-independent bytes)."""
    return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)
