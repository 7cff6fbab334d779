"""What a training run starts from: the data source of a rank (data dir with a pre-scan, or tar shards) and, with
`train.init_from`, the source checkpoint's architecture and weights. Used by `spkcausal.train.trainer.Trainer`;
the config is a merged, typed one (spkcausal.nn.config.merge_defaults)."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ..nn.config import merge_defaults
from ..nn.distributed import DistInfo
from ..utils import DataError, UsageError, write_text_atomic


def read_samples(cfg: Mapping[str, Any]) -> tuple[int, int]:
    """(training chunk samples, samples to read per chunk: more with speed perturbation, so every speed fills it)."""
    chunk = round(cfg["data"]["chunk_seconds"] * cfg["data"]["sample_rate"])
    if cfg["augment"].get("speed_perturb"):
        from ..nn.augment import speed_input_samples

        return chunk, speed_input_samples(chunk)
    return chunk, chunk


def prepare_data(cfg: Mapping[str, Any], info: DistInfo, exp_dir: Path, log: logging.Logger) -> tuple[Any, Any]:
    """Load the data dir, pre-scan audio on rank 0 (result broadcast), build the training dataset; returns
    (dataset, (chunk samples, skipped utterances))."""
    from ..data.datadir import DataDir
    from ..data.dataset import TrainChunkDataset, scan_training_audio

    dcfg = cfg["data"]
    by_utterance = dcfg["labels"] == "utterance"
    if dcfg.get("shards"):
        if by_utterance:
            raise UsageError("data.labels: utterance needs a data dir (data.train): shard examples carry speaker "
                             "labels only")
        if cfg["sampler"]["views"] != 1:
            raise UsageError("sampler.views needs a data dir (data.train): the shard stream reads each example once")
        from ..data.shardstream import prepare_shard_stream

        return prepare_shard_stream(cfg, info.rank, info.world_size, exp_dir, log, *read_samples(cfg))
    if not dcfg.get("train"):
        raise DataError("config key data.train (the training data dir) or data.shards is not set")
    data = DataDir.load(dcfg["train"])
    sr = dcfg["sample_rate"]
    payload = [None]
    if info.is_main:
        scan = scan_training_audio(data, dcfg["min_seconds"], sr, dcfg["scan_threads"])
        payload = [(scan.utts, scan.skipped)]
        write_text_atomic(exp_dir / "skipped_utts.txt",
                          "".join(f"{u} {why}\n" for u, why in sorted(scan.skipped.items())))
        log.info("training audio: %d usable utterances, %d skipped (unreadable, empty or shorter than %.2f s)%s",
                 len(scan.utts), len(scan.skipped), dcfg["min_seconds"],
                 "" if not scan.skipped else "; first: " + ", ".join(sorted(scan.skipped)[:5]))
    if info.world_size > 1:
        dist.broadcast_object_list(payload, src=0)
    utts, skipped = payload[0]
    chunk, read = read_samples(cfg)
    dataset = TrainChunkDataset(data, utts, read, seed=cfg["seed"], rank=info.rank, sample_rate=sr,
                                by_utterance=by_utterance)
    return dataset, (chunk, skipped)


def adopt_init_from(cfg: dict[str, Any], resume_ckpt: Path | None,
                    model_named: str | None = None) -> tuple[dict[str, Any], dict | None]:
    """With `train.init_from`, the model and features sections (architecture, front-end) are the source's. Returns
    the merged config and the checkpoint state to start from, flagged `resuming` when it is the run's own newest
    checkpoint (then only its shapes are used: restore() loads everything); None without init_from.
    `model_named`: the model.name the user's config gave (None: not given); another than the source's is refused."""
    src = cfg["train"].get("init_from")
    if not src:
        if cfg["train"].get("init_head"):
            raise UsageError("train.init_head needs train.init_from")
        return cfg, None
    from ..nn.checkpoint import load_checkpoint
    from ..nn.network import resolve_checkpoint

    path = resume_ckpt if resume_ckpt is not None else resolve_checkpoint(src)
    state = load_checkpoint(path)
    if "config" not in state or "model" not in state:
        raise DataError("init_from: not a spkcausal checkpoint (no config / model)", path)
    scfg = merge_defaults(state["config"])
    if model_named is not None and model_named != scfg["model"]["name"]:
        raise DataError(f"train.init_from: the checkpoint's model is {scfg['model']['name']!r}, the config names "
                        f"model.name={model_named!r}; expected the same name or none (init_from adopts the "
                        "checkpoint's architecture)", path)
    if scfg["data"]["sample_rate"] != cfg["data"]["sample_rate"]:
        raise DataError(f"init_from: the model runs at {scfg['data']['sample_rate']} Hz, data.sample_rate is "
                        f"{cfg['data']['sample_rate']}", path)
    if cfg["train"].get("init_head") and (state.get("head") is None
                                          or scfg["head"]["name"] != cfg["head"]["name"]):
        raise DataError(f"init_head: the checkpoint's head is {scfg['head']['name']!r}, this config's "
                        f"{cfg['head']['name']!r}: a kept head needs the same kind", path)
    out = {**cfg, "model": scfg["model"],
           "features": {**scfg["features"], "dither": cfg["features"].get("dither", 0.0)}}
    return out, {**state, "resuming": resume_ckpt is not None}
