"""Byte-level reading of whitespace tables without one Python object per line: token spans, blocks, hashes.

The readers of trial, score and data-dir tables share these. A table is bytes; a token is a run of bytes
that are neither a newline nor one of space, tab, CR, VT, FF; its span is (start, end) byte offsets. Error
messages name the file and the 1-based line, like the line-by-line readers do.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..utils import DataError, PathLike

__all__ = [
    "BLOCK_BYTES", "read_bytes", "read_array", "check_utf8", "line_token_counts", "block_spans", "token_spans",
    "read_columns", "split_tokens", "line_blocks", "gather_words", "gather_text", "span_hash", "pair_hash",
]

_WS = np.zeros(256, dtype=bool)  # token separators other than the newline
_WS[[ord(" "), ord("\t"), ord("\r"), ord("\v"), ord("\f")]] = True

BLOCK_BYTES = 1 << 23


BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark (Windows editors write one): not part of the first token


def read_bytes(path: PathLike) -> bytes:
    """The whole file without a leading UTF-8 byte-order mark; DataError when it does not exist or is a
    directory."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except IsADirectoryError:
        raise DataError("is a directory; expected a text file", path) from None
    return data[len(BOM):] if data.startswith(BOM) else data


def read_array(path: PathLike) -> np.ndarray:
    """The whole file as a read-only uint8 array over its bytes (no copy)."""
    return np.frombuffer(read_bytes(path), dtype=np.uint8)


def check_utf8(a: np.ndarray, path: PathLike, offset: int = 0, line0: int = 0) -> None:
    """Raise DataError naming byte and line of the first invalid UTF-8 sequence (`a` starts at byte
    `offset`, after `line0` lines); pure ASCII is accepted without decoding. A NUL byte is refused too:
    numpy's strings would drop it from a key's end without a word."""
    nul = np.flatnonzero(a == 0)
    if len(nul):
        line = line0 + int(np.count_nonzero(a[:nul[0]] == 10)) + 1
        raise DataError(f"NUL byte at byte {offset + int(nul[0])}: not a text file", path, line)
    if len(a) and a.max() >= 0x80:
        try:
            a.tobytes().decode("utf-8")
        except UnicodeDecodeError as e:
            line = line0 + int(np.count_nonzero(a[:e.start] == 10)) + 1
            raise DataError(f"not UTF-8 text ({e.reason} at byte {offset + e.start})", path, line) from None


def _spans(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token starts, token ends and line ends (newline positions, plus len(a) for an unterminated last line).

    Works on separator positions only (O(tokens) int64 memory), never on one Python string per token."""
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
    return starts, ends, line_end


def line_token_counts(a: np.ndarray) -> np.ndarray:
    """Number of tokens on every line of `a`, blank lines included (0)."""
    starts, _, line_end = _spans(a)
    return np.diff(np.searchsorted(starts, line_end), prepend=0)


def block_spans(a: np.ndarray, ncols_allowed: tuple[int, ...], ncols: int | None, path: PathLike, line0: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int | None]:
    """Token spans of a block of whole lines: starts, ends (n, ncols), 1-based line numbers, ncols.

    Blank lines are skipped. `ncols` None: taken from the first non-blank line (checked against
    ncols_allowed); every other line must have as many. `line0` = lines before this block."""
    starts, ends, line_end = _spans(a)
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


def token_spans(path: PathLike, ncols_allowed: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                         np.ndarray]:
    """Byte spans of a whole whitespace table: (bytes, starts (n, ncols), ends (n, ncols), line numbers)."""
    a = read_array(path)
    check_utf8(a, path)
    starts, ends, line_no, ncols = block_spans(a, ncols_allowed, None, path, 0)
    if ncols is None:
        raise DataError("file is empty", path)
    return a, starts, ends, line_no


def read_columns(path: PathLike, ncols_allowed: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, tuple]:
    """A whitespace table as a (lines, ncols) object array of str tokens plus 1-based line numbers, and the
    byte spans (bytes, starts, ends) that duplicate checks hash."""
    a, starts, ends, line_no = token_spans(path, ncols_allowed)
    return split_tokens(a, starts), line_no, (a, starts, ends)


def split_tokens(a: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The tokens of `a` (valid UTF-8) as a (lines, ncols) object array of str; `starts` gives the shape."""
    raw = a.tobytes()
    # str.split also splits at \x1c-\x1f and Unicode spaces (U+00A0, ...), which the byte spans keep inside a
    # token: only pure ASCII without those takes the fast path, or a key would lose them without a word.
    if len(a) and (a.max() >= 0x80 or ((a >= 0x1c) & (a <= 0x1f)).any()):
        tokens = [t.decode("utf-8") for t in raw.split()]
    else:
        tokens = raw.decode("ascii").split()
    return np.array(tokens, dtype=object).reshape(starts.shape)


def line_blocks(path: PathLike, block: int | None = None) -> Iterator[tuple[np.ndarray, int, int]]:
    """Yield (bytes of whole lines, lines before them, their byte offset), block by block.

    Small blocks keep every temporary array in reused memory: on large files, fresh page-faulted
    allocations, not arithmetic, dominate the cost."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except IsADirectoryError:
        raise DataError("is a directory; expected a text file", path) from None
    block = block or BLOCK_BYTES
    with f:
        rest = b""
        line0 = offset = 0
        if f.read(len(BOM)) == BOM:
            offset = len(BOM)
        else:
            f.seek(0)
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


def gather_words(a: np.ndarray, starts: np.ndarray, ends: np.ndarray, n_words: int) -> np.ndarray:
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


def gather_text(a: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The spans as a fixed-width bytes array (S<8k>, NUL padded)."""
    n_words = max(1, -(-int((ends - starts).max()) // 8))
    return gather_words(a, starts, ends, n_words).view(f"S{8 * n_words}").ravel()


def span_hash(a: np.ndarray, starts: np.ndarray, ends: np.ndarray, seed: int) -> np.ndarray:
    """64-bit hash of each byte span (random linear hash over 8-byte words; callers re-check collisions)."""
    words = gather_words(a, starts, ends, max(1, -(-int((ends - starts).max()) // 8)))
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


def pair_hash(a: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Hash of each row's (first, second) token pair, e.g. the (enroll, test) key of a trial."""
    return span_hash(a, starts[:, 0], ends[:, 0], 1) ^ (span_hash(a, starts[:, 1], ends[:, 1], 2)
                                                        * np.uint64(0xC2B2AE3D27D4EB4F))
