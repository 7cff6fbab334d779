"""Embedding store: `embeddings.npy` (float32, N x D, memory-mapped) + `keys.txt` (one key a line, row order)
+ `store.json` (N, D, dtype; written last, so a store without it, or disagreeing with it, is never accepted).

Kaldi / wespeaker ark and scp files convert both ways through kaldiio.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import DataError, PathLike, atomic_dir, atomic_path, get_logger, write_text_atomic

__all__ = ["class_labels", "EmbeddingStore", "write_store", "import_kaldi", "export_kaldi",
           "speaker_means", "unit_rows"]

EMB_FILE, KEYS_FILE, META_FILE = "embeddings.npy", "keys.txt", "store.json"
FORMAT_VERSION = 1
log = get_logger(__name__)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Every row of x scaled to unit L2 length, in float64 (a zero row stays zero)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _check_rows(keys: list[str], emb: np.ndarray) -> None:
    if emb.ndim != 2 or emb.shape[0] != len(keys):
        raise ValueError(f"embeddings of shape {emb.shape} for {len(keys)} keys; expected ({len(keys)}, D)")
    if not np.isfinite(emb).all():
        bad = int(np.flatnonzero(~np.isfinite(emb).all(axis=1))[0])
        raise DataError(f"embedding of {keys[bad]!r} is not finite")
    seen: set[str] = set()
    for k in keys:
        if not k or any(c.isspace() for c in k):
            raise DataError(f"key {k!r} is empty or contains whitespace")
        if k in seen:
            raise DataError(f"duplicate key {k!r}")
        seen.add(k)


def write_store(out_dir: PathLike, keys: Sequence[str], emb: np.ndarray, meta: Mapping[str, Any] | None = None,
                mean: np.ndarray | None = None, ark: bool = False) -> Path:
    """Write a store whole or not at all: every file is built in a temporary sibling directory that replaces
    `out_dir` in one step, so a failure at any byte (full disk, kill) leaves the previous store as it was.

    `meta` becomes extract.json and `mean` mean_feature.npy beside it; `ark` adds xvector.ark / xvector.scp."""
    out = Path(out_dir)
    keys = [str(k) for k in keys]
    emb = np.asarray(emb)
    _check_rows(keys, emb)
    with atomic_dir(out) as tmp:
        if mean is not None:
            np.save(tmp / "mean_feature.npy", np.asarray(mean).astype(np.float32))
        if meta is not None:
            (tmp / "extract.json").write_text(json.dumps(dict(meta), indent=1) + "\n", encoding="utf-8")
        np.save(tmp / EMB_FILE, emb.astype(np.float32, copy=False))
        (tmp / KEYS_FILE).write_text("".join(k + "\n" for k in keys), encoding="utf-8")
        info = {"format": "spkcausal-embeddings", "version": FORMAT_VERSION, "n": len(keys),
                "dim": int(emb.shape[1]), "dtype": "float32", "bytes": os.path.getsize(tmp / EMB_FILE)}
        (tmp / META_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        if ark:
            export_kaldi(EmbeddingStore.open(tmp), tmp / "xvector.ark", tmp / "xvector.scp",
                         ark_name=out / "xvector.ark")
    return out


def _read_keys(path: Path) -> list[str]:
    """keys.txt: one key a line (a CRLF line end is fine), none empty or with whitespace (repeats: _index_keys).
    The text is checked with substring searches, so a million keys cost no Python loop unless one is bad."""
    try:
        text = path.read_bytes().decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", path) from None
    if not text:
        return []
    keys = (text[:-1] if text.endswith("\n") else text).split("\n")
    suspicious = "" in keys or any(c in text for c in " \t\r\x0b\x0c\x00\x1c\x1d\x1e\x1f") or \
        (not text.isascii() and re.search(r"[^\S\n]", text) is not None)
    if suspicious:
        for i, k in enumerate(keys):
            if not k or "\x00" in k or any(c.isspace() for c in k):
                raise DataError(f"key {k!r} is empty or holds whitespace", path, i + 1)
    return keys


def _index_keys(keys: list[str], path: Path) -> dict[str, int]:
    """Key -> row, built once at open: the duplicate check and the lookup table in one pass."""
    index = {k: i for i, k in enumerate(keys)}
    if len(index) != len(keys):
        seen: set[str] = set()
        for i, k in enumerate(keys):
            if k in seen:
                raise DataError(f"duplicate key {k!r}", path, i + 1)
            seen.add(k)
    return index


def _check_finite(matrix: np.ndarray, keys: list[str], path: Path, block: int = 1 << 16) -> None:
    """DataError naming the first row (and key) holding NaN or inf: scores made from it would be NaN."""
    for lo in range(0, len(matrix), block):
        ok = np.isfinite(matrix[lo:lo + block]).all(axis=1)
        if not ok.all():
            row = lo + int(np.argmin(ok))
            raise DataError(f"row {row} (key {keys[row]!r}) holds NaN or inf; expected finite numbers", path)


class EmbeddingStore:
    """A read-only store: `.keys` (list, row order), `.matrix` (memory-mapped float32 N x D)."""

    def __init__(self, path: Path, keys: list[str], matrix: np.ndarray):
        self.path = path
        self.keys = keys
        self.matrix = matrix
        self._index: dict[str, int] | None = None

    @classmethod
    def open(cls, path: PathLike) -> EmbeddingStore:
        """Open a complete store; raise DataError if it is partial or inconsistent."""
        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.is_file():
            what = "incomplete embedding store (no store.json: writing did not finish)" if path.is_dir() else \
                "no such embedding store"
            raise DataError(what, path)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            n, dim = int(meta["n"]), int(meta["dim"])
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"unreadable store metadata ({e})", meta_path) from None
        emb_path = path / EMB_FILE
        if not emb_path.is_file() or os.path.getsize(emb_path) != meta.get("bytes"):
            raise DataError(f"{EMB_FILE} missing or not the size store.json records", emb_path)
        try:
            matrix = np.load(emb_path, mmap_mode="r", allow_pickle=False)
        except Exception as e:  # a damaged .npy header fails in numpy's parser in many ways
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise DataError(f"not a readable .npy array ({first})", emb_path) from None
        if matrix.shape != (n, dim) or matrix.dtype != np.float32:
            raise DataError(f"{EMB_FILE} is {matrix.dtype} {matrix.shape}; store.json says float32 ({n}, {dim})",
                            emb_path)
        if not (path / KEYS_FILE).is_file():
            raise DataError(f"{KEYS_FILE} missing", path / KEYS_FILE)
        keys = _read_keys(path / KEYS_FILE)
        if len(keys) != n:
            raise DataError(f"{len(keys)} keys; store.json says {n}", path / KEYS_FILE)
        _check_finite(matrix, keys, emb_path)
        store = cls(path, keys, matrix)
        store._index = _index_keys(keys, path / KEYS_FILE)
        return store

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.matrix.shape[1])

    @property
    def key_index(self) -> dict[str, int]:
        """Key -> row (built once, on first use)."""
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.keys)}
        return self._index

    def index(self, key: str) -> int:
        """Row of one key; DataError if absent."""
        try:
            return self.key_index[key]
        except KeyError:
            raise DataError(f"key {key!r} has no embedding", self.path) from None

    def lookup(self, keys: Sequence[str], allow_missing: bool = False) -> np.ndarray:
        """Rows (int64) of many keys; missing keys raise DataError naming how many and the first few,
        or give -1 when allow_missing."""
        idx = self.key_index
        rows = np.fromiter((idx.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
        missing = np.flatnonzero(rows < 0)
        if len(missing) and not allow_missing:
            first = list(dict.fromkeys(str(keys[i]) for i in missing[:50].tolist()))[:5]
            n_keys = len({str(keys[i]) for i in missing.tolist()})
            raise DataError(f"{n_keys} keys have no embedding in the store (first: {', '.join(first)})", self.path)
        return rows

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Float32 copy of the embeddings of `keys`, in order."""
        return np.asarray(self.matrix[self.lookup(keys)])


def speaker_means(store: EmbeddingStore, data_dir: PathLike, block: int = 65536) -> tuple[list[str], np.ndarray]:
    """Per-speaker mean embeddings (float64 sums) over the store's utterances of a data dir, e.g. an AS-norm
    cohort; speakers sorted. Utterances of utt2spk without an embedding are skipped (and counted in the log)."""
    from .datadir import read_kv

    utt2spk = read_kv(Path(data_dir) / "utt2spk")
    utts = [u for u in utt2spk if u in store.key_index]
    if len(utts) < len(utt2spk):
        log.warning("%d of %d utterances of %s have no embedding; speaker means use the rest",
                    len(utt2spk) - len(utts), len(utt2spk), data_dir)
    if not utts:
        raise DataError("no utterance of utt2spk has an embedding in the store", Path(data_dir) / "utt2spk")
    spks, spk_idx = np.unique(np.array([utt2spk[u] for u in utts]), return_inverse=True)
    rows = store.lookup(utts)
    sums = np.zeros((len(spks), store.dim), dtype=np.float64)
    order = np.argsort(rows)  # read the memory map in row order
    # In blocks: a float64 copy of the whole store (1.6 GB for VoxCeleb2) was the peak. The additions happen
    # in the same order as one np.add.at over everything, so the sums are bit for bit the same.
    for lo in range(0, len(order), block):
        part = order[lo:lo + block]
        np.add.at(sums, spk_idx[part], np.asarray(store.matrix[rows[part]], dtype=np.float64))
    sums /= np.bincount(spk_idx, minlength=len(spks))[:, None]
    return [str(s) for s in spks], sums


def import_kaldi(scp_or_ark: PathLike, out_dir: PathLike) -> Path:
    """Convert a Kaldi vector ark or scp (x-vectors, wespeaker embeddings) into a store, keys in file order."""
    import kaldiio

    src = Path(scp_or_ark)
    if not src.is_file():
        raise DataError("file not found", src)
    try:
        items = kaldiio.load_scp(str(src)) if src.suffix == ".scp" else kaldiio.load_ark(str(src))
        keys: list[str] = []
        vecs: list[np.ndarray] = []
        for key, vec in items.items() if src.suffix == ".scp" else items:
            vec = np.asarray(vec)
            if vec.ndim == 2 and vec.shape[0] == 1:  # some tools store a vector as a 1 x D matrix
                vec = vec[0]
            if vec.ndim != 1:
                raise DataError(f"entry {key!r} is a matrix of shape {np.shape(vec)}; expected a vector", src)
            if vecs and len(vec) != len(vecs[0]):
                raise DataError(f"entry {key!r} has dim {len(vec)}; earlier entries have {len(vecs[0])}", src)
            keys.append(key)
            vecs.append(np.asarray(vec, dtype=np.float32))
    except DataError:
        raise
    except Exception as e:  # kaldiio raises assorted errors on corrupt input, some of several lines
        raise DataError(f"cannot read as Kaldi ark/scp: {' '.join(str(e).split())}", src) from None
    if not keys:
        raise DataError("no entries", src)
    try:
        return write_store(out_dir, keys, np.stack(vecs))
    except ValueError as e:
        raise DataError(str(e), src) from None


def export_kaldi(store: EmbeddingStore, ark_path: PathLike, scp_path: PathLike,
                 ark_name: PathLike | None = None) -> None:
    """Write the store as a binary float vector ark plus scp (both replaced atomically); the scp names
    `ark_name` (default `ark_path`: where the ark will be read from)."""
    from kaldiio.matio import write_array

    ark_path, scp_path = Path(ark_path), Path(scp_path)
    ark_name = ark_path if ark_name is None else Path(ark_name)
    # The scp must name the final ark path, so offsets are recorded here rather than by kaldiio's scp writer.
    with atomic_path(ark_path) as tmp_ark:
        with open(tmp_ark, "wb") as f:
            offsets = []
            for key, vec in zip(store.keys, store.matrix):
                f.write(f"{key} ".encode())
                offsets.append(f.tell())
                write_array(f, np.asarray(vec, np.float32))
        text = "".join(f"{k} {ark_name}:{o}\n" for k, o in zip(store.keys, offsets))
        write_text_atomic(scp_path, text)


def class_labels(store: EmbeddingStore, data_dir: PathLike, speakers: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, class indices) of the utterances of `data_dir` whose speaker is a class of the checkpoint
    (`datadir.labelled_utts`: unknown speakers left out with a warning)."""
    from .datadir import labelled_utts

    utts, y = labelled_utts(data_dir, speakers)
    return store.get(utts), y
