"""CN-Celeb1 + CN-Celeb2: training dir, eval dir with Concat and Avg trial lists, optional segment combination.

Read: `CN-Celeb_flac/` (data/idNNNNN/<genre>-NN-NNN.flac, dev/dev.lst, eval/{enroll,test}/*.flac,
eval/lists/{enroll.lst,test.lst,trials.lst,enroll.map}; the lists say `.wav` for `.flac` files) and
optionally `CN-Celeb2_flac/` (data/, spk.lst).

Utterance keys (speaker-prefixed, so Kaldi's utt2spk and spk2utt sort orders agree):
data/ files `idNNNNN/<genre>-NN-NNN`, enrolment files `id00800-enroll` (enroll.lst's own id), test files
`id00800-<genre>-NN-NNN` (test file stem). utt2sess is the genre. Avg enrolment ids are
`<enroll id>-avg` (e.g. `id00800-enroll-avg`), defined in the eval dir's `enroll2utt`.

Written under out_dir: `cnceleb_train/` (CN-Celeb1 dev.lst speakers + CN-Celeb2 spk.lst speakers),
`cnceleb_eval/` (enrolment files, test files and the data/ segments enroll.map names, plus
`enroll2utt`, `trials_concat`, `trials_avg` in Kaldi form), and with `combine_min_sec`
`cnceleb_train_combined/` whose new audio lies under `combined_dir`. See combine_segments for the rule.
"""
from __future__ import annotations

import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from ..data.audio import read_audio, resample
from ..data.datadir import DataDir, read_list_kv, write_list_kv
from ..data.trialio import Trials, read_trials, write_trials
from ..utils import DataError, PathLike, UsageError, atomic_path, log_to_file
from .common import finalize, log

__all__ = ["prepare_cnceleb", "combine_segments", "genre_of"]

_NAME_RE = re.compile(r"^(.+)-\d+-\d+$")


def genre_of(stem: str) -> str:
    """Genre of a CN-Celeb file stem `<genre>-NN-NNN` (the whole stem up to its first '-' otherwise)."""
    m = _NAME_RE.match(stem)
    return m.group(1) if m else stem.split("-", 1)[0]


def _read_ids(path: Path) -> list[tuple[int, str]]:
    """(line, id) for one speaker id a line (dev.lst, spk.lst); error names the line of a malformed or repeated id."""
    ids: list[tuple[int, str]] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 1 or not re.fullmatch(r"id\d+", parts[0]):
                raise DataError(f"{line.strip()!r}; expected one speaker id such as 'id00001'", path, n)
            if parts[0] in seen:
                raise DataError(f"speaker {parts[0]} listed twice", path, n)
            seen.add(parts[0])
            ids.append((n, parts[0]))
    return ids


def _audio(base: Path, rel: str) -> Path:
    """The file a list entry names: `.wav` in the lists, `.flac` on disk (either is accepted)."""
    p = base / rel
    flac = p.with_suffix(".flac")
    return flac if flac.exists() or not p.exists() else p


def _add_speaker_dir(data: DataDir, spk_dir: Path, spk: str) -> int:
    files = sorted(spk_dir.glob("*.flac"))
    for f in files:
        key = f"{spk}/{f.stem}"
        data.wav[key], data.utt2spk[key], data.utt2sess[key] = str(f.resolve()), spk, genre_of(f.stem)
    return len(files)


def _train_dir(cn1: Path, cn2: Path | None, eval_spks: set[str]) -> DataDir:
    data = DataDir(wav={}, utt2spk={}, utt2sess={})
    sources = [(cn1, cn1 / "dev" / "dev.lst")] + ([(cn2, cn2 / "spk.lst")] if cn2 is not None else [])
    owner: dict[str, Path] = {}
    for base, lst in sources:
        if not lst.exists():
            raise DataError("speaker list not found", lst)
        ids = _read_ids(lst)  # (line, id)
        for n, spk in ids:
            if spk in eval_spks:
                raise DataError(f"{spk} is an evaluation speaker (eval/lists) and must not be trained on", lst, n)
            if spk in owner:
                raise DataError(f"{spk} is also listed in {owner[spk]}: CN-Celeb1 and CN-Celeb2 speakers must "
                                "differ", lst, n)
            owner[spk] = lst
        empty = [s for _, s in ids if _add_speaker_dir(data, base / "data" / s, s) == 0]
        if empty:
            log.warning("%s: %d listed speaker(s) have no data/<id>/*.flac, e.g. %s", lst, len(empty), empty[:3])
    return data


def _eval_dir(cn1: Path) -> tuple[DataDir, dict[str, list[str]], Trials]:
    """Eval utterances, enrol id -> segment keys (enroll.map), and trials with keys mapped to ours."""
    lists = cn1 / "eval" / "lists"
    data = DataDir(wav={}, utt2spk={}, utt2sess={})

    def add(key: str, path: Path, genre: str) -> None:
        data.wav[key], data.utt2spk[key] = str(path.resolve()), key.split("/")[0].split("-")[0]
        data.utt2sess[key] = genre

    enroll_map: dict[str, list[str]] = {}
    for eid, rels in read_list_kv(lists / "enroll.map").items():
        keys = [str(Path(r).with_suffix("")) for r in rels]
        for key in keys:
            add(key, _audio(cn1 / "data", key + ".wav"), genre_of(key.split("/")[-1]))
        enroll_map[eid] = keys
    with open(lists / "enroll.lst", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].startswith("enroll/"):
                raise DataError(f"{line.strip()!r}; expected '<id> enroll/<id>.wav'", lists / "enroll.lst", n)
            genres = sorted({data.utt2sess[k] for k in enroll_map.get(parts[0], [])})
            add(parts[0], _audio(cn1 / "eval", parts[1]), "+".join(genres) or "enroll")
    tests: dict[str, str] = {}  # list path -> key
    with open(lists / "test.lst", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if not parts[-1].startswith("test/"):
                raise DataError(f"{line.strip()!r}; expected 'test/<id>-<genre>-NN-NNN.wav'", lists / "test.lst", n)
            key = Path(parts[-1]).stem
            tests[parts[-1]] = key
            add(key, _audio(cn1 / "eval", parts[-1]), genre_of(key.split("-", 1)[-1]))
    trials = read_trials(lists / "trials.lst")
    uniq, inv = np.unique(trials.test, return_inverse=True)
    unknown = [i for i, t in enumerate(uniq) if t not in tests]
    if unknown:
        row = int(np.flatnonzero(inv == unknown[0])[0])
        raise DataError(f"test file {str(uniq[unknown[0]])!r} is not in test.lst", lists / "trials.lst",
                        int(trials.line_no[row]))
    trials.test = np.array([tests[t] for t in uniq], dtype=object)[inv].astype(str)
    bad_enroll = sorted(set(trials.enroll.tolist()) - set(data.utt2spk))
    if bad_enroll:
        row = int(np.flatnonzero(trials.enroll == bad_enroll[0])[0])
        raise DataError(f"enrolment {str(bad_enroll[0])!r} is not in enroll.lst", lists / "trials.lst",
                        int(trials.line_no[row]))
    return data, enroll_map, trials


def _write_eval_trials(eval_dir: Path, enroll_map: dict[str, list[str]], trials: Trials) -> dict:
    """Concat and Avg lists restricted to utterances that survived finalize; write enroll2utt."""
    kept = set(DataDir.load(eval_dir).utt2spk)
    e2u = {f"{e}-avg": [k for k in keys if k in kept] for e, keys in enroll_map.items()}
    e2u = {e: keys for e, keys in e2u.items() if keys}
    lost = sum(len(k) for k in enroll_map.values()) - sum(len(k) for k in e2u.values())
    if lost:
        log.warning("enroll.map: %d segment(s) unreadable or missing; Avg enrolments use the rest", lost)
    write_list_kv(eval_dir / "enroll2utt", e2u)
    test_ok = np.isin(trials.test, list(kept))
    out = {"trials_listed": len(trials)}
    for name, enroll, ok in (("concat", trials.enroll, np.isin(trials.enroll, list(kept))),
                             ("avg", np.char.add(trials.enroll.astype(str), "-avg"),
                              np.isin(trials.enroll, [e[:-4] for e in e2u]))):
        keep = ok & test_ok
        sub = Trials(enroll=enroll[keep], test=trials.test[keep], labels=trials.labels[keep])
        write_trials(eval_dir / f"trials_{name}", sub)
        out[f"trials_{name}"] = int(keep.sum())
        out[f"trials_{name}_target"] = int((sub.labels == 1).sum())
        if not keep.all():
            log.warning("trials_%s: dropped %d of %d trials whose audio is unreadable or missing",
                        name, int((~keep).sum()), len(trials))
    return out


def _combine_groups(train: DataDir, min_sec: float) -> tuple[dict[str, list[str]], list[str]]:
    """Combined key -> members, plus the utterances kept as they are (>= min_sec already)."""
    by_sg: dict[tuple[str, str], list[str]] = {}
    for utt in train.utts:
        by_sg.setdefault((train.utt2spk[utt], train.utt2sess[utt]), []).append(utt)
    groups: dict[str, list[str]] = {}
    keep: list[str] = []
    for (spk, genre), utts in sorted(by_sg.items()):
        done: list[list[str]] = []
        cur: list[str] = []
        acc = 0.0
        for utt in utts:
            if train.utt2dur[utt] >= min_sec:
                keep.append(utt)
                continue
            cur.append(utt)
            acc += train.utt2dur[utt]
            if acc >= min_sec - 1e-9:
                done.append(cur)
                cur, acc = [], 0.0
        if cur:  # remainder shorter than min_sec: joins the previous group, or stands alone if none
            if done:
                done[-1] += cur
            else:
                done.append(cur)
        for members in done:
            if len(members) == 1:
                keep.append(members[0])  # a lone short segment needs no new file
                continue
            first = members[0].split("/", 1)[1]
            digest = hashlib.sha1("\n".join(members).encode()).hexdigest()[:8]
            groups[f"{spk}/{genre}-comb-{first[len(genre) + 1:]}-{digest}"] = members
    return groups, sorted(keep)


def _write_combined(members: list[str], wav: dict[str, str], dest: Path) -> str | None:
    """Concatenate members into `dest` (FLAC, atomic); None on success, else the reason."""
    if dest.exists():
        return None
    try:
        parts, sr = [], None
        for utt in members:
            x, r = read_audio(wav[utt])
            if sr is None:
                sr = r
            parts.append(x if r == sr else resample(x, r, sr))
        with atomic_path(dest) as tmp:
            sf.write(str(tmp), np.concatenate(parts), sr, format="FLAC", subtype="PCM_16")
    except (DataError, OSError, sf.LibsndfileError) as e:
        return f"combination failed: {e}"
    return None


def combine_segments(train_dir: PathLike, out_dir: PathLike, combined_dir: PathLike, min_sec: float,
                     nj: int = 8) -> dict:
    """Concatenate short segments to >= min_sec within speaker and genre into new FLAC files; write a data dir.

    Rule: per (speaker, genre), utterances in key order; those >= min_sec are kept as they are; shorter ones
    are accumulated until the sum reaches min_sec and then written as one file. A remainder still short
    at the end joins the speaker+genre's last combined file (that file is then longer); if that
    speaker+genre has no combined file, the remainder becomes one on its own (shorter than min_sec: the
    only files under min_sec). Durations are compared in utt2dur's ms precision. A combined file is named
    `<spk>/<genre>-comb-<first member's NN-NNN>-<hash of the member list>` and written atomically, so a
    re-run skips files already there and a changed grouping never reuses a stale file. `comb2utt` in the
    new dir lists each combined file's members."""
    train = DataDir.load(train_dir, need_dur=True)
    if set(train.utt2sess) != set(train.utt2spk):
        raise DataError("utt2sess (the genre of every utterance) is needed to combine within speaker and genre",
                        Path(train_dir) / "utt2sess")
    out_dir, combined_dir = Path(out_dir), Path(combined_dir)
    groups, keep = _combine_groups(train, min_sec)
    dests = {k: combined_dir / f"{k}.flac" for k in groups}
    todo = [k for k in sorted(groups) if not dests[k].exists()]
    log.info("combining %d groups into %s (%d already there), keeping %d utterances as they are",
             len(groups), combined_dir, len(groups) - len(todo), len(keep))
    failed: dict[str, str] = {}
    with ThreadPoolExecutor(max(1, nj)) as pool:
        results = pool.map(lambda k: _write_combined(groups[k], train.wav, dests[k]), todo)
        for key, why in tqdm(zip(todo, results), total=len(todo), desc="combine", mininterval=2, leave=False):
            if why:
                failed[key] = why
    data = train.subset(keep)
    for key, members in groups.items():
        data.wav[key] = str(dests[key].resolve())
        data.utt2spk[key] = train.utt2spk[members[0]]
        data.utt2sess[key] = train.utt2sess[members[0]]
    summary = finalize(data, out_dir, nj=nj, extra_bad=failed)
    write_list_kv(out_dir / "comb2utt", {k: v for k, v in groups.items() if k not in failed})
    summary.update(groups=len(groups), written=len(todo) - len(failed), failed=len(failed))
    return summary


def prepare_cnceleb(root: PathLike, out_dir: PathLike, cn2_root: PathLike | None = None,
                    combine_min_sec: float | None = None, combined_dir: PathLike | None = None,
                    nj: int = 8) -> dict:
    """Write cnceleb_train, cnceleb_eval (+ Concat / Avg trials) and optionally cnceleb_train_combined."""
    cn1 = Path(root)
    out_dir = Path(out_dir)
    if combined_dir is not None and combine_min_sec is None:
        raise UsageError("combined_dir is only used with combine_min_sec (e.g. 5.0)")
    if combine_min_sec is not None and combine_min_sec <= 0:
        raise UsageError(f"combine_min_sec must be positive, got {combine_min_sec}")
    if not (cn1 / "eval" / "lists").is_dir():
        raise DataError("not a CN-Celeb1 root (no eval/lists/); expected CN-Celeb_flac/", cn1)
    out_dir.mkdir(parents=True, exist_ok=True)
    with log_to_file(out_dir / "prepare.log"):
        return _prepare(cn1, out_dir, cn2_root, combine_min_sec, combined_dir, nj)


def _prepare(cn1: Path, out_dir: Path, cn2_root: PathLike | None, combine_min_sec: float | None,
             combined_dir: PathLike | None, nj: int) -> dict:
    eval_data, enroll_map, trials = _eval_dir(cn1)
    eval_spks = set(eval_data.utt2spk.values())
    train = _train_dir(cn1, Path(cn2_root) if cn2_root is not None else None, eval_spks)
    result: dict = {"train": finalize(train, out_dir / "cnceleb_train", nj=nj)}
    result["eval"] = finalize(eval_data, out_dir / "cnceleb_eval", nj=nj)
    result.update(_write_eval_trials(out_dir / "cnceleb_eval", enroll_map, trials))
    if combine_min_sec is not None:
        cdir = Path(combined_dir) if combined_dir is not None else out_dir / "cnceleb_train_combined_flac"
        comb = combine_segments(out_dir / "cnceleb_train", out_dir / "cnceleb_train_combined", cdir,
                                combine_min_sec, nj=nj)
        result["train_combined"] = comb
        result["failed"] = comb["failed"]  # top level, so `spkcausal prepare` exits non-zero: re-run to retry
        if comb["failed"]:
            result["failures_file"] = str(out_dir / "cnceleb_train_combined" / "excluded.txt")
    log.info("CN-Celeb: train %d speakers / %d utts, eval %d utts, %d Concat and %d Avg trials",
             result["train"]["speakers"], result["train"]["utterances"], result["eval"]["utterances"],
             result["trials_concat"], result["trials_avg"])
    return result
