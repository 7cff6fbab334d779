"""Kaldi-style data dirs, trial lists and score files: read, validate, write (sorted, atomic).

A data dir holds plain-text tables keyed by utterance or speaker id, one entry a line:
`wav.scp` (utt path), `utt2spk` (utt spk), `spk2utt` (spk utt...), `utt2dur` (utt seconds),
`spk2gender` (spk m|f) and optionally `utt2sess` (utt session, e.g. a YouTube id or chapter)
and `spk2nat`; an eval dir may add `enroll2utt` (enrol id -> the utterances whose mean embedding
enrols it, CN-Celeb's Avg protocol). Keys never contain whitespace; every file is sorted by key in byte order so that
`LC_ALL=C sort -c` accepts it.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .utils import DataError, PathLike, atomic_write

__all__ = [
    "DataError", "DataDir", "Trials", "Problem", "read_kv", "read_list_kv", "write_kv", "write_list_kv",
    "utt2spk_to_spk2utt", "read_trials", "write_trials", "read_scores", "read_score_arrays", "write_scores",
    "validate_datadir",
]

KV_FILES = ("wav.scp", "utt2spk", "utt2dur", "spk2gender", "utt2sess", "spk2nat")
GENDERS = {"m", "f"}


def _lines(path: PathLike) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", path) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_kv(path: PathLike, value_type: type = str) -> dict[str, object]:
    """Read a `key value` table (the value is the rest of the line); reject blank lines and duplicates."""
    out: dict[str, object] = {}
    for n, line in enumerate(_lines(path), 1):
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


def read_list_kv(path: PathLike) -> dict[str, list[str]]:
    """Read a `key item item ...` table such as spk2utt."""
    out: dict[str, list[str]] = {}
    for n, line in enumerate(_lines(path), 1):
        parts = line.split()
        if not parts:
            raise DataError("empty line; expected '<key> <item> [<item> ...]'", path, n)
        if len(parts) < 2:
            raise DataError(f"key {parts[0]!r} lists nothing", path, n)
        if parts[0] in out:
            raise DataError(f"duplicate key {parts[0]!r}", path, n)
        out[parts[0]] = parts[1:]
    return out


def _check_key(key: str, what: str) -> None:
    if not key or any(c.isspace() for c in key):
        raise ValueError(f"{what} {key!r} is empty or contains whitespace")


def write_kv(path: PathLike, mapping: Mapping[str, object]) -> None:
    """Write a `key value` table sorted by key (byte order), atomically."""
    with atomic_write(path) as f:
        for key in sorted(mapping):
            _check_key(key, "key")
            value = mapping[key]
            if isinstance(value, float):
                value = f"{value:.3f}"
            f.write(f"{key} {value}\n")


def write_list_kv(path: PathLike, mapping: Mapping[str, Iterable[str]]) -> None:
    """Write a `key item item ...` table sorted by key, items sorted too, atomically."""
    with atomic_write(path) as f:
        for key in sorted(mapping):
            _check_key(key, "key")
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
        wav = read_kv(path / "wav.scp")
        utt2spk = read_kv(path / "utt2spk")
        missing = [u for u in utt2spk if u not in wav]
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


# ---------------------------------------------------------------- trials and scores

LABEL_WORDS = {"target": 1, "nontarget": 0, "1": 1, "0": 0}


@dataclass
class Trials:
    """A trial list: parallel arrays of enrol keys, test keys and labels (1, 0, or -1 when unknown)."""

    enroll: np.ndarray
    test: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None
    line_no: np.ndarray | None = None  # 1-based source line of each trial, when read from a file

    def __len__(self) -> int:
        return len(self.enroll)

    @property
    def has_labels(self) -> bool:
        """True when every trial carries a target / non-target label."""
        return bool(len(self.labels)) and bool((self.labels >= 0).all())


_WS = np.zeros(256, dtype=bool)
_WS[[ord(" "), ord("\t"), ord("\r"), ord("\v"), ord("\f")]] = True


def _read_columns(path: PathLike, ncols_allowed: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Split a whitespace table into a (lines, ncols) array of tokens plus 1-based line numbers, and the
    byte spans (bytes, starts, ends) that duplicate checks hash."""
    a, starts, ends, line_no = _token_spans(path, ncols_allowed)
    raw = a.tobytes()
    tokens = raw.decode("utf-8").split()
    if len(tokens) != starts.size:  # str.split also splits at Unicode spaces (U+00A0, ...); keys may hold them
        tokens = [t.decode("utf-8") for t in raw.split()]
    table = np.array(tokens, dtype=object).reshape(-1, starts.shape[1])
    return table, line_no, (a, starts, ends)


def _parse_labels(col: np.ndarray, path: PathLike, line_no: np.ndarray) -> np.ndarray:
    labels = np.full(len(col), -1, dtype=np.int8)
    for word, val in LABEL_WORDS.items():
        labels[col == word] = val
    bad = np.flatnonzero(labels < 0)
    if len(bad):
        raise DataError(f"label {col[bad[0]]!r}; expected target, nontarget, 1 or 0", path, int(line_no[bad[0]]))
    return labels


def read_trials(path: PathLike) -> Trials:
    """Read a trial list in Kaldi (`enroll test target|nontarget`), VoxCeleb (`1|0 enroll test`)
    or unlabelled (`enroll test`) form, detected from the first line."""
    table, line_no, (a, starts, ends) = _read_columns(path, (2, 3))
    key_cols = [0, 1]
    if table.shape[1] == 2:
        labels = np.full(len(table), -1, dtype=np.int8)
    elif table[0, 0] in ("0", "1"):
        labels = _parse_labels(table[:, 0], path, line_no)
        key_cols = [1, 2]
    else:
        labels = _parse_labels(table[:, 2], path, line_no)
    enroll, test = table[:, key_cols[0]], table[:, key_cols[1]]
    _reject_duplicate_spans(a, starts[:, key_cols], ends[:, key_cols], path, line_no)
    return Trials(enroll=enroll.astype(str), test=test.astype(str), labels=labels, line_no=line_no)


def write_trials(path: PathLike, trials: Trials, fmt: str = "kaldi") -> None:
    """Write trials as `kaldi` (enroll test target|nontarget) or `voxceleb` (1|0 enroll test), atomically."""
    if fmt not in ("kaldi", "voxceleb"):
        raise ValueError(f"unknown trial format {fmt!r}; expected 'kaldi' or 'voxceleb'")
    if not trials.has_labels and len(trials):
        raise ValueError("cannot write unlabelled trials in a labelled format")
    with atomic_write(path) as f:
        if fmt == "kaldi":
            words = np.array(["nontarget", "target"])
            f.writelines(f"{e} {t} {w}\n" for e, t, w in zip(trials.enroll, trials.test, words[trials.labels]))
        else:
            f.writelines(f"{lab} {e} {t}\n" for e, t, lab in zip(trials.enroll, trials.test, trials.labels))


_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def read_scores(path: PathLike) -> Trials:
    """Read a score file `enroll test score [label]` (label target|nontarget|1|0); scores must be finite."""
    table, line_no, (a, starts, ends) = _read_columns(path, (3, 4))
    try:
        scores = np.array(table[:, 2].tolist(), dtype=np.float64)
    except ValueError:
        scores = None
    if scores is None or not np.isfinite(scores).all():
        for i, tok in enumerate(table[:, 2]):
            if not _FLOAT_RE.match(tok):
                raise DataError(f"score {tok!r} is not a finite number", path, int(line_no[i]))
        raise DataError("non-finite score", path)
    if table.shape[1] == 4:
        labels = _parse_labels(table[:, 3], path, line_no)
    else:
        labels = np.full(len(table), -1, dtype=np.int8)
    _reject_duplicate_spans(a, starts, ends, path, line_no)
    return Trials(enroll=table[:, 0].astype(str), test=table[:, 1].astype(str), labels=labels, scores=scores,
                  line_no=line_no)


def write_scores(path: PathLike, trials: Trials, scores: np.ndarray) -> None:
    """Write `enroll test score label` lines (wespeaker-compatible; label omitted if unknown), atomically."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) != len(trials):
        raise ValueError(f"{len(scores)} scores for {len(trials)} trials")
    words = np.array(["nontarget", "target"])
    # Plain Python objects (tolist) format about twice as fast as numpy scalars.
    enroll, test, values = trials.enroll.tolist(), trials.test.tolist(), scores.tolist()
    with atomic_write(path) as f:
        if trials.has_labels:
            f.writelines(f"{e} {t} {s:.6f} {w}\n"
                         for e, t, s, w in zip(enroll, test, values, words[trials.labels].tolist()))
        else:
            f.writelines(f"{e} {t} {s:.6f}\n" for e, t, s in zip(enroll, test, values))


# ---------------------------------------------------------------- validation


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
        lines = _lines(path)
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
    if check_audio:
        for utt, v in wav.items():
            target = " ".join(v)
            if target.endswith("|"):
                continue  # a Kaldi pipe command: cannot check without running it
            if not Path(target).is_file():
                report("wav.scp", utt, f"audio of {utt!r} missing: {target}")
    for tpath in trials:
        try:
            tr = read_trials(tpath)
        except DataError as e:
            problems.append(Problem(str(tpath), e.line, e.message))
            continue
        known = set(u2s) | set(_enroll_keys(path))
        absent: dict[str, int] = {}
        for i, key in enumerate(np.concatenate([tr.enroll, tr.test])):
            if key not in known and key not in absent:
                absent[str(key)] = int(tr.line_no[i % len(tr)])
        for key, line in sorted(absent.items(), key=lambda kv: kv[1]):
            problems.append(Problem(str(tpath), line, f"key {key!r} is not in the data dir"))
    return problems


# ---------------------------------------------------------------- fast score reading (no per-line Python)

_LABEL_BYTES = np.array([b"target", b"nontarget", b"1", b"0"], dtype="S9")
_LABEL_VALUES = np.array([1, 0, 1, 0], dtype=np.int8)


def _check_utf8(a: np.ndarray, path: PathLike, offset: int = 0) -> None:
    if len(a) and a.max() >= 0x80:
        try:
            a.tobytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"not UTF-8 text ({e.reason} at byte {offset + e.start})", path) from None


def _block_spans(a: np.ndarray, ncols_allowed: tuple[int, ...], ncols: int | None, path: PathLike, line0: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int | None]:
    """Token spans of a block of whole lines: starts, ends (n, ncols), 1-based line numbers, ncols.

    `ncols` None: taken from the first non-blank line (checked against ncols_allowed); `line0` = lines
    before this block. Works on separator positions only, never on one Python string per token."""
    sp = np.flatnonzero(a <= 32)  # every separator is <= 32; other control bytes are filtered next
    v = a[sp]
    sp = sp[_WS[v] | (v == 10)]
    # Sentinel separators at -1 and len(a) make every token the gap between two consecutive separators.
    sp = np.concatenate([[-1], sp, [len(a)]])
    gap = np.flatnonzero(sp[1:] - sp[:-1] > 1)
    starts = sp[gap] + 1
    ends = sp[gap + 1]
    line_end = sp[1:-1][a[sp[1:-1]] == 10]
    if len(a) and a[-1] != 10:
        line_end = np.concatenate([line_end, [len(a)]])
    counts = np.diff(np.searchsorted(starts, line_end), prepend=0)
    nonblank = counts > 0
    if not nonblank.any():
        return starts[:0].reshape(0, ncols or 1), ends[:0].reshape(0, ncols or 1), starts[:0], ncols
    if ncols is None:
        first = int(np.argmax(nonblank))
        ncols = int(counts[first])
        if ncols not in ncols_allowed:
            raise DataError(f"{ncols} columns; expected {' or '.join(map(str, ncols_allowed))}", path,
                            line0 + first + 1)
    bad = np.flatnonzero(nonblank & (counts != ncols))
    if len(bad):
        raise DataError(f"{counts[bad[0]]} columns where the file's first line has {ncols}", path,
                        line0 + int(bad[0]) + 1)
    line_no = line0 + np.flatnonzero(nonblank) + 1
    return starts.reshape(-1, ncols), ends.reshape(-1, ncols), line_no, ncols


def _token_spans(path: PathLike, ncols_allowed: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                          np.ndarray]:
    """Byte spans of a whole whitespace table: (bytes, starts (n, ncols), ends (n, ncols), line numbers).

    Same checks and messages as the line-by-line readers."""
    try:
        buf = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    a = np.frombuffer(buf, dtype=np.uint8)
    _check_utf8(a, path)
    starts, ends, line_no, ncols = _block_spans(a, ncols_allowed, None, path, 0)
    if ncols is None:
        raise DataError("file is empty", path)
    return a, starts, ends, line_no


BLOCK_BYTES = 1 << 23


def _line_blocks(path: PathLike, block: int | None = None):
    """Yield (bytes of whole lines, lines before them, their byte offset), block by block.

    Small blocks keep every temporary array in reused memory: on large files, fresh page-faulted
    allocations, not arithmetic, dominate the cost."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    block = block or BLOCK_BYTES
    with f:
        rest = b""
        line0 = offset = 0
        while True:
            chunk = f.read(block)
            data = rest + chunk if rest else chunk
            if not chunk:
                if data:
                    yield np.frombuffer(data, dtype=np.uint8), line0, offset
                return
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # a line longer than the block: keep reading
                rest = data
                continue
            rest = data[cut:]
            a = np.frombuffer(data, dtype=np.uint8, count=cut)
            yield a, line0, offset
            line0 += int(np.count_nonzero(a == 10))
            offset += cut


_LOW_BYTES = np.array([(1 << (8 * r)) - 1 for r in range(8)] + [2**64 - 1], dtype=np.uint64)


def _gather_words(a: np.ndarray, starts: np.ndarray, ends: np.ndarray, n_words: int) -> np.ndarray:
    """(n, n_words) uint64: each span's first 8*n_words bytes, zero padded, read 8 bytes per gather."""
    n = len(a)
    # Unaligned little-endian uint64 views at every byte offset, so one gather fetches 8 bytes of a token:
    # one over `a` itself (no copy of a large buffer) and one over a zero-padded copy of its last bytes.
    tail0 = max(0, n - 16)
    tail = np.zeros(n - tail0 + 8, dtype=np.uint8)
    tail[:n - tail0] = a[tail0:]
    tail_at = np.ndarray(shape=(n - tail0 + 1,), dtype="<u8", buffer=tail, strides=(1,))
    body_at = np.ndarray(shape=(max(n - 7, 0),), dtype="<u8", buffer=np.ascontiguousarray(a), strides=(1,))
    lengths = ends - starts
    short = int(lengths.min())
    out = np.empty((len(starts), n_words), dtype=np.uint64)
    pos = np.empty_like(starts)
    for k in range(n_words):
        np.minimum(starts + 8 * k, n, out=pos)
        near_end = pos > n - 8
        if len(body_at):
            out[:, k] = body_at[np.minimum(pos, n - 8)]
        if near_end.any():
            out[near_end, k] = tail_at[pos[near_end] - tail0]
        if short < 8 * (k + 1):  # some span ends inside this word: clear the bytes past its end
            out[:, k] &= _LOW_BYTES[np.clip(lengths - 8 * k, 0, 8)]
    return out


def _gather_text(a: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The spans as a fixed-width bytes array (S<8k>, NUL padded)."""
    n_words = max(1, -(-int((ends - starts).max()) // 8))
    return _gather_words(a, starts, ends, n_words).view(f"S{8 * n_words}").ravel()


def _span_hash(a: np.ndarray, starts: np.ndarray, ends: np.ndarray, seed: int) -> np.ndarray:
    """64-bit hash of each byte span (random linear hash over 8-byte words; collisions are re-checked)."""
    words = _gather_words(a, starts, ends, max(1, -(-int((ends - starts).max()) // 8)))
    mult = np.random.default_rng(seed).integers(1, 2**62, size=words.shape[1], dtype=np.uint64) * 2 + 1
    h = (ends - starts).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    for j in range(words.shape[1]):
        # Fold high bits down before and after multiplying: keys often differ only in a word's top bytes
        # (the last characters, little-endian), which a plain multiply would shift out of the hash.
        x = words[:, j] ^ (words[:, j] >> np.uint64(31))
        x *= mult[j]
        x ^= x >> np.uint64(29)
        h += x
        h *= np.uint64(0xBF58476D1CE4E5B9)
    return h


def _pair_hash(a: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Hash of each (first, second) token pair: the (enroll, test) key of a trial."""
    return _span_hash(a, starts[:, 0], ends[:, 0], 1) ^ (_span_hash(a, starts[:, 1], ends[:, 1], 2)
                                                         * np.uint64(0xC2B2AE3D27D4EB4F))


def _reject_duplicate_spans(a: np.ndarray, starts: np.ndarray, ends: np.ndarray, path: PathLike,
                            line_no: np.ndarray) -> None:
    """Raise on the first repeated (enroll, test) pair, exactly, using hashes only to find candidates."""
    h = _pair_hash(a, starts, ends)
    hs = np.sort(h)  # a value sort is SIMD-fast; the argsort below runs only when some hashes repeat
    if not (hs[1:] == hs[:-1]).any():
        return
    order = np.argsort(h)
    hs = h[order]
    same = np.flatnonzero(hs[1:] == hs[:-1])
    cand = np.unique(np.concatenate([order[same], order[same + 1]]))
    buf = a.tobytes()
    seen: dict[tuple[bytes, bytes], int] = {}
    for i in cand:  # ascending row order, so the first repeat found is the earliest in the file
        key = (buf[starts[i, 0]:ends[i, 0]], buf[starts[i, 1]:ends[i, 1]])
        if key in seen:
            raise DataError(f"duplicate trial {key[0].decode()} {key[1].decode()} (first seen at line "
                            f"{line_no[seen[key]]})", path, int(line_no[i]))
        seen[key] = int(i)


def _parse_scores(a: np.ndarray, starts: np.ndarray, ends: np.ndarray, path: PathLike,
                  line_no: np.ndarray) -> np.ndarray:
    text = _gather_text(a, starts, ends)
    try:
        scores = text.astype(np.float64)
    except ValueError:
        for i, raw in enumerate(text):
            tok = raw.decode("utf-8", "replace")
            if not _FLOAT_RE.match(tok):
                raise DataError(f"score {tok!r} is not a finite number", path, int(line_no[i])) from None
        raise DataError("unparsable score", path) from None
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise DataError(f"score {text[bad[0]].decode()!r} is not a finite number", path, int(line_no[bad[0]]))
    return scores


def _parse_label_spans(a: np.ndarray, starts: np.ndarray, ends: np.ndarray, path: PathLike,
                       line_no: np.ndarray) -> np.ndarray:
    lab_len = ends - starts
    words = _gather_words(a, starts, ends, 2).view("S16").ravel()
    labels = np.full(len(starts), -1, dtype=np.int8)
    for word, val in zip(_LABEL_BYTES, _LABEL_VALUES):
        labels[(words == word) & (lab_len == len(word))] = val
    bad = np.flatnonzero(labels < 0)
    if len(bad):
        tok = a[starts[bad[0]]:ends[bad[0]]].tobytes().decode()
        raise DataError(f"label {tok!r}; expected target, nontarget, 1 or 0", path, int(line_no[bad[0]]))
    return labels


def read_score_arrays(path: PathLike, need_labels: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Scores (float64) and labels (int8, -1 if absent) of a score file, validated like read_scores.

    For metrics on corpus-scale files: read block by block, keys hashed for the duplicate check and never
    turned into strings (a repeated hash is re-checked exactly)."""
    ncols = None
    scores, labels, hashes = [], [], []
    for a, line0, offset in _line_blocks(path):
        _check_utf8(a, path, offset)
        starts, ends, line_no, ncols = _block_spans(a, (3, 4), ncols, path, line0)
        if not len(starts):
            continue
        scores.append(_parse_scores(a, starts[:, 2], ends[:, 2], path, line_no))
        if ncols == 4:
            labels.append(_parse_label_spans(a, starts[:, 3], ends[:, 3], path, line_no))
        elif need_labels:
            raise DataError("score file has no label column (expected 'enroll test score target|nontarget')",
                            path, int(line_no[0]))
        hashes.append(_pair_hash(a, starts, ends))
    if ncols is None:
        raise DataError("file is empty", path)
    h = np.sort(np.concatenate(hashes))
    if (h[1:] == h[:-1]).any():  # a repeat or a hash collision: decide exactly on the whole file
        a, starts, ends, line_no = _token_spans(path, (3, 4))
        _reject_duplicate_spans(a, starts, ends, path, line_no)
    out_scores = np.concatenate(scores)
    out_labels = np.concatenate(labels) if labels else np.full(len(out_scores), -1, dtype=np.int8)
    return out_scores, out_labels
