"""VoxCeleb1 and VoxCeleb2 preparation: audio trees -> Kaldi-style data dirs, trial lists, identification split.

Utterances are keyed `idNNNNN/<youtube-id>/NNNNN.wav` (the form the official lists use); keys are never split on
'-' because YouTube ids contain '-' and '_'. Side files (vox1_meta.csv, iden_split.txt, vox2_meta.csv and the
verification lists) are looked up in `root`, then `root/meta`, `root/lists`, `root/trials`: the first hit wins.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.audio import write_wav
from ..data.datadir import DataDir
from ..data.trialio import Trials, read_trials, write_trials
from ..utils import DataError, PathLike, atomic_write, log_to_file
from .common import finalize, probe_durations

log = logging.getLogger("spkcausal.prepare.voxceleb")

SIDE_DIRS = ("", "meta", "lists", "trials")
VOX1_TEST_IDS = (10270, 10309)  # inclusive: the 40 VoxCeleb1 test speakers
VOX1_LISTS = {
    "veri_test.txt": "Vox1-O", "veri_test2.txt": "Vox1-O cleaned",
    "list_test_all.txt": "Vox1-E", "list_test_all2.txt": "Vox1-E cleaned",
    "list_test_hard.txt": "Vox1-H", "list_test_hard2.txt": "Vox1-H cleaned",
}
IDEN_SPLITS = {"1": "train", "2": "val", "3": "test"}
SAMPLE_RATE = 16000

_SPK_RE = re.compile(r"^id\d{5}$")
_KEY_RE = re.compile(r"^id\d{5}/[^/\s]+/[^/\s]+\.wav$")


# ---------------------------------------------------------------- shared helpers

def find_side_file(root: PathLike, name: str) -> Path | None:
    """Locate a list / metadata file in root, root/meta, root/lists or root/trials (first hit wins)."""
    for sub in SIDE_DIRS:
        p = Path(root) / sub / name
        if p.is_file():
            return p
    return None


def scan_tree(top: Path, ext: str) -> dict[str, str]:
    """{`idNNNNN/<yt>/<name>.wav`: absolute path} for every `top/idNNNNN/<yt>/*<ext>` (hidden files skipped)."""
    out: dict[str, str] = {}
    top = top.absolute()
    with os.scandir(top) as spks:
        spk_dirs = sorted(e.name for e in spks if e.is_dir() and _SPK_RE.match(e.name))
    for spk in tqdm(spk_dirs, desc=f"scan {top}", mininterval=2, leave=False):
        with os.scandir(top / spk) as vids:
            vid_dirs = [e.name for e in vids if e.is_dir() and not e.name.startswith(".")]
        for vid in vid_dirs:
            with os.scandir(top / spk / vid) as files:
                for f in files:
                    if f.name.endswith(ext) and not f.name.startswith(".") and f.is_file():
                        out[f"{spk}/{vid}/{f.name[:-len(ext)]}.wav"] = f.path
    return dict(sorted(out.items()))


def _spk(key: str) -> str:
    return key.split("/", 1)[0]


def _session(key: str) -> str:
    return key.split("/", 2)[1]


def _base_datadir(wav: dict[str, str], spk2gender: dict[str, str], spk2nat: dict[str, str]) -> DataDir:
    u2s = {k: _spk(k) for k in wav}
    spks = set(u2s.values())
    return DataDir(wav=dict(wav), utt2spk=u2s, utt2sess={k: _session(k) for k in wav},
                   spk2gender={s: g for s, g in spk2gender.items() if s in spks},
                   spk2nat={s: n for s, n in spk2nat.items() if s in spks})


def _write_dir(data: DataDir, out: Path, bad: dict[str, str], nj: int) -> dict:
    """finalize() with durations already probed (once for the whole corpus); keeps hours in the summary."""
    summary = finalize(data, out, nj=nj, compute_dur=False, extra_bad=bad)
    if data.utt2dur:
        good = set(data.utt2spk) - set(bad)
        summary["hours"] = round(sum(data.utt2dur[u] for u in good) / 3600, 4)
        with atomic_write(out / "summary.json") as f:
            json.dump(summary, f, indent=1)
    return summary


def _gender(value: str, path: Path, line: int) -> str:
    g = value.strip().lower()
    if g not in ("m", "f"):
        raise DataError(f"gender {value.strip()!r}; expected m or f", path, line)
    return g


# ---------------------------------------------------------------- metadata and lists

def read_vox1_meta(path: PathLike) -> dict[str, tuple[str, str, str]]:
    """vox1_meta.csv (TAB-separated, header line) -> {spk: (gender m|f, nationality, set dev|test)}.

    Whitespace inside a nationality ("New Zealand") becomes '_' so every table stays two-column."""
    path = Path(path)
    out: dict[str, tuple[str, str, str]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        if n == 1 and not _SPK_RE.match(fields[0]):
            continue  # header: VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality, Set
        if len(fields) != 5 or not _SPK_RE.match(fields[0]):
            raise DataError(f"expected 5 TAB-separated fields 'idNNNNN<TAB>name<TAB>m|f<TAB>nationality<TAB>"
                            f"dev|test', got {line!r}", path, n)
        if fields[0] in out:
            raise DataError(f"duplicate speaker {fields[0]!r}", path, n)
        nat = "_".join(fields[3].split()) or "unknown"
        out[fields[0]] = (_gender(fields[2], path, n), nat, fields[4].lower())
    return out


def read_vox2_meta(path: PathLike) -> dict[str, tuple[str, str]]:
    """vox2_meta.csv (`id00012 ,n000012 ,m ,dev `, header line) -> {spk: (gender m|f, set)}."""
    path = Path(path)
    out: dict[str, tuple[str, str]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if n == 1 and not _SPK_RE.match(fields[0]):
            continue  # header: VoxCeleb2 ID, VGGFace2 ID, Gender, Set
        if len(fields) != 4 or not _SPK_RE.match(fields[0]):
            raise DataError(f"expected 4 comma-separated fields 'idNNNNN ,nNNNNNN ,m|f ,dev|test', got {line!r}",
                            path, n)
        if fields[0] in out:
            raise DataError(f"duplicate speaker {fields[0]!r}", path, n)
        out[fields[0]] = (_gender(fields[2], path, n), fields[3].lower())
    return out


def read_iden_split(path: PathLike) -> dict[str, str]:
    """iden_split.txt (`<1|2|3> idNNNNN/<yt>/NNNNN.wav`) -> {key: train|val|test}."""
    path = Path(path)
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[0] not in IDEN_SPLITS or not _KEY_RE.match(parts[1]):
            raise DataError(f"expected '<1|2|3> idNNNNN/<youtube-id>/NNNNN.wav', got {line!r}", path, n)
        if parts[1] in out:
            raise DataError(f"utterance {parts[1]!r} listed twice", path, n)
        out[parts[1]] = IDEN_SPLITS[parts[0]]
    return out


def read_vox1_list(path: PathLike) -> Trials:
    """A verification list in either trial form, with every key checked to look like a VoxCeleb1 key."""
    tr = read_trials(path)
    if not tr.has_labels:
        raise DataError("trials carry no target/nontarget labels", path, 1)
    for keys in (tr.enroll, tr.test):
        bad = [i for i, k in enumerate(keys) if not _KEY_RE.match(k)]
        if bad:
            raise DataError(f"key {keys[bad[0]]!r}; expected idNNNNN/<youtube-id>/NNNNN.wav", path,
                            int(tr.line_no[bad[0]]))
    return tr


# ---------------------------------------------------------------- VoxCeleb1

def _vox1_parts(root: Path, meta: dict[str, tuple[str, str, str]]) -> tuple[str, dict[str, str], dict[str, str]]:
    """Scan the audio: (layout, {key: path}, {spk: dev|test})."""
    split_dirs = {p: root / p / "wav" for p in ("dev", "test") if (root / p / "wav").is_dir()}
    files: dict[str, str] = {}
    part_of: dict[str, str] = {}
    if split_dirs:
        layout = "split"
        for part, top in split_dirs.items():
            for key, path in scan_tree(top, ".wav").items():
                spk = _spk(key)
                if part_of.setdefault(spk, part) != part:
                    raise DataError(f"speaker {spk} appears under both dev/wav and test/wav", top / spk)
                files[key] = path
    elif (root / "wav").is_dir():
        layout = "single"
        files = scan_tree(root / "wav", ".wav")
        for key in files:
            part_of.setdefault(_spk(key), _vox1_part_guess(_spk(key), meta))
    else:
        raise DataError("no VoxCeleb1 audio: expected dev/wav and/or test/wav, or a single wav/ directory", root)
    if not files:
        raise DataError("no idNNNNN/<youtube-id>/*.wav files found", root)
    return layout, dict(sorted(files.items())), part_of


def _vox1_part_guess(spk: str, meta: dict[str, tuple[str, str, str]]) -> str:
    """dev or test for a speaker: vox1_meta.csv's Set column, else the official test id range."""
    if spk in meta and meta[spk][2] in ("dev", "test"):
        return meta[spk][2]
    return "test" if VOX1_TEST_IDS[0] <= int(spk[2:]) <= VOX1_TEST_IDS[1] else "dev"


def prepare_voxceleb1(root: PathLike, out_dir: PathLike, nj: int = 8, compute_dur: bool = True) -> dict:
    """Write vox1_{dev,test,all}, vox1_iden_{train,val,test} and trials/<list> under out_dir; return a summary."""
    root, out_dir = Path(root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with log_to_file(out_dir / "prepare.log"):
        meta_path = find_side_file(root, "vox1_meta.csv")
        meta = read_vox1_meta(meta_path) if meta_path else {}
        if meta_path is None:
            log.warning("%s: no vox1_meta.csv in %s: spk2gender and spk2nat are not written", root, SIDE_DIRS)
        layout, files, part_of = _vox1_parts(root, meta)
        parts_present = set(part_of.values())
        log.info("%s: %s layout, %d utterances of %d speakers", root, layout, len(files), len(part_of))

        iden_path = find_side_file(root, "iden_split.txt")
        iden = read_iden_split(iden_path) if iden_path else {}
        lists = {name: (p, read_vox1_list(p)) for name in VOX1_LISTS if (p := find_side_file(root, name))}

        # Keys the lists name but the disk lacks: excluded (and reported) in the dir of their part; a part
        # that is absent altogether (test-only download) is not "missing", its trials are just dropped.
        listed: dict[str, str] = {k: "iden_split.txt" for k in iden}
        for name, (_, tr) in lists.items():
            for k in np.concatenate([tr.enroll, tr.test]):
                listed.setdefault(str(k), name)
        bad: dict[str, str] = {}
        key_part = {k: part_of.get(_spk(k)) or _vox1_part_guess(_spk(k), meta) for k in files.keys() | listed.keys()}
        for k, src in sorted(listed.items()):
            if k not in files and key_part[k] in parts_present:
                bad[k] = f"missing file (listed in {src})"

        spk2gender = {s: v[0] for s, v in meta.items()}
        spk2nat = {s: v[1] for s, v in meta.items()}
        no_meta = sorted(s for s in part_of if s not in meta)
        if meta and no_meta:
            log.warning("%s: %d speakers have no vox1_meta.csv row (e.g. %s)", meta_path, len(no_meta), no_meta[0])
        data = _base_datadir(files, spk2gender, spk2nat)
        if compute_dur:
            data.utt2dur, probe_bad = probe_durations(data.wav, nj=nj, desc="utt2dur vox1")
            bad.update(probe_bad)

        members: dict[str, set[str]] = {}
        for part in ("dev", "test"):
            if part in parts_present:
                members[f"vox1_{part}"] = {k for k, p in key_part.items() if p == part}
        members["vox1_all"] = set(key_part)
        if iden:
            if parts_present == {"dev", "test"}:
                for split in IDEN_SPLITS.values():
                    members[f"vox1_iden_{split}"] = {k for k, s in iden.items() if s == split}
            else:
                log.warning("%s: identification split skipped: it needs both dev and test audio", iden_path)

        summary: dict = {"corpus": "voxceleb1", "root": str(root), "layout": layout, "dirs": {}, "trials": {},
                         "excluded": len(bad)}
        for name, keys in members.items():
            sub = data.subset(keys & files.keys())
            summary["dirs"][name] = _write_dir(sub, out_dir / name, {k: bad[k] for k in keys if k in bad}, nj)
        good = set(files) - set(bad)
        test_good = good & members.get("vox1_test", set())
        for name, (src, tr) in lists.items():
            summary["trials"][name] = _write_vox1_trials(name, src, tr, good, test_good, out_dir / "trials")
        with atomic_write(out_dir / "voxceleb1_summary.json") as f:
            json.dump(summary, f, indent=1)
    return summary


def _write_vox1_trials(name: str, src: Path, tr: Trials, good: set[str], test_good: set[str], out: Path) -> dict:
    """Drop (and count) trials whose audio is missing or excluded; write the rest in Kaldi form."""
    keep = np.array([e in good and t in good for e, t in zip(tr.enroll, tr.test)], dtype=bool)
    dropped = int((~keep).sum())
    kept = Trials(enroll=tr.enroll[keep], test=tr.test[keep], labels=tr.labels[keep])
    if dropped:
        log.warning("%s: dropped %d of %d trials whose audio is missing or unreadable (see excluded.txt)",
                    src, dropped, len(tr))
    info = {"title": VOX1_LISTS[name], "source": str(src), "trials": len(kept),
            "targets": int((kept.labels == 1).sum()), "dropped": dropped}
    if not len(kept):
        log.warning("%s: no trial left; trials/%s not written", src, name)
        return info
    keys = set(kept.enroll) | set(kept.test)
    info["dir"] = "vox1_test" if keys <= test_good else "vox1_all"
    write_trials(out / name, kept, fmt="kaldi")
    info["path"] = str(out / name)
    return info


# ---------------------------------------------------------------- VoxCeleb2

def convert_m4a(src: str, dst: str) -> str | None:
    """Decode one m4a to 16 kHz mono PCM16 wav (atomic); return None on success, else the reason."""
    import av

    try:
        chunks = []
        with av.open(src) as container:
            if not container.streams.audio:
                return "no audio stream"
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
        x = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        if len(x) == 0:
            return "no audio samples decoded"
        write_wav(dst, x, SAMPLE_RATE)
    except Exception as e:  # noqa: BLE001 - any decoder/IO failure is reported, never fatal for the corpus
        return f"{type(e).__name__}: {' '.join(str(e).split())}"
    return None


def _convert_pair(job: tuple[str, str]) -> str | None:
    return convert_m4a(*job)


def _remove_stale_temps(top: Path) -> int:
    """Delete temp files a killed run left behind (atomic_path names them `.<name>.*.tmp.wav`)."""
    n = 0
    if not top.is_dir():
        return 0
    for dirpath, _, names in os.walk(top):
        for name in names:
            if name.startswith(".") and name.endswith(".tmp.wav"):
                os.unlink(os.path.join(dirpath, name))
                n += 1
    return n


def convert_all(jobs: list[tuple[str, str]], nj: int = 8, desc: str = "m4a->wav") -> dict[int, str]:
    """Convert (src, dst) pairs in `nj` processes; return {job index: failure reason}."""
    failed: dict[int, str] = {}
    if nj <= 1 or len(jobs) <= 1:
        results = map(_convert_pair, jobs)
        for i, why in enumerate(tqdm(results, total=len(jobs), desc=desc, mininterval=2)):
            if why:
                failed[i] = why
        return failed
    # forkserver: forking a process that already runs threads (tqdm, logging) can deadlock a child.
    ctx = multiprocessing.get_context("forkserver")
    chunk = max(1, min(64, len(jobs) // (nj * 8)))
    with ProcessPoolExecutor(nj, mp_context=ctx) as pool:
        results = pool.map(_convert_pair, jobs, chunksize=chunk)
        for i, why in enumerate(tqdm(results, total=len(jobs), desc=desc, mininterval=2)):
            if why:
                failed[i] = why
    return failed


def prepare_voxceleb2(root: PathLike, out_dir: PathLike, wav_dir: PathLike | None = None, nj: int = 8,
                      compute_dur: bool = True) -> dict:
    """Decode <root>/{dev,test}/aac/**.m4a to wav (resumable) and write vox2_{dev,test}; return a summary.

    Wavs go to `<wav_dir>/<part>/wav/idNNNNN/<yt>/NNNNN.wav` (default wav_dir: out_dir/vox2_wav). Existing wavs
    are complete (written atomically) and skipped. Failures go to out_dir/vox2_failed.txt and
    summary["failed"]; the good utterances are still written."""
    root, out_dir = Path(root), Path(out_dir)
    wav_dir = Path(wav_dir) if wav_dir is not None else out_dir / "vox2_wav"
    out_dir.mkdir(parents=True, exist_ok=True)
    with log_to_file(out_dir / "prepare.log"):
        parts = [p for p in ("dev", "test") if (root / p / "aac").is_dir()]
        if not parts:
            raise DataError("no VoxCeleb2 audio: expected dev/aac (and optionally test/aac)", root)
        meta_path = find_side_file(root, "vox2_meta.csv")
        meta = read_vox2_meta(meta_path) if meta_path else {}
        if meta_path is None:
            log.warning("%s: no vox2_meta.csv in %s: spk2gender is not written", root, SIDE_DIRS)
        spk2gender = {s: v[0] for s, v in meta.items()}
        summary: dict = {"corpus": "voxceleb2", "root": str(root), "wav_dir": str(wav_dir), "dirs": {},
                         "converted": 0, "skipped": 0, "failed": 0}
        failures: list[str] = []
        for part in parts:
            src = scan_tree(root / part / "aac", ".m4a")
            if not src:
                raise DataError("no idNNNNN/<youtube-id>/*.m4a files found", root / part / "aac")
            top = (wav_dir / part / "wav").absolute()
            stale = _remove_stale_temps(top)
            if stale:
                log.info("%s: removed %d partial file(s) of an interrupted run", top, stale)
            dst = {k: str(top / k) for k in src}
            todo = [k for k in src if not os.path.exists(dst[k])]
            log.info("%s: %d m4a files, %d already converted, %d to convert with %d workers",
                     root / part / "aac", len(src), len(src) - len(todo), len(todo), nj)
            failed = convert_all([(src[k], dst[k]) for k in todo], nj=nj, desc=f"m4a->wav {part}")
            bad = {todo[i]: f"conversion failed: {why}" for i, why in failed.items()}
            failures += [f"{todo[i]} {src[todo[i]]} {why}" for i, why in sorted(failed.items())]
            summary["converted"] += len(todo) - len(failed)
            summary["skipped"] += len(src) - len(todo)
            summary["failed"] += len(failed)
            data = _base_datadir(dst, spk2gender, {})
            if compute_dur:
                data.utt2dur, probe_bad = probe_durations({k: v for k, v in dst.items() if k not in bad}, nj=nj,
                                                          desc=f"utt2dur vox2_{part}")
                bad.update(probe_bad)
            no_meta = sorted({_spk(k) for k in src} - meta.keys())
            if meta and no_meta:
                log.warning("%s: %d speakers have no row (e.g. %s)", meta_path, len(no_meta), no_meta[0])
            summary["dirs"][f"vox2_{part}"] = _write_dir(data, out_dir / f"vox2_{part}", bad, nj)
        failed_path = out_dir / "vox2_failed.txt"
        with atomic_write(failed_path) as f:
            f.writelines(line + "\n" for line in failures)
        summary["failures_file"] = str(failed_path)
        if failures:
            log.error("%d m4a file(s) failed to convert; listed in %s (re-run to retry them)",
                      len(failures), failed_path)
        with atomic_write(out_dir / "voxceleb2_summary.json") as f:
            # converted/skipped describe this run only, so they stay out of the file that re-runs rewrite
            json.dump({k: v for k, v in summary.items() if k not in ("converted", "skipped")}, f, indent=1)
    return summary
