"""Model assembly and loading: a network built from a config, and any checkpoint loaded back into
(extractor, head, config, speakers) for training, extraction and identification alike.

A checkpoint (`checkpoints/*.pt` of `spkcausal train`, or `avg_model.pt` of `average-ckpt`) carries its merged
config, so nothing else is needed to rebuild it; an experiment dir stands for its `avg_model.pt`, else its
newest complete checkpoint.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..utils import DataError, PathLike, UsageError
from .checkpoint import find_resume_checkpoint, load_checkpoint
from .config import merge_defaults


class SpeakerNet(nn.Module):
    """Extractor + classifier head as one module (one DDP wrapper, one state)."""

    def __init__(self, model: nn.Module, head: nn.Module):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, feats: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(embeddings, logits)."""
        emb = self.model(feats)
        return emb, self.head(emb.float(), labels)


def section_kwargs(section: Mapping[str, Any]) -> dict[str, Any]:
    """A config section's keys except `name` (what the registry passes to the built class)."""
    return {k: v for k, v in section.items() if k != "name"}


def build_network(cfg: Mapping[str, Any], num_classes: int, class_counts: Any = None) -> SpeakerNet:
    """Model (`cfg['model']`) and head (`cfg['head']`) from the registries; n_mels follows the features;
    `class_counts` (utterances per class) go to a head that uses them (LDAM margins, feature transfer)."""
    model = build_extractor(cfg)
    return SpeakerNet(model, build_head_for(cfg, model.embed_dim, num_classes, class_counts))


def build_extractor(cfg: Mapping[str, Any]) -> nn.Module:
    """The embedding extractor of `cfg['model']`; its n_mels follows the features."""
    from .models import build_model

    return build_model(cfg["model"]["name"], n_mels=cfg["features"].get("n_mels", 80), **section_kwargs(cfg["model"]))


def build_head_for(cfg: Mapping[str, Any], embed_dim: int, num_classes: int, class_counts: Any = None) -> nn.Module:
    """The classifier head of `cfg['head']` (class counts: see `build_network`)."""
    from .heads import build_head

    return build_head(cfg["head"]["name"], embed_dim, num_classes, class_counts=class_counts,
                      **section_kwargs(cfg["head"]))


def num_classes_for(num_speakers: int, cfg: Mapping[str, Any]) -> int:
    """Speakers, times the number of speed factors when speed perturbation makes new speakers."""
    from .augment import SPEED_FACTORS

    return num_speakers * (len(SPEED_FACTORS) if cfg["augment"].get("speed_perturb") else 1)


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


@dataclass
class TrainedModel:
    """A trained extractor (None when only the head was loaded) and head in eval mode, with their config and
    the speaker of every class (class i is `speakers[i]`; speed-perturbed copies follow as extra classes)."""

    model: nn.Module | None
    head: nn.Module
    config: dict[str, Any]
    speakers: list[str]
    path: Path

    @property
    def is_causal(self) -> bool:
        """True for a Causal Norm head (it carries x_bar, so TDE applies)."""
        from .heads import is_causal

        return is_causal(self.head)

    def require_causal(self, what: str = "TDE") -> None:
        """Raise a DataError naming the checkpoint unless its head is a Causal Norm head."""
        if not self.is_causal:
            raise DataError(f"{what} needs a Causal Norm head; this checkpoint has {self.config['head']['name']!r}",
                            self.path)

    def fbank(self, device: torch.device | str = "cpu") -> nn.Module:
        """The model's feature extractor in inference mode (no dither) on `device`."""
        return build_fbank(self.config, training=False).to(device)


def load_trained(ckpt: PathLike | None = None, exp_dir: PathLike | None = None, device: torch.device | str = "cpu",
                 with_model: bool = True) -> TrainedModel:
    """Load a training or averaged checkpoint (weights_only), or an experiment's, in eval mode on `device`."""
    path = resolve_checkpoint(ckpt, exp_dir)
    state = load_checkpoint(path)
    for key in ("config", "head", "speakers") + (("model",) if with_model else ()):
        if key not in state:
            raise DataError(f"checkpoint has no {key!r} entry (not written by spkcausal train / average-ckpt)", path)
    cfg = merge_defaults(state["config"])
    weight = state["head"]["weight"]  # (C, D), or (C, K, D) with sub-centres
    head = build_head_for(cfg, int(weight.shape[-1]), int(weight.shape[0]))
    head.load_state_dict(state["head"])
    model = None
    if with_model:
        model = build_extractor(cfg)
        model.load_state_dict(state["model"])
        model.to(device).eval()
    head.to(device).eval()
    return TrainedModel(model, head, cfg, [str(s) for s in state["speakers"]], path)


def load_inference(ckpt: PathLike | None = None, exp_dir: PathLike | None = None,
                   device: torch.device | str = "cpu") -> TrainedModel:
    """Like `load_trained`, but a checkpoint without a head (`import-speechbrain`) loads too, with head None."""
    path = resolve_checkpoint(ckpt, exp_dir)
    state = load_checkpoint(path)
    if state.get("head") is not None:
        return load_trained(path, device=device)
    for key in ("config", "model"):
        if key not in state:
            raise DataError(f"checkpoint has no {key!r} entry (not written by spkcausal)", path)
    cfg = merge_defaults(state["config"])
    model = build_extractor(cfg)
    model.load_state_dict(state["model"])
    return TrainedModel(model.to(device).eval(), None, cfg, [str(s) for s in state.get("speakers") or []], path)
