"""The training pre-scan's header probes cached in the data dir, so a start or resume on an unchanged corpus reads
no audio header.

`<data dir>/.spkcausal_probe.npz` holds, per wav.scp path, the file's size and modification time (ns) when it was
probed and what the probe found (frames, sample rate, the reason it is unusable). A later scan stats every file
(no read: 1.09M stats take seconds where the header reads took minutes) and probes only the files that are new
or whose size or mtime changed; the cache is then rewritten atomically. The probe's outcome depends on the
expected sample rate, so a cache made for another rate is rebuilt whole. A cache that cannot be read is rebuilt;
one that cannot be written (read-only corpus) costs a warning and the full probe next time.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from ..utils import atomic_path, bounded_map
from .audio import AudioProbe

CACHE_NAME = ".spkcausal_probe.npz"
_VERSION = 1
_STAT_BLOCK = 8192  # files per stat task: a Future per file would cost more than the stat

log = logging.getLogger("spkcausal.data.lengthcache")


def stat_files(paths: Sequence[str], pool: Executor) -> tuple[np.ndarray, np.ndarray]:
    """(size, mtime_ns) of every path, -1 for a path that cannot be stat'ed; blocks of paths run in the pool's
    threads (on network storage a stat waits on the server, so several in flight help)."""
    size = np.full(len(paths), -1, dtype=np.int64)
    mtime = np.full(len(paths), -1, dtype=np.int64)

    def block(lo: int) -> None:
        for i in range(lo, min(lo + _STAT_BLOCK, len(paths))):
            try:
                st = os.stat(paths[i])
            except (OSError, ValueError):  # missing, unreadable dir, NUL in the name: the probe will say which
                continue
            size[i], mtime[i] = st.st_size, st.st_mtime_ns

    list(pool.map(block, range(0, len(paths), _STAT_BLOCK)))
    return size, mtime


def _read(path: Path, sample_rate: int) -> dict[str, np.ndarray] | None:
    """The cache's arrays, or None when there is none, it is unreadable or made for another rate or version."""
    try:
        with np.load(path, allow_pickle=False) as z:
            head = json.loads(bytes(z["head"]).decode())
            if head != {"version": _VERSION, "sample_rate": sample_rate}:
                return None
            out = {k: z[k] for k in ("size", "mtime", "frames", "rate")}
            out["paths"] = bytes(z["paths"]).decode().split("\n") if len(z["paths"]) else []
            out["why"] = json.loads(bytes(z["why"]).decode())
    except FileNotFoundError:
        return None
    except Exception as e:  # a torn or foreign file: rebuild it
        log.warning("ignoring the probe cache %s (%s); probing every file", path, e)
        return None
    n = len(out["paths"])
    if any(len(out[k]) != n for k in ("size", "mtime", "frames", "rate")):
        return None
    return out


def _write(path: Path, sample_rate: int, paths: Sequence[str], size: np.ndarray, mtime: np.ndarray,
           probes: Sequence[AudioProbe]) -> None:
    def blob(text: str) -> np.ndarray:
        return np.frombuffer(text.encode(), dtype=np.uint8)

    why = {str(i): p.problem for i, p in enumerate(probes) if p.problem}
    arrays = {"head": blob(json.dumps({"version": _VERSION, "sample_rate": sample_rate})),
              "paths": blob("\n".join(paths)), "size": size, "mtime": mtime,
              "frames": np.array([p.frames for p in probes], dtype=np.int64),
              "rate": np.array([p.sample_rate for p in probes], dtype=np.int64), "why": blob(json.dumps(why))}
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    except OSError as e:
        log.warning("cannot write the probe cache %s (%s): the next start probes every file again", path, e)


def cached_probes(paths: Sequence[str], sample_rate: int, cache: Path | None, pool: Executor,
                  probe: Callable[[str, int], AudioProbe]) -> tuple[list[AudioProbe], int]:
    """`probe(path, sample_rate)` of every path, from `cache` where a file's size and mtime are those it was
    probed at; returns the probes in order and how many files were probed now. `cache` None: probe all."""
    size, mtime = stat_files(paths, pool) if cache is not None else (None, None)
    old = _read(cache, sample_rate) if cache is not None else None
    out: list[AudioProbe | None] = [None] * len(paths)
    same = old is not None and old["paths"] == list(paths)  # the usual case: same dir, same order
    if old is not None:
        if same:
            rows = np.arange(len(paths))
        else:
            where = {p: i for i, p in enumerate(old["paths"])}
            rows = np.array([where.get(p, -1) for p in paths], dtype=np.int64)
        known = rows >= 0
        fresh = np.zeros(len(paths), dtype=bool)
        fresh[known] = (old["size"][rows[known]] == size[known]) & (old["mtime"][rows[known]] == mtime[known])
        frames, rate, why = old["frames"].tolist(), old["rate"].tolist(), old["why"]
        for i, r in zip(np.flatnonzero(fresh).tolist(), rows[fresh].tolist()):
            out[i] = AudioProbe(frames[r], rate[r], why.get(str(r)))
    from tqdm import tqdm

    todo = [i for i, p in enumerate(out) if p is None]
    for i, p in tqdm(zip(todo, bounded_map(pool, lambda i: probe(paths[i], sample_rate), todo)), total=len(todo),
                     desc="scanning training audio", mininterval=2, leave=False, disable=not todo):
        out[i] = p
    if cache is not None and (todo or not same):
        _write(cache, sample_rate, paths, size, mtime, out)  # type: ignore[arg-type]
    return out, len(todo)  # type: ignore[return-value]
