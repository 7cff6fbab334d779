"""Tiny CN-Celeb1 (`CN-Celeb_flac/`) and CN-Celeb2 (`CN-Celeb2_flac/`) trees as docs/design.md section 3 lays them out.

CN-Celeb_flac: `data/idNNNNN/<genre>-NN-NNN.flac` for dev speakers id00000.. and eval speakers id00800..
(eval speakers' files sit in data/ too), `dev/dev.lst`, `eval/enroll/id00800-enroll.flac`,
`eval/test/id00800-<genre>-NN-NNN.flac`, `eval/lists/{enroll.lst,test.lst,trials.lst,enroll.map}` naming `.wav`
files although the audio is `.flac`. Trials are every enrolment x every test file, as in the real list.
CN-Celeb2_flac: `data/idNNNNN/...flac` for speakers id10001.. and `spk.lst`.
Traps: one corrupt flac in a dev speaker's data/, one test file listed everywhere but missing on disk,
the genre `live_broadcast` (underscore), and eval speakers' data/ files that must not reach training.

Utterance keys a correct prepare gives (see docs/prepare_cnceleb_librispeech.md): data/ files
`idNNNNN/<genre>-NN-NNN`, enrolment files `id00800-enroll`, test files `id00800-<genre>-NN-NNN`,
Avg enrolment ids `id00800-enroll-avg`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000


def _write(path: Path, seconds: float, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = (0.1 * rng.standard_normal(int(round(seconds * SR)))).astype(np.float32)
    sf.write(str(path), x, SR, format="FLAC", subtype="PCM_16")


def _speaker_files(rng: np.random.Generator, genres: dict[str, list[float]]) -> list[tuple[str, float]]:
    """(name stem, seconds) per file; durations given per genre, two files per session index."""
    out = []
    for genre, durs in genres.items():
        for i, d in enumerate(durs):
            out.append((f"{genre}-{i // 2 + 1:02d}-{i % 2 + 1:03d}", d))
    return out


def make_cnceleb(root: str | Path, n_dev: int = 3, n_eval: int = 2, n_cn2: int = 2, seed: int = 0,
                 corrupt: bool = True, missing: bool = True) -> dict:
    """Build both trees under `root`; return their roots and every count a correct prepare must produce."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    cn1, cn2 = root / "CN-Celeb_flac", root / "CN-Celeb2_flac"
    exp: dict = {"cn1_root": cn1, "cn2_root": cn2, "train_utts": [], "train_excluded": [], "durations": {},
                 "genre": {}, "eval_utts": [], "eval_excluded": [], "enroll2utt": {}}
    # short segments (0.3-0.6 s) mixed with long ones (>= 1.2 s), so combining to 1 s has work to do
    dev_genres = {"singing": [0.3, 0.4, 0.5, 0.35, 1.3], "interview": [0.45, 0.6, 0.3], "live_broadcast": [1.2]}

    def add_speaker(base: Path, spk: str, genres: dict[str, list[float]], into: str, bad: str | None = None):
        for stem, sec in _speaker_files(rng, genres):
            key = f"{spk}/{stem}"
            path = base / "data" / spk / f"{stem}.flac"
            if stem == bad:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"fLaC\x00\x00\x00\x22" + bytes(100))  # flac magic, broken STREAMINFO
                exp[into + "_excluded"].append(key)
                continue
            _write(path, sec, rng)
            exp[into + "_utts"].append(key)
            exp["durations"][key] = sec
            exp["genre"][key] = stem.rsplit("-", 2)[0]

    dev_spks = [f"id{i:05d}" for i in range(n_dev)]
    for k, spk in enumerate(dev_spks):
        add_speaker(cn1, spk, dev_genres, "train", bad="interview-01-002" if corrupt and k == 0 else None)
    (cn1 / "dev").mkdir(parents=True)
    (cn1 / "dev" / "dev.lst").write_text("".join(f"{s}\n" for s in dev_spks))

    cn2_spks = [f"id{10001 + i:05d}" for i in range(n_cn2)]
    for spk in cn2_spks:
        add_speaker(cn2, spk, {"vlog": [0.4, 0.5, 0.7], "drama": [1.1, 0.3]}, "train")
    (cn2 / "spk.lst").write_text("".join(f"{s}\n" for s in cn2_spks))

    # eval speakers: data/ files (enroll.map segments + others that nobody lists), enrol file, test files
    eval_spks = [f"id{800 + i:05d}" for i in range(n_eval)]
    enroll_lst, test_lst, map_lst, tests = [], [], [], []
    for k, spk in enumerate(eval_spks):
        segs = _speaker_files(rng, {"speech": [0.5, 0.6], "movie": [0.8, 0.4]})
        for stem, sec in segs:
            _write(cn1 / "data" / spk / f"{stem}.flac", sec, rng)
        used = [f"{spk}/{stem}" for stem, _ in segs[:2 + k % 2]]  # 2 or 3 segments (1 or 2 genres)
        exp["enroll2utt"][f"{spk}-enroll-avg"] = used
        exp["eval_utts"] += used
        map_lst.append(f"{spk}-enroll " + " ".join(f"{u}.wav" for u in used))
        _write(cn1 / "eval" / "enroll" / f"{spk}-enroll.flac", 1.5, rng)
        enroll_lst.append(f"{spk}-enroll enroll/{spk}-enroll.wav")
        exp["eval_utts"].append(f"{spk}-enroll")
        for stem in ("singing-01-005", "vlog-02-001"):
            key = f"{spk}-{stem}"
            tests.append(key)
            test_lst.append(f"test/{key}.wav")
            if missing and k == n_eval - 1 and stem == "vlog-02-001":
                exp["eval_excluded"].append(key)  # listed in test.lst and trials.lst, absent on disk
                continue
            _write(cn1 / "eval" / "test" / f"{key}.flac", 0.7, rng)
            exp["eval_utts"].append(key)
    trials = [f"{e}-enroll test/{t}.wav {int(t.startswith(e + '-'))}" for e in eval_spks for t in tests]
    lists = cn1 / "eval" / "lists"
    lists.mkdir(parents=True)
    for name, lines in (("enroll.lst", enroll_lst), ("test.lst", test_lst), ("trials.lst", trials),
                        ("enroll.map", map_lst)):
        (lists / name).write_text("\n".join(lines) + "\n")

    exp["train_speakers"] = sorted(dev_spks + cn2_spks)
    exp["eval_speakers"] = sorted(eval_spks)
    for k in ("train_utts", "train_excluded", "eval_utts", "eval_excluded"):
        exp[k].sort()
    kept_tests = [t for t in tests if t not in exp["eval_excluded"]]
    exp["trials_listed"] = len(trials)
    exp["trials"] = n_eval * len(kept_tests)  # both protocols keep every trial whose test file exists
    exp["trials_target"] = len(kept_tests)
    return exp
