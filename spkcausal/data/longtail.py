"""Long-tail profiles of a data dir: shot groups, statistics, profile files and plots (subsets: spkcausal.data.subsets).

Definitions (docs/longtail.md has the full text): for per-speaker amounts x_1..x_n (utterances or seconds),
imbalance = max/min, Gini = sum_i sum_j |x_i - x_j| / (2 n^2 mean(x)), top-20% share = the share of the
total held by the ceil(n/5) largest speakers. Shot groups come from utterance counts: many > `many`,
few < `few`, medium otherwise.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..utils import DataError, PathLike, UsageError, atomic_path, atomic_write, get_logger
from .datadir import DataDir
from .fastread import check_utf8, line_token_counts, read_bytes

log = get_logger(__name__)

MANY, FEW = 100, 20
GROUPS = ("many", "medium", "few")


def shot_groups(counts: np.ndarray, many: int = MANY, few: int = FEW) -> np.ndarray:
    """Shot group of each class from its training count: 'many' (> many), 'few' (< few), else 'medium'."""
    counts = np.asarray(counts)
    return np.where(counts > many, "many", np.where(counts < few, "few", "medium"))


# ---------------------------------------------------------------- statistics


def gini(x: np.ndarray) -> float:
    """Gini coefficient sum|x_i - x_j| / (2 n^2 mean), computed in O(n log n) from the sorted values."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    n, total = len(x), float(x.sum())
    if n == 0 or total == 0:
        return 0.0
    # sum_{i<j} (x_j - x_i) over sorted x equals sum_k (2k - n - 1) x_k with 1-based k.
    k = np.arange(1, n + 1, dtype=np.float64)
    return float(np.dot(2 * k - n - 1, x) / (n * total))


def top_share(x: np.ndarray, fraction: float = 0.2) -> float:
    """Share of the total held by the ceil(fraction * n) largest entries (integer arithmetic for 0.2)."""
    x = np.sort(np.asarray(x, dtype=np.float64))[::-1]
    if len(x) == 0 or x.sum() == 0:
        return 0.0
    k = -(-len(x) // 5) if fraction == 0.2 else int(np.ceil(round(fraction * len(x), 9)))
    return float(x[:k].sum() / x.sum())


def describe(x: np.ndarray) -> dict[str, float]:
    """min / median / mean / max, imbalance (max/min), Gini and top-20% share of per-speaker amounts."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        raise DataError("no speakers to describe")
    lo, hi = float(x.min()), float(x.max())
    return {"min": lo, "median": float(np.median(x)), "mean": float(x.mean()), "max": hi,
            "imbalance": hi / lo if lo > 0 else float("inf"), "gini": gini(x), "top20_share": top_share(x)}


@dataclass
class Profile:
    """Per-speaker table (sorted by utterances desc, then speaker) and its summary statistics."""

    speakers: np.ndarray  # str
    utterances: np.ndarray  # int64
    seconds: np.ndarray | None  # float64, None without utt2dur
    many: int = MANY
    few: int = FEW
    source: str = ""
    groups: np.ndarray = field(init=False)
    summary: dict = field(init=False)

    def __post_init__(self) -> None:
        spk = np.asarray(self.speakers).astype(str)
        cnt = np.asarray(self.utterances, dtype=np.int64)
        order = np.lexsort((spk, -cnt))
        self.speakers, self.utterances = spk[order], cnt[order]
        if self.seconds is not None:
            self.seconds = np.asarray(self.seconds, dtype=np.float64)[order]
        self.groups = shot_groups(self.utterances, self.many, self.few)
        self.summary = self._summarise()

    def _summarise(self) -> dict:
        cnt, sec = self.utterances, self.seconds
        out: dict = {"source": self.source, "many": self.many, "few": self.few,
                     "speakers": int(len(cnt)), "utterances": int(cnt.sum()),
                     "hours": None if sec is None else float(sec.sum() / 3600),
                     "utterances_per_speaker": describe(cnt),
                     "seconds_per_speaker": None if sec is None else describe(sec), "groups": {}}
        for g in GROUPS:
            m = self.groups == g
            out["groups"][g] = {"speakers": int(m.sum()), "utterances": int(cnt[m].sum()),
                                "hours": None if sec is None else float(sec[m].sum() / 3600)}
        return out


# ---------------------------------------------------------------- fast reading of two-column tables


def _check_unique(keys: list[bytes], path: Path) -> None:
    """Raise on the first repeated key; a strictly increasing (Kaldi-sorted) file is checked without hashing."""
    arr = np.array(keys)
    if len(arr) < 2 or bool((arr[1:] > arr[:-1]).all()) or len(set(keys)) == len(keys):
        return
    seen: set[bytes] = set()
    for n, k in enumerate(keys, 1):
        if k in seen:
            raise DataError(f"duplicate key {k.decode()!r}", path, n)
        seen.add(k)


def _read_pairs(path: Path, what: str, unique: bool = True) -> tuple[list[bytes], list[bytes]]:
    """Keys and values of a `key value` file, one pair a line; DataError names file and line otherwise."""
    buf = read_bytes(path)
    a = np.frombuffer(buf, dtype=np.uint8)
    check_utf8(a, path)
    counts = line_token_counts(a)
    if len(counts) == 0:
        raise DataError(f"file is empty; expected '{what}' lines", path)
    bad = np.flatnonzero(counts != 2)
    if len(bad):
        n = int(counts[bad[0]])
        msg = "empty line" if n == 0 else f"{n} field{'s' * (n != 1)}"
        raise DataError(f"{msg}; expected '{what}'", path, int(bad[0]) + 1)
    tokens = buf.split()
    keys, values = tokens[0::2], tokens[1::2]
    if unique:
        _check_unique(keys, path)
    return keys, values


def _bad_duration(values: list[bytes], path: Path) -> DataError:
    """The error naming the first value that is not a positive finite number of seconds."""
    for n, v in enumerate(values, 1):
        try:
            ok = np.isfinite(float(v)) and float(v) > 0
        except ValueError:
            ok = False
        if not ok:
            return DataError(f"duration {v.decode()!r} is not a positive number of seconds", path, n)
    return DataError("a duration is not a positive number of seconds", path)  # not reached: one value failed


def _read_durations(path: Path, utts: list[bytes], utt2spk_path: Path) -> np.ndarray:
    """Duration of each utterance in `utts` from utt2dur (positive finite seconds)."""
    keys, values = _read_pairs(path, "<utt> <seconds>", unique=False)
    try:
        dur = np.array(list(map(float, values)))
    except ValueError:
        raise _bad_duration(values, path) from None
    if not (np.isfinite(dur).all() and (dur > 0).all()):
        raise _bad_duration(values, path)
    if keys == utts:  # the usual case: both files sorted by utterance (utt2spk's keys are known unique)
        return dur
    _check_unique(keys, path)
    index = dict(zip(keys, range(len(keys))))
    pos = np.fromiter((index.get(u, -1) for u in utts), dtype=np.int64, count=len(utts))
    if (pos < 0).any():
        first = int(np.argmax(pos < 0))
        raise DataError(f"utterance {utts[first].decode()!r} has no entry in {path}", utt2spk_path, first + 1)
    return dur[pos]


def profile_datadir(data_dir: PathLike | DataDir, many: int = MANY, few: int = FEW) -> Profile:
    """Long-tail profile of a data dir (a path, read with a vectorised fast path, or a loaded DataDir)."""
    if isinstance(data_dir, DataDir):
        data = data_dir
        counts = Counter(data.utt2spk.values())
        spk = sorted(counts)
        sec = None
        if data.utt2dur:
            acc = dict.fromkeys(spk, 0.0)
            for u, s in data.utt2spk.items():
                if u not in data.utt2dur:
                    raise DataError(f"utterance {u!r} has no utt2dur entry", (data.path or Path()) / "utt2dur")
                acc[s] += data.utt2dur[u]
            sec = np.array([acc[s] for s in spk])
        return Profile(np.array(spk), np.array([counts[s] for s in spk]), sec, many, few,
                       str(data.path or ""))
    path = Path(data_dir)
    if not path.is_dir():
        raise DataError("not a data dir (no such directory)", path)
    utts, spks = _read_pairs(path / "utt2spk", "<utt> <spk>")
    spk_counts = Counter(spks)  # bytes keys: decoded once per speaker below
    names = sorted(spk_counts)
    seconds = None
    if (path / "utt2dur").exists():
        dur = _read_durations(path / "utt2dur", utts, path / "utt2spk")
        idx = dict(zip(names, range(len(names))))
        inv = np.fromiter(map(idx.__getitem__, spks), dtype=np.int64, count=len(spks))
        seconds = np.bincount(inv, weights=dur, minlength=len(names))
    return Profile(np.array([s.decode() for s in names]), np.array([spk_counts[s] for s in names], dtype=np.int64),
                   seconds, many, few, str(path))


# ---------------------------------------------------------------- profile files


def write_profile(profile: Profile, out_dir: PathLike) -> None:
    """Write `speakers.tsv` (header, one speaker a line, by utterances desc) and `summary.json`, atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / "speakers.tsv") as f:
        if profile.seconds is None:
            f.write("speaker\tutterances\tgroup\n")
            f.writelines(f"{s}\t{n}\t{g}\n" for s, n, g in zip(profile.speakers, profile.utterances, profile.groups))
        else:
            f.write("speaker\tutterances\tseconds\tgroup\n")
            f.writelines(f"{s}\t{n}\t{d:.3f}\t{g}\n" for s, n, d, g in
                         zip(profile.speakers, profile.utterances, profile.seconds, profile.groups))
    with atomic_write(out_dir / "summary.json") as f:
        json.dump(profile.summary, f, indent=1)
        f.write("\n")


def load_profile(profile_dir: PathLike) -> Profile:
    """Read a profile written by write_profile back (statistics are recomputed from speakers.tsv)."""
    profile_dir = Path(profile_dir)
    tsv = profile_dir / "speakers.tsv"
    try:
        summary = json.loads((profile_dir / "summary.json").read_text(encoding="utf-8"))
        lines = tsv.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as e:
        raise DataError("file not found", e.filename) from None
    header = lines[0].split("\t") if lines else []
    if header not in (["speaker", "utterances", "group"], ["speaker", "utterances", "seconds", "group"]):
        raise DataError("header must be 'speaker<TAB>utterances[<TAB>seconds]<TAB>group'", tsv, 1)
    rows = [line.split("\t") for line in lines[1:]]
    for n, row in enumerate(rows, 2):
        if len(row) != len(header):
            raise DataError(f"{len(row)} fields; expected {len(header)}", tsv, n)
    try:
        cnt = np.array([r[1] for r in rows], dtype=np.int64)
        sec = np.array([r[2] for r in rows], dtype=np.float64) if len(header) == 4 else None
    except ValueError as e:
        raise DataError(f"bad number ({e})", tsv) from None
    return Profile(np.array([r[0] for r in rows]), cnt, sec, int(summary.get("many", MANY)),
                   int(summary.get("few", FEW)), str(summary.get("source", profile_dir)))


def _fmt(v: float) -> str:
    if float(v).is_integer() or abs(v) >= 1000:
        return f"{v:.0f}"
    return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3f}"


def format_profile(profile: Profile) -> str:
    """A readable table of the summary."""
    s = profile.summary
    hours = "" if s["hours"] is None else f"  hours {s['hours']:.2f}"
    out = [f"long-tail profile of {s['source'] or '(in memory)'} (many > {s['many']}, few < {s['few']})",
           f"speakers {s['speakers']}  utterances {s['utterances']}{hours}", ""]
    cols = ("min", "median", "mean", "max", "imbalance", "gini", "top20_share")
    out.append(f"{'per speaker':<12}" + "".join(f"{c:>12}" for c in cols))
    for name, key in (("utterances", "utterances_per_speaker"), ("seconds", "seconds_per_speaker")):
        if s[key] is not None:
            out.append(f"{name:<12}" + "".join(f"{_fmt(s[key][c]):>12}" for c in cols))
    out.append("")
    out.append(f"{'group':<12}{'speakers':>12}{'%':>8}{'utterances':>14}{'%':>8}" +
               ("" if s["hours"] is None else f"{'hours':>12}"))
    for g in GROUPS:
        d = s["groups"][g]
        line = (f"{g:<12}{d['speakers']:>12}{100 * d['speakers'] / max(1, s['speakers']):>8.1f}"
                f"{d['utterances']:>14}{100 * d['utterances'] / max(1, s['utterances']):>8.1f}")
        if d["hours"] is not None:
            line += f"{d['hours']:>12.2f}"
        out.append(line)
    return "\n".join(out)


# ---------------------------------------------------------------- plots


def _as_profile(item: Profile | PathLike) -> Profile:
    if isinstance(item, Profile):
        return item
    p = Path(item)
    if (p / "speakers.tsv").exists() and (p / "summary.json").exists():
        return load_profile(p)
    if (p / "utt2spk").exists():
        return profile_datadir(p)
    raise DataError("neither a profile dir (summary.json + speakers.tsv) nor a data dir (utt2spk)", p)


def _default_label(profile: Profile, item: object) -> str:
    src = Path(profile.source or str(item))
    return src.parent.name if src.name == "profile" and src.parent.name else src.name or str(src)


def plot_longtail(profiles_or_dirs: Sequence[Profile | PathLike], out_path: PathLike,
                  labels: Sequence[str] | None = None):
    """Rank plot (log y, shot groups shaded) and log-binned histogram of utterances per speaker; png or pdf."""
    from matplotlib.figure import Figure  # headless: no pyplot, no global backend state

    items = list(profiles_or_dirs)
    if not items:
        raise UsageError("nothing to plot")
    profiles = [_as_profile(x) for x in items]
    if labels is None:
        labels = [_default_label(p, x) for p, x in zip(profiles, items)]
    if len(labels) != len(profiles):
        raise UsageError(f"{len(labels)} labels for {len(profiles)} corpora")
    many, few = profiles[0].many, profiles[0].few
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax_rank, ax_hist = fig.subplots(1, 2)
    top = max(int(p.utterances.max()) for p in profiles)
    bottom = min(int(p.utterances.min()) for p in profiles)
    lo, hi = max(0.5, bottom / 1.5), top * 1.5
    shade = (("many", many + 0.5, hi, "0.55"), ("medium", few - 0.5, many + 0.5, "0.75"),
             ("few", lo, few - 0.5, "0.35"))
    for name, y0, y1, color in shade:
        if y1 > y0:
            ax_rank.axhspan(max(y0, lo), min(y1, hi), color=color, alpha=0.15, lw=0)
            ax_rank.text(0.99, np.sqrt(max(y0, lo) * min(y1, hi)), name, transform=ax_rank.get_yaxis_transform(),
                         ha="right", va="center", fontsize=8, color="0.25")
    # log-spaced edges snapped to half-integers: counts are integers, so no bin may be empty by construction
    bins = np.unique(np.round(np.logspace(np.log10(max(1, bottom)), np.log10(top + 1), 41))) - 0.5
    for p, label in zip(profiles, labels):
        imb = p.summary["utterances_per_speaker"]["imbalance"]
        ax_rank.plot(np.arange(1, len(p.utterances) + 1), p.utterances, lw=1.5,
                     label=f"{label} ({len(p.utterances)} spk, imbalance {imb:.0f})")
        ax_hist.hist(p.utterances, bins=bins, histtype="step", lw=1.5, label=label)
    ax_rank.set(yscale="log", ylim=(lo, hi), xlabel="speaker rank (by utterance count)",
                ylabel="utterances per speaker", title="speakers ranked by utterances")
    ax_hist.set(xscale="log", xlabel="utterances per speaker (log-spaced bins)", ylabel="number of speakers",
                title="histogram of utterances per speaker")
    for x in (few - 0.5, many + 0.5):
        ax_hist.axvline(x, color="grey", ls="--", lw=0.8)
    # Plain numbers on log axes: matplotlib's default minor labels ("2x10^0") overlap on short decades.
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    for axis in (ax_rank.yaxis, ax_hist.xaxis):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(StrMethodFormatter("{x:g}"))
        axis.set_minor_formatter(NullFormatter())
    ax_rank.legend(fontsize=8)
    ax_hist.legend(fontsize=8)
    fig.suptitle(f"Long-tail profile (shot groups: many > {many}, medium {few}-{many}, few < {few})")
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=120)
    return fig
