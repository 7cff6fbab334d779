"""wespeaker's speaker ResNets (ResNet34 with BasicBlocks; ResNet221 and ResNet293 with Bottlenecks), TSTP pooled.

Parameters are named as wespeaker's `wespeaker/models/resnet.py` names them (`conv1`, `bn1`, `layer{1..4}.{j}.*`,
`seg_1`, `seg_bn_1`, `seg_2`), so a wespeaker checkpoint loads by identity. The statistics pooling and the embedding
layer(s) here are shared with the ERes2Net family (eres2net.py).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ...schema import AtLeast1
from .resnet import downsampled, stats_pool

STRIDE2_STAGES = 3  # stages 2, 3 and 4 halve frequency and time


class TemporalStats(nn.Module):
    """TSTP: per channel x frequency row, mean and standard deviation over time (unbiased variance + `eps`)."""

    def __init__(self, eps: float = 1e-7):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, C, F, T) [+ valid frame counts at this resolution] -> (B, 2 * C * F)."""
        return stats_pool(x.flatten(1, 2), lengths, eps=self.eps, unbiased=True)


class SegmentEmbedding(nn.Module):
    """Base of the TSTP models: `seg_1` to the embedding, and with `two_emb_layer` ReLU, a non-affine BN and `seg_2`
    (whose output is then the embedding, as wespeaker's extraction takes the last returned tensor)."""

    def _init_embedding(self, pool_dim: int, embed_dim: int, two_emb_layer: bool, eps: float) -> None:
        self.embed_dim = embed_dim
        self.two_emb_layer = two_emb_layer
        self.pool = TemporalStats(eps)
        self.seg_1 = nn.Linear(2 * pool_dim, embed_dim)
        self.seg_bn_1 = nn.BatchNorm1d(embed_dim, affine=False) if two_emb_layer else nn.Identity()
        self.seg_2 = nn.Linear(embed_dim, embed_dim) if two_emb_layer else nn.Identity()

    def _embed(self, frames: Tensor, lengths: Tensor | None) -> Tensor:
        pooled_len = None if lengths is None else downsampled(lengths.to(frames.device).long(), STRIDE2_STAGES)
        emb = self.seg_1(self.pool(frames, pooled_len))
        if self.two_emb_layer:
            emb = self.seg_2(self.seg_bn_1(torch.relu(emb)))
        return emb


def pooled_rows(n_mels: int) -> int:
    """Frequency rows left after three stride-2 stages (the toolkits' n_mels // 8 where 8 divides n_mels; they
    fail to build otherwise, while this counts the rows the convolutions really leave)."""
    return int(downsampled(n_mels, STRIDE2_STAGES))


def make_stages(block: Callable[[int, int, int], nn.Module], m_channels: int, num_blocks: Sequence[int],
                expansion: int) -> tuple[list[nn.Sequential], int]:
    """Four stages of `block(in_planes, planes, stride)`: widths m, 2m, 4m, 8m (times `expansion` out), stride 2
    at the first block of stages 2-4; returns the stages and the last stage's output channels."""
    if len(num_blocks) != 4:
        raise ValueError(f"expected 4 stages of blocks, got {list(num_blocks)}")
    stages, in_planes = [], m_channels
    for i, n in enumerate(num_blocks):
        planes = m_channels * 2 ** i
        blocks = []
        for j in range(n):
            blocks.append(block(in_planes, planes, (1 if i == 0 else 2) if j == 0 else 1))
            in_planes = planes * expansion
        stages.append(nn.Sequential(*blocks))
    return stages, in_planes


def projection_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """1x1 strided conv + BN where the block changes width or resolution; an empty Sequential (identity) else."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, plus the shortcut, ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: AtLeast1 = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = projection_shortcut(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, F, T) -> (B, planes, F', T')."""
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand to 4 x planes, each with BN; shortcut; ReLU."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: AtLeast1 = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = projection_shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, F, T) -> (B, 4 * planes, F', T')."""
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class WespeakerResNet(SegmentEmbedding):
    """3x3 stem, four residual stages over (freq, time), TSTP over time of the channel x freq map, embedding."""

    def __init__(self, block: str = "basic", num_blocks: Sequence[int] = (3, 4, 6, 3), m_channels: AtLeast1 = 32,
                 n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 256, two_emb_layer: bool = False):
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block={block!r}; expected one of {', '.join(BLOCKS)}")
        unit = BLOCKS[block]
        self.conv1 = nn.Conv2d(1, m_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        stages, out_ch = make_stages(unit, m_channels, num_blocks, unit.expansion)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self._init_embedding(out_ch * pooled_rows(n_mels), embed_dim, two_emb_layer, eps=1e-7)

    def forward(self, feats: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, frames, n_mels) [+ valid frame counts, used by the pooling] -> (B, embed_dim)."""
        x = torch.relu(self.bn1(self.conv1(feats.transpose(1, 2).unsqueeze(1))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self._embed(x, lengths)


def wespeaker_resnet34(n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 256, **kw) -> nn.Module:
    """wespeaker ResNet34: BasicBlocks [3, 4, 6, 3], 32 base channels, TSTP, 256-d (6,634,336 parameters)."""
    kw.setdefault("num_blocks", (3, 4, 6, 3))
    kw.setdefault("m_channels", 32)
    return WespeakerResNet("basic", n_mels=n_mels, embed_dim=embed_dim, **kw)


def resnet221(n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 256, **kw) -> nn.Module:
    """wespeaker ResNet221: Bottlenecks [6, 16, 48, 3], 32 base channels, TSTP, 256-d (23,792,224 parameters)."""
    kw.setdefault("num_blocks", (6, 16, 48, 3))
    kw.setdefault("m_channels", 32)
    return WespeakerResNet("bottleneck", n_mels=n_mels, embed_dim=embed_dim, **kw)


def resnet293(n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 256, **kw) -> nn.Module:
    """wespeaker ResNet293: Bottlenecks [10, 20, 64, 3], 32 base channels, TSTP, 256-d (28,626,016 parameters)."""
    kw.setdefault("num_blocks", (10, 20, 64, 3))
    kw.setdefault("m_channels", 32)
    return WespeakerResNet("bottleneck", n_mels=n_mels, embed_dim=embed_dim, **kw)


def wespeaker_resnet_tiny(n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 32, **kw) -> nn.Module:
    """One BasicBlock per stage, 4 base channels: the wespeaker ResNet layout for CPU tests and the demo (40,012
    parameters at 80 mels, 32-d)."""
    kw.setdefault("num_blocks", (1, 1, 1, 1))
    kw.setdefault("m_channels", 4)
    return WespeakerResNet("basic", n_mels=n_mels, embed_dim=embed_dim, **kw)


def resnet_bottleneck_tiny(n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 32, **kw) -> nn.Module:
    """One Bottleneck per stage, 4 base channels: the ResNet221/293 layout for CPU tests and the demo (114,396
    parameters at 80 mels, 32-d)."""
    kw.setdefault("num_blocks", (1, 1, 1, 1))
    kw.setdefault("m_channels", 4)
    return WespeakerResNet("bottleneck", n_mels=n_mels, embed_dim=embed_dim, **kw)


# what the factories' **kw reach (registry.accepted_keys: a config key typo is named, not a TypeError)
for _factory in (wespeaker_resnet34, resnet221, resnet293, wespeaker_resnet_tiny, resnet_bottleneck_tiny):
    _factory.forwards_to = WespeakerResNet  # type: ignore[attr-defined]


FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "wespeaker_resnet34": wespeaker_resnet34, "resnet221": resnet221, "resnet293": resnet293,
    "wespeaker_resnet_tiny": wespeaker_resnet_tiny, "resnet_bottleneck_tiny": resnet_bottleneck_tiny,
}


def require_tstp(args: dict) -> None:
    """The toolkits' `pooling_func` must be TSTP, the only pooling these models implement."""
    if args.get("pooling_func", "TSTP") != "TSTP":
        raise ValueError(f"pooling_func={args['pooling_func']!r}: only TSTP is implemented for this architecture")


def _from_resnet(args: dict, name: str | None = None) -> tuple[str, dict]:
    """wespeaker `ResNet(block, num_blocks, m_channels, feat_dim, embed_dim, pooling_func, two_emb_layer)` or its
    named variants (ResNet34/221/293: feat_dim, embed_dim, ...) -> our name and kwargs."""
    require_tstp(args)
    kw = {"n_mels": args.get("feat_dim", 40), "embed_dim": args.get("embed_dim", 128),
          "two_emb_layer": bool(args.get("two_emb_layer", False))}
    if name is None:
        block = str(args["block"])
        if block not in ("BasicBlock", "Bottleneck"):
            raise ValueError(f"block={block!r}; expected BasicBlock or Bottleneck")
        depth = {(3, 4, 6, 3): "resnet34", (6, 16, 48, 3): "resnet221", (10, 20, 64, 3): "resnet293"}
        blocks = tuple(args["num_blocks"])
        name = {"BasicBlock": "wespeaker_resnet_tiny", "Bottleneck": "resnet_bottleneck_tiny"}[block]
        if block == "BasicBlock" and depth.get(blocks) == "resnet34":
            name = "wespeaker_resnet34"
        elif block == "Bottleneck" and depth.get(blocks) in ("resnet221", "resnet293"):
            name = depth[blocks]
        kw |= {"num_blocks": list(blocks), "m_channels": int(args.get("m_channels", 32))}
    return name, kw


TOOLKIT_BUILDERS: dict[tuple[str, str], Callable[[dict], tuple[str, dict]]] = {
    ("wespeaker", "ResNet"): _from_resnet,
    ("wespeaker", "ResNet34"): lambda a: _from_resnet(a, "wespeaker_resnet34"),
    ("wespeaker", "ResNet221"): lambda a: _from_resnet(a, "resnet221"),
    ("wespeaker", "ResNet293"): lambda a: _from_resnet(a, "resnet293"),
}
