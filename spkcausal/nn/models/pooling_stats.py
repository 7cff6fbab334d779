"""Temporal statistics pooling as wespeaker and 3D-Speaker compute it (unbiased variance), with optional lengths.

`temporal_stats` is TSTP (mean and standard deviation over time); `AttentiveStats` is ASTP (ECAPA's
channel-and-context-dependent attention). Lengths, when given, mask padded frames out of the statistics and
out of the attention's softmax; the toolkits themselves never pad, so without lengths this is their arithmetic.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...schema import AtLeast1


def frame_mask(lengths: Tensor | None, frames: int, like: Tensor) -> Tensor | None:
    """(B, 1, frames) mask of valid frames in `like`'s dtype and device, None when lengths is None."""
    if lengths is None:
        return None
    steps = torch.arange(frames, device=like.device)
    return (steps[None, :] < lengths.to(like.device)[:, None]).to(like.dtype).unsqueeze(1)


def _sqrt(var: Tensor, eps: float) -> Tensor:
    # eps 0 (3D-Speaker's plain std): a zero variance (a channel that ReLU silenced) gives 0 as torch.std does,
    # but a clamp keeps its gradient finite where std's would be 0/0
    return torch.sqrt(var + eps) if eps > 0 else torch.sqrt(var.clamp_min(1e-30))


def temporal_stats(x: Tensor, lengths: Tensor | None = None, eps: float = 1e-7) -> Tensor:
    """(B, C, T) -> (B, 2C): mean and sqrt(unbiased variance + eps) over the valid frames of the last axis."""
    mask = frame_mask(lengths, x.shape[-1], x)
    if mask is None:
        mean = x.mean(dim=-1)
        var = x.var(dim=-1)  # Bessel-corrected, as torch.var and torch.std default to in both toolkits
    else:
        count = mask.sum(dim=-1)
        mean = (x * mask).sum(dim=-1) / count.clamp_min(1)
        var = ((x - mean.unsqueeze(-1)).square() * mask).sum(dim=-1) / (count - 1).clamp_min(1)
    return torch.cat([mean, _sqrt(var, eps)], dim=1)  # dim=-1 gets a wrong axis from the ONNX exporter


class AttentiveStats(nn.Module):
    """ASTP: a tanh bottleneck scores every channel and frame (from the frames, and with `global_context` also
    from the utterance's mean and std), softmax over time weights the mean and std. Keys: linear1, linear2."""

    def __init__(self, in_dim: int, bottleneck: AtLeast1 = 128, global_context: bool = True, eps: float = 1e-7):
        super().__init__()
        self.global_context, self.eps = global_context, eps
        self.linear1 = nn.Conv1d(in_dim * (3 if global_context else 1), bottleneck, kernel_size=1)
        self.linear2 = nn.Conv1d(bottleneck, in_dim, kernel_size=1)
        self.out_dim = 2 * in_dim

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, C, T) [+ valid frame counts] -> (B, 2C)."""
        mask = frame_mask(lengths, x.shape[-1], x)
        scores_in = x
        if self.global_context:
            mean, std = temporal_stats(x, lengths, self.eps).unsqueeze(-1).chunk(2, dim=1)
            scores_in = torch.cat([x, mean.expand_as(x), std.expand_as(x)], dim=1)
        scores = self.linear2(torch.tanh(self.linear1(scores_in)))
        if mask is not None:
            scores = scores.masked_fill(mask == 0, float("-inf"))
        alpha = torch.softmax(scores, dim=-1)
        mean = (alpha * x).sum(dim=-1)
        var = (alpha * x.square()).sum(dim=-1) - mean.square()
        return torch.cat([mean, torch.sqrt(var.clamp_min(self.eps))], dim=1)
