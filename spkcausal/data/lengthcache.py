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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _read(path: Path, sample_rate: int) -> dict[str, Any] | None:
    """The cache's arrays, or None when there is none, it is unreadable or made for another rate or version."""
    try:
        with np.load(path, allow_pickle=False) as z:
            head = json.loads(bytes(z["head"]).decode())
            if head != {"version": _VERSION, "sample_rate": sample_rate}:
                return None
            out: dict[str, Any] = {k: z[k] for k in ("size", "mtime", "frames", "rate")}
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
           probes: Probes) -> None:
    def blob(text: str) -> np.ndarray:
        return np.frombuffer(text.encode(), dtype=np.uint8)

    arrays = {"head": blob(json.dumps({"version": _VERSION, "sample_rate": sample_rate})),
              "paths": blob("\n".join(paths)), "size": size, "mtime": mtime, "frames": probes.frames,
              "rate": probes.rate, "why": blob(json.dumps({str(i): w for i, w in probes.why.items()}))}
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, allow_pickle=False, **arrays)
    except OSError as e:
        log.warning("cannot write the probe cache %s (%s): the next start probes every file again", path, e)


@dataclass
class Probes:
    """Probe outcomes of a list of files, by column: frames and sample rate (0 for an unusable file) and, by
    file index, why a file is unusable; `probed`: how many headers were read (the rest came from the cache)."""

    frames: np.ndarray
    rate: np.ndarray
    why: dict[int, str]
    probed: int = 0


def _reuse(old: dict[str, Any], same: bool, paths: Sequence[str], size: np.ndarray, mtime: np.ndarray,
           out: Probes) -> np.ndarray:
    """Copy into `out` the cached probes of files whose size and mtime are unchanged; their mask."""
    if same:
        rows = np.arange(len(paths))
    else:
        where = {p: i for i, p in enumerate(old["paths"])}
        rows = np.array([where.get(p, -1) for p in paths], dtype=np.int64)
    known = rows >= 0
    fresh = np.zeros(len(paths), dtype=bool)
    fresh[known] = (old["size"][rows[known]] == size[known]) & (old["mtime"][rows[known]] == mtime[known])
    out.frames[fresh], out.rate[fresh] = old["frames"][rows[fresh]], old["rate"][rows[fresh]]
    index_of = {} if same else dict(zip(rows[fresh].tolist(), np.flatnonzero(fresh).tolist()))
    for r, w in old["why"].items():
        i = int(r) if same else index_of.get(int(r))
        if i is not None and fresh[i]:
            out.why[i] = w
    return fresh


def cached_probes(paths: Sequence[str], sample_rate: int, cache: Path | None, pool: Executor,
                  probe: Callable[[str, int], AudioProbe]) -> Probes:
    """`probe(path, sample_rate)` of every path, from `cache` where a file's size and mtime are those it was
    probed at (`cache` None: probe all). Columns, not an object per file: a million cached entries cost
    array operations only."""
    from tqdm import tqdm

    n = len(paths)
    out = Probes(np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), {})
    fresh = np.zeros(n, dtype=bool)
    same = False
    if cache is not None:
        size, mtime = stat_files(paths, pool)
        old = _read(cache, sample_rate)
        same = old is not None and old["paths"] == list(paths)  # the usual case: same dir, same order
        if old is not None:
            fresh = _reuse(old, same, paths, size, mtime, out)
    todo = np.flatnonzero(~fresh).tolist()
    for i, p in tqdm(zip(todo, bounded_map(pool, lambda i: probe(paths[i], sample_rate), todo)), total=len(todo),
                     desc="scanning training audio", mininterval=2, leave=False, disable=not todo):
        out.frames[i], out.rate[i] = p.frames, p.sample_rate
        if p.problem:
            out.why[i] = p.problem
    out.probed = len(todo)
    if cache is not None and (todo or not same):
        _write(cache, sample_rate, paths, size, mtime, out)
    return out
