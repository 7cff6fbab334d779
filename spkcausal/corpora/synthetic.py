"""Synthetic long-tailed speaker corpus in the VoxCeleb1 layout, from a source-filter voice model.

The voices come from `spkcausal.corpora.voice` (a source-filter model: identity in the signal itself;
every session has its own channel, so cross-session trials are harder than same-session ones).

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
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.audio import audio_info, write_wav
from ..data.subsets import target_counts
from ..utils import DataError, PathLike, UsageError, log_to_file, write_text_atomic
from .voice import (
    PLAN,
    TRIALS,
    UTT,
    Session,
    session_channel,
    session_id,
    speaker_voice,
    stream_rng,
    synth_utterance,
    to_pcm16,
)

log = logging.getLogger("spkcausal.synth")

GENERATOR_VERSION = 2  # bump when the audio for a given config changes, so stale corpora are not resumed
FIRST_ID = 10001
VERI_FIRST_ID = 10270  # VoxCeleb1's test speakers are id10270-id10309
_NATIONALITIES = ["USA", "UK", "India", "Canada", "Australia", "Ireland", "Germany", "Norway", "Mexico", "Italy"]


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
    g = stream_rng(cfg.seed, PLAN)
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
        g = stream_rng(cfg.seed, UTT, u.spk_index, u.utt_index)
        x = synth_utterance(spk, sess_cache[u.sess_index], g, u.samples, cfg.sample_rate, cfg.snr_db)
        write_wav(path, to_pcm16(x), cfg.sample_rate, sync=False)  # thousands of small files: no fsync each
        written += 1
    return written, skipped


def veri_test2_trials(cfg: SynthConfig, utts: list[_Utt]) -> list[tuple[int, str, str]]:
    """The corpus's own `veri_test2.txt`: balanced (label, enroll, test) over the verification speakers, targets
    always cross-session, no pair twice (spkcausal.data.trials.make_trials samples trials for any data dir instead)."""
    g = stream_rng(cfg.seed, TRIALS)
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
    g = stream_rng(cfg.seed, PLAN, 1)
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
