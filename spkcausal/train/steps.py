"""One training step on the device: the batch pipeline (speed perturbation -> noise / reverb -> Fbank, all
batched on the training device) and one optimisation step of a SpeakerNet (autocast, grad scaler, clipping)."""
from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.heads.protocols import ExtraLoss
from ..nn.network import build_fbank, speed_makes_speakers


def build_feature_pipeline(cfg: Mapping[str, Any], device: torch.device) -> tuple[nn.Module, nn.Module | None]:
    """(Fbank in training mode, Augmenter or None) on `device`."""
    aug_cfg = cfg["augment"]
    fbank = build_fbank(cfg, training=True).to(device)
    augmenter = None
    if aug_cfg.get("musan") or aug_cfg.get("rirs"):
        from ..nn.augment import Augmenter, NoiseBank, RirBank

        sr = cfg["data"]["sample_rate"]
        noise = NoiseBank.from_dir(aug_cfg["musan"], sr, aug_cfg["musan_max_seconds"]) if aug_cfg.get("musan") else None
        rirs = RirBank.from_dir(aug_cfg["rirs"], sr, aug_cfg["rir_max_seconds"]) if aug_cfg.get("rirs") else None
        augmenter = Augmenter(noise, rirs, prob=aug_cfg["prob"]).to(device)
    return fbank, augmenter


def tail_tables(cfg: Mapping[str, Any], class_counts: Any, device: torch.device) -> dict[str, Tensor]:
    """Tail-aware augmentation: per speaker label, its shot group's augmentation probability ('prob', from
    augment.group_prob) and speed-perturbation probability ('speed', augment.group_speed), for those set; groups
    from the training counts: Many > augment.group_many, Few < augment.group_few (spkcausal.data.longtail)."""
    from ..data.longtail import GROUPS, shot_groups
    from ..utils import UsageError

    aug = cfg["augment"]
    if aug.get("group_speed") is not None and not aug.get("speed_perturb"):
        raise UsageError("augment.group_speed needs augment.speed_perturb: true")
    if aug.get("group_prob") is not None and not (aug.get("musan") or aug.get("rirs")):
        raise UsageError("augment.group_prob needs augment.musan or augment.rirs (nothing to apply)")
    groups = shot_groups(class_counts, aug["group_many"], aug["group_few"])
    group = torch.tensor([GROUPS.index(g) for g in groups], dtype=torch.long)
    out = {}
    for key, name in (("prob", "group_prob"), ("speed", "group_speed")):
        if cfg["augment"].get(name) is not None:
            out[key] = torch.tensor(aug[name], dtype=torch.float32)[group].to(device)
    return out


def device_batch(waves: Tensor, labels: Tensor, cfg: Mapping[str, Any], chunk_samples: int, num_speakers: int,
                 fbank: nn.Module, augmenter: nn.Module | None, generator: torch.Generator,
                 tail: Mapping[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Waves on the device -> (features, labels): speed perturbation, augmentation, fbank (all batched); `tail`
    (tail_tables) sets both probabilities per utterance by its speaker's shot group."""
    tail = tail or {}
    if cfg["augment"].get("speed_perturb"):
        from ..nn.augment import SPEED_FACTORS, draw_speed, draw_speed_by_row, speed_labels, speed_perturb

        if "speed" in tail:
            k = draw_speed_by_row(tail["speed"][labels], generator)
        else:
            k = draw_speed(waves.shape[0], generator, waves.device)
        factors = torch.tensor(SPEED_FACTORS, dtype=torch.float64)[k.cpu()]
        waves = speed_perturb(waves, factors, out_len=chunk_samples)
        if speed_makes_speakers(cfg):
            labels = speed_labels(labels, k, num_speakers)
    if augmenter is not None:
        # the label before speed perturbation: groups are of the original speakers
        prob = tail["prob"][labels % num_speakers] if "prob" in tail else None
        waves = augmenter(waves, generator, prob=prob)
    return fbank(waves, generator=generator), labels


def train_step(model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, feats: Tensor, labels: Tensor, amp_dtype: torch.dtype | None = None,
               clip: float = 0.0) -> tuple[Tensor, Tensor]:
    """One optimisation step of a SpeakerNet (or its DDP wrapper) on device features; returns (loss, logits)."""
    ctx = torch.autocast(feats.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    with ctx:
        _, logits = model(feats, labels)
    loss = loss_fn(logits.float(), labels)
    net = getattr(model, "module", model)
    for owner in (net.head, net):  # a head's own term (OLTR), the encoder-loss term (spkcausal.nn.encoder_losses)
        if isinstance(owner, ExtraLoss) and owner.extra_loss is not None:
            loss = loss + owner.extra_loss
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()
