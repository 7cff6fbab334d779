"""Tar shards of a training data dir, in webdataset's layout, for corpora that live on slow (network) storage.

`make_shards(data_dir, out_dir)` writes `shard-000000.tar`, ... : per utterance two members with one key,
`<key>.<ext>` (the audio file's bytes exactly as stored: flac, wav, ...; `ext` is the soundfile format) and
`<key>.json` (`utt`, `spk`, `num_samples`, `sample_rate`, `duration`). webdataset (and `tar tf`) group members by
the key, which is everything before the first dot of the member name, so the key is the utterance id with every
character outside `[A-Za-z0-9_-]` written as `%XX` (its UTF-8 bytes): no dots or slashes, and `utt_from_key`
recovers the id exactly.

The utterances (readable ones, in sorted order) are shuffled once with `seed` and cut into shards of
`utts_per_shard`. Members carry no timestamps or owners, so a shard's bytes are a function of its contents:
a rewritten shard has the same sha256. Beside the shards:
- `index.tsv`: one line per utterance in shard order (`shard key utt spk num_samples sample_rate ext`), so training
  knows labels, lengths and the member order of every shard without opening a tar;
- `manifest.json` (written last): seed, shards with counts, sizes and sha256, speakers, skipped files, the index's
  sha256. Its presence marks a finished set.
Resumable: the plan (`index.tsv` + `.plan.json`) is written before any shard; a re-run with the same data, seed and
shard size keeps every shard whose sha256 matches its recorded checksum (`.<shard>.sha256`, written after the
shard's atomic rename) and rewrites the others.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from ..utils import DataError, PathLike, UsageError, atomic_dir, atomic_path, bounded_map, write_text_atomic

log = logging.getLogger("spkcausal.data.shards")

MANIFEST = "manifest.json"
INDEX = "index.tsv"
_PLAN = ".plan.json"
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def shard_key(utt: str) -> str:
    """Tar/webdataset-safe key of an utterance id: characters outside [A-Za-z0-9_-] become %XX (reversible)."""
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in utt)


def utt_from_key(key: str) -> str:
    """The utterance id a `shard_key` came from."""
    from urllib.parse import unquote_to_bytes

    return unquote_to_bytes(key).decode("utf-8")


def shard_name(i: int) -> str:
    """File name of shard i."""
    return f"shard-{i:06d}.tar"


def sha256_file(path: PathLike, block: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _probe(path: str) -> tuple[int, int, str, str | None]:
    """(frames, rate, extension, problem) from the header; problem is None for a usable file."""
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported, not raised
        return 0, 0, "", f"unreadable audio ({e})" if Path(path).exists() else "missing file"
    if info.frames <= 0:
        return 0, 0, "", "empty audio (0 samples)"
    return int(info.frames), int(info.samplerate), str(info.format).lower(), None


@dataclass
class ShardIndex:
    """A finished shard set: shard paths and, per utterance in shard order, its shard, key, labels and length."""

    root: Path
    manifest: dict
    shard_paths: list[Path]
    shard: np.ndarray  # (N,) shard number of each utterance
    keys: list[str]
    utts: list[str]
    spks: list[str]
    num_samples: np.ndarray
    sample_rate: np.ndarray
    exts: list[str]

    def __len__(self) -> int:
        return len(self.utts)

    @property
    def num_shards(self) -> int:
        """Number of shard files."""
        return len(self.shard_paths)


def _index_lines(shard: Sequence[int], utts: Sequence[str], spk: Sequence[str], frames: Sequence[int],
                 rates: Sequence[int], exts: Sequence[str]) -> str:
    return "".join(f"{s}\t{shard_key(u)}\t{u}\t{k}\t{n}\t{r}\t{e}\n"
                   for s, u, k, n, r, e in zip(shard, utts, spk, frames, rates, exts))


def _read_index(path: Path) -> tuple[list[list[str]], str]:
    text = path.read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines()]
    for i, row in enumerate(rows):
        if len(row) != 7:
            raise DataError(f"expected 7 tab-separated fields, got {len(row)}", path, i + 1)
    return rows, hashlib.sha256(text.encode("utf-8")).hexdigest()


def _plan_shards(data: Any, data_dir: PathLike, out: Path, utts_per_shard: int, seed: int,
                 num_threads: int) -> tuple[list[list[str]], dict[str, str]]:
    """(index rows, skipped files): the plan found in `out` for these inputs, else a new one written there
    (stale shards removed, audio probed, utterances shuffled with `seed` and cut into shards)."""
    from concurrent.futures import ThreadPoolExecutor

    # The plan depends on exactly these inputs; a resumed run with other ones starts over.
    scp = "".join(f"{u} {data.wav[u]} {data.utt2spk[u]}\n" for u in data.utts)
    plan_id = {"data": hashlib.sha256(scp.encode("utf-8")).hexdigest(), "seed": int(seed),
               "utts_per_shard": int(utts_per_shard), "version": 1}
    plan_path, index_path = out / _PLAN, out / INDEX
    old_plan = json.loads(plan_path.read_text()) if plan_path.is_file() and index_path.is_file() else None
    if old_plan is not None and old_plan.get("id") == plan_id:
        rows, _ = _read_index(index_path)
        log.info("resuming shards in %s: plan found (%d utterances)", out, len(rows))
        return rows, old_plan["skipped"]
    for stale in list(out.glob("shard-*.tar")) + list(out.glob(".shard-*.sha256")) + [out / MANIFEST]:
        stale.unlink(missing_ok=True)
    utts = data.utts
    with ThreadPoolExecutor(max(1, num_threads)) as pool:
        probes = list(bounded_map(pool, lambda u: _probe(data.wav[u]), utts))
    skipped = {u: p[3] for u, p in zip(utts, probes) if p[3]}
    ok = [i for i, p in enumerate(probes) if not p[3]]
    if not ok:
        raise DataError("no readable audio in the data dir", data_dir)
    order = [ok[j] for j in np.random.default_rng(int(seed)).permutation(len(ok))]
    shard_of = [j // utts_per_shard for j in range(len(order))]
    text = _index_lines(shard_of, [utts[i] for i in order], [data.utt2spk[utts[i]] for i in order],
                        [probes[i][0] for i in order], [probes[i][1] for i in order],
                        [probes[i][2] for i in order])
    write_text_atomic(index_path, text)
    write_text_atomic(plan_path, json.dumps({"id": plan_id, "skipped": skipped}, indent=1))
    rows, _ = _read_index(index_path)
    if skipped:
        log.warning("left out %d unreadable or empty files, first: %s", len(skipped),
                    "; ".join(f"{u}: {w}" for u, w in sorted(skipped.items())[:5]))
    return rows, skipped


def _write_shard(path: Path, members: list[list[str]], data: Any) -> None:
    """One tar shard: per utterance its audio file's bytes as stored and a json member (atomic, 0644)."""
    with atomic_path(path) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for _, key, utt, spk, n, sr, ext in members:
                try:
                    audio = Path(data.wav[utt]).read_bytes()
                except OSError as e:
                    raise DataError(f"cannot read audio of {utt} ({e})", data.wav[utt]) from None
                _add_member(tar, f"{key}.{ext}", audio)
                meta = {"utt": utt, "spk": spk, "num_samples": int(n), "sample_rate": int(sr),
                        "duration": int(n) / int(sr)}
                _add_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))
        tmp.chmod(0o644)  # shards are shared read-only data (mkstemp creates 0600)


def _ensure_shard(out: Path, i: int, members: list[list[str]], data: Any) -> tuple[dict, bool]:
    """(manifest entry, kept): shard `i` kept when its sha256 matches the one recorded, else (re)written."""
    path, mark = out / shard_name(i), out / f".{shard_name(i)}.sha256"
    digest, kept = None, False
    if path.is_file() and mark.is_file():
        digest = sha256_file(path)
        if digest != mark.read_text().strip():
            log.warning("%s does not match its recorded checksum: rewriting it", path)
            digest = None
        else:
            kept = True
    if digest is None:
        _write_shard(path, members, data)
        digest = sha256_file(path)
        write_text_atomic(mark, digest + "\n")
    return {"name": shard_name(i), "count": len(members), "bytes": path.stat().st_size, "sha256": digest}, kept


def make_shards(data_dir: PathLike, out_dir: PathLike, utts_per_shard: int = 1000, seed: int = 0,
                num_threads: int = 8) -> Path:
    """Write the shards, index and manifest of a data dir (resumable); returns the manifest path."""
    from .datadir import DataDir

    if utts_per_shard < 1:
        raise UsageError(f"--utts-per-shard must be >= 1, got {utts_per_shard}")
    out = Path(out_dir)
    data = DataDir.load(data_dir)
    # Built in a sibling (`.<name>.partial`, kept when a run fails so the next one resumes there; it starts from
    # links to a previous set's files) and swapped in whole: a failed run never touches the set in `out`.
    with atomic_dir(out, carry=True, resume=True) as work:
        num_shards, kept, n_utts = _write_set(data, data_dir, work, utts_per_shard, seed, num_threads)
    log.info("%d shards (%d kept from an earlier run), %d utterances, in %s", num_shards, kept, n_utts, out)
    return out / MANIFEST


def _write_set(data: Any, data_dir: PathLike, out: Path, utts_per_shard: int, seed: int, num_threads: int
               ) -> tuple[int, int, int]:
    """Shards, index and manifest (last) of `data` in `out`; (shards, shards kept, utterances)."""
    rows, skipped = _plan_shards(data, data_dir, out, utts_per_shard, seed, num_threads)
    num_shards = int(rows[-1][0]) + 1
    by_shard: list[list[list[str]]] = [[] for _ in range(num_shards)]
    for row in rows:
        by_shard[int(row[0])].append(row)
    done = [_ensure_shard(out, i, members, data) for i, members in enumerate(by_shard)]
    entries, kept = [e for e, _ in done], sum(k for _, k in done)
    _, index_sha = _read_index(out / INDEX)
    manifest = {
        "format": "webdataset tar shards (spkcausal)", "version": 1, "seed": int(seed),
        "utts_per_shard": int(utts_per_shard), "data": str(data_dir), "num_utts": len(rows),
        "num_shards": num_shards, "speakers": sorted({r[3] for r in rows}), "index": INDEX,
        "index_sha256": index_sha, "skipped": skipped, "shards": entries,
    }
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    for p in (out / INDEX, out / MANIFEST):
        p.chmod(0o644)
    return num_shards, kept, len(rows)


def _plain_name(name: Any) -> TypeGuard[str]:
    """A file name inside the shard dir: no separator, no `..`, not absolute (so a manifest cannot point
    training at a tar elsewhere)."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name \
        and "\0" not in name


def _manifest_names(manifest: Any, mpath: Path) -> tuple[list[str], str]:
    """The shard file names and index name of a manifest, checked (DataError naming the manifest)."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise DataError("not a shard manifest (expected an object with a 'shards' list)", mpath)
    names = []
    for i, entry in enumerate(manifest["shards"]):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not _plain_name(name):
            raise DataError(f"shard {i} has name {name!r}; expected a file name inside the shard dir "
                            "(no path separator)", mpath)
        names.append(name)
    index_name = manifest.get("index", INDEX)
    if not _plain_name(index_name):
        raise DataError(f"index {index_name!r}; expected a file name inside the shard dir", mpath)
    return names, index_name


def load_shards(shard_dir: PathLike) -> ShardIndex:
    """Read a finished shard set (manifest + index); a missing manifest or a changed index is a DataError."""
    root = Path(shard_dir)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise DataError("no manifest.json: not a finished shard set (run `spkcausal make-shards` to finish it)",
                        root)
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON ({e.msg})", mpath, e.lineno) from None
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", mpath) from None
    names, index_name = _manifest_names(manifest, mpath)
    try:
        rows, sha = _read_index(root / index_name)
    except (FileNotFoundError, UnicodeDecodeError) as e:
        raise DataError(f"unreadable index ({type(e).__name__})", root / index_name) from None
    if sha != manifest.get("index_sha256"):
        raise DataError("index.tsv does not match the manifest's checksum", root / INDEX)
    paths = [root / n for n in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} shard file(s) missing, first: {missing[0].name}", root)
    try:
        shard, num_samples, rate = (np.array([int(r[c]) for r in rows], dtype=np.int64) for c in (0, 4, 5))
    except ValueError as e:
        raise DataError(f"a shard number, sample count or rate is not an integer ({e})", root / index_name) from None
    return ShardIndex(root=root, manifest=manifest, shard_paths=paths, shard=shard, keys=[r[1] for r in rows],
                      utts=[r[2] for r in rows], spks=[r[3] for r in rows], num_samples=num_samples,
                      sample_rate=rate, exts=[r[6] for r in rows])


def iter_audio_members(path: PathLike) -> Iterator[tuple[str, str, bytes]]:
    """(key, extension, bytes) of the audio members of a shard, in file order (json members skipped)."""
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            key, _, ext = info.name.partition(".")
            if ext == "json" or not info.isfile():
                continue
            member = tar.extractfile(info)
            if member is not None:  # never for a regular file
                yield key, ext, member.read()


def verify_shards(shard_dir: PathLike) -> list[str]:
    """Names of shards whose sha256 differs from the manifest (empty: all intact)."""
    index = load_shards(shard_dir)
    return [e["name"] for e in index.manifest["shards"] if sha256_file(index.root / e["name"]) != e["sha256"]]
