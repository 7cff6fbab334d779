"""Validation of a data dir (and trial lists against it): every problem reported, none raised.

`spkcausal validate-data` prints what validate_datadir finds; the readers in datadir.py and trialio.py stop
at the first error instead.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..utils import DataError, PathLike
from .datadir import GENDERS, pipe_problem, read_lines, read_list_kv, utt2spk_to_spk2utt
from .trialio import read_trials

__all__ = ["Problem", "validate_datadir"]


@dataclass(frozen=True)
class Problem:
    """One inconsistency found by validate_datadir."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}" if self.line else f"{self.path}: {self.message}"


def _scan_table(path: Path, problems: list[Problem], where: dict | None = None) -> dict[str, list[str]] | None:
    """Parse a table leniently, recording every malformed, duplicate or unsorted line.

    `where`, when given, receives (file, key) -> line number for later cross-file messages."""
    if not path.exists():
        return None
    try:
        lines = read_lines(path)
    except DataError as e:
        problems.append(Problem(str(path), None, e.message))
        return {}
    out: dict[str, list[str]] = {}
    prev = None
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if len(parts) < 2:
            problems.append(Problem(str(path), n, "expected '<key> <value>'" if parts else "empty line"))
            continue
        key = parts[0]
        if key in out:
            problems.append(Problem(str(path), n, f"duplicate key {key!r}"))
            continue
        if prev is not None and key.encode() < prev.encode():
            problems.append(Problem(str(path), n, f"not sorted: {key!r} after {prev!r} (LC_ALL=C sort)"))
        prev = key
        out[key] = parts[1:]
        if where is not None:
            where[(path.name, key)] = n
    return out


def _enroll_keys(path: Path) -> list[str]:
    """Enrolment ids a data dir defines as averages of its utterances (`enroll2utt`, CN-Celeb Avg)."""
    p = path / "enroll2utt"
    return list(read_list_kv(p)) if p.exists() else []


Report = Callable[[str, str, str], None]


def _check_speakers(wav: dict, u2s: dict, s2u: dict | None, report: Report) -> None:
    """wav.scp, utt2spk and spk2utt against each other."""
    for utt in u2s:
        if utt not in wav:
            report("utt2spk", utt, f"utterance {utt!r} has no wav.scp entry")
    for utt in wav:
        if utt not in u2s:
            report("wav.scp", utt, f"utterance {utt!r} has no utt2spk entry")
    for utt, spks in u2s.items():
        if len(spks) == 1 and s2u is not None and spks[0] not in s2u:
            report("utt2spk", utt, f"speaker {spks[0]!r} of {utt!r} is absent from spk2utt")
    for utt, v in u2s.items():
        if len(v) != 1:
            report("utt2spk", utt, f"utterance {utt!r} maps to {len(v)} speakers")
    if s2u is not None:
        expect = utt2spk_to_spk2utt({u: v[0] for u, v in u2s.items() if v})
        for spk in sorted(set(expect) | set(s2u)):
            if sorted(s2u.get(spk, [])) != expect.get(spk, []):
                report("spk2utt", spk, f"speaker {spk!r} disagrees with utt2spk")


def _check_optional(u2s: dict, dur: dict | None, gender: dict | None, sess: dict | None, report: Report) -> None:
    """utt2dur, spk2gender and utt2sess (when present): values and keys against utt2spk."""
    if dur is not None:
        for utt, v in dur.items():
            try:
                ok = float(v[0]) > 0 and np.isfinite(float(v[0]))
            except ValueError:
                ok = False
            if not ok:
                report("utt2dur", utt, f"duration {v[0]!r} of {utt!r} not positive")
            if utt not in u2s:
                report("utt2dur", utt, f"utterance {utt!r} not in utt2spk")
        for utt in u2s:
            if utt not in dur:
                report("utt2spk", utt, f"utterance {utt!r} has no utt2dur entry")
    if gender is not None:
        spks = {v[0] for v in u2s.values() if v}
        for spk, v in gender.items():
            if v[0] not in GENDERS:
                report("spk2gender", spk, f"gender {v[0]!r} of {spk!r}; expected m or f")
            if spk not in spks:
                report("spk2gender", spk, f"speaker {spk!r} not in utt2spk")
    if sess is not None:
        for utt in sess:
            if utt not in u2s:
                report("utt2sess", utt, f"utterance {utt!r} not in utt2spk")


def _check_pipes(wav: dict, report: Report) -> None:
    """No wav.scp entry is a Kaldi pipe command: the readers refuse them (datadir.pipe_problem)."""
    for utt, v in wav.items():
        problem = pipe_problem(utt, " ".join(v))
        if problem:
            report("wav.scp", utt, problem)


def _check_audio(wav: dict, report: Report) -> None:
    """Every wav.scp path exists (pipe commands are _check_pipes' to report)."""
    for utt, v in wav.items():
        target = " ".join(v)
        if pipe_problem(utt, target):
            continue
        if not Path(target).is_file():
            report("wav.scp", utt, f"audio of {utt!r} missing: {target}")


def _check_trials(path: Path, trials: Iterable[PathLike], u2s: dict, problems: list[Problem]) -> None:
    """Each trial list reads, and every key it names is an utterance (or enrolment key) of the data dir."""
    for tpath in trials:
        try:
            tr = read_trials(tpath)
        except DataError as e:
            problems.append(Problem(str(tpath), e.line, e.message))
            continue
        known = set(u2s) | set(_enroll_keys(path))
        line_no = tr.line_no if tr.line_no is not None else np.arange(1, len(tr) + 1)  # read_trials sets it
        absent: dict[str, int] = {}
        for i, key in enumerate(np.concatenate([tr.enroll, tr.test])):
            if key not in known and key not in absent:
                absent[str(key)] = int(line_no[i % len(tr)])
        for key, line in sorted(absent.items(), key=lambda kv: kv[1]):
            problems.append(Problem(str(tpath), line, f"key {key!r} is not in the data dir"))


def validate_datadir(path: PathLike, trials: Iterable[PathLike] = (), check_audio: bool = True) -> list[Problem]:
    """Report every inconsistency of a data dir (and trial lists against it); empty list when clean."""
    path = Path(path)
    problems: list[Problem] = []
    if not path.is_dir():
        return [Problem(str(path), None, "no such directory")]
    for required in ("wav.scp", "utt2spk"):
        if not (path / required).exists():
            problems.append(Problem(str(path / required), None, "missing (required)"))
    at: dict[tuple[str, str], int] = {}
    wav = _scan_table(path / "wav.scp", problems, at) or {}
    u2s = _scan_table(path / "utt2spk", problems, at) or {}
    s2u = _scan_table(path / "spk2utt", problems, at)
    dur = _scan_table(path / "utt2dur", problems, at)
    gender = _scan_table(path / "spk2gender", problems, at)
    sess = _scan_table(path / "utt2sess", problems, at)

    def report(name: str, key: str, message: str) -> None:
        problems.append(Problem(str(path / name), at.get((name, key)), message))

    _check_speakers(wav, u2s, s2u, report)
    _check_optional(u2s, dur, gender, sess, report)
    _check_pipes(wav, report)
    if check_audio:
        _check_audio(wav, report)
    _check_trials(path, trials, u2s, problems)
    return problems
