"""Speaker-embedding training: device-side features and augmentation, DDP via torchrun, exact resume.

Per step on the device: waves -> [speed perturbation] -> [noise / reverb] -> Fbank -> model -> head -> loss.
CPU DataLoader workers only read audio (spkcausal.dataset). `train(cfg)` is the library entry point;
`spkcausal train --config conf.yaml key=value ... [--resume]` is a thin CLI over it. DEFAULTS below lists every
config key (docs/training.md explains them).

Schedules are pure functions of the global step s (0-based, the step about to be taken), with
S = steps per epoch and T = epochs * S:
- learning rate: lr(s) = lr * min(1, (s + 1) / (warmup_epochs * S)) * (final_lr / lr) ** (s / T)
  (linear warm-up times exponential decay from lr towards final_lr, as in wespeaker);
- margin: 0 before `margin.start_epoch`, rising linearly to the head's `margin` at `margin.end_epoch`.
Randomness of a step (augmentation draws, fbank dither) comes from a generator re-seeded from
(seed, rank, step), and chunk offsets from (seed, epoch, rank, position), so a resumed run repeats the
uninterrupted one exactly; the global RNG states are saved as well for anything else (e.g. dropout).
"""
from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from .checkpoint import (
    checkpoint_name,
    find_resume_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_latest,
)
from .config import deep_merge, save_config
from .utils import DataError, setup_logging, write_text_atomic

DEFAULTS: dict[str, Any] = {
    "exp_dir": None,
    "seed": 42,
    "data": {"train": None, "sample_rate": 16000, "chunk_seconds": 2.0, "min_seconds": 0.5, "num_workers": 4,
             "prefetch_factor": 4, "pin_memory": True, "scan_threads": 8},
    "features": {"n_mels": 80, "dither": 0.0},
    "augment": {"speed_perturb": False, "musan": None, "rirs": None, "prob": 0.6, "musan_max_seconds": 10.0,
                "rir_max_seconds": 2.0},
    "model": {"name": "ecapa512"},
    "head": {"name": "aam"},  # other keys go to the head class (AAM defaults: scale 32, margin 0.2)
    "loss": {"name": "ce"},
    "sampler": {"name": "natural", "num_samples": None},
    "optim": {"lr": 0.1, "final_lr": 5.0e-5, "warmup_epochs": 6, "momentum": 0.9, "nesterov": True,
              "weight_decay": 1.0e-4, "grad_clip": 0.0},
    "margin": {"start_epoch": 20, "end_epoch": 40},
    "train": {"epochs": 150, "batch_size": 128, "precision": "bf16", "device": "auto", "ckpt_every_steps": 1000,
              "keep_last": 3, "keep_epochs": 0, "log_every": 50, "tensorboard": True, "progress": True},
}

PRECISIONS = ("bf16", "fp16", "fp32")


# Sections whose keys are fixed; model / head / loss / features pass their keys on to the built class.
_FIXED_SECTIONS = ("data", "augment", "sampler", "optim", "margin", "train")


def merge_defaults(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """DEFAULTS <- cfg; unknown sections, and unknown keys of fixed sections, are rejected (typos, mostly)."""
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown config section(s) {sorted(unknown)}; expected {sorted(DEFAULTS)}")
    for section in _FIXED_SECTIONS:
        value = cfg.get(section) or {}
        if not isinstance(value, Mapping):
            raise ValueError(f"config section {section!r} must be a mapping, got {value!r}")
        bad = set(value) - set(DEFAULTS[section])
        if bad:
            raise ValueError(f"unknown key(s) {sorted(bad)} in config section {section!r}; "
                             f"expected some of {sorted(DEFAULTS[section])}")
    return deep_merge(DEFAULTS, cfg)


# ------------------------------------------------------------------ schedules


def lr_at(step: int, steps_per_epoch: int, epochs: int, lr: float, final_lr: float, warmup_epochs: float) -> float:
    """Learning rate for global step `step` (see the module docstring)."""
    total = max(1, epochs * steps_per_epoch)
    warm = warmup_epochs * steps_per_epoch
    factor = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
    return lr * factor * math.exp(math.log(final_lr / lr) * min(step, total) / total)


def margin_at(step: int, steps_per_epoch: int, final: float, start_epoch: float, end_epoch: float) -> float:
    """Margin for global step `step`: 0 before start_epoch, linear to `final` at end_epoch, then `final`."""
    epoch = step / max(1, steps_per_epoch)
    if epoch < start_epoch:
        return 0.0
    if end_epoch <= start_epoch or epoch >= end_epoch:
        return float(final)
    return float(final) * (epoch - start_epoch) / (end_epoch - start_epoch)


def step_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, rank, step, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


# ------------------------------------------------------------------ distributed


@dataclass
class DistInfo:
    """Rank layout read from torchrun's environment."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (RANK / WORLD_SIZE / LOCAL_RANK); NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        info.created = True
    return info


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:<local_rank> when available, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but CUDA is not available")
        return torch.device("cuda", local_rank)
    return torch.device(name)


# ------------------------------------------------------------------ model assembly


class SpeakerNet(nn.Module):
    """Extractor + classifier head as one module (one DDP wrapper, one state)."""

    def __init__(self, model: nn.Module, head: nn.Module):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, feats: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(embeddings, logits)."""
        emb = self.model(feats)
        return emb, self.head(emb.float(), labels)


def _kwargs(section: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k != "name"}


def build_network(cfg: Mapping[str, Any], num_classes: int) -> SpeakerNet:
    """Model (`cfg['model']`) and head (`cfg['head']`) from the registries; n_mels follows the features."""
    from .heads import build_head
    from .models import build_model

    model = build_model(cfg["model"]["name"], n_mels=cfg["features"].get("n_mels", 80), **_kwargs(cfg["model"]))
    head = build_head(cfg["head"]["name"], model.embed_dim, num_classes, **_kwargs(cfg["head"]))
    return SpeakerNet(model, head)


def num_classes_for(num_speakers: int, cfg: Mapping[str, Any]) -> int:
    """Speakers, times the number of speed factors when speed perturbation makes new speakers."""
    from .augment import SPEED_FACTORS

    return num_speakers * (len(SPEED_FACTORS) if cfg["augment"].get("speed_perturb") else 1)


def build_feature_pipeline(cfg: Mapping[str, Any], device: torch.device) -> tuple[nn.Module, nn.Module | None]:
    """(Fbank, Augmenter or None) on `device`."""
    from .features import Fbank

    aug_cfg = cfg["augment"]
    fbank = Fbank(sample_rate=cfg["data"]["sample_rate"], **cfg["features"]).to(device)
    augmenter = None
    if aug_cfg.get("musan") or aug_cfg.get("rirs"):
        from .augment import Augmenter, NoiseBank, RirBank

        sr = cfg["data"]["sample_rate"]
        noise = NoiseBank.from_dir(aug_cfg["musan"], sr, aug_cfg["musan_max_seconds"]) if aug_cfg.get("musan") else None
        rirs = RirBank.from_dir(aug_cfg["rirs"], sr, aug_cfg["rir_max_seconds"]) if aug_cfg.get("rirs") else None
        augmenter = Augmenter(noise, rirs, prob=aug_cfg["prob"]).to(device)
    return fbank, augmenter


def device_batch(waves: Tensor, labels: Tensor, cfg: Mapping[str, Any], chunk_samples: int, num_speakers: int,
                 fbank: nn.Module, augmenter: nn.Module | None, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Waves on the device -> (features, labels): speed perturbation, augmentation, fbank (all batched)."""
    if cfg["augment"].get("speed_perturb"):
        from .augment import SPEED_FACTORS, draw_speed, speed_labels, speed_perturb

        k = draw_speed(waves.shape[0], generator, waves.device)
        factors = torch.tensor(SPEED_FACTORS, dtype=torch.float64)[k.cpu()]
        waves = speed_perturb(waves, factors, out_len=chunk_samples)
        labels = speed_labels(labels, k, num_speakers)
    if augmenter is not None:
        waves = augmenter(waves, generator)
    return fbank(waves, generator=generator), labels


# ------------------------------------------------------------------ training


def train_step(model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, feats: Tensor, labels: Tensor, amp_dtype: torch.dtype | None = None,
               clip: float = 0.0) -> tuple[Tensor, Tensor]:
    """One optimisation step of a SpeakerNet (or its DDP wrapper) on device features; returns (loss, logits)."""
    ctx = torch.autocast(feats.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    with ctx:
        _, logits = model(feats, labels)
    loss = loss_fn(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


@dataclass
class TrainResult:
    """What `train` returns: the trained modules (unwrapped), per-epoch history and where things were written."""

    net: SpeakerNet
    exp_dir: Path
    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _prepare_data(cfg: Mapping[str, Any], info: DistInfo, exp_dir: Path, log) -> tuple[Any, Any]:
    """Load the data dir, pre-scan audio on rank 0 (result broadcast), build the training dataset."""
    from .datadir import DataDir
    from .dataset import TrainChunkDataset, scan_training_audio

    dcfg = cfg["data"]
    if not dcfg.get("train"):
        raise DataError("config key data.train (the training data dir) is not set")
    data = DataDir.load(dcfg["train"])
    sr = int(dcfg["sample_rate"])
    payload = [None]
    if info.is_main:
        scan = scan_training_audio(data, float(dcfg["min_seconds"]), sr, int(dcfg["scan_threads"]))
        payload = [(scan.utts, scan.skipped)]
        write_text_atomic(exp_dir / "skipped_utts.txt",
                          "".join(f"{u} {why}\n" for u, why in sorted(scan.skipped.items())))
        log.info("training audio: %d usable utterances, %d skipped (unreadable, empty or shorter than %.2f s)%s",
                 len(scan.utts), len(scan.skipped), float(dcfg["min_seconds"]),
                 "" if not scan.skipped else "; first: " + ", ".join(sorted(scan.skipped)[:5]))
    if info.world_size > 1:
        dist.broadcast_object_list(payload, src=0)
    utts, skipped = payload[0]
    chunk = int(round(float(dcfg["chunk_seconds"]) * sr))
    read = chunk
    if cfg["augment"].get("speed_perturb"):
        from .augment import speed_input_samples

        read = speed_input_samples(chunk)
    dataset = TrainChunkDataset(data, utts, read, seed=int(cfg["seed"]), rank=info.rank, sample_rate=sr)
    return dataset, (chunk, skipped)


def train(cfg: Mapping[str, Any], resume: bool = False) -> TrainResult:
    """Train from a (merged or partial) config; with `resume`, continue from the newest complete checkpoint."""
    from tqdm import tqdm

    from .dataset import train_loader
    from .losses import build_loss
    from .samplers import build_sampler

    cfg = merge_defaults(cfg)
    tcfg, ocfg = cfg["train"], cfg["optim"]
    if cfg["exp_dir"] is None:
        raise DataError("config key exp_dir is not set")
    if tcfg["precision"] not in PRECISIONS:
        raise ValueError(f"train.precision={tcfg['precision']!r}; expected one of {PRECISIONS}")
    exp_dir = Path(cfg["exp_dir"])
    ckpt_dir = exp_dir / "checkpoints"
    device_type = "cuda" if tcfg["device"] in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    info = init_distributed(device_type)
    device = pick_device(tcfg["device"], info.local_rank)
    try:
        if info.is_main:
            exp_dir.mkdir(parents=True, exist_ok=True)
            log = setup_logging(exp_dir / "train.log")
        else:
            import logging

            log = logging.getLogger("spkcausal")
        ckpt_path = find_resume_checkpoint(ckpt_dir) if resume else None
        if not resume and info.is_main and ckpt_dir.is_dir() and any(ckpt_dir.glob("*.pt")):
            raise DataError("checkpoints exist; pass --resume to continue or choose a new exp_dir", ckpt_dir)
        if info.is_main:
            save_config(cfg, exp_dir / "config.yaml")
        seed = int(cfg["seed"])
        torch.manual_seed(step_seed(seed, info.rank, 1))
        np.random.seed(step_seed(seed, info.rank, 2) % 2 ** 32)
        import random

        random.seed(step_seed(seed, info.rank, 3))

        dataset, (chunk_samples, skipped) = _prepare_data(cfg, info, exp_dir, log)
        num_speakers = dataset.num_speakers
        num_classes = num_classes_for(num_speakers, cfg)
        if info.is_main:
            write_text_atomic(exp_dir / "speakers.txt", "".join(s + "\n" for s in dataset.speakers))
        bs = int(tcfg["batch_size"])
        sampler = build_sampler(cfg["sampler"]["name"], dataset.labels, seed=seed,
                                num_samples=cfg["sampler"].get("num_samples"),
                                num_replicas=info.world_size, rank=info.rank)
        steps_per_epoch = sampler.epoch_length // bs
        if steps_per_epoch == 0:
            raise DataError(f"{sampler.epoch_length} samples per rank and epoch is less than one batch of {bs}",
                            cfg["data"]["train"])
        epochs = int(tcfg["epochs"])
        total_steps = epochs * steps_per_epoch

        net = build_network(cfg, num_classes).to(device)
        counts = np.tile(dataset.class_counts(), num_classes // num_speakers)
        loss_fn = build_loss(cfg["loss"]["name"], class_counts=counts, **_kwargs(cfg["loss"])).to(device)
        optimizer = torch.optim.SGD(net.parameters(), lr=float(ocfg["lr"]), momentum=float(ocfg["momentum"]),
                                    nesterov=bool(ocfg["nesterov"]), weight_decay=float(ocfg["weight_decay"]))
        use_amp = device.type == "cuda" and tcfg["precision"] != "fp32"
        amp_dtype = torch.bfloat16 if tcfg["precision"] == "bf16" else torch.float16
        scaler = torch.amp.GradScaler(device.type, enabled=use_amp and tcfg["precision"] == "fp16")
        fbank, augmenter = build_feature_pipeline(cfg, device)
        fbank.train()  # dither (if any) only in training mode
        gen = torch.Generator(device=device)
        final_margin = float(getattr(net.head, "margin", 0.0))  # the configured (or class default) margin
        has_margin = hasattr(net.head, "set_margin")

        step, history = 0, []
        if ckpt_path is not None:
            ckpt = load_checkpoint(ckpt_path, map_location="cpu")
            if int(ckpt["steps_per_epoch"]) != steps_per_epoch or int(ckpt["world_size"]) != info.world_size:
                raise DataError(f"checkpoint was written with {ckpt['steps_per_epoch']} steps/epoch on "
                                f"{ckpt['world_size']} ranks; this run has {steps_per_epoch} on {info.world_size} "
                                "(batch size, data or world size changed): exact resume is impossible", ckpt_path)
            try:
                sampler.load_state_dict(ckpt["sampler"])  # same seed and scheme, or the order would differ
            except ValueError as e:
                raise DataError(str(e), ckpt_path) from None
            net.model.load_state_dict(ckpt["model"])
            net.head.load_state_dict(ckpt["head"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
            step, history = int(ckpt["step"]), list(ckpt.get("history", []))
            set_rng_state(ckpt["rng"][info.rank], gen)
            log.info("resumed from %s at step %d (epoch %d, step %d of it)", ckpt_path, step,
                     step // steps_per_epoch + 1, step % steps_per_epoch)
        elif resume:
            log.info("no checkpoint in %s: starting from scratch", ckpt_dir)

        model = net
        if info.world_size > 1:
            model = nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None)
        loader = train_loader(dataset, sampler, bs, num_workers=int(cfg["data"]["num_workers"]),
                              pin_memory=bool(cfg["data"]["pin_memory"]),
                              prefetch_factor=int(cfg["data"]["prefetch_factor"]), generator_seed=seed)
        writer = None
        if info.is_main and tcfg["tensorboard"]:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(exp_dir / "tensorboard"), purge_step=step or None)
        log.info("training %s + %s head: %d speakers, %d classes, %d utts, %d ranks, %d steps/epoch x %d epochs on "
                 "%s (%s)", cfg["model"]["name"], cfg["head"]["name"], num_speakers, num_classes, len(dataset),
                 info.world_size, steps_per_epoch, epochs, device, tcfg["precision"] if use_amp else "fp32")

        def save(epoch_end: int | None) -> None:
            states = rng_state(gen)
            if info.world_size > 1:
                gathered: list[Any] = [None] * info.world_size
                dist.all_gather_object(gathered, states)
                states_all = gathered
            else:
                states_all = [states]
            if not info.is_main:
                return
            epoch = step // steps_per_epoch
            sampler_state = {"epoch": epoch, "start": (step % steps_per_epoch) * bs, "seed": seed,
                             "name": cfg["sampler"]["name"]}
            state = {
                "model": net.model.state_dict(), "head": net.head.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "step": step, "epoch": epoch, "steps_per_epoch": steps_per_epoch,
                "world_size": info.world_size, "sampler": sampler_state, "rng": states_all,
                "schedule": {"lr": lr_at(step, steps_per_epoch, epochs, float(ocfg["lr"]), float(ocfg["final_lr"]),
                                         float(ocfg["warmup_epochs"])),
                             "margin": margin_at(step, steps_per_epoch, final_margin,
                                                 float(cfg["margin"]["start_epoch"]),
                                                 float(cfg["margin"]["end_epoch"]))},
                "history": history, "num_speakers": num_speakers, "speakers": list(dataset.speakers),
                "config": copy.deepcopy(cfg),
            }
            name = checkpoint_name(step, epoch_end)
            save_checkpoint(state, ckpt_dir / name)
            write_latest(ckpt_dir, name)
            prune_checkpoints(ckpt_dir, int(tcfg["keep_last"]), int(tcfg["keep_epochs"]))
            log.info("saved checkpoint %s (step %d)", ckpt_dir / name, step)

        ckpt_every = int(tcfg["ckpt_every_steps"])
        log_every = max(1, int(tcfg["log_every"]))
        clip = float(ocfg.get("grad_clip") or 0.0)
        net.train()
        read_failures = 0
        while step < total_steps:
            epoch = step // steps_per_epoch
            sampler.set_epoch(epoch)
            sampler.set_start((step % steps_per_epoch) * bs)
            # Loss and correct-count sums stay on the device (epoch and log window) so steps never wait for the
            # GPU; they are read, and the loss checked for NaN/inf, only at log steps and at the epoch end.
            ep_sums = torch.zeros(2, dtype=torch.float64, device=device)
            win_sums = torch.zeros(2, dtype=torch.float64, device=device)
            ep_n = win_n = 0
            t0 = time.time()
            bar = tqdm(total=steps_per_epoch, initial=step % steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}",
                       disable=not (info.is_main and tcfg["progress"]), leave=False, mininterval=1.0)
            for waves, labels, _, failures in loader:
                read_failures += int(failures)
                lr = lr_at(step, steps_per_epoch, epochs, float(ocfg["lr"]), float(ocfg["final_lr"]),
                           float(ocfg["warmup_epochs"]))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                margin = margin_at(step, steps_per_epoch, final_margin, float(cfg["margin"]["start_epoch"]),
                                   float(cfg["margin"]["end_epoch"]))
                if has_margin:
                    net.head.set_margin(margin)
                gen.manual_seed(step_seed(seed, info.rank, step, 4))
                waves = waves.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                feats, labels = device_batch(waves, labels, cfg, chunk_samples, num_speakers, fbank, augmenter, gen)
                loss, logits = train_step(model, loss_fn, optimizer, scaler, feats, labels,
                                          amp_dtype if use_amp else None, clip)
                step += 1
                batch_sums = torch.stack([loss.double() * len(labels), (logits.argmax(-1) == labels).sum().double()])
                ep_sums += batch_sums
                win_sums += batch_sums
                ep_n += len(labels)
                win_n += len(labels)
                bar.update(1)
                if step % log_every == 0 or step % steps_per_epoch == 0:
                    (w_loss, w_correct), w_n = win_sums.tolist(), max(1, win_n)
                    if not math.isfinite(w_loss):
                        raise FloatingPointError(f"non-finite loss before step {step}: lower optim.lr or set "
                                                 "optim.grad_clip (the last complete checkpoint is still usable)")
                    if info.is_main and step % log_every == 0:
                        rate = w_n * info.world_size / max(1e-9, time.time() - t0)
                        log.info("epoch %d step %d/%d loss %.4f acc %.3f lr %.3g margin %.3f %.0f samples/s",
                                 epoch + 1, step, total_steps, w_loss / w_n, w_correct / w_n, lr, margin, rate)
                        if writer is not None:
                            for k, v in (("loss", w_loss / w_n), ("acc", w_correct / w_n), ("lr", lr),
                                         ("margin", margin), ("samples_per_s", rate)):
                                writer.add_scalar(f"train/{k}", v, step)
                    win_sums.zero_()
                    win_n = 0
                    t0 = time.time()
                if ckpt_every > 0 and step % ckpt_every == 0 and step % steps_per_epoch != 0:
                    save(None)
            bar.close()
            stats = torch.cat([ep_sums, torch.tensor([float(ep_n), float(read_failures)], dtype=torch.float64,
                                                     device=device)])
            if info.world_size > 1:
                dist.all_reduce(stats)  # on the device: NCCL reduces CUDA tensors only
            stats = stats.cpu()
            done_epoch = step // steps_per_epoch
            entry = {"epoch": done_epoch, "step": step, "loss": float(stats[0] / max(1, stats[2])),
                     "acc": float(stats[1] / max(1, stats[2]))}
            history.append(entry)
            if info.is_main:
                log.info("epoch %d done: loss %.4f acc %.4f (resumed epochs count only the part run here); "
                         "%d training reads failed and were replaced so far", done_epoch, entry["loss"],
                         entry["acc"], int(stats[3]))
                if writer is not None:
                    writer.add_scalar("epoch/loss", entry["loss"], step)
                    writer.add_scalar("epoch/acc", entry["acc"], step)
            save(done_epoch)
        if writer is not None:
            writer.close()
        if info.world_size > 1:
            dist.barrier()
        return TrainResult(net=net, exp_dir=exp_dir, step=step, history=history, skipped=dict(skipped))
    finally:
        if info.created and dist.is_initialized():
            dist.destroy_process_group()
