"""Embedding extraction for a data dir: whole utterances, length-batched, optional TDE, sharded over ranks.

Batching (`mode`): "exact" (default) puts only utterances with identical sample counts in one batch, so an
embedding never depends on its batch mates (no padding reaches the model); "pad" batches neighbours in
length, zero-padded, with Fbank and pooling masks. Padding still changes the convolutions near the end of
the shorter utterances (speechbrain's ECAPA pads by reflection when alone, by zeros in a batch), so "pad" is
faster on corpora with few repeated lengths but not batch-independent; choose it knowingly.

Utterances shorter than `min_seconds` (0.5 s) are repeated up to it: the models need a few dozen frames.

Output: an embedding store (spkcausal.embeddings) plus, beside it, `mean_feature.npy` (the Causal Norm
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
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .distributed import rank_and_world, resolve_device
from .network import resolve_checkpoint
from .utils import DataError, PathLike, atomic_path, log_to_file, write_text_atomic

log = logging.getLogger("spkcausal.extract")


@torch.no_grad()
def embed_utterances(model: nn.Module, fbank: nn.Module, data: Any, utts: Sequence[str],
                     device: torch.device | str = "cpu", batch_seconds: float = 200.0, max_batch: int = 256,
                     mode: str = "exact", num_workers: int = 2, min_seconds: float = 0.5,
                     progress: bool = True, crop_seconds: float | None = None) -> np.ndarray:
    """(len(utts), D) float32 embeddings of whole utterances (mode "crop": of their central crop_seconds)."""
    from tqdm import tqdm

    from .dataset import CROP_SECONDS, EvalDataset, eval_loader, length_batches, utterance_lengths

    device = torch.device(device)
    sr = fbank.sample_rate
    min_samples = int(round(min_seconds * sr))
    crop = int(round((crop_seconds or CROP_SECONDS) * sr)) if mode == "crop" else 0
    dataset = EvalDataset(data, utts, sample_rate=sr, min_samples=min_samples, max_samples=crop)
    lengths = np.maximum(utterance_lengths(data, utts, sr), min_samples)
    lengths = np.minimum(lengths, crop) if crop else lengths
    batches = length_batches(lengths, int(batch_seconds * sr), max_batch=max_batch, mode=mode,
                             frame_length=fbank.frame_length, frame_shift=fbank.frame_shift)
    out = np.zeros((len(utts), getattr(model, "embed_dim", 0) or 1), dtype=np.float32)
    model.eval()
    fbank.eval()
    first = True
    for waves, lens, index in tqdm(eval_loader(dataset, batches, num_workers=num_workers), total=len(batches),
                                   desc="extracting", disable=not progress, mininterval=2, leave=False):
        waves = waves.to(device, non_blocking=True)
        if mode != "pad":  # exact, bucket, crop: one frame count per batch, so no padded sample is in a frame
            emb = model(fbank(waves))
        else:
            lens = lens.to(device)
            emb = model(fbank(waves, lens), fbank.num_frames(lens))
        emb = emb.float().cpu().numpy()
        if first and emb.shape[1] != out.shape[1]:
            out = np.zeros((len(utts), emb.shape[1]), dtype=np.float32)
        first = False
        out[index.numpy()] = emb
    return out


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
            num_workers: int = 2, device: str = "auto", force: bool = False) -> Path:
    """Embed every utterance of `data_dir` into the store `out_dir` (sharded over torchrun ranks if any)."""
    out_dir = Path(out_dir)
    ckpt_path = resolve_checkpoint(ckpt, exp_dir)
    rank, world = rank_and_world()
    with log_to_file(out_dir.parent / f"{out_dir.name}.extract.log") if rank == 0 else nullcontext():
        return _extract(data_dir, out_dir, ckpt_path, rank, world, tde_alpha, batch_seconds, mode, num_workers,
                        device, force)


def _extract(data_dir: PathLike, out_dir: Path, ckpt_path: Path, rank: int, world: int, tde_alpha: float | None,
             batch_seconds: float, mode: str, num_workers: int, device: str, force: bool) -> Path:
    from .datadir import DataDir
    from .embeddings import EmbeddingStore, write_store, write_store_meta
    from .network import load_trained
    from .tde import tde_embeddings

    data = DataDir.load(data_dir)
    utts = data.utts
    st = ckpt_path.stat()
    # The checkpoint's size and mtime too: re-averaging into the same avg_model.pt must not reuse old output.
    meta = {"checkpoint": str(ckpt_path), "checkpoint_stat": [st.st_size, st.st_mtime_ns], "data": str(data_dir),
            "tde_alpha": tde_alpha, "mode": mode, "num_utts": len(utts)}
    if not force and (out_dir / "extract.json").is_file():
        try:
            done = EmbeddingStore.open(out_dir)
            old = json.loads((out_dir / "extract.json").read_text(encoding="utf-8"))
            if done.keys == utts and all(old.get(k) == v for k, v in meta.items()):
                log.info("%s is complete for %s; skipping (pass force to redo)", out_dir, ckpt_path)
                return out_dir
        except (DataError, ValueError):
            pass
    dev = resolve_device(device)
    trained = load_trained(ckpt_path, device=dev)
    if tde_alpha is not None:
        trained.require_causal()
    model, head, cfg, fbank = trained.model, trained.head, trained.config, trained.fbank(dev)
    # Slices of an interrupted sharded run are reused only by a run with the same inputs (hash in the name).
    tag = hashlib.sha1(json.dumps({**meta, "tde_alpha": None}, sort_keys=True).encode()).hexdigest()[:12]
    parts_dir = out_dir.parent / f".{out_dir.name}.parts{world}-{tag}"
    mine = utts[rank::world]
    part = _read_part(parts_dir, rank) if world > 1 else None
    if part is not None and part[0] == mine:
        emb = part[1]
        log.info("rank %d: reusing finished slice %s", rank, parts_dir)
    else:
        log.info("rank %d: embedding %d of %d utterances from %s with %s", rank, len(mine), len(utts), data_dir,
                 ckpt_path)
        emb = embed_utterances(model, fbank, data, mine, dev, batch_seconds, mode=mode, num_workers=num_workers,
                               progress=rank == 0)
        if world > 1:
            _write_parts(parts_dir, rank, mine, emb)
    if world > 1:
        dist.barrier()
    if rank == 0:
        if world > 1:
            full = None
            for r in range(world):
                keys_r, emb_r = _read_part(parts_dir, r)
                full = np.zeros((len(utts), emb_r.shape[1]), np.float32) if full is None else full
                full[r::world] = emb_r
            emb = full
        mean = head.mean_feature.detach().float().cpu().numpy() if trained.is_causal else None
        num_heads = int(getattr(head, "num_heads", 1))
        if tde_alpha is not None:
            emb = tde_embeddings(emb, mean, float(tde_alpha), num_heads)
        write_store_meta(out_dir, {**meta, "num_heads": num_heads, "head": cfg["head"]["name"]}, mean)
        write_store(out_dir, utts, emb)
        if world > 1:
            shutil.rmtree(parts_dir, ignore_errors=True)
        log.info("wrote %d embeddings (dim %d) to %s", len(utts), emb.shape[1], out_dir)
    if world > 1:
        dist.barrier()
    return out_dir
