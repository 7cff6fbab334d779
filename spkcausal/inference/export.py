"""Deployable embedders: a torch.export program (`.pt2`, the default), ONNX (torch.onnx, TorchScript-based
exporter) and, opt-in while torch still ships it, TorchScript (torch.jit.trace; deprecated since torch 2.14, whose
FutureWarning is passed on) graphs that map a waveform (or fbank) batch plus per-item lengths to embeddings, with
TDE and mean subtraction folded in. A `.pt2` runs with `torch.export.load(path).module()(wave, lengths)`.

Graph interface (every format):
  inputs  `wave` (B, T) float32 in [-1, 1) at the model's sample rate (or `feats` (B, F, n_mels) with
          `with_features=False`), and `lengths` (B,) int64 valid samples (frames) per item;
  output  `embedding` (B, D) float32: the raw embedding, or TDE'd (`tde_alpha`), then centred (`mean`).
Batch and time axes are dynamic. Items of unequal length in one batch are zero-padded and masked exactly as
`spkcausal extract --mode pad` does, so they equal the PyTorch pad-mode batch, not each item embedded alone
(the convolutions see the padding near the end of the shorter items); batch equal lengths for that.

The front-end in the graph is Kaldi fbank written with traceable ops only: frames by `unfold`, DC removal and
pre-emphasis per frame (Kaldi's own order), and the power spectrum as a real DFT by matrix products (ONNX's
TorchScript exporter has no rfft). It equals `features.Fbank` to float rounding (tested). The SpeechBrain
front-end is not exported: export such a model with `with_features=False` and compute its features outside.
"""
from __future__ import annotations

import inspect
import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..utils import PathLike, UsageError, atomic_path

FORMATS = ("pt2", "onnx", "torchscript")


class TraceableFbank(nn.Module):
    """`features.Fbank` (inference, no dither) with ops that trace to a graph with dynamic batch and time axes."""

    def __init__(self, fbank: nn.Module):
        super().__init__()
        length, self.frame_shift = fbank.frame_length, fbank.frame_shift
        self.frame_length, self.cmn = length, fbank.cmn
        self.scale = 32768.0 if fbank.scale_to_int16 else 1.0
        # Framing as a strided convolution with an identity kernel: exact, and exportable with a dynamic
        # time axis (ONNX's TorchScript exporter cannot export unfold on one).
        self.register_buffer("eye", torch.eye(length).unsqueeze(1), persistent=False)
        # DC removal, pre-emphasis (Kaldi's first-sample rule), window and real DFT are all linear in the
        # frame: one (L x 2 bins) float64 matrix. float64 because a float32 DFT by products is 1e-4 off in
        # the weak bins after the log; the FFT in features.Fbank is accurate to float32 rounding.
        eye = torch.eye(length, dtype=torch.float64)
        a = eye - 1.0 / length if fbank.remove_dc_offset else eye
        c = fbank.preemphasis
        emph = torch.eye(length, dtype=torch.float64)
        emph[0, 0] = 1.0 - c
        emph[torch.arange(length - 1), torch.arange(1, length)] = -c
        n = torch.arange(length, dtype=torch.float64)[:, None]
        k = torch.arange(fbank.n_fft // 2 + 1, dtype=torch.float64)[None, :]
        angle = 2 * math.pi * n * k / fbank.n_fft
        dft = torch.cat([torch.cos(angle), torch.sin(angle)], dim=1)
        self.register_buffer("basis", a @ emph @ (fbank.window.double()[:, None] * dft), persistent=False)
        self.bins = int(k.shape[1])
        self.register_buffer("mel", fbank.mel.float().clone(), persistent=False)

    def num_frames(self, lengths: Tensor) -> Tensor:
        """Valid frames per item (snip_edges)."""
        return torch.div(lengths - self.frame_length, self.frame_shift, rounding_mode="floor").add(1).clamp(min=0)

    def forward(self, wave: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) waveforms, (B,) valid samples -> (B, F, n_mels) masked, mean-normalised log-mel, (B,) frames."""
        x = (wave.float() * self.scale).unsqueeze(1)
        frames = torch.nn.functional.conv1d(x, self.eye, stride=self.frame_shift).transpose(1, 2)
        spec = torch.matmul(frames.double(), self.basis)
        re, im = spec[..., :self.bins], spec[..., self.bins:]
        power = (re * re + im * im).float()
        feats = torch.matmul(power, self.mel).clamp_min(torch.finfo(torch.float32).eps).log()
        valid = self.num_frames(lengths.long())
        # A frame index per frame without reading the size into Python (that would freeze the time axis).
        index = torch.ones_like(feats[:, :, 0]).cumsum(1) - 1
        mask = (index < valid[:, None].to(index.dtype)).unsqueeze(-1).to(feats.dtype)
        feats = feats * mask
        if self.cmn:
            mean = feats.sum(dim=1, keepdim=True) / valid.clamp(min=1).to(feats.dtype).view(-1, 1, 1)
            feats = (feats - mean) * mask
        return feats, valid


class Embedder(nn.Module):
    """Front-end (optional) -> extractor -> TDE (optional) -> mean subtraction (optional), as one module."""

    def __init__(self, model: nn.Module, frontend: nn.Module | None = None, mean_feature: Tensor | None = None,
                 num_heads: int = 1, tde_alpha: float | None = None, mean: Tensor | None = None,
                 capsule: bool = False):
        super().__init__()
        self.model, self.frontend = model, frontend
        # A model whose forward takes no frame counts sees padded items whole (equal lengths are still exact).
        self.takes_lengths = len(inspect.signature(model.forward).parameters) >= 2
        self.num_heads, self.capsule = int(num_heads), bool(capsule)
        self.tde_alpha = None if tde_alpha is None else float(tde_alpha)
        if self.tde_alpha is not None:
            from .tde import head_direction

            if mean_feature is None:
                raise UsageError("TDE needs the Causal Norm head's x_bar (mean_feature)")
            self.register_buffer("direction", head_direction(mean_feature.float(), self.num_heads).float())
        self.register_buffer("mean", None if mean is None else torch.as_tensor(mean).float().reshape(1, -1))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """(B, T) waves [or (B, F, n_mels) feats] and (B,) lengths -> (B, D) embeddings."""
        if self.frontend is not None:
            x, lengths = self.frontend(x, lengths)
        emb = (self.model(x, lengths) if self.takes_lengths else self.model(x)).float()
        if self.tde_alpha is not None:
            # Positive axes only: the TorchScript-based ONNX exporter resolves a negative one by the rank it infers
            # for the model's output, which it gets wrong for some models (CAM++: axis 2 of a (B, D) tensor).
            parts = []
            for xk, dk in zip(emb.chunk(self.num_heads, dim=1), self.direction.chunk(self.num_heads)):
                n = xk.norm(dim=1, keepdim=True)
                xk = xk / n.clamp_min(1e-12)
                fk = xk * (n / (1.0 + n)) if self.capsule else xk  # a capsule head's squash (nn.tde)
                parts.append(fk - self.tde_alpha * (xk * dk).sum(dim=1, keepdim=True) * dk)
            emb = torch.cat(parts, dim=1)
        if self.mean is not None:
            emb = emb - self.mean
        return emb


def _mask_broadcast(length: Tensor, max_len: int | Tensor | None = None, dtype: torch.dtype | None = None,
                    device: torch.device | None = None) -> Tensor:
    """speechbrain's length_to_mask with the same values, broadcast instead of `expand(len(length), ...)`,
    which a trace would freeze to the example's batch size."""
    mask = torch.arange(max_len, device=length.device, dtype=length.dtype).unsqueeze(0) < length.unsqueeze(1)
    return mask.to(dtype=dtype or length.dtype, device=device or length.device)


@contextmanager
def traceable_speechbrain() -> Iterator[None]:
    """While tracing: speechbrain's ECAPA builds its masks with `_mask_broadcast` (dynamic batch axis)."""
    import speechbrain.lobes.models.ECAPA_TDNN as sb_ecapa

    saved = sb_ecapa.length_to_mask
    sb_ecapa.length_to_mask = _mask_broadcast
    try:
        yield
    finally:
        sb_ecapa.length_to_mask = saved


def build_embedder(path: PathLike, with_features: bool = True, tde_alpha: float | str | None = None,
                   mean_sub: bool = False, mean: Any = None) -> tuple[Embedder, Any]:
    """The Embedder of a checkpoint / experiment on CPU, and its `api.SpeakerModel` (the reference path)."""
    from ..nn.features import Fbank
    from .api import SpeakerModel

    sm = SpeakerModel(path, device="cpu", mean=mean)
    frontend = None
    if with_features:
        if not isinstance(sm.fbank, Fbank):
            raise UsageError("only the Kaldi fbank front-end exports; export this model without --with-features "
                             "and compute its features outside the graph")
        frontend = TraceableFbank(sm.fbank)
    alpha = sm._resolve_alpha(tde_alpha)
    x_bar = None if alpha is None else torch.from_numpy(sm._x_bar())
    centre = torch.from_numpy(sm.mean_embedding(alpha).astype(np.float32)) if mean_sub else None
    emb = Embedder(sm.model, frontend, x_bar, sm._num_heads() if alpha is not None else 1, alpha, centre,
                   capsule=sm.trained.feature_norm == "capsule")
    return emb.eval(), sm


def _export_program(emb: Embedder, example: tuple[Tensor, Tensor]) -> Any:
    """torch.export of the embedder with dynamic batch and time axes; the shortest input each model admits
    (its stride-2 stages) is its own, so the axes are AUTO and then checked to be symbolic."""
    from torch.export import Dim

    auto = {"x": {0: Dim.AUTO, 1: Dim.AUTO}, "lengths": {0: Dim.AUTO}}
    program = torch.export.export(emb, example, dynamic_shapes=auto)
    placeholder = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == "x")
    if not all(isinstance(d, torch.SymInt) for d in placeholder.meta["val"].shape[:2]):
        raise UsageError(f"torch.export fixed the batch or time axis of {type(emb.model).__name__} "
                         f"({tuple(placeholder.meta['val'].shape)}); export it to ONNX instead")
    return program


def export_model(path: PathLike, out: PathLike, fmt: str = "pt2", with_features: bool = True,
                 tde_alpha: float | str | None = None, mean_sub: bool = False, mean: Any = None,
                 opset: int = 17) -> Path:
    """Write a torch.export (.pt2), ONNX (.onnx) or TorchScript (.pt) embedder of a checkpoint; see the module
    docstring.

    `mean`: the centring mean (array or store) instead of the experiment's training-set mean."""
    if fmt not in FORMATS:
        raise UsageError(f"format {fmt!r}; expected one of {FORMATS}")
    emb, sm = build_embedder(path, with_features, tde_alpha, mean_sub, mean)
    # Example with unequal lengths so the traced graph keeps the masking path.
    if with_features:
        n = sm.sample_rate
        example = (torch.randn(2, n) * 0.1, torch.tensor([n, (3 * n) // 4]))
        names = ["wave", "lengths"]
    else:
        example = (torch.randn(2, 200, sm.fbank.n_mels), torch.tensor([200, 150]))
        names = ["feats", "lengths"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), traceable_speechbrain(), atomic_path(out) as tmp:
        if fmt == "pt2":
            program = _export_program(emb, example)
            with open(tmp, "wb") as f:  # through Python's file, so a full disk is an OSError naming no C++ line
                torch.export.save(program, f)
        elif fmt == "torchscript":  # torch 2.14 warns that jit.trace / jit.save are deprecated: the user opted in
            traced = torch.jit.trace(emb, example, check_trace=False)
            with open(tmp, "wb") as f:
                torch.jit.save(traced, f)
        else:
            try:
                import onnx  # noqa: F401
            except ImportError:
                raise UsageError("ONNX export needs the onnx package: pip install 'spkcausal[export]'") from None
            # The TorchScript-based exporter (it warns that it is deprecated): the torch.export-based one needs
            # onnxscript, which the export extra does not install.
            buf = io.BytesIO()
            torch.onnx.export(emb, example, buf, input_names=names, output_names=["embedding"],
                              dynamo=False, opset_version=opset,
                              dynamic_axes={names[0]: {0: "batch", 1: "time"}, "lengths": {0: "batch"},
                                            "embedding": {0: "batch"}})
            with open(tmp, "wb") as f:
                f.write(buf.getvalue())
    return out
