"""Embedding extraction for a data dir: whole utterances, length-batched, optional TDE, sharded over ranks.

Batching (`mode`): "exact" (default) puts only utterances with identical sample counts in one batch, so an
embedding never depends on its batch mates (no padding reaches the model); "pad" batches neighbours in
length, zero-padded, with Fbank and pooling masks. Padding still changes the convolutions near the end of
the shorter utterances (speechbrain's ECAPA pads by reflection when alone, by zeros in a batch), so "pad" is
faster on corpora with few repeated lengths but not batch-independent; choose it knowingly.

Utterances shorter than `min_seconds` (0.5 s) are repeated up to it: the models need a few dozen frames.

One loop for every caller: `embed_source` runs a model over an `AudioSource` (files or in-memory waveforms,
lengths from the headers); `embed_utterances` (data dirs, the recipes) and `spkcausal.inference.api` (files, waveforms
at any rate) both build an `AudioSource` and call it, so a file gives the same vector either way.

Output: an embedding store (spkcausal.data.embeddings) plus, beside it, `mean_feature.npy` (the Causal Norm
head's x_bar, when the head has one) and `extract.json` (checkpoint, TDE alpha, num_heads). Extract without
`tde_alpha` once and apply `tde_store` for every alpha of a sweep, without touching the model again.
With torchrun each rank embeds a slice (`utts[rank::world]`), writes it under `.<out>.parts<world>-<hash>/`
beside the store, and rank 0 merges the slices into the store.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from ..data.audio import audio_info, read_audio, resample
from ..nn.distributed import rank_and_world, resolve_device
from ..nn.network import resolve_checkpoint
from ..utils import DataError, PathLike, UsageError, atomic_path, bounded_map, log_to_file, write_text_atomic

log = logging.getLogger("spkcausal.inference.extract")


class AudioSource(Dataset):
    """Whole utterances to embed: audio files (mono-mixed by soundfile reading) or in-memory mono waveforms.

    Exact sample counts (after resampling) are known up front from the headers, so batching never reads audio
    twice and a bad file fails before any model work, naming the file. Files at another sample rate are
    resampled (`resample=True`, the API) or rejected (the recipes: a corpus must be at the model's rate). Input
    shorter than `min_samples` is repeated up to it (`short="repeat"`, the recipes) or rejected ("error")."""

    def __init__(self, items: Sequence[PathLike | np.ndarray], sample_rate: int, min_samples: int = 0,
                 resample: bool = False, short: str = "repeat", num_threads: int = 8, max_samples: int = 0):
        if short not in ("repeat", "error"):
            raise UsageError(f"short={short!r}; expected 'repeat' or 'error'")
        self.items, self.sample_rate, self.min_samples = list(items), int(sample_rate), int(min_samples)
        self.resample, self.short, self.max_samples = resample, short, int(max_samples)
        with ThreadPoolExecutor(max(1, num_threads)) as pool:
            native = list(bounded_map(pool, self._native_length, self.items))
        self.rates = [sr for _, sr in native]
        self.lengths = np.array([self._checked(i, n, sr) for i, (n, sr) in enumerate(native)], dtype=np.int64)
        if self.max_samples > 0:  # mode "crop": the central max_samples of longer input
            self.lengths = np.minimum(self.lengths, self.max_samples)

    def _native_length(self, item: PathLike | np.ndarray) -> tuple[int, int]:
        if isinstance(item, np.ndarray):
            return len(item), self.sample_rate
        frames, sr, _ = audio_info(item)
        return frames, sr

    def _checked(self, i: int, n: int, sr: int) -> int:
        """Samples the model gets for item i; raises for empty, wrong-rate or (short='error') too-short input."""
        where = None if isinstance(self.items[i], np.ndarray) else self.items[i]
        if n == 0:
            raise DataError("empty audio file" if where else "empty waveform", where)
        if sr != self.sample_rate:
            if not self.resample:
                raise DataError(f"sample rate {sr} Hz; expected {self.sample_rate}", where)
            g = gcd(sr, self.sample_rate)
            n = -(-n * (self.sample_rate // g) // (sr // g))  # resample_poly's output length
        if n < self.min_samples and self.short == "error":
            raise DataError(f"audio is {n / self.sample_rate:.3f} s; the model needs at least "
                            f"{self.min_samples / self.sample_rate:.3f} s", where or f"waveform {i}")
        return max(n, self.min_samples)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item, crop = self.items[index], self.max_samples
        if isinstance(item, np.ndarray):
            x = item
        elif crop > 0 and self.rates[index] == self.sample_rate:
            total = audio_info(item)[0]  # partial read of the centre: long files are not decoded whole
            x, _ = read_audio(item, start=max(0, (total - crop) // 2), frames=min(total, crop))
        else:
            x, _ = read_audio(item)
            if self.rates[index] != self.sample_rate:
                x = resample(x, self.rates[index], self.sample_rate)
        if crop > 0 and len(x) > crop:
            x = x[(len(x) - crop) // 2:][:crop]
        if len(x) < self.min_samples:
            x = np.tile(x, -(-self.min_samples // len(x)))[:self.min_samples]
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), index


class StageClock:
    """Wall seconds per extraction stage, added into `into` (a no-op without it): `lap(stage)` charges the time
    since the previous lap to `stage`. On CUDA it synchronises first, so a stage is charged its own kernels."""

    def __init__(self, into: dict[str, float] | None, device: torch.device | None = None):
        self.into, self.device, self.t = into, device, time.perf_counter()

    def lap(self, stage: str) -> None:
        """Charge the time since the last lap to `stage`."""
        if self.into is None:
            return
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.into[stage] = self.into.get(stage, 0.0) + now - self.t
        self.t = now


@torch.no_grad()
def embed_source(model: nn.Module, fbank: nn.Module, source: AudioSource, device: torch.device | str = "cpu",
                 batch_seconds: float = 200.0, max_batch: int = 256, mode: str = "exact", num_workers: int = 2,
                 progress: bool = True, timing: dict[str, float] | None = None) -> np.ndarray:
    """(len(source), D) float32 embeddings in source order: the one extraction loop (recipes and API).

    `timing`, if given, gets the wall seconds spent waiting for audio ("read": the loader, its workers' start
    included), in the front-end ("fbank") and in the model ("model") added to it."""
    from tqdm import tqdm

    from ..data.dataset import eval_loader, length_batches

    device = torch.device(device)
    clock = StageClock(timing, device)
    sr = fbank.sample_rate
    batches = length_batches(source.lengths, int(batch_seconds * sr), max_batch=max_batch, mode=mode,
                             frame_length=fbank.frame_length, frame_shift=fbank.frame_shift)
    out = np.zeros((len(source), getattr(model, "embed_dim", 0) or 1), dtype=np.float32)
    model.eval()
    fbank.eval()
    first = True
    for waves, lens, index in tqdm(eval_loader(source, batches, num_workers=num_workers), total=len(batches),
                                   desc="extracting", disable=not progress, mininterval=2, leave=False):
        clock.lap("read")
        waves = waves.to(device, non_blocking=True)
        if mode != "pad":  # exact, bucket, crop: one frame count per batch, so no padded sample is in a frame
            feats, frames = fbank(waves), None
        else:
            lens = lens.to(device)
            feats, frames = fbank(waves, lens), fbank.num_frames(lens)
        clock.lap("fbank")
        emb = (model(feats) if frames is None else model(feats, frames)).float().cpu().numpy()
        clock.lap("model")
        if first and emb.shape[1] != out.shape[1]:
            out = np.zeros((len(source), emb.shape[1]), dtype=np.float32)
        first = False
        out[index.numpy()] = emb
    return out


def embed_utterances(model: nn.Module, fbank: nn.Module, data: Any, utts: Sequence[str],
                     device: torch.device | str = "cpu", batch_seconds: float = 200.0, max_batch: int = 256,
                     mode: str = "exact", num_workers: int = 2, min_seconds: float = 0.5,
                     progress: bool = True, crop_seconds: float | None = None,
                     timing: dict[str, float] | None = None) -> np.ndarray:
    """(len(utts), D) float32 embeddings of whole utterances of a data dir, in the order of `utts` (mode
    "crop": of their central `crop_seconds`, default dataset.CROP_SECONDS); `timing` as for `embed_source`,
    plus "headers" (reading every file's header for its length)."""
    from ..data.dataset import CROP_SECONDS

    sr = fbank.sample_rate
    crop = int(round((crop_seconds or CROP_SECONDS) * sr)) if mode == "crop" else 0
    clock = StageClock(timing)
    source = AudioSource([data.wav[u] for u in utts], sr, int(round(min_seconds * sr)), max_samples=crop)
    clock.lap("headers")
    return embed_source(model, fbank, source, device, batch_seconds, max_batch, mode, num_workers, progress,
                        timing)


def _write_parts(parts_dir: Path, rank: int, keys: Sequence[str], emb: np.ndarray) -> None:
    with atomic_path(parts_dir / f"rank{rank}.npy") as tmp:
        np.save(tmp, emb)
    write_text_atomic(parts_dir / f"rank{rank}.keys", "".join(k + "\n" for k in keys))


def _read_part(parts_dir: Path, rank: int) -> tuple[list[str], np.ndarray] | None:
    kp, ep = parts_dir / f"rank{rank}.keys", parts_dir / f"rank{rank}.npy"
    if not (kp.is_file() and ep.is_file()):
        return None
    keys = kp.read_text(encoding="utf-8").split()
    emb = np.load(ep)
    return (keys, emb) if len(keys) == len(emb) else None


def extract(data_dir: PathLike, out_dir: PathLike, ckpt: PathLike | None = None, exp_dir: PathLike | None = None,
            tde_alpha: float | None = None, batch_seconds: float = 200.0, mode: str = "exact",
            num_workers: int | None = None, device: str = "auto", force: bool = False,
            timing: dict[str, float] | None = None) -> Path:
    """Embed every utterance of `data_dir` into the store `out_dir` (sharded over torchrun ranks if any).

    `num_workers` None: audio is read in the main process on the CPU (the model takes ~90% of the time there and
    loader processes measured slower on a small machine, docs/scale.md), by 2 DataLoader workers on a GPU.

    Where the time went is logged (extract.log) and, if `timing` is given, added to it: wall seconds of "setup"
    (data dir, checkpoint and model), "headers", "read", "fbank", "model" (see `embed_utterances`) and "write"."""
    out_dir = Path(out_dir)
    ckpt_path = resolve_checkpoint(ckpt, exp_dir)
    rank, world = rank_and_world()
    times = {} if timing is None else timing
    with log_to_file(out_dir.parent / f"{out_dir.name}.extract.log") if rank == 0 else nullcontext():
        out = _extract(data_dir, out_dir, ckpt_path, rank, world, tde_alpha, batch_seconds, mode, num_workers,
                       device, force, times)
        if times:
            log.info("rank %d: wall seconds %s", rank, ", ".join(f"{k} {v:.2f}" for k, v in times.items()))
    return out


def _extract(data_dir: PathLike, out_dir: Path, ckpt_path: Path, rank: int, world: int, tde_alpha: float | None,
             batch_seconds: float, mode: str, num_workers: int | None, device: str, force: bool,
             times: dict[str, float]) -> Path:
    from ..data.datadir import DataDir
    from ..data.embeddings import write_store
    from ..nn.assemble import assemble
    from .tde import tde_embeddings

    clock = StageClock(times)
    data = DataDir.load(data_dir)
    utts = data.utts
    st = ckpt_path.stat()
    # The checkpoint's size and mtime too: re-averaging into the same avg_model.pt must not reuse old output.
    meta = {"checkpoint": str(ckpt_path), "checkpoint_stat": [st.st_size, st.st_mtime_ns], "data": str(data_dir),
            "tde_alpha": tde_alpha, "mode": mode, "num_utts": len(utts)}
    if not force and _is_complete(out_dir, utts, meta):
        log.info("%s is complete for %s; skipping (pass force to redo)", out_dir, ckpt_path)
        return out_dir
    dev = resolve_device(device)
    if num_workers is None:
        num_workers = 0 if dev.type == "cpu" else 2
    trained = assemble(ckpt_path, device=dev, need_head=False)  # an imported extractor has none; TDE needs one
    if tde_alpha is not None:
        trained.require_causal()
    clock.lap("setup")
    # Slices of an interrupted sharded run are reused only by a run with the same inputs (hash in the name).
    tag = hashlib.sha1(json.dumps({**meta, "tde_alpha": None}, sort_keys=True).encode()).hexdigest()[:12]
    parts_dir = out_dir.parent / f".{out_dir.name}.parts{world}-{tag}"
    mine = utts[rank::world]
    part = _read_part(parts_dir, rank) if world > 1 else None
    if part is not None and part[0] == mine:
        emb = part[1]
        log.info("rank %d: reusing finished slice %s", rank, parts_dir)
    else:
        log.info("rank %d: embedding %d of %d utterances from %s with %s (%d DataLoader workers)", rank, len(mine),
                 len(utts), data_dir, ckpt_path, num_workers)
        emb = embed_utterances(trained.model, trained.frontend, data, mine, dev, batch_seconds, mode=mode,
                               num_workers=num_workers, progress=rank == 0, timing=times)
        if world > 1:
            _write_parts(parts_dir, rank, mine, emb)
    if world > 1:
        dist.barrier()
    clock = StageClock(times)
    if rank == 0:
        if world > 1:
            emb = _merge_parts(parts_dir, world, len(utts))
        mean, num_heads = trained.mean_feature(), trained.num_heads
        if tde_alpha is not None:
            emb = tde_embeddings(emb, mean, float(tde_alpha), num_heads, trained.feature_norm)
        head = trained.config["head"]["name"] if trained.head is not None else None
        write_store(out_dir, utts, emb, {**meta, "num_heads": num_heads, "head": head,
                                         "feature_norm": trained.feature_norm}, mean)
        if world > 1:
            shutil.rmtree(parts_dir, ignore_errors=True)
        clock.lap("write")
        log.info("wrote %d embeddings (dim %d) to %s", len(utts), emb.shape[1], out_dir)
    if world > 1:
        dist.barrier()
    return out_dir


def _is_complete(out_dir: Path, utts: list[str], meta: dict) -> bool:
    """True when `out_dir` holds a finished store of exactly these utterances made with these inputs."""
    from ..data.embeddings import EmbeddingStore

    if not (out_dir / "extract.json").is_file():
        return False
    try:
        done = EmbeddingStore.open(out_dir)
        old = json.loads((out_dir / "extract.json").read_text(encoding="utf-8"))
    except (DataError, ValueError):
        return False
    return done.keys == utts and all(old.get(k) == v for k, v in meta.items())


def _merge_parts(parts_dir: Path, world: int, n: int) -> np.ndarray:
    """The ranks' slices (rank r holds rows r, r + world, ...) back in key order."""
    full = None
    for r in range(world):
        _, emb_r = _read_part(parts_dir, r)
        full = np.zeros((n, emb_r.shape[1]), np.float32) if full is None else full
        full[r::world] = emb_r
    return full
