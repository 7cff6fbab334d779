"""Trial lists and score files: read (vectorised, every error names file and line) and write (atomically).

Trial lists come in Kaldi (`enroll test target|nontarget`), VoxCeleb (`1|0 enroll test`) or unlabelled
(`enroll test`) form; score files are `enroll test score [target|nontarget|1|0]` (wespeaker's form). No
(enroll, test) pair may appear twice in either.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..utils import DataError, PathLike, UsageError, atomic_write
from .fastread import (
    block_spans,
    check_utf8,
    gather_text,
    gather_words,
    line_blocks,
    pair_hash,
    read_columns,
    split_tokens,
    token_spans,
)

__all__ = ["LABEL_WORDS", "Trials", "Scores", "read_trials", "write_trials", "read_scores", "write_scores"]

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


@dataclass
class Scores:
    """A score file read by read_scores: parallel arrays, keys only when asked for (they cost most of the time)."""

    scores: np.ndarray  # float64
    labels: np.ndarray  # int8: 1, 0, or -1 when the file has no label column
    line_no: np.ndarray  # 1-based source line of each trial
    enroll: np.ndarray | None = None  # str, with keys=True
    test: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def trials(self) -> Trials:
        """The file's trials with their keys, labels and lines; ValueError (a caller's bug) without keys=True."""
        if self.enroll is None or self.test is None:
            raise ValueError("score keys were not read: read_scores(..., keys=True)")
        return Trials(enroll=self.enroll, test=self.test, labels=self.labels, line_no=self.line_no)


def _parse_labels(col: np.ndarray, path: PathLike, line_no: np.ndarray) -> np.ndarray:
    labels = np.full(len(col), -1, dtype=np.int8)
    for word, val in LABEL_WORDS.items():
        labels[col == word] = val
    bad = np.flatnonzero(labels < 0)
    if len(bad):
        raise DataError(f"label {col[bad[0]]!r}; expected target, nontarget, 1 or 0", path, int(line_no[bad[0]]))
    return labels


def _reject_duplicate_spans(a: np.ndarray, starts: np.ndarray, ends: np.ndarray, path: PathLike,
                            line_no: np.ndarray) -> None:
    """Raise on the first repeated (enroll, test) pair, exactly, using hashes only to find candidates."""
    h = pair_hash(a, starts, ends)
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


def read_trials(path: PathLike) -> Trials:
    """Read a trial list in Kaldi (`enroll test target|nontarget`), VoxCeleb (`1|0 enroll test`)
    or unlabelled (`enroll test`) form, detected from the first line."""
    table, line_no, (a, starts, ends) = read_columns(path, (2, 3))
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
        raise UsageError(f"unknown trial format {fmt!r}; expected 'kaldi' or 'voxceleb'")
    if not trials.has_labels and len(trials):
        raise UsageError("cannot write unlabelled trials in a labelled format")
    with atomic_write(path) as f:
        if fmt == "kaldi":
            words = np.array(["nontarget", "target"])
            f.writelines(f"{e} {t} {w}\n" for e, t, w in zip(trials.enroll, trials.test, words[trials.labels]))
        else:
            f.writelines(f"{lab} {e} {t}\n" for e, t, lab in zip(trials.enroll, trials.test, trials.labels))


# ---------------------------------------------------------------- score files

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_LABEL_BYTES = np.array([b"target", b"nontarget", b"1", b"0"], dtype="S9")
_LABEL_VALUES = np.array([1, 0, 1, 0], dtype=np.int8)


def _parse_scores(a: np.ndarray, starts: np.ndarray, ends: np.ndarray, path: PathLike,
                  line_no: np.ndarray) -> np.ndarray:
    text = gather_text(a, starts, ends)
    try:
        scores = text.astype(np.float64)
        # float() also takes '1_000' and ' 1' forms; the format is the plain decimal / exponent one only
        under = np.flatnonzero((text.view(np.uint8).reshape(len(text), -1) == ord("_")).any(axis=1))
        if len(under):
            raise ValueError
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
    words = gather_words(a, starts, ends, 2).view("S16").ravel()
    labels = np.full(len(starts), -1, dtype=np.int8)
    for word, val in zip(_LABEL_BYTES, _LABEL_VALUES):
        labels[(words == word) & (lab_len == len(word))] = val
    bad = np.flatnonzero(labels < 0)
    if len(bad):
        tok = a[starts[bad[0]]:ends[bad[0]]].tobytes().decode()
        raise DataError(f"label {tok!r}; expected target, nontarget, 1 or 0", path, int(line_no[bad[0]]))
    return labels


def read_scores(path: PathLike, keys: bool = False, need_labels: bool = False) -> Scores:
    """Read a score file `enroll test score [label]`: finite scores, labels target|nontarget|1|0, no pair twice.

    Read block by block for corpus-scale files: keys are hashed for the duplicate check (a repeated hash is
    re-checked exactly) and turned into strings only with `keys=True`. `need_labels`: a file without the
    label column, or a file with only one of the two classes, is an error (metrics need both)."""
    ncols = None
    scores, labels, hashes, lines, enroll, test = [], [], [], [], [], []
    for a, line0, offset in line_blocks(path):
        check_utf8(a, path, offset, line0)
        starts, ends, line_no, ncols = block_spans(a, (3, 4), ncols, path, line0)
        if not len(starts):
            continue
        scores.append(_parse_scores(a, starts[:, 2], ends[:, 2], path, line_no))
        if ncols == 4:
            labels.append(_parse_label_spans(a, starts[:, 3], ends[:, 3], path, line_no))
        elif need_labels:
            raise DataError("score file has no label column (expected 'enroll test score target|nontarget')",
                            path, int(line_no[0]))
        hashes.append(pair_hash(a, starts, ends))
        lines.append(line_no)
        if keys:
            table = split_tokens(a, starts)
            enroll.append(table[:, 0])
            test.append(table[:, 1])
    if ncols is None:
        raise DataError("file is empty", path)
    h = np.sort(np.concatenate(hashes))
    if (h[1:] == h[:-1]).any():  # a repeat or a hash collision: decide exactly on the whole file
        a, starts, ends, line_no = token_spans(path, (3, 4))
        _reject_duplicate_spans(a, starts, ends, path, line_no)
    out = np.concatenate(scores)
    lab = np.concatenate(labels) if labels else np.full(len(out), -1, dtype=np.int8)
    if need_labels and not ((lab == 1).any() and (lab == 0).any()):  # every metric and threshold needs both
        raise DataError(f"need both targets and non-targets (got {int((lab == 1).sum())} targets, "
                        f"{int((lab == 0).sum())} non-targets)", path)
    return Scores(scores=out, labels=lab,
                  line_no=np.concatenate(lines),
                  enroll=np.concatenate(enroll).astype(str) if keys else None,
                  test=np.concatenate(test).astype(str) if keys else None)


def write_scores(path: PathLike, trials: Trials, scores: np.ndarray) -> None:
    """Write `enroll test score label` lines (wespeaker-compatible; label omitted if unknown), atomically."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) != len(trials):
        raise ValueError(f"{len(scores)} scores for {len(trials)} trials")  # a caller's bug, not the user's
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):  # a NaN score would pass silently until a metric refuses it
        i = int(bad[0])
        raise DataError(f"refusing to write {len(bad)} non-finite scores (first: {trials.enroll[i]} "
                        f"{trials.test[i]} = {scores[i]})", path)
    words = np.array(["nontarget", "target"])
    # Plain Python objects (tolist) format about twice as fast as numpy scalars.
    enroll, test, values = trials.enroll.tolist(), trials.test.tolist(), scores.tolist()
    with atomic_write(path) as f:
        if trials.has_labels:
            f.writelines(f"{e} {t} {s:.6f} {w}\n"
                         for e, t, s, w in zip(enroll, test, values, words[trials.labels].tolist()))
        else:
            f.writelines(f"{e} {t} {s:.6f}\n" for e, t, s in zip(enroll, test, values))
