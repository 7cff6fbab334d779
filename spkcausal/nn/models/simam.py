"""SimAM-ResNet34 / SimAM-ResNet100 with attentive statistics pooling, as wespeaker's `samresnet.py` lays them out.

Each BasicBlock reweights its residual branch by SimAM, a parameter-free attention: every unit's energy against the
mean of its channel's (freq, time) map passes through a sigmoid. Parameter names follow wespeaker's (`front.*`,
`pooling.attention.{0,2,3}`, `bottleneck`), so its checkpoints load by identity.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ...schema import AtLeast1
from .resnet import downsampled
from .wespeaker_resnet import STRIDE2_STAGES, make_stages, pooled_rows, projection_shortcut

SIMAM_LAMBDA = 1e-4  # the regulariser of SimAM's energy (the paper's lambda)
ASP_VAR_FLOOR = 1e-5  # wespeaker's ASP clamps the weighted variance here before the square root


def simam(x: Tensor, lam: float = SIMAM_LAMBDA) -> Tensor:
    """x * sigmoid(energy): energy = (x - mean)^2 / (4 (var + lam)) + 1/2, per channel over (freq, time), with the
    variance over n - 1 units."""
    dev = (x - x.mean(dim=(2, 3), keepdim=True)).square()
    var = dev.sum(dim=(2, 3), keepdim=True) / (x.shape[2] * x.shape[3] - 1)
    return x * torch.sigmoid(dev / (4 * (var + lam)) + 0.5)


class SimAMBlock(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, SimAM, plus the (1x1 projection) shortcut, ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: AtLeast1 = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = projection_shortcut(in_planes, planes, stride)  # wespeaker's samresnet name for it

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, F, T) -> (B, planes, F', T')."""
        y = simam(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return torch.relu(y + self.downsample(x))


class SimAMTrunk(nn.Module):
    """The convolutional front: 3x3 stem, four stages of SimAM blocks (widths in_planes x 1, 2, 4, 8)."""

    def __init__(self, in_planes: int, num_blocks: Sequence[int]):
        super().__init__()
        self.conv1 = nn.Conv2d(1, in_planes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        stages, self.out_channels = make_stages(SimAMBlock, in_planes, num_blocks, 1)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, F, T) -> (B, 8 * in_planes, F / 8, T / 8)."""
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class AttentiveStats(nn.Module):
    """ASP: a 1x1 conv-ReLU-BN-1x1 conv attention, softmax over time per channel x freq row, weighted mean and
    standard deviation. Frames past `lengths` get no weight."""

    def __init__(self, dim: int, hidden: AtLeast1 = 128):
        super().__init__()
        self.attention = nn.Sequential(nn.Conv1d(dim, hidden, 1), nn.ReLU(), nn.BatchNorm1d(hidden),
                                       nn.Conv1d(hidden, dim, 1))

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, C, F, T) [+ valid frame counts at this resolution] -> (B, 2 * C * F)."""
        x = x.flatten(1, 2)
        logits = self.attention(x)
        if lengths is not None:
            pad = torch.arange(x.shape[-1], device=x.device)[None, None, :] >= lengths.to(x.device)[:, None, None]
            logits = logits.masked_fill(pad, float("-inf"))
        w = torch.softmax(logits, dim=2)
        mean = (x * w).sum(dim=2)
        var = (x.square() * w).sum(dim=2) - mean.square()
        return torch.cat([mean, var.clamp(min=ASP_VAR_FLOOR).sqrt()], dim=1)


class SimAMResNet(nn.Module):
    """SimAM-ResNet front, ASP over time of the channel x freq map, a linear `bottleneck` to the embedding."""

    def __init__(self, num_blocks: Sequence[int] = (3, 4, 6, 3), in_planes: AtLeast1 = 64, n_mels: AtLeast1 = 80,
                 embed_dim: AtLeast1 = 256, dropout: float = 0.0, attention_dim: AtLeast1 = 128):
        super().__init__()
        self.embed_dim = embed_dim
        self.front = SimAMTrunk(in_planes, num_blocks)
        self.pooling = AttentiveStats(self.front.out_channels * pooled_rows(n_mels), attention_dim)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.bottleneck = nn.Linear(2 * self.front.out_channels * pooled_rows(n_mels), embed_dim)

    def forward(self, feats: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, frames, n_mels) [+ valid frame counts, used by the pooling] -> (B, embed_dim)."""
        x = self.front(feats.transpose(1, 2).unsqueeze(1))
        pooled_len = None if lengths is None else downsampled(lengths.long(), STRIDE2_STAGES)
        return self.bottleneck(self.drop(self.pooling(x, pooled_len)))


def simam_resnet34(n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 256, **kw) -> nn.Module:
    """wespeaker SimAM_ResNet34_ASP: blocks [3, 4, 6, 3], 64 base channels, 256-d (25,213,760 parameters)."""
    return SimAMResNet(kw.pop("num_blocks", (3, 4, 6, 3)), n_mels=n_mels, embed_dim=embed_dim, **kw)


def simam_resnet100(n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 256, **kw) -> nn.Module:
    """wespeaker SimAM_ResNet100_ASP: blocks [6, 16, 24, 3], 64 base channels, 256-d (50,232,896 parameters)."""
    return SimAMResNet(kw.pop("num_blocks", (6, 16, 24, 3)), n_mels=n_mels, embed_dim=embed_dim, **kw)


def simam_resnet_tiny(n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 32, **kw) -> nn.Module:
    """One SimAM block per stage, 4 base channels, a 16-wide attention: for CPU tests and the demo (50,620
    parameters at 80 mels, 32-d)."""
    kw.setdefault("in_planes", 4)
    kw.setdefault("attention_dim", 16)
    return SimAMResNet(kw.pop("num_blocks", (1, 1, 1, 1)), n_mels=n_mels, embed_dim=embed_dim, **kw)


# what the factories' **kw reach (registry.accepted_keys: a config key typo is named, not a TypeError)
for _factory in (simam_resnet34, simam_resnet100, simam_resnet_tiny):
    _factory.forwards_to = SimAMResNet  # type: ignore[attr-defined]


FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "simam_resnet34": simam_resnet34, "simam_resnet100": simam_resnet100, "simam_resnet_tiny": simam_resnet_tiny,
}


def _from_simam(name: str) -> Callable[[dict], tuple[str, dict]]:
    """wespeaker `SimAM_ResNet{34,100}_ASP(in_planes, embed_dim, acoustic_dim, dropout)` -> our name and kwargs."""
    def build(args: dict) -> tuple[str, dict]:
        return name, {"n_mels": int(args.get("acoustic_dim", 80)), "embed_dim": int(args.get("embed_dim", 256)),
                      "in_planes": int(args.get("in_planes", 64)), "dropout": float(args.get("dropout", 0))}
    return build


TOOLKIT_BUILDERS: dict[tuple[str, str], Callable[[dict], tuple[str, dict]]] = {
    ("wespeaker", "SimAM_ResNet34_ASP"): _from_simam("simam_resnet34"),
    ("wespeaker", "SimAM_ResNet100_ASP"): _from_simam("simam_resnet100"),
}
