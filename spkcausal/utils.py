"""Small shared helpers: atomic file output, logging next to outputs, errors that name file and line."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import IO, Any

PathLike = str | os.PathLike


def bounded_map(pool: Executor, fn: Callable[[Any], Any], items: Iterable[Any], chunk: int = 4096) -> Iterator[Any]:
    """`pool.map(fn, items)` in order, at most `chunk` items in flight: Executor.map submits every item at
    once, a Future each, which for the million files of VoxCeleb2 held gigabytes (docs/scale.md)."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == chunk:
            yield from pool.map(fn, batch)
            batch = []
    if batch:
        yield from pool.map(fn, batch)


class SpkcausalError(Exception):
    """A user's mistake (bad input or bad options): `spkcausal` prints its message and exits 2, no traceback."""


class DataError(SpkcausalError, ValueError):
    """Bad input: carries the file and 1-based line number it came from."""

    def __init__(self, message: str, path: PathLike | None = None, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.message = message
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        super().__init__(where + message)


class UsageError(SpkcausalError, ValueError):
    """Bad options or config values (no file to point at, or the config file named in the message)."""


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real suffix so writers that infer a format from it (soundfile, matplotlib, np.save) work.
    sfx = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + sfx, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file for writing; it replaces `path` only when the block exits without error."""
    with atomic_path(path) as tmp:
        kwargs = {} if "b" in mode else {"encoding": encoding}
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write a whole text file atomically."""
    with atomic_write(path) as f:
        f.write(text)


def setup_logging(
    log_file: PathLike | None = None, level: int = logging.INFO, name: str = "spkcausal"
) -> logging.Logger:
    """Configure the package logger to stderr and, if given, to a file next to the outputs."""
    logger = logging.getLogger(name)
    logger.setLevel(level)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    if not any(getattr(h, "_spkcausal_stderr", False) for h in logger.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(fmt)
        h._spkcausal_stderr = True  # type: ignore[attr-defined]
        logger.addHandler(h)
    if log_file is not None:
        log_file = str(Path(log_file).resolve())
        if not any(getattr(h, "baseFilename", None) == log_file for h in logger.handlers):
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(log_file, encoding="utf-8")
            fh.setFormatter(fmt)
            logger.addHandler(fh)
    return logger


@contextlib.contextmanager
def log_to_file(path: PathLike) -> Iterator[logging.Logger]:
    """Log to `path` for the duration of one stage, then detach so handlers do not pile up across calls."""
    logger = setup_logging(path)
    target = str(Path(path).resolve())
    try:
        yield logger
    finally:
        for h in list(logger.handlers):
            if getattr(h, "baseFilename", None) == target:
                logger.removeHandler(h)
                h.close()


def get_logger(name: str) -> logging.Logger:
    """Return a child of the package logger."""
    return logging.getLogger("spkcausal." + name.split(".")[-1])
