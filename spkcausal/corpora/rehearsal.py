"""Data dirs at the real counts of VoxCeleb1 + VoxCeleb2 dev and of CN-Celeb, over a small pool of audio.

What a stage costs depends on how many speakers, utterances and trials it sees, not on what the audio says, so
the full-size rehearsal (`tools/bench_scale.py`, docs/scale.md) runs every CPU stage on these dirs: their
`wav.scp` entries point, over and over, at a few hundred files of the synthetic corpus (`corpora.synthetic`),
and `utt2dur` holds each pooled file's real duration.

Counts (`rehearsal_counts`, scale 1 = the real corpora; `scale` multiplies speakers, utterances and trials):

- VoxCeleb: `vox2_dev` 5,994 speakers / 1,092,009 utterances / 145,569 videos; `vox1_all` (eval) 1,251 speakers /
  153,516 utterances / 22,496 videos, of which `vox1_test` 40 speakers / 4,874 utterances; trial lists
  `veri_test2.txt` (O, 37,611, over vox1_test), `list_test_all2.txt` (E, 579,818) and `list_test_hard2.txt`
  (H, 550,894) over vox1_all, in the VoxCeleb form, half targets.
- CN-Celeb: `cnceleb_train` 2,793 speakers (CN-Celeb1 dev + CN-Celeb2) / 659,000 utterances;
  `cnceleb_eval` 196 enrolment files (one per eval speaker) and 17,777 test files, of which 22 belong to no
  enrolled speaker; `trials_concat` is every enrolment x every test file: 3,484,292 trials, 17,755 targets.
  The eval side is a cross product, so both of its factors scale by sqrt(scale) (trials then scale by scale).

Utterances per speaker follow a lognormal (the published means; sigma 0.6 for VoxCeleb, whose per-speaker counts
span about 45-1,000 in VoxCeleb1, and 1.0 for CN-Celeb, which is more skewed), at least `MIN_UTTS`, with the
total exact. These shapes are stand-ins for the real histograms, which only matter here through their totals
and the sizes of the largest and smallest speakers.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.audio import audio_info
from ..data.datadir import DataDir
from ..data.trialio import Trials, write_trials
from ..utils import DataError, PathLike, UsageError, write_text_atomic

MIN_UTTS = 8
_YT = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
_GENRES = ("advertisement", "drama", "entertainment", "interview", "live_broadcast", "movie", "play",
           "recitation", "singing", "speech", "vlog")


@dataclass(frozen=True)
class Part:
    """One data dir of the rehearsal: speakers, utterances, sessions and the lognormal sigma of its counts."""

    name: str
    speakers: int
    utts: int
    sessions: int
    sigma: float = 0.6


def _n(full: int, scale: float, low: int) -> int:
    return max(low, int(round(full * scale)))


def rehearsal_counts(corpus: str, scale: float = 1.0) -> dict:
    """The stated counts of the rehearsal of `corpus` ('voxceleb' or 'cnceleb') at `scale` (1 = real size)."""
    if not 0 < scale <= 1:
        raise UsageError(f"scale must be in (0, 1], got {scale}")
    if corpus == "voxceleb":
        test_spk, test_utts = _n(40, scale, 2), _n(4874, scale, 2 * MIN_UTTS)
        return {"train": Part("vox2_dev", _n(5994, scale, 4), _n(1_092_009, scale, 4 * MIN_UTTS),
                              _n(145_569, scale, 4)),
                "eval": Part("vox1_all", _n(1251, scale, test_spk + 2), _n(153_516, scale, 4 * MIN_UTTS),
                             _n(22_496, scale, test_spk + 2)),
                "test": (test_spk, test_utts),
                "trials": {"veri_test2.txt": _n(37_611, scale, 4), "list_test_all2.txt": _n(579_818, scale, 4),
                           "list_test_hard2.txt": _n(550_894, scale, 4)}}
    if corpus == "cnceleb":
        root = math.sqrt(scale)
        enroll, test, extra = _n(196, root, 2), _n(17_777, root, 8), _n(22, root, 1)
        return {"train": Part("cnceleb_train", _n(2793, scale, 4), _n(659_000, scale, 4 * MIN_UTTS),
                              _n(2793 * 12, scale, 4), sigma=1.0),
                "enroll": enroll, "test_utts": test, "unenrolled_test_utts": extra,
                "trials": {"trials_concat": enroll * test}, "targets": test - extra}
    raise UsageError(f"unknown corpus {corpus!r}; expected 'voxceleb' or 'cnceleb'")


def utts_per_speaker(n_spk: int, n_utts: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Long-tailed counts (lognormal, >= MIN_UTTS) summing exactly to n_utts."""
    if n_utts < n_spk * MIN_UTTS:
        raise UsageError(f"{n_utts} utterances cannot give {n_spk} speakers {MIN_UTTS} each")
    w = rng.lognormal(0.0, sigma, n_spk)
    counts = MIN_UTTS + np.floor(w / w.sum() * (n_utts - n_spk * MIN_UTTS)).astype(np.int64)
    short = n_utts - int(counts.sum())
    counts[np.argsort(-w)[:short]] += 1  # the remainder goes to the largest speakers, one each
    return counts


def load_pool(pool_dir: PathLike) -> tuple[list[str], list[float]]:
    """Every wav under `pool_dir` (sorted) and its duration in seconds, from the header."""
    paths = sorted(str(p.resolve()) for p in Path(pool_dir).rglob("*.wav"))
    if not paths:
        raise DataError("no .wav files in the audio pool", pool_dir)
    durs = []
    for p in paths:
        frames, rate, _ = audio_info(p)
        durs.append(round(frames / rate, 3))
    return paths, durs


def _session_ids(n: int, rng: np.random.Generator) -> list[str]:
    return ["".join(r) for r in rng.choice(_YT, (n, 11))]


def _vox_part(part: Part, first_id: int, ext: str, pool: tuple[list[str], list[float]], seed: int,
              counts: np.ndarray | None = None) -> DataDir:
    """A VoxCeleb-shaped DataDir: keys idNNNNN/<yt>/NNNNN[ext], sessions spread over speakers by size."""
    rng = np.random.default_rng(seed)
    counts = utts_per_speaker(part.speakers, part.utts, part.sigma, rng) if counts is None else counts
    sess = np.maximum(1, np.round(counts / counts.sum() * part.sessions)).astype(np.int64)
    names = _session_ids(int(sess.sum()), rng)
    paths, durs = pool
    data = DataDir(wav={}, utt2spk={}, utt2dur={}, utt2sess={})
    k = s0 = 0
    for i, (c, ns) in enumerate(zip(counts.tolist(), sess.tolist())):
        spk = f"id{first_id + i:05d}"
        yts = names[s0:s0 + ns]
        s0 += ns
        for j in range(c):
            key = f"{spk}/{yts[j % ns]}/{j // ns + 1:05d}{ext}"
            p = (k * 7919 + seed) % len(paths)  # a stride prime to the pool size: neighbours differ
            data.wav[key], data.utt2spk[key] = paths[p], spk
            data.utt2dur[key], data.utt2sess[key] = durs[p], yts[j % ns]
            k += 1
    return data


def unique_pairs(n_target: int, n_non: int, spk_of: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) rows (enroll index, test index, label) of distinct pairs, drawn vectorised; spk_of sorted."""
    n = len(spk_of)
    starts = np.flatnonzero(np.r_[True, spk_of[1:] != spk_of[:-1]])
    sizes = np.diff(np.r_[starts, n])
    if n_target > int((sizes * (sizes - 1)).sum()) or n_non > n * n // 2:
        raise UsageError(f"cannot draw {n_target} target / {n_non} non-target distinct pairs from {n} utterances")
    out = []
    for want, target in ((n_target, True), (n_non, False)):
        got = np.empty(0, dtype=np.int64)
        while len(got) < want:
            m = 2 * (want - len(got)) + 16
            if target:
                s = rng.choice(len(sizes), m, p=sizes * (sizes - 1) / (sizes * (sizes - 1)).sum())
                a = rng.integers(0, sizes[s])
                b = (a + 1 + rng.integers(0, np.maximum(sizes[s] - 1, 1))) % sizes[s]
                e, t = starts[s] + a, starts[s] + b
            else:
                e, t = rng.integers(0, n, m), rng.integers(0, n, m)
                keep = spk_of[e] != spk_of[t]
                e, t = e[keep], t[keep]
            code = np.concatenate([got, e * n + t])
            _, first = np.unique(code, return_index=True)
            got = code[np.sort(first)]  # order of first draw, duplicates gone
        got = got[:want]
        out.append(np.stack([got // n, got % n, np.full(want, int(target))], axis=1))
    rows = np.concatenate(out)
    return rows[np.argsort(rows[:, 0] * n + rows[:, 1], kind="stable")]


def _write_list(path: Path, keys: np.ndarray, rows: np.ndarray, fmt: str) -> None:
    write_trials(path, Trials(keys[rows[:, 0]], keys[rows[:, 1]], rows[:, 2].astype(np.int8)), fmt=fmt)


def _voxceleb(out: Path, counts: dict, pool: tuple, seed: int) -> None:
    train = _vox_part(counts["train"], 12, "", pool, seed)
    train.write(out / "vox2_dev")
    ev_part = counts["eval"]
    test_spk, test_utts = counts["test"]
    rng = np.random.default_rng(seed + 1)
    # id10270-id10309 are VoxCeleb1's test speakers: the first block of ids gets the test counts.
    rest = utts_per_speaker(ev_part.speakers - test_spk, ev_part.utts - test_utts, ev_part.sigma, rng)
    head = utts_per_speaker(test_spk, test_utts, ev_part.sigma, rng)
    ev = _vox_part(ev_part, 10270, ".wav", pool, seed + 1, counts=np.concatenate([head, rest]))
    test_ids = {f"id{10270 + i:05d}" for i in range(test_spk)}
    ev.write(out / "vox1_all")
    ev.subset([u for u, s in ev.utt2spk.items() if s in test_ids]).write(out / "vox1_test")
    for name, n in counts["trials"].items():
        data = DataDir.load(out / ("vox1_test" if name == "veri_test2.txt" else "vox1_all"))
        keys = np.array(data.utts)
        spk = np.array([data.utt2spk[u] for u in keys])
        rows = unique_pairs(n // 2, n - n // 2, spk, np.random.default_rng(seed + len(name)))
        _write_list(out / "trials" / name, keys, rows, "voxceleb")


def _cnceleb(out: Path, counts: dict, pool: tuple, seed: int) -> None:
    part = counts["train"]
    # CN-Celeb's eval speakers are id00800 and up: training ids skip that block.
    train = _vox_part(Part(part.name, part.speakers, part.utts, part.sessions, part.sigma), 1000, "", pool, seed)
    renamed = DataDir(wav={}, utt2spk={}, utt2dur={}, utt2sess={})
    seen: dict[str, int] = {}
    for u in sorted(train.utt2spk):  # idNNNNN/<genre>-NN-NNN: a session is a (genre, programme) pair
        spk, yt, _ = u.split("/")
        j = seen[spk] = seen.get(spk, -1) + 1
        code = sum(map(ord, yt))
        g = _GENRES[code % len(_GENRES)]
        key = f"{spk}/{g}-{code % 100:02d}-{j:03d}"
        renamed.wav[key], renamed.utt2spk[key] = train.wav[u], train.utt2spk[u]
        renamed.utt2dur[key], renamed.utt2sess[key] = train.utt2dur[u], f"{g}-{code % 100:02d}"
    renamed.write(out / "cnceleb_train")
    enroll, n_test, extra = counts["enroll"], counts["test_utts"], counts["unenrolled_test_utts"]
    rng = np.random.default_rng(seed + 2)
    spk_of_test = np.concatenate([np.sort(rng.integers(0, enroll, n_test - extra)), np.full(extra, enroll)])
    paths, durs = pool
    ev = DataDir(wav={}, utt2spk={}, utt2dur={}, utt2sess={})
    enroll_keys, test_keys = [], []
    for i in range(enroll + 1):
        spk = f"id{800 + i:05d}"
        if i < enroll:
            key = f"{spk}-enroll"
            enroll_keys.append(key)
            ev.wav[key], ev.utt2spk[key], ev.utt2dur[key], ev.utt2sess[key] = paths[i % len(paths)], spk, \
                durs[i % len(paths)], "enroll"
        for j in np.flatnonzero(spk_of_test == i).tolist():
            g = _GENRES[j % len(_GENRES)]
            key = f"{spk}-{g}-{j % 100:02d}-{j:05d}"
            p = (j * 7919 + seed) % len(paths)
            ev.wav[key], ev.utt2spk[key], ev.utt2dur[key], ev.utt2sess[key] = paths[p], spk, durs[p], g
            test_keys.append(key)
    ev.write(out / "cnceleb_eval")
    e = np.repeat(np.arange(enroll), n_test)
    t = np.tile(np.arange(n_test), enroll)
    rows = np.stack([e, t, (spk_of_test[t] == e).astype(np.int64)], axis=1)
    ek, tk = np.array(enroll_keys), np.array(test_keys)
    write_trials(out / "cnceleb_eval" / "trials_concat",
                 Trials(ek[rows[:, 0]], tk[rows[:, 1]], rows[:, 2].astype(np.int8)), fmt="kaldi")


def make_rehearsal(out_dir: PathLike, corpus: str, pool_dir: PathLike, scale: float = 1.0, seed: int = 0) -> dict:
    """Write the rehearsal data dirs and trial lists of `corpus` under out_dir; return the stated counts.

    Re-running into a finished dir (its `rehearsal.json` written last matches) does nothing."""
    out = Path(out_dir)
    counts = rehearsal_counts(corpus, scale)
    stamp = json.dumps({"corpus": corpus, "scale": scale, "seed": seed, "pool": str(Path(pool_dir).resolve())}) + "\n"
    done = out / "rehearsal.json"
    if done.is_file() and done.read_text() == stamp:
        return counts
    pool = load_pool(pool_dir)
    (_voxceleb if corpus == "voxceleb" else _cnceleb)(out, counts, pool, seed)
    write_text_atomic(done, stamp)
    return counts


def make_audio_pool(out_dir: PathLike, files: int = 300, seed: int = 0, nj: int = 1) -> Path:
    """A pool of about `files` synthetic utterances of 2-8 s (`corpora.synthetic`), for the rehearsal's wav.scp."""
    from .synthetic import SynthConfig, make_synthetic_corpus

    per_spk = 10
    cfg = SynthConfig(num_speakers=max(2, files // per_spk), num_test_speakers=2, max_utts=per_spk, imbalance=1.0,
                      utt_seconds=(2.0, 8.0), sessions=(2, 3), val_per_speaker=0, test_per_speaker=0,
                      veri_utts_per_speaker=2, num_trials=2, seed=seed)
    make_synthetic_corpus(out_dir, cfg, nj=nj)
    return Path(out_dir)
