"""Thin speaker ResNet (wespeaker-style ResNet34: 32 base channels, temporal statistics pooling, 256-d)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...schema import AtLeast1


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, F, T) -> (B, C', F', T')."""
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


def downsampled(n: int | Tensor, times: int) -> int | Tensor:
    """Length after `times` stride-2 convolutions with kernel 3, padding 1 (ceil(n / 2) each time)."""
    for _ in range(times):
        n = (n + 1) // 2
    return n


def stats_pool(x: Tensor, lengths: Tensor | None = None, eps: float = 1e-7, unbiased: bool = False) -> Tensor:
    """Mean and standard deviation over the last (time) axis, over the first `lengths` steps if given; `unbiased`
    divides the variance by n - 1 (`torch.var`'s default, which wespeaker's and 3D-Speaker's pooling use)."""
    if lengths is None:
        mean = x.mean(dim=-1)
        n = x.shape[-1]
        var = (x - mean.unsqueeze(-1)).square().sum(dim=-1) / (max(n - 1, 1) if unbiased else n)
    else:
        mask = (torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]).to(x.dtype)
        count = mask.sum(dim=-1, keepdim=True).clamp(min=1)
        mask = mask.unsqueeze(1)
        mean = (x * mask).sum(dim=-1) / count
        var = ((x - mean.unsqueeze(-1)).square() * mask).sum(dim=-1) / ((count - 1).clamp(min=1) if unbiased else count)
    return torch.cat([mean, torch.sqrt(var + eps)], dim=-1)


class ResNetSpeaker(nn.Module):
    """2-D ResNet over (freq, time), channel x freq map flattened, statistics pooled over time, linear embedding."""

    def __init__(self, blocks: tuple[int, ...] = (3, 4, 6, 3), base_channels: AtLeast1 = 32, n_mels: AtLeast1 = 80,
                 embed_dim: AtLeast1 = 256):
        super().__init__()
        if len(blocks) != 4:
            raise ValueError(f"expected 4 stages of blocks, got {blocks}")
        self.embed_dim = embed_dim
        self.stem = nn.Sequential(nn.Conv2d(1, base_channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(base_channels), nn.ReLU())
        stages, in_ch = [], base_channels
        for i, n in enumerate(blocks):
            out_ch = base_channels * 2 ** i
            stride = 1 if i == 0 else 2
            layers = [BasicBlock(in_ch if j == 0 else out_ch, out_ch, stride if j == 0 else 1) for j in range(n)]
            stages.append(nn.Sequential(*layers))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.pool_dim = in_ch * downsampled(n_mels, 3)
        self.embedding = nn.Linear(2 * self.pool_dim, embed_dim)

    def forward(self, feats: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, frames, n_mels) [+ valid frame counts, used by the pooling] -> (B, embed_dim)."""
        x = self.stages(self.stem(feats.transpose(1, 2).unsqueeze(1)))
        x = x.flatten(1, 2)  # (B, C * F', T')
        pooled_len = None if lengths is None else downsampled(lengths.to(x.device).long(), 3)
        return self.embedding(stats_pool(x, pooled_len))
