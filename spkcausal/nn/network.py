"""Network building blocks from a config: extractor, head, front-end, the training module `SpeakerNet`, and
which checkpoint file a checkpoint-or-experiment argument names. Loading a trained model back is
`spkcausal.nn.assemble.assemble`.

A checkpoint (`checkpoints/*.pt` of `spkcausal train`, or `avg_model.pt` of `average-ckpt`) carries its merged
config, so nothing else is needed to rebuild it; an experiment dir stands for its `avg_model.pt`, else its
newest complete checkpoint.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..utils import DataError, PathLike, UsageError
from .checkpoint import find_resume_checkpoint
from .config import section_kwargs


class SpeakerNet(nn.Module):
    """Training-time nn.Module: extractor + head as one module (what DDP wraps); inference uses TrainedModel."""

    def __init__(self, model: nn.Module, head: nn.Module, encoder_loss: nn.Module | None = None):
        super().__init__()
        self.model, self.head = model, head
        self.encoder_loss = encoder_loss  # spkcausal.nn.encoder_losses; None: classification only
        self.extra_loss: Tensor | None = None

    def forward(self, feats: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(embeddings, logits); in training with labels, `extra_loss` holds the encoder-loss term."""
        extra = self.encoder_loss is not None and self.training and labels is not None
        if extra:
            self.encoder_loss.prepare(self.model)
        emb = self.model(feats)
        logits = self.head(emb.float(), labels)
        # inside forward, so DDP sees its parameters (prototypical w, b) in the graph it reduces
        self.extra_loss = self.encoder_loss(emb, labels, feats, self.model) if extra else None
        return emb, logits


def check_components(cfg: Mapping[str, Any]) -> None:
    """Model, head and loss names and the kinds of their keys (UsageError), before any data is read."""
    from ..registry import check_kwargs
    from .encoder_losses import check_encoder_loss
    from .heads import check_head_kwargs
    from .losses import LOSSES
    from .models import MODELS

    for section, registry in (("model", MODELS), ("loss", LOSSES)):
        check_kwargs(registry.get(cfg[section]["name"]), section_kwargs(cfg[section]), section)
    check_head_kwargs(cfg["head"]["name"], section_kwargs(cfg["head"]))
    check_schedule(cfg)
    if check_encoder_loss(cfg.get("encoder_loss") or {}) is None and cfg["loss"]["name"] == "none":
        raise UsageError("config key loss.name: 'none' leaves nothing to train without an encoder loss; expected "
                         "encoder_loss.name set (e.g. kpositive, for self-supervised pre-training) or another loss")


def check_schedule(cfg: Mapping[str, Any]) -> None:
    """Epoch-numbered switches must fall inside the run: DRW's `loss.drw_epoch` (0-based) and OLTR's stage 2 (after
    `head.stage1_epochs`) before train.epochs, or the run is silently its own baseline (UsageError naming the key)."""
    from ..schema import coerce
    from .heads.oltr import stage1_epoch_count
    from .losses import DrwEpoch

    epochs = cfg["train"]["epochs"]
    drw = coerce(cfg["loss"].get("drw_epoch"), DrwEpoch, "loss.drw_epoch")  # as the loss will take it ('5' -> 5)
    if drw is not None and drw >= epochs:
        raise UsageError(f"config key loss.drw_epoch: {drw} is at or past the last epoch of train.epochs={epochs} "
                         f"(0-based epochs 0..{epochs - 1}): the class weights would never apply; expected < {epochs}")
    if cfg["head"]["name"] == "oltr":
        s1 = stage1_epoch_count(cfg["head"].get("stage1_epochs", 0.5), epochs)
        if s1 is not None and s1 >= epochs:
            raise UsageError(f"config key head.stage1_epochs: {cfg['head'].get('stage1_epochs', 0.5)} leaves OLTR no "
                             f"stage 2 in train.epochs={epochs} (the run would be its AAM baseline); expected fewer "
                             f"stage-1 epochs than {epochs}")


def build_network(cfg: Mapping[str, Any], num_classes: int, class_counts: Any = None) -> SpeakerNet:
    """Model (`cfg['model']`), head (`cfg['head']`) and encoder loss (`cfg['encoder_loss']`) from the registries;
    n_mels follows the features;
    `class_counts` (utterances per class) go to a head that uses them (LDAM margins, feature transfer)."""
    from .encoder_losses import build_encoder_loss

    model = build_extractor(cfg)
    return SpeakerNet(model, build_head_for(cfg, model.embed_dim, num_classes, class_counts),
                      build_encoder_loss(cfg.get("encoder_loss") or {}, model))


def build_extractor(cfg: Mapping[str, Any]) -> nn.Module:
    """The embedding extractor of `cfg['model']`; its n_mels follows the features."""
    from .models import build_model

    return build_model(cfg["model"]["name"], n_mels=cfg["features"].get("n_mels", 80), **section_kwargs(cfg["model"]))


def build_head_for(cfg: Mapping[str, Any], embed_dim: int, num_classes: int, class_counts: Any = None) -> nn.Module:
    """The classifier head of `cfg['head']` (class counts: see `build_network`)."""
    from .heads import build_head

    return build_head(cfg["head"]["name"], embed_dim, num_classes, class_counts=class_counts,
                      **section_kwargs(cfg["head"]))


def speed_makes_speakers(cfg: Mapping[str, Any]) -> bool:
    """True when speed-perturbed copies are new speakers (augment.speed_perturb and augment.speed_new_speakers)."""
    aug = cfg["augment"]
    return bool(aug.get("speed_perturb")) and bool(aug.get("speed_new_speakers", True))


def num_classes_for(num_speakers: int, cfg: Mapping[str, Any]) -> int:
    """Speakers, times the number of speed factors when speed perturbation makes new speakers."""
    from .augment import SPEED_FACTORS

    return num_speakers * (len(SPEED_FACTORS) if speed_makes_speakers(cfg) else 1)


def build_fbank(cfg: Mapping[str, Any], training: bool = True) -> nn.Module:
    """Fbank from `features` at `data.sample_rate`; dither only for training (extraction is deterministic)."""
    from .features import FRONTENDS, Fbank, SpeechBrainFbank

    kwargs = {**cfg["features"], "sample_rate": cfg["data"]["sample_rate"]}
    frontend = kwargs.pop("frontend", "kaldi")
    if frontend not in FRONTENDS:
        raise UsageError(f"features.frontend={frontend!r}; expected one of {FRONTENDS}")
    if cfg["features"].get("sample_rate", kwargs["sample_rate"]) != kwargs["sample_rate"]:
        raise UsageError("features.sample_rate differs from data.sample_rate; set data.sample_rate only")
    if frontend == "speechbrain":
        kwargs.pop("dither", None)  # speechbrain's Fbank has none
        return SpeechBrainFbank(**kwargs).train(training)
    if not training:
        kwargs["dither"] = 0.0
    return Fbank(**kwargs).train(training)


def resolve_checkpoint(ckpt: PathLike | None = None, exp_dir: PathLike | None = None) -> Path:
    """The checkpoint file given, or an experiment's `avg_model.pt` (else its newest complete checkpoint).

    Exactly one of the two; a directory given as `ckpt` is taken as an experiment dir."""
    if (ckpt is None) == (exp_dir is None):
        raise UsageError("give exactly one of a checkpoint file or an experiment dir")
    if ckpt is not None:
        if not Path(ckpt).is_dir():
            if not Path(ckpt).is_file():
                raise DataError("checkpoint file not found", ckpt)
            return Path(ckpt)
        exp_dir = ckpt
    exp_dir = Path(exp_dir)
    avg = exp_dir / "avg_model.pt"
    if avg.is_file():
        return avg
    found = find_resume_checkpoint(exp_dir / "checkpoints")
    if found is None:
        raise DataError("no avg_model.pt and no checkpoint under checkpoints/", exp_dir)
    return found
