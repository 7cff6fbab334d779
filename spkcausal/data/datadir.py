"""Kaldi-style data dirs: read and write their tables (sorted, atomic).

A data dir holds plain-text tables keyed by utterance or speaker id, one entry a line:
`wav.scp` (utt path), `utt2spk` (utt spk), `spk2utt` (spk utt...), `utt2dur` (utt seconds),
`spk2gender` (spk m|f) and optionally `utt2sess` (utt session, e.g. a YouTube id or chapter)
and `spk2nat`; an eval dir may add `enroll2utt` (enrol id -> the utterances whose mean embedding
enrols it, CN-Celeb's Avg protocol). Keys never contain whitespace; every file is sorted by key in byte order so that
`LC_ALL=C sort -c` accepts it. Trial lists and score files: trialio.py; checking a whole dir: validate.py.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload

import numpy as np

from ..utils import DataError, PathLike, atomic_write, get_logger

__all__ = [
    "labelled_utts", "train_counts",
    "KV_FILES", "GENDERS", "DataDir", "pipe_problem", "read_lines", "read_kv", "read_list_kv", "read_wav_scp",
    "write_kv", "write_list_kv",
    "utt2spk_to_spk2utt",
]

KV_FILES = ("wav.scp", "utt2spk", "utt2dur", "spk2gender", "utt2sess", "spk2nat")
GENDERS = {"m", "f"}

_Value = TypeVar("_Value", str, int, float)


def read_lines(path: PathLike) -> list[str]:
    """Lines of a UTF-8 text file without their newlines; DataError when missing or not UTF-8."""
    try:  # utf-8-sig: a byte-order mark is not part of the first key
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except IsADirectoryError:
        raise DataError("is a directory; expected a text file", path) from None
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", path) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _kv_fast(lines: list[str], value_type: type) -> dict[str, Any] | None:
    """`read_kv`'s table built in C-level passes (split, dict, map); None when a line needs the checks of the
    line-by-line pass (blank, no value, duplicate, trailing whitespace, a bad number), which then names it."""
    try:
        out: dict[str, Any] = dict(line.split(None, 1) for line in lines)
    except ValueError:  # a line that splits into fewer than two fields
        return None
    if len(out) != len(lines) or any(v[-1].isspace() for v in out.values()):
        return None
    if value_type is not str:
        try:
            values = list(map(value_type, out.values()))
        except ValueError:
            return None
        if value_type is float and not np.isfinite(np.array(values, dtype=np.float64)).all():
            return None
        out = dict(zip(out, values))
    return out


@overload
def read_kv(path: PathLike) -> dict[str, str]: ...
@overload
def read_kv(path: PathLike, value_type: type[_Value]) -> dict[str, _Value]: ...
def read_kv(path: PathLike, value_type: type = str) -> dict[str, Any]:
    """Read a `key value` table (the value is the rest of the line); reject blank lines and duplicates."""
    lines = read_lines(path)
    fast = _kv_fast(lines, value_type)  # a million-line table: 1.5x faster than the loop below (CPU)
    if fast is not None:
        return fast
    out: dict[str, Any] = {}
    for n, line in enumerate(lines, 1):
        parts = line.strip().split(maxsplit=1)
        if not parts:
            raise DataError("empty line; expected '<key> <value>'", path, n)
        if len(parts) < 2:
            raise DataError(f"key {parts[0]!r} has no value; expected '<key> <value>'", path, n)
        key, value = parts
        if key in out:
            raise DataError(f"duplicate key {key!r}", path, n)
        if value_type is not str:
            try:
                value = value_type(value)
            except ValueError:
                raise DataError(f"value {value!r} for {key!r} is not a {value_type.__name__}", path, n) from None
            if value_type is float and not np.isfinite(value):
                raise DataError(f"value {value!r} for {key!r} is not finite", path, n)
        out[key] = value
    return out


def pipe_problem(key: str, value: str) -> str | None:
    """The refusal of a Kaldi pipe entry (`utt sox in.flac -t wav - |`) in wav.scp, None for a path: spkcausal
    reads audio files only and never runs a command, so every reader and validate-data refuse it alike."""
    if not value.rstrip().endswith("|"):
        return None
    return (f"entry {key!r} is a pipe command ({value.strip()!r}); pipe commands are not supported: expected the "
            "path of an audio file (run the command once and list the file it writes)")


def read_wav_scp(path: PathLike) -> dict[str, str]:
    """Read a wav.scp (`utt path`); a pipe entry is a DataError naming the file and line (pipe_problem)."""
    wav = read_kv(path)
    for n, (key, value) in enumerate(wav.items(), 1):  # read_kv refuses blank lines: entry n is on line n
        problem = pipe_problem(key, str(value))
        if problem:
            raise DataError(problem, path, n)
    return wav


def read_list_kv(path: PathLike) -> dict[str, list[str]]:
    """Read a `key item item ...` table such as spk2utt."""
    out: dict[str, list[str]] = {}
    for n, line in enumerate(read_lines(path), 1):
        parts = line.split()
        if not parts:
            raise DataError("empty line; expected '<key> <item> [<item> ...]'", path, n)
        if len(parts) < 2:
            raise DataError(f"key {parts[0]!r} lists nothing", path, n)
        if parts[0] in out:
            raise DataError(f"duplicate key {parts[0]!r}", path, n)
        out[parts[0]] = parts[1:]
    return out


def _check_key(key: str, what: str, path: PathLike) -> None:
    if not key or any(c.isspace() for c in key):
        raise DataError(f"{what} {key!r} is empty or contains whitespace", path)


def write_kv(path: PathLike, mapping: Mapping[str, object]) -> None:
    """Write a `key value` table sorted by key (byte order), atomically."""
    with atomic_write(path) as f:
        for key in sorted(mapping):
            _check_key(key, "key", path)
            value = mapping[key]
            if isinstance(value, float):
                value = f"{value:.3f}"
            f.write(f"{key} {value}\n")


def write_list_kv(path: PathLike, mapping: Mapping[str, Iterable[str]]) -> None:
    """Write a `key item item ...` table sorted by key, items sorted too, atomically."""
    with atomic_write(path) as f:
        for key in sorted(mapping):
            _check_key(key, "key", path)
            f.write(key + " " + " ".join(sorted(mapping[key])) + "\n")


def utt2spk_to_spk2utt(utt2spk: Mapping[str, str]) -> dict[str, list[str]]:
    """Invert utt2spk into spk2utt with sorted utterance lists."""
    out: dict[str, list[str]] = {}
    for utt in sorted(utt2spk):
        out.setdefault(utt2spk[utt], []).append(utt)
    return out


@dataclass
class DataDir:
    """An in-memory data dir; `wav` and `utt2spk` are required, the other tables optional."""

    wav: dict[str, str]
    utt2spk: dict[str, str]
    utt2dur: dict[str, float] = field(default_factory=dict)
    spk2gender: dict[str, str] = field(default_factory=dict)
    utt2sess: dict[str, str] = field(default_factory=dict)
    spk2nat: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    @property
    def spk2utt(self) -> dict[str, list[str]]:
        """Speaker -> sorted utterance list, derived from utt2spk."""
        return utt2spk_to_spk2utt(self.utt2spk)

    @property
    def utts(self) -> list[str]:
        """Sorted utterance ids."""
        return sorted(self.utt2spk)

    @property
    def speakers(self) -> list[str]:
        """Sorted speaker ids."""
        return sorted(set(self.utt2spk.values()))

    def __len__(self) -> int:
        return len(self.utt2spk)

    @classmethod
    def load(cls, path: PathLike, need_dur: bool = False) -> DataDir:
        """Read a data dir; raise DataError on the first malformed line or cross-file mismatch."""
        path = Path(path)
        if not path.is_dir():
            raise DataError("not a data dir (no such directory)", path)
        wav = read_wav_scp(path / "wav.scp")
        utt2spk = read_kv(path / "utt2spk")
        # Sorted tables with the same keys compare in one sequential pass; only a difference needs the lookups.
        missing = [] if list(utt2spk) == list(wav) else [u for u in utt2spk if u not in wav]
        if missing:
            raise DataError(f"{len(missing)} utterances of utt2spk have no wav.scp entry, first {missing[:3]}",
                            path / "utt2spk")
        opt = {}
        for name, vt in (("utt2dur", float), ("spk2gender", str), ("utt2sess", str), ("spk2nat", str)):
            p = path / name
            if p.exists():
                opt[name] = read_kv(p, vt)
            elif name == "utt2dur" and need_dur:
                raise DataError("utt2dur is required here; create it with `spkcausal prepare` or compute-dur", p)
        return cls(wav=wav, utt2spk=utt2spk, path=path, **opt)  # type: ignore[arg-type]

    def write(self, path: PathLike) -> None:
        """Write every non-empty table plus spk2utt, each sorted and atomic."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_kv(path / "wav.scp", self.wav)
        write_kv(path / "utt2spk", self.utt2spk)
        write_list_kv(path / "spk2utt", self.spk2utt)
        for name in ("utt2dur", "spk2gender", "utt2sess", "spk2nat"):
            table = getattr(self, name)
            if table:
                write_kv(path / name, table)
            elif (path / name).exists():
                (path / name).unlink()  # a stale table from an earlier run would no longer match

    def subset(self, utts: Iterable[str]) -> DataDir:
        """A new DataDir restricted to the given utterances (speaker tables follow)."""
        keep = set(utts)
        u2s = {u: s for u, s in self.utt2spk.items() if u in keep}
        spks = set(u2s.values())
        return DataDir(
            wav={u: self.wav[u] for u in u2s},
            utt2spk=u2s,
            utt2dur={u: d for u, d in self.utt2dur.items() if u in u2s},
            spk2gender={s: g for s, g in self.spk2gender.items() if s in spks},
            utt2sess={u: s for u, s in self.utt2sess.items() if u in u2s},
            spk2nat={s: g for s, g in self.spk2nat.items() if s in spks},
        )


_log = get_logger(__name__)


def labelled_utts(data_dir: PathLike, speakers: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(utterances, class indices) of `data_dir` whose speaker is a class of a checkpoint (`speakers[i]` is
    class i). Speakers the checkpoint does not know (e.g. the trainer dropped all their audio as too short) are
    left out with a warning; a dir with none of the training speakers is an error."""
    path = Path(data_dir) / "utt2spk"
    utt2spk = read_kv(path)
    index = {s: i for i, s in enumerate(speakers)}
    unknown = sorted({s for s in utt2spk.values() if s not in index})
    utts = [u for u, s in utt2spk.items() if s in index]
    if not utts:
        raise DataError(f"none of the {len(set(utt2spk.values()))} speakers is a training speaker of the checkpoint; "
                        "closed-set identification needs held-out utterances of training speakers", path)
    if unknown:
        _log.warning("%s: %d speakers are not classes of the checkpoint and are left out (first: %s)", path,
                     len(unknown), ", ".join(unknown[:5]))
    return utts, np.array([index[utt2spk[u]] for u in utts], dtype=np.int64)


def train_counts(train_dir: PathLike, speakers: Sequence[str]) -> np.ndarray:
    """Training utterances per class (the checkpoint's speaker order) from the training dir's utt2spk."""
    path = Path(train_dir) / "utt2spk"
    counts = Counter(read_kv(path).values())
    missing = [s for s in speakers if s not in counts]
    if missing:
        raise DataError(f"{len(missing)} of the checkpoint's speakers have no utterance here (first: {missing[0]}): "
                        "is this the dir the model was trained on?", path)
    return np.array([counts[s] for s in speakers], dtype=np.int64)
