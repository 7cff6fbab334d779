"""LibriSpeech: one Kaldi-style data dir per subset, speaker = reader, gender from SPEAKERS.TXT.

Layout read: `<root>/<subset>/<reader>/<chapter>/<reader>-<chapter>-NNNN.flac` with
`<reader>-<chapter>.trans.txt`, and `<root>/SPEAKERS.TXT` (`;` comments, then
`ID | SEX | SUBSET | MINUTES | NAME`, NAME may itself contain `|`).

Written, for every subset prepared: `<out_dir>/<subset>/` with wav.scp, utt2spk, spk2utt, utt2dur,
utt2sess (chapter id), spk2gender, excluded.txt, summary.json. Utterance key = the file stem
`<reader>-<chapter>-NNNN` (reader-prefixed, so Kaldi's sort orders of utt2spk and spk2utt agree).
When two or more `train-*` subsets are prepared, `<out_dir>/train_all/` holds their union
(e.g. train-960). LibriSpeech has no trial list: make one with `spkcausal make-trials`.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..data.datadir import DataDir
from ..utils import DataError, PathLike, atomic_write, log_to_file
from .common import finalize, log

__all__ = ["prepare_librispeech", "read_speakers_txt", "SUBSETS"]

SUBSETS = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other",
           "test-clean", "test-other")


def read_speakers_txt(path: PathLike) -> dict[str, str]:
    """Reader id -> 'm' | 'f' from SPEAKERS.TXT (split at most 4 times: NAME may contain '|')."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith(";"):
                continue
            fields = [x.strip() for x in line.rstrip("\n").split("|", 4)]
            if len(fields) != 5:
                raise DataError(f"{len(fields)} '|'-separated fields; expected 'ID | SEX | SUBSET | MINUTES | NAME'",
                                path, n)
            reader, sex = fields[0], fields[1].lower()
            if not reader.isdigit():
                raise DataError(f"reader id {reader!r} is not a number", path, n)
            if sex not in ("m", "f"):
                raise DataError(f"sex {fields[1]!r} of reader {reader}; expected M or F", path, n)
            if reader in out:
                raise DataError(f"reader {reader} listed twice", path, n)
            out[reader] = sex
    return out


def _resolve_root(root: Path) -> Path:
    """Accept the LibriSpeech dir itself or the folder it was unpacked into."""
    if not any((root / s).is_dir() for s in SUBSETS) and (root / "LibriSpeech").is_dir():
        return root / "LibriSpeech"
    return root


def _scan_subset(sub_dir: Path) -> DataDir:
    """Utterances listed in trans.txt files or present as flac (their union, so a missing flac is reported)."""
    wav: dict[str, str] = {}
    u2s: dict[str, str] = {}
    sess: dict[str, str] = {}
    for cdir in sorted(p for p in sub_dir.glob("*/*") if p.is_dir()):
        reader, chapter = cdir.parent.name, cdir.name
        utts = {p.stem for p in cdir.glob("*.flac")}
        trans = cdir / f"{reader}-{chapter}.trans.txt"
        if trans.exists():
            with open(trans, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        utts.add(line.split(maxsplit=1)[0])
                        if not line.startswith(f"{reader}-{chapter}-"):
                            raise DataError(f"utterance {line.split()[0]!r} is not of reader {reader} chapter "
                                            f"{chapter}", trans, n)
        for utt in utts:
            if not utt.startswith(f"{reader}-{chapter}-"):
                raise DataError(f"file name does not start with '{reader}-{chapter}-'", cdir / f"{utt}.flac")
            wav[utt], u2s[utt], sess[utt] = str((cdir / f"{utt}.flac").resolve()), reader, chapter
    return DataDir(wav=wav, utt2spk=u2s, utt2sess=sess)


def prepare_librispeech(root: PathLike, out_dir: PathLike, subsets: list[str] | None = None, nj: int = 8) -> dict:
    """Write `<out_dir>/<subset>` data dirs for the given (None: every found) subsets; return their summaries."""
    root = _resolve_root(Path(root))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with log_to_file(out_dir / "prepare.log"):
        return _prepare(root, out_dir, subsets, nj)


def _prepare(root: Path, out_dir: Path, subsets: list[str] | None, nj: int) -> dict:
    if subsets is None:
        subsets = [s for s in SUBSETS if (root / s).is_dir()]
        if not subsets:
            raise DataError(f"no LibriSpeech subset ({', '.join(SUBSETS)}) found", root)
    for s in subsets:
        if not (root / s).is_dir():
            raise DataError(f"subset {s!r} not found", root / s)
    spk_txt = root / "SPEAKERS.TXT"
    genders = read_speakers_txt(spk_txt) if spk_txt.exists() else {}
    if not genders:
        log.warning("%s missing or empty: no spk2gender will be written", spk_txt)

    summaries: dict = {}
    finished: dict[str, DataDir] = {}
    for s in subsets:
        data = _scan_subset(root / s)
        if not data.utt2spk:
            raise DataError("no <reader>/<chapter>/*.flac or trans.txt found", root / s)
        unknown = sorted(set(data.utt2spk.values()) - set(genders))
        if unknown and genders:
            log.warning("%s: %d reader(s) absent from %s, no gender for them: %s", s, len(unknown), spk_txt,
                        unknown[:5])
        data.spk2gender = {r: genders[r] for r in set(data.utt2spk.values()) if r in genders}
        summaries[s] = finalize(data, out_dir / s, nj=nj)
        finished[s] = DataDir.load(out_dir / s)
        log.info("%s: %d readers, %d utterances, %.2f h, %d excluded", s, summaries[s]["speakers"],
                 summaries[s]["utterances"], summaries[s]["hours"], summaries[s]["excluded"])
    train = [s for s in subsets if s.startswith("train")]
    if len(train) > 1:
        summaries["train_all"] = _union(finished, train, out_dir)
    return summaries


def _union(dirs: dict[str, DataDir], names: list[str], out_dir: Path) -> dict:
    """Write the union of already prepared subsets as `train_all` (their readers are disjoint)."""
    merged = DataDir(wav={}, utt2spk={})
    for name in names:
        d = dirs[name]
        for table in ("wav", "utt2spk", "utt2dur", "spk2gender", "utt2sess"):
            getattr(merged, table).update(getattr(d, table))
    dest = out_dir / "train_all"
    merged.write(dest)
    excluded = "".join((out_dir / n / "excluded.txt").read_text() for n in names)
    with atomic_write(dest / "excluded.txt") as f:
        f.write(excluded)
    summary = {"dir": str(dest), "speakers": len(merged.speakers), "utterances": len(merged),
               "excluded": excluded.count("\n"), "hours": round(sum(merged.utt2dur.values()) / 3600, 4),
               "subsets": names}
    with atomic_write(dest / "summary.json") as f:
        json.dump(summary, f, indent=1)
    return summary
