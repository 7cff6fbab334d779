"""Small shared helpers: atomic file output, logging next to outputs, errors that name file and line."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import sys
import tempfile
import time
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


class OutputError(SpkcausalError, OSError):
    """An output that cannot be written (full disk, no permission, a parent that is a file): names the path."""


# Errors of the place a user chose to write to, not of our code: one line and exit 2, never a traceback.
USER_OS_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR,
                  errno.ENAMETOOLONG, errno.EFBIG}
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def output_error(e: OSError, path: PathLike | None = None) -> OutputError:
    """The one-line form of an OSError met while writing `path` (a write reports ENOSPC with no file name)."""
    where = path if path is not None else e.filename
    if e.errno in DISK_FULL:
        return OutputError(f"no space left on device writing {where}")
    other = f" ({e.filename})" if e.filename is not None and str(e.filename) != str(where) else ""
    return OutputError(f"cannot write {where}: {e.strerror or e}{other}")


@contextlib.contextmanager
def writing(path: PathLike) -> Iterator[None]:
    """Turn an OSError of a user's output location (full disk, permissions, ...) raised in the block into an
    OutputError naming `path`; file writes report ENOSPC without a file name, so the name is added here."""
    try:
        yield
    except OutputError:
        raise
    except OSError as e:
        if e.errno not in USER_OS_ERRNOS:
            raise
        raise output_error(e, path) from None


def check_writable(path: PathLike) -> Path:
    """Fail before any work when `path` cannot be created: its nearest existing ancestor must be a directory
    that takes a new file (a parent that is a regular file, /proc, a read-only mount are refused in one line)."""
    path = Path(path)
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"cannot write {path}: {probe} is not a directory")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"cannot write {path}: permission denied")
    try:  # os.access says yes to root everywhere; only trying tells (/proc, read-only mounts)
        fd, tmp = tempfile.mkstemp(prefix=".spkcausal-probe.", dir=probe)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {probe} takes no new files ({e.strerror})") from None
    os.close(fd)
    os.unlink(tmp)
    return path


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    # Keep the real suffix so writers that infer a format from it (soundfile, matplotlib, np.save) work.
    sfx = path.suffix if suffix is None else suffix
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + sfx, dir=path.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with writing(path):
            yield tmp_path
            os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _move_into_place(tmp: Path, path: Path) -> None:
    """Put the finished directory `tmp` at `path`, replacing a previous one whole."""
    if not path.exists() and not path.is_symlink():
        os.rename(tmp, path)
        return
    if not path.is_dir():
        raise OutputError(f"cannot write {path}: it exists and is not a directory")
    if _exchange(tmp, path):  # tmp now holds the previous output
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = path.parent / f".{path.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    os.rename(path, old)  # no step can rename a directory onto a non-empty one: two renames
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    for item in src.iterdir():
        target = dst / item.name
        if item.is_dir() and not item.is_symlink():
            target.mkdir()
            _link_or_copy(item, target)
            continue
        try:
            os.link(item, target, follow_symlinks=False)
        except OSError:
            shutil.copy2(item, target, follow_symlinks=False)


@contextlib.contextmanager
def atomic_dir(path: PathLike, carry: bool = False, resume: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces the directory `path` whole when the block succeeds;
    on any failure `path` is left exactly as it was.

    carry: the temporary directory starts with hard links to `path`'s files (so writers inside must replace
    files, as atomic_path does, never write into them). resume: the sibling has a fixed name and is kept on
    failure, so a re-run continues from what a killed or failed one finished."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        old = path.parent / f".{path.name}.old"
        if old.is_dir() and not path.exists():  # killed between the two renames of _move_into_place
            os.rename(old, path)
        if path.exists() and not path.is_dir():
            raise OutputError(f"cannot write {path}: it exists and is not a directory")
        if resume:
            tmp = path.parent / f".{path.name}.partial"
            fresh = not tmp.is_dir()
            tmp.mkdir(exist_ok=True)
        else:
            tmp, fresh = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)), True
            umask = os.umask(0o022)
            os.umask(umask)
            tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide a shared store from the group
        if carry and fresh and path.is_dir():
            _link_or_copy(path, tmp)
    try:
        with writing(path):
            yield tmp
            _move_into_place(tmp, path)
    except OutputError as e:  # name the output the user chose, not our temporary sibling
        if not resume:
            shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(str(e).replace(str(tmp), str(path))) from None
    except BaseException:
        if not resume:
            shutil.rmtree(tmp, ignore_errors=True)
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



def other_runnable(samples: int = 5, gap: float = 0.005, loadavg: str = "/proc/loadavg") -> int:
    """How many runnable tasks besides this one the kernel reports, the least over `samples` reads `gap` s apart
    (0 where /proc/loadavg cannot be read)."""
    least = None
    for k in range(samples):
        try:
            with open(loadavg, encoding="ascii") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0
        least = running if least is None else min(least, running)
        if k + 1 < samples:
            time.sleep(gap)
    return max(0, (least or 1) - 1)


def passive_omp_wait(busy: int | None = None) -> str | None:
    """OMP_WAIT_POLICY=PASSIVE (OpenMP threads sleep, not spin, while they wait) when another process keeps a
    core busy at start; nothing on an idle machine or when the user chose a policy. Returns the policy in force."""
    # Spin-waiting collapses when another process holds a core: a demo training step took 1.69 s on 2 threads
    # against 0.11 s on 1; passive waiting brought 2 threads to 0.19 s. On an idle machine passive waiting costs
    # instead (47.8 against 29.0 ms), so it is chosen only where the machine is busy (docs/scale.md, "Threads on
    # a busy machine"). Read once, when the OpenMP runtime starts: this must run before torch is imported.
    if "OMP_WAIT_POLICY" not in os.environ and (other_runnable() if busy is None else busy) > 0:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return os.environ.get("OMP_WAIT_POLICY")
