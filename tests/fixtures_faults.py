"""Injected faults for robustness tests: a disk that fills up after a byte budget (ENOSPC on write), in-process.

Mounting a small tmpfs needs root; this works anywhere. Every file opened for writing under `root` through
Python's `open` / `io.open` / tarfile's open shares one budget; the write that crosses it writes what still fits
(as a real full disk does) and raises OSError(ENOSPC) with no file name, as the kernel's write() does.
"""
from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path


class _Budget:
    def __init__(self, left: int):
        self.left = left
        self.hit = 0  # writes refused


class _FullFile:
    """A write-mode file whose writes draw on a shared budget."""

    def __init__(self, f, budget: _Budget):
        self._f, self._budget = f, budget

    def write(self, data):
        n = len(data)
        if n > self._budget.left:
            if self._budget.left > 0:
                self._f.write(data[:self._budget.left])
            self._budget.left = 0
            self._budget.hit += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget.left -= n
        return self._f.write(data)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
        return False

    def __iter__(self):
        return iter(self._f)

    def __getattr__(self, name):
        return getattr(self._f, name)


@contextlib.contextmanager
def full_disk(root: Path, budget: int) -> Iterator[_Budget]:
    """Within the block, writes to files under `root` fail with ENOSPC once `budget` bytes are used."""
    root = str(Path(root).resolve())
    state = _Budget(budget)
    real_open, real_io_open, real_tar_open = builtins.open, io.open, tarfile.bltn_open

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if isinstance(file, int) or not any(c in mode for c in "wax+"):
            return f
        if not str(Path(os.fsdecode(file)).resolve()).startswith(root):
            return f
        return _FullFile(f, state)

    builtins.open = io.open = tarfile.bltn_open = fake_open
    try:
        yield state
    finally:
        builtins.open, io.open, tarfile.bltn_open = real_open, real_io_open, real_tar_open


def tree_bytes(path: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under `path` (a directory) or of `path` itself."""
    path = Path(path)
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
