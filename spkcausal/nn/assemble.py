"""The one place a trained model is put back together: checkpoint or experiment dir -> its config ->
extractor, head and front-end with their weights, in eval mode (`assemble`). Extraction, identification,
TDE's alpha choice, export, SpeechBrain export and the Python API all call it.

Also the model-level classification every consumer of a loaded head shares (`head_logits`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..utils import DataError, PathLike
from .checkpoint import load_checkpoint, load_state_checked
from .config import merge_defaults
from .heads import is_causal
from .heads.protocols import MovingMean
from .network import build_extractor, build_fbank, build_head_for, resolve_checkpoint

__all__ = ["TrainedModel", "assemble", "head_logits"]


@dataclass
class TrainedModel:
    """Inference-time parts of one loaded checkpoint (what `assemble` returns; api.SpeakerModel wraps it).

    Extractor (None when only the head was asked for), front-end, head (None for an imported extractor) in eval
    mode, with the config and the speaker of every class (class i is `speakers[i]`; speed-perturbed copies
    follow as extra classes)."""

    model: nn.Module | None
    head: nn.Module | None
    config: dict[str, Any]
    speakers: list[str]
    path: Path
    frontend: nn.Module | None = None

    @property
    def is_causal(self) -> bool:
        """True for a Causal Norm head (it carries x_bar, so TDE applies)."""
        return self.head is not None and is_causal(self.head)

    def require_causal(self, what: str = "TDE") -> None:
        """Raise a DataError naming the checkpoint unless its head is a Causal Norm head."""
        if not self.is_causal:
            name = self.config["head"]["name"] if self.head is not None else None
            raise DataError(f"{what} needs a Causal Norm head; this checkpoint has {name!r}", self.path)

    @property
    def num_heads(self) -> int:
        """K, the head's number of chunks (1 for a head without chunks)."""
        return int(self.head.num_heads) if isinstance(self.head, MovingMean) else 1

    @property
    def feature_norm(self) -> str:
        """The head's per-chunk feature normalisation for TDE: "l2", or "capsule" for a capsule head."""
        return str(self.head.feature_norm) if isinstance(self.head, MovingMean) else "l2"

    def mean_feature(self) -> np.ndarray | None:
        """The head's x_bar as float32 numpy (None without a Causal Norm head)."""
        return self.head.mean_feature.detach().float().cpu().numpy() if self.is_causal else None


def _require(state: dict, keys: tuple[str, ...], path: Path, writer: str) -> None:
    for key in keys:
        if key not in state:
            raise DataError(f"checkpoint has no {key!r} entry (not written by {writer})", path)


def assemble(source: PathLike | None = None, exp_dir: PathLike | None = None, device: torch.device | str = "cpu",
             with_model: bool = True, need_head: bool = True) -> TrainedModel:
    """Load a checkpoint file or an experiment dir (its avg_model.pt, else newest checkpoint; weights_only) into
    a TrainedModel on `device`: head, and with `with_model` extractor and inference front-end (no dither).

    `need_head=False` also accepts a checkpoint without a head (`import-speechbrain`): head is then None."""
    path = resolve_checkpoint(source, exp_dir)
    state = load_checkpoint(path)
    has_head = state.get("head") is not None
    if need_head or has_head:
        _require(state, ("config", "head", "speakers") + (("model",) if with_model else ()), path,
                 "spkcausal train / average-ckpt")
    else:
        _require(state, ("config",) + (("model",) if with_model else ()), path, "spkcausal")
    if need_head and not has_head:
        raise DataError("checkpoint has no classifier head (an imported extractor); this needs a trained head", path)
    cfg = merge_defaults(state["config"])
    head = None
    if has_head:
        weight = state["head"]["weight"]
        head = build_head_for(cfg, int(weight.shape[-1]), int(weight.shape[0]))  # (C, D) or (C, K, D)
        load_state_checked(head, state["head"], path, "head", cfg["head"]["name"], cfg["head"]["name"])
        head.to(device).eval()
    model = frontend = None
    if with_model:
        model = build_extractor(cfg)
        load_state_checked(model, state["model"], path, "model", cfg["model"]["name"], cfg["model"]["name"])
        model.to(device).eval()
        frontend = build_fbank(cfg, training=False).to(device)
    return TrainedModel(model, head, cfg, [str(s) for s in state.get("speakers") or []], path, frontend)


def head_logits(trained: TrainedModel, emb: np.ndarray, tde_alpha: float | None = None,
                mean: np.ndarray | None = None) -> np.ndarray:
    """(N, S) logits over the S training speakers: plain head, TDE (alpha), or after mean subtraction."""
    from .tde import tde_logits

    x = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
    if mean is not None:
        x = x - torch.from_numpy(np.asarray(mean, dtype=np.float32))
    with torch.no_grad():
        if tde_alpha is not None:
            trained.require_causal()
            y = tde_logits(trained.head, x, alpha=float(tde_alpha))
        else:
            y = trained.head(x)
    return y[:, : len(trained.speakers)].numpy()
