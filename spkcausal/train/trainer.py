"""Speaker-embedding training: device-side features and augmentation, DDP via torchrun, exact resume.

Per step on the device: waves -> [speed perturbation] -> [noise / reverb] -> Fbank -> model -> head -> loss.
CPU DataLoader workers only read audio (spkcausal.data.dataset). `train(cfg)` (a `Trainer` per rank) is the library
entry point; `spkcausal train --config conf.yaml key=value ... [--resume]` is a thin CLI over it. The config
schema is `spkcausal.nn.config.DEFAULTS` (typed by its TYPES on merge, so values are read as they are); the data
source and init_from come from `spkcausal.train.setup`, the network from `spkcausal.nn.network`, the process
group from `spkcausal.nn.distributed`, the lr / margin schedules from `spkcausal.train.schedules`.

Randomness of a step (augmentation draws, fbank dither) comes from a generator re-seeded from
(seed, rank, step), and chunk offsets from (seed, epoch, rank, position), so a resumed run repeats the
uninterrupted one exactly; the global RNG states are saved as well for anything else (e.g. dropout).
"""
from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..nn.checkpoint import (
    checkpoint_name,
    find_resume_checkpoint,
    load_checkpoint,
    load_state_checked,
    prune_checkpoints,
    remove_partial,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_latest,
)
from ..nn.config import DEFAULTS, merge_defaults, save_config, section_kwargs
from ..nn.distributed import DistInfo, distributed, is_peer_failure, peer_lost, resolve_device
from ..nn.heads.protocols import EpochHook, MarginSchedule, MovingMean
from ..nn.losses import EpochLoss, build_loss
from ..nn.network import SpeakerNet, build_network, check_schedule, num_classes_for
from ..utils import DataError, log_to_file, write_text_atomic
from .schedules import lr_at, margin_at, momentum_at, step_seed
from .setup import adopt_init_from, prepare_data
from .steps import build_feature_pipeline, device_batch, tail_tables, train_step

# ------------------------------------------------------------------ training


@dataclass
class TrainResult:
    """What `train` returns: the trained modules (unwrapped), per-epoch history and where things were written."""

    net: SpeakerNet
    exp_dir: Path
    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


class Trainer:
    """One rank's training run: built from a merged, typed config (merge_defaults), optionally restored, then
    `run()` to the end."""

    def __init__(self, cfg: dict[str, Any], info: DistInfo, resume: bool = False, model_named: str | None = None):
        self.info = info
        self.exp_dir = Path(cfg["exp_dir"])
        self.ckpt_dir = self.exp_dir / "checkpoints"
        self.device = resolve_device(cfg["train"]["device"], info.local_rank)
        self.log = logging.getLogger("spkcausal")  # train() attaches exp_dir/train.log on rank 0
        if info.is_main:
            remove_partial(self.ckpt_dir)
        ckpt_path = find_resume_checkpoint(self.ckpt_dir) if resume else None
        if not resume and self.ckpt_dir.is_dir() and any(self.ckpt_dir.glob("*.pt")):
            raise DataError("checkpoints exist; pass --resume to continue or choose a new exp_dir", self.ckpt_dir)
        self.cfg, init_state = adopt_init_from(cfg, ckpt_path, model_named)
        self.seed = self.cfg["seed"]
        torch.manual_seed(step_seed(self.seed, info.rank, 1))
        np.random.seed(step_seed(self.seed, info.rank, 2) % 2 ** 32)
        random.seed(step_seed(self.seed, info.rank, 3))

        num_classes, keep_head = self._build_data(init_state)
        self._build_sampler()
        self._build_model_and_loss(num_classes, init_state, keep_head)
        self._build_optimiser()
        self.fbank, self.augmenter = build_feature_pipeline(self.cfg, self.device)
        self.tail = tail_tables(self.cfg, self.dataset.class_counts(), self.device)
        self.gen = torch.Generator(device=self.device)

        self.step, self.history, self.read_failures = 0, [], 0
        if ckpt_path is not None:
            self.restore(ckpt_path)
        elif resume:
            self.log.info("no checkpoint in %s: starting from scratch", self.ckpt_dir)
        if info.is_main:  # once the run is known to start: a refused resume keeps the run's own config.yaml
            save_config(self.cfg, self.exp_dir / "config.yaml")
        self.model: nn.Module = self.net
        if info.world_size > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.loader = self._build_loader()
        self.writer = None
        if info.is_main and self.cfg["train"]["tensorboard"]:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.exp_dir / "tensorboard"), purge_step=self.step or None)
        units = "utterance classes (no speaker label)" if self.cfg["data"]["labels"] == "utterance" else "speakers"
        self.log.info("training %s + %s head: %d %s, %d classes, %d utts, %d ranks, %d steps/epoch x %d epochs "
                      "on %s (%s)", self.cfg["model"]["name"], self.cfg["head"]["name"], self.num_speakers,
                      units, num_classes, self.dataset.num_utts, info.world_size, self.steps_per_epoch, self.epochs,
                      self.device, self.cfg["train"]["precision"] if self.amp_dtype is not None else "fp32")

    # ---------------------------------------------------------------- builders (called once, in this order)

    def _build_data(self, init_state: dict | None) -> tuple[int, bool]:
        """The training dataset (files or shards) and speakers.txt; returns (head classes, keep the init head)."""
        tcfg = self.cfg["train"]
        self.dataset, (self.chunk_samples, self.skipped) = prepare_data(self.cfg, self.info, self.exp_dir, self.log)
        self.num_speakers = self.dataset.num_speakers
        num_classes = num_classes_for(self.num_speakers, self.cfg)
        keep_head = bool(tcfg.get("init_head")) and init_state is not None
        if keep_head:  # large-margin fine-tuning: the same speakers, the head (and x_bar) carried on
            if list(init_state.get("speakers", [])) != list(self.dataset.speakers):
                raise DataError("init_head: the checkpoint was trained on other speakers (or another order); a kept "
                                "head needs the same training set", tcfg["init_from"])
            num_classes = int(init_state["head"]["weight"].shape[0])  # e.g. speed-perturbed classes, now unused
        if self.info.is_main:
            write_text_atomic(self.exp_dir / "speakers.txt", "".join(s + "\n" for s in self.dataset.speakers))
        return num_classes, keep_head

    def _build_sampler(self) -> None:
        """The epoch order (a LongTailSampler, or the shard stream itself) and the step counts it implies."""
        from ..data.samplers import build_sampler

        cfg, info = self.cfg, self.info
        self.batch_size, self.epochs = cfg["train"]["batch_size"], cfg["train"]["epochs"]
        self.sharded = bool(cfg["data"].get("shards"))
        if self.sharded:
            self.sampler = self.dataset  # the stream plans its own order (spkcausal.data.shardstream)
        else:
            self.sampler = build_sampler(cfg["sampler"]["name"], self.dataset.labels, seed=self.seed,
                                         num_samples=cfg["sampler"].get("num_samples"),
                                         num_replicas=info.world_size, rank=info.rank, epochs=self.epochs,
                                         batch_size=self.batch_size,
                                         utts_per_speaker=cfg["sampler"]["utts_per_speaker"],
                                         views=cfg["sampler"]["views"])
        self.steps_per_epoch = self.sampler.epoch_length // self.batch_size
        if self.steps_per_epoch == 0:
            raise DataError(f"{self.sampler.epoch_length} samples per rank and epoch is less than one batch of "
                            f"{self.batch_size}", cfg["data"]["shards"] or cfg["data"]["train"])
        self.total_steps = self.epochs * self.steps_per_epoch

    def _build_model_and_loss(self, num_classes: int, init_state: dict | None, keep_head: bool) -> None:
        """Network (initialised from train.init_from when set) and the loss with the training class counts."""
        cfg = self.cfg
        counts = np.tile(self.dataset.class_counts(), num_classes // self.num_speakers)
        self.net = build_network(cfg, num_classes, class_counts=counts).to(self.device)
        if init_state is not None and not init_state["resuming"]:
            saved = merge_defaults(init_state["config"])
            load_state_checked(self.net.model, init_state["model"], cfg["train"]["init_from"], "model",
                               saved["model"]["name"], cfg["model"]["name"])
            if keep_head:
                load_state_checked(self.net.head, init_state["head"], cfg["train"]["init_from"], "head",
                                   saved["head"]["name"], cfg["head"]["name"])
            self.log.info("extractor %sinitialised from %s", "and head " if keep_head else "",
                          cfg["train"]["init_from"])
        head = self.net.head  # the configured margin (or the class default) is the schedule's final value
        self.final_margin = float(head.margin) if isinstance(head, MarginSchedule) else 0.0
        self.loss_fn = build_loss(cfg["loss"]["name"], class_counts=counts,
                                  **section_kwargs(cfg["loss"])).to(self.device)

    def _build_optimiser(self) -> None:
        """SGD over the network, the autocast dtype and the gradient scaler of train.precision."""
        ocfg, precision = self.cfg["optim"], self.cfg["train"]["precision"]
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=ocfg["lr"], momentum=ocfg["momentum"],
                                         nesterov=ocfg["nesterov"], weight_decay=ocfg["weight_decay"])
        use_amp = self.device.type == "cuda" and precision != "fp32"
        self.amp_dtype = (torch.bfloat16 if precision == "bf16" else torch.float16) if use_amp else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_amp and precision == "fp16")

    def _build_loader(self) -> Any:
        """The DataLoader of the sampler (files) or of the shard stream's whole batches."""
        dcfg = self.cfg["data"]
        kwargs = {"num_workers": dcfg["num_workers"], "pin_memory": dcfg["pin_memory"],
                  "prefetch_factor": dcfg["prefetch_factor"], "generator_seed": self.seed}
        if self.sharded:
            from ..data.shardstream import shard_loader

            return shard_loader(self.dataset, **kwargs)
        from ..data.dataset import train_loader

        return train_loader(self.dataset, self.sampler, self.batch_size, **kwargs)

    # ---------------------------------------------------------------- schedules and state

    def lr(self, step: int) -> float:
        """Learning rate of a global step."""
        o = self.cfg["optim"]
        return lr_at(step, self.steps_per_epoch, self.epochs, o["lr"], o["final_lr"], o["warmup_epochs"])

    def margin(self, step: int) -> float:
        """Margin of a global step."""
        m = self.cfg["margin"]
        return margin_at(step, self.steps_per_epoch, self.final_margin, m["start_epoch"], m["end_epoch"])

    def restore(self, path: Path) -> None:
        """Load everything a checkpoint holds; refuse one that cannot continue this exact run."""
        ckpt = load_checkpoint(path, map_location="cpu")
        if int(ckpt["steps_per_epoch"]) != self.steps_per_epoch or int(ckpt["world_size"]) != self.info.world_size:
            raise DataError(f"checkpoint was written with {ckpt['steps_per_epoch']} steps/epoch on "
                            f"{ckpt['world_size']} ranks; this run has {self.steps_per_epoch} on "
                            f"{self.info.world_size} (batch size, data or world size changed): exact resume is "
                            "impossible", path)
        try:
            self.sampler.load_state_dict(ckpt["sampler"])  # same seed and scheme, or the order would differ
        except ValueError as e:
            raise DataError(str(e), path) from None
        saved = merge_defaults(ckpt["config"]) if "config" in ckpt else self.cfg
        load_state_checked(self.net.model, ckpt["model"], path, "model", saved["model"]["name"],
                           self.cfg["model"]["name"])
        load_state_checked(self.net.head, ckpt["head"], path, "head", saved["head"]["name"], self.cfg["head"]["name"])
        if self.net.encoder_loss is not None:  # momentum extractor, queue, learnable scale / bias
            if ckpt.get("encoder_loss") is None:
                raise DataError(f"checkpoint has no encoder_loss state; this run trains with encoder_loss "
                                f"{self.cfg['encoder_loss']['name']!r}", path)
            self.net.encoder_loss.load_state_dict(ckpt["encoder_loss"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.history = int(ckpt["step"]), list(ckpt.get("history", []))
        set_rng_state(ckpt["rng"][self.info.rank], self.gen)
        self.log.info("resumed from %s at step %d (epoch %d, step %d of it)", path, self.step,
                      self.step // self.steps_per_epoch + 1, self.step % self.steps_per_epoch)

    def save(self, epoch_end: int | None) -> None:
        """Checkpoint (collective: every rank contributes its RNG state; rank 0 writes)."""
        states = [rng_state(self.gen)]
        if self.info.world_size > 1:
            states = [None] * self.info.world_size
            dist.all_gather_object(states, rng_state(self.gen))
        if not self.info.is_main:
            return
        step, spe = self.step, self.steps_per_epoch
        state = {
            "model": self.net.model.state_dict(), "head": self.net.head.state_dict(),
            "encoder_loss": None if self.net.encoder_loss is None else self.net.encoder_loss.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "step": step, "epoch": step // spe, "steps_per_epoch": spe, "world_size": self.info.world_size,
            "sampler": {**self.sampler.state_dict(), "epoch": step // spe, "start": (step % spe) * self.batch_size},
            "rng": states, "schedule": {"lr": self.lr(step), "margin": self.margin(step)},
            "history": self.history, "num_speakers": self.num_speakers, "speakers": list(self.dataset.speakers),
            "config": copy.deepcopy(self.cfg),
        }
        name = checkpoint_name(step, epoch_end)
        save_checkpoint(state, self.ckpt_dir / name)
        write_latest(self.ckpt_dir, name)
        tcfg = self.cfg["train"]
        prune_checkpoints(self.ckpt_dir, tcfg["keep_last"], tcfg["keep_epochs"])
        self.log.info("saved checkpoint %s (step %d)", self.ckpt_dir / name, step)

    # ---------------------------------------------------------------- loop

    def _scalars(self, prefix: str, values: dict[str, float]) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, self.step)

    def run_epoch(self) -> None:
        """Train from the current step to the end of its epoch, then checkpoint."""
        from tqdm import tqdm

        tcfg, spe = self.cfg["train"], self.steps_per_epoch
        epoch = self._start_epoch()
        ckpt_every, log_every = tcfg["ckpt_every_steps"], max(1, tcfg["log_every"])
        # Loss and correct-count sums stay on the device (epoch and log window) so steps never wait for the GPU;
        # they are read, and the loss checked for NaN/inf, only at log steps and at the epoch end.
        ep_sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        win_sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        ep_n = win_n = 0
        t0 = time.time()
        bar = tqdm(total=spe, initial=self.step % spe, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False,
                   disable=not (self.info.is_main and tcfg["progress"]), mininterval=1.0)
        for waves, labels, _, failures in self.loader:
            self.read_failures += int(failures)
            batch_sums, n = self._train_batch(waves, labels)
            ep_sums += batch_sums
            win_sums += batch_sums
            ep_n += n
            win_n += n
            bar.update(1)
            if self.step % log_every == 0 or self.step % spe == 0:
                self._log_window(epoch, win_sums, win_n, t0, log_every)
                win_sums.zero_()
                win_n, t0 = 0, time.time()
            if ckpt_every > 0 and self.step % ckpt_every == 0 and self.step % spe != 0:
                self.save(None)
        bar.close()
        self._finish_epoch(ep_sums, ep_n)

    def _start_epoch(self) -> int:
        """Point the sampler, the loss and the x_bar momentum at the epoch of the current step (also mid-epoch,
        after a resume); returns the 0-based epoch."""
        spe = self.steps_per_epoch
        epoch = self.step // spe
        if isinstance(self.net.head, MovingMean) and self.net.head.momentum_auto:
            self.net.head.momentum = momentum_at(self.lr(epoch * spe))
            if self.info.is_main:
                self.log.info("epoch %d: x_bar momentum %.6f (auto, from lr %.4g)", epoch + 1, self.net.head.momentum,
                              self.lr(epoch * spe))
        if isinstance(self.net.head, EpochHook):  # two-stage heads (OLTR: class sums, then the memory)
            self.net.head.set_epoch(epoch, self.epochs)
        self.sampler.set_epoch(epoch)
        self.sampler.set_start((self.step % spe) * self.batch_size)
        if isinstance(self.loss_fn, EpochLoss):  # epoch-dependent losses (DRW); also right after a mid-epoch resume
            self.loss_fn.set_epoch(epoch)
        return epoch

    def _train_batch(self, waves: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """One optimisation step at the schedules' lr and margin; returns ([loss sum, correct] on the device, n)."""
        dev = self.device
        self._lr, self._margin = lr, margin = self.lr(self.step), self.margin(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if isinstance(self.net.head, MarginSchedule):
            self.net.head.set_margin(margin)
        self.gen.manual_seed(step_seed(self.seed, self.info.rank, self.step, 4))
        waves, labels = waves.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
        feats, labels = device_batch(waves, labels, self.cfg, self.chunk_samples, self.num_speakers, self.fbank,
                                     self.augmenter, self.gen, self.tail)
        loss, logits = train_step(self.model, self.loss_fn, self.optimizer, self.scaler, feats, labels,
                                  self.amp_dtype, self.cfg["optim"].get("grad_clip") or 0.0)
        self.step += 1
        return torch.stack([loss.double() * len(labels), (logits.argmax(-1) == labels).sum().double()]), len(labels)

    def _log_window(self, epoch: int, win_sums: torch.Tensor, win_n: int, t0: float, log_every: int) -> None:
        """Check the window's loss for NaN / inf and, at log steps, log and plot its means."""
        (w_loss, w_correct), w_n = win_sums.tolist(), max(1, win_n)
        if not math.isfinite(w_loss):
            raise FloatingPointError(f"non-finite loss before step {self.step}: lower optim.lr or set "
                                     "optim.grad_clip (the last complete checkpoint is still usable)")
        if self.info.is_main and self.step % log_every == 0:
            lr, margin = self._lr, self._margin
            rate = w_n * self.info.world_size / max(1e-9, time.time() - t0)
            self.log.info("epoch %d step %d/%d loss %.4f acc %.3f lr %.3g margin %.3f %.0f samples/s",
                          epoch + 1, self.step, self.total_steps, w_loss / w_n, w_correct / w_n, lr, margin, rate)
            self._scalars("train", {"loss": w_loss / w_n, "acc": w_correct / w_n, "lr": lr, "margin": margin,
                                    "samples_per_s": rate})

    def _finish_epoch(self, ep_sums: torch.Tensor, ep_n: int) -> None:
        """Reduce the epoch's sums over the ranks, record and log the history entry, checkpoint."""
        info, spe = self.info, self.steps_per_epoch
        stats = torch.cat([ep_sums, torch.tensor([float(ep_n), float(self.read_failures)], dtype=torch.float64,
                                                 device=self.device)])
        if info.world_size > 1:
            dist.all_reduce(stats)  # on the device: NCCL reduces CUDA tensors only
        loss_sum, correct, n, failed = stats.cpu().tolist()
        entry = {"epoch": self.step // spe, "step": self.step, "loss": loss_sum / max(1, n),
                 "acc": correct / max(1, n)}
        if isinstance(self.net.head, MovingMean):
            entry["x_bar_momentum"] = float(self.net.head.momentum)
        self.history.append(entry)
        if info.is_main:
            self.log.info("epoch %d done: loss %.4f acc %.4f (resumed epochs count only the part run here); "
                          "%d training reads failed and were replaced so far", entry["epoch"], entry["loss"],
                          entry["acc"], int(failed))
            self._scalars("epoch", {"loss": entry["loss"], "acc": entry["acc"]})
        self.save(entry["epoch"])

    def run(self) -> TrainResult:
        """Train until `train.epochs` are done (nothing to do if they already are)."""
        self.net.train()
        try:
            while self.step < self.total_steps:
                self.run_epoch()
        except Exception as e:
            if self.info.world_size > 1 and is_peer_failure(e):
                raise peer_lost(e, self.info.rank, self.info.world_size, self.cfg["train"].get("dist_timeout")) \
                    from None
            raise
        if self.writer is not None:
            self.writer.close()
        if self.info.world_size > 1:
            dist.barrier()
        return TrainResult(net=self.net, exp_dir=self.exp_dir, step=self.step, history=self.history,
                           skipped=dict(self.skipped))


def train(cfg: Mapping[str, Any], resume: bool = False) -> TrainResult:
    """Train from a (merged or partial) config; with `resume`, continue from the newest complete checkpoint. A
    partial config that names model.name along with train.init_from must name the source's model."""
    model = cfg.get("model")
    model_named = model.get("name") if isinstance(model, Mapping) else None
    if model_named == DEFAULTS["model"]["name"]:  # a merged config's default is no choice (`spkcausal train` knows)
        model_named = None
    cfg = merge_defaults(cfg)
    if cfg["exp_dir"] is None:
        raise DataError("config key exp_dir is not set")
    check_schedule(cfg)
    with distributed(cfg["train"]["device"], cfg["train"].get("dist_timeout")) as info:
        with log_to_file(Path(cfg["exp_dir"]) / "train.log") if info.is_main else nullcontext():
            return Trainer(cfg, info, resume, model_named).run()
