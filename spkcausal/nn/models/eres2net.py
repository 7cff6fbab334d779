"""ERes2Net (wespeaker's `eres2net.py`, ERes2Net34_Base) and ERes2NetV2 (3D-Speaker's `ERes2NetV2.py`).

Both are ResNets of Res2Net-style blocks: a block's 1x1 conv output is split into `scale` groups of `width`
channels, each group after the first joined with the previous group's output (by addition in stages 1-2, by
attentional feature fusion, AFF, in stages 3-4) before its own 3x3 conv ("local feature fusion"). ERes2Net also
fuses every stage's output into the next one's through strided 3x3 convs and AFF ("global feature fusion");
ERes2NetV2 keeps only the stage 3 -> 4 fusion. Activations inside the blocks are clipped at 20 (the toolkits'
`ReLU` is `Hardtanh(0, 20)`), the stem's is a plain ReLU. Parameter names are the toolkits', so their checkpoints
load by identity; the statistics pooling's eps differs: 1e-7 in wespeaker, 1e-8 in 3D-Speaker.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...schema import AtLeast1
from .wespeaker_resnet import SegmentEmbedding, make_stages, pooled_rows, projection_shortcut, require_tstp

CLIP = 20.0  # the toolkits' Hardtanh(0, 20) "ReLU"
WESPEAKER_POOL_EPS = 1e-7
SPEAKERLAB_POOL_EPS = 1e-8


def clipped_relu(x: Tensor) -> Tensor:
    """min(max(x, 0), 20)."""
    return F.hardtanh(x, 0.0, CLIP)


class AFF(nn.Module):
    """Attentional feature fusion: a = 1 + tanh(att([x, y])) in (0, 2); x * a + y * (2 - a)."""

    def __init__(self, channels: int, r: AtLeast1 = 4):
        super().__init__()
        inner = channels // r
        self.local_att = nn.Sequential(nn.Conv2d(2 * channels, inner, 1), nn.BatchNorm2d(inner), nn.SiLU(),
                                       nn.Conv2d(inner, channels, 1), nn.BatchNorm2d(channels))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Two (B, C, F, T) maps -> their fusion, same shape."""
        a = 1.0 + torch.tanh(self.local_att(torch.cat([x, y], dim=1)))
        return x * a + y * (2.0 - a)


class Res2Block(nn.Module):
    """1x1 (strided) conv to `scale` groups, a 3x3 conv per group fed by the previous group's output (added, or
    AFF-fused when `fuse`), 1x1 conv to planes * expansion, shortcut, clipped ReLU.

    `first_apart`: wespeaker's fused block names its first group's conv `conv2_1`/`bn2_1`, apart from `convs`.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, base_width: int, scale: int, expansion: int,
                 fuse: bool, first_apart: bool = False):
        super().__init__()
        self.width = width = int(math.floor(planes * base_width / 64.0))
        self.conv1 = nn.Conv2d(in_planes, width * scale, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.first_apart = fuse and first_apart
        if self.first_apart:
            self.conv2_1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
            self.bn2_1 = nn.BatchNorm2d(width)
        n = scale - 1 if self.first_apart else scale
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(n))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(n))
        self.fuse_models = nn.ModuleList(AFF(width) for _ in range(scale - 1)) if fuse else None
        self.conv3 = nn.Conv2d(width * scale, planes * expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * expansion)
        self.shortcut = projection_shortcut(in_planes, planes * expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, F, T) -> (B, planes * expansion, F', T')."""
        groups = clipped_relu(self.bn1(self.conv1(x))).split(self.width, dim=1)
        branches = list(zip(self.convs, self.bns))
        if self.first_apart:
            branches.insert(0, (self.conv2_1, self.bn2_1))
        outs: list[Tensor] = []
        for i, (conv, bn) in enumerate(branches):
            if i == 0:
                h = groups[0]
            elif self.fuse_models is not None:
                h = self.fuse_models[i - 1](outs[-1], groups[i])
            else:
                h = outs[-1] + groups[i]
            outs.append(clipped_relu(bn(conv(h))))
        y = self.bn3(self.conv3(torch.cat(outs, dim=1)))
        return clipped_relu(y + self.shortcut(x))


def downsample_conv(in_ch: int, out_ch: int) -> nn.Conv2d:
    """The global fusion's strided 3x3 conv (no BN) bringing a stage's map to the next stage's resolution."""
    return nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1, bias=False)


class _Res2Trunk(SegmentEmbedding):
    """Stem (3x3 conv, BN, ReLU) and four stages of Res2Blocks, AFF-fused in stages 3 and 4; TSTP embedding."""

    first_apart = False
    pool_eps = WESPEAKER_POOL_EPS

    def __init__(self, num_blocks: Sequence[int], m_channels: int, base_width: int, scale: int, expansion: int,
                 n_mels: int, embed_dim: int, two_emb_layer: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(1, m_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)

        def block(in_planes: int, planes: int, stride: int) -> Res2Block:
            # stages 3 and 4 (planes 4m and 8m) fuse their groups with AFF
            return Res2Block(in_planes, planes, stride, base_width, scale, expansion, fuse=planes >= 4 * m_channels,
                             first_apart=self.first_apart)

        stages, self.out_channels = make_stages(block, m_channels, num_blocks, expansion)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self._init_embedding(self.out_channels * pooled_rows(n_mels), embed_dim, two_emb_layer, self.pool_eps)

    def _stem(self, feats: Tensor) -> Tensor:
        return torch.relu(self.bn1(self.conv1(feats.transpose(1, 2).unsqueeze(1))))


class ERes2Net(_Res2Trunk):
    """wespeaker's ERes2Net: global fusion of stages 1->2->3->4 through strided convs and AFF."""

    first_apart = True

    def __init__(self, num_blocks: Sequence[int] = (3, 4, 6, 3), m_channels: AtLeast1 = 32, base_width: AtLeast1 = 32,
                 scale: AtLeast1 = 2, expansion: AtLeast1 = 2, n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 512,
                 two_emb_layer: bool = False):
        super().__init__(num_blocks, m_channels, base_width, scale, expansion, n_mels, embed_dim, two_emb_layer)
        c = m_channels * expansion
        self.layer1_downsample = downsample_conv(c, 2 * c)
        self.layer2_downsample = downsample_conv(2 * c, 4 * c)
        self.layer3_downsample = downsample_conv(4 * c, 8 * c)
        self.fuse_mode12 = AFF(2 * c)
        self.fuse_mode123 = AFF(4 * c)
        self.fuse_mode1234 = AFF(8 * c)

    def forward(self, feats: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, frames, n_mels) [+ valid frame counts, used by the pooling] -> (B, embed_dim)."""
        out1 = self.layer1(self._stem(feats))
        out2 = self.layer2(out1)
        fused = self.fuse_mode12(out2, self.layer1_downsample(out1))
        out3 = self.layer3(out2)
        fused = self.fuse_mode123(out3, self.layer2_downsample(fused))
        out4 = self.layer4(out3)
        fused = self.fuse_mode1234(out4, self.layer3_downsample(fused))
        return self._embed(fused, lengths)


class ERes2NetV2(_Res2Trunk):
    """3D-Speaker's ERes2NetV2: only stage 3 is fused into stage 4's output; TSTP with eps 1e-8."""

    pool_eps = SPEAKERLAB_POOL_EPS

    def __init__(self, num_blocks: Sequence[int] = (3, 4, 6, 3), m_channels: AtLeast1 = 64, base_width: AtLeast1 = 26,
                 scale: AtLeast1 = 2, expansion: AtLeast1 = 2, n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 192,
                 two_emb_layer: bool = False):
        super().__init__(num_blocks, m_channels, base_width, scale, expansion, n_mels, embed_dim, two_emb_layer)
        c = m_channels * expansion
        self.layer3_ds = downsample_conv(4 * c, 8 * c)
        self.fuse34 = AFF(8 * c)

    def forward(self, feats: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, frames, n_mels) [+ valid frame counts, used by the pooling] -> (B, embed_dim)."""
        out3 = self.layer3(self.layer2(self.layer1(self._stem(feats))))
        fused = self.fuse34(self.layer4(out3), self.layer3_ds(out3))
        return self._embed(fused, lengths)


def eres2net34_base(n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 512, **kw) -> nn.Module:
    """wespeaker ERes2Net34_Base: [3, 4, 6, 3], 32 base channels, baseWidth 32, scale 2, expansion 2, 512-d
    (9,887,808 parameters; 6,610,688 with embed_dim=192)."""
    return ERes2Net(n_mels=n_mels, embed_dim=embed_dim, **kw)


def eres2net_tiny(n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 32, **kw) -> nn.Module:
    """One block per stage, 4 base channels: the ERes2Net layout for CPU tests and the demo (83,650 parameters at
    80 mels, 32-d)."""
    kw.setdefault("num_blocks", (1, 1, 1, 1))
    kw.setdefault("m_channels", 4)
    return ERes2Net(n_mels=n_mels, embed_dim=embed_dim, **kw)


def eres2netv2(n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 192, **kw) -> nn.Module:
    """3D-Speaker ERes2NetV2: [3, 4, 6, 3], 64 base channels, baseWidth 26, scale 2, expansion 2, 192-d
    (17,859,632 parameters)."""
    return ERes2NetV2(n_mels=n_mels, embed_dim=embed_dim, **kw)


def eres2netv2_tiny(n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 32, **kw) -> nn.Module:
    """One block per stage, 4 base channels: the ERes2NetV2 layout for CPU tests and the demo (73,478 parameters
    at 80 mels, 32-d)."""
    kw.setdefault("num_blocks", (1, 1, 1, 1))
    kw.setdefault("m_channels", 4)
    return ERes2NetV2(n_mels=n_mels, embed_dim=embed_dim, **kw)


# what the factories' **kw reach (registry.accepted_keys: a config key typo is named, not a TypeError)
for _factory, _cls in ((eres2net34_base, ERes2Net), (eres2net_tiny, ERes2Net), (eres2netv2, ERes2NetV2),
                      (eres2netv2_tiny, ERes2NetV2)):
    _factory.forwards_to = _cls  # type: ignore[attr-defined]


FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "eres2net34_base": eres2net34_base, "eres2net_tiny": eres2net_tiny,
    "eres2netv2": eres2netv2, "eres2netv2_tiny": eres2netv2_tiny,
}


def _res2_kwargs(args: dict, defaults: dict, embed_key: str) -> dict:
    """The toolkits' (m_channels, num_blocks, baseWidth, scale, expansion, feat_dim, embed size, two_emb_layer)
    as our kwargs, the class's own defaults where an argument is absent."""
    require_tstp(args)
    a = defaults | args
    return {"n_mels": int(a["feat_dim"]), "embed_dim": int(a[embed_key]), "m_channels": int(a["m_channels"]),
            "num_blocks": list(a["num_blocks"]), "base_width": int(a["baseWidth"]), "scale": int(a["scale"]),
            "expansion": int(a["expansion"]), "two_emb_layer": bool(a["two_emb_layer"])}


_ERES2NET = {"m_channels": 32, "num_blocks": [3, 4, 6, 3], "baseWidth": 32, "scale": 2, "expansion": 2,
             "feat_dim": 80, "embed_dim": 192, "two_emb_layer": False}
_ERES2NETV2 = {"m_channels": 64, "num_blocks": [3, 4, 6, 3], "baseWidth": 26, "scale": 2, "expansion": 2,
               "feat_dim": 80, "embedding_size": 192, "two_emb_layer": False}

TOOLKIT_BUILDERS: dict[tuple[str, str], Callable[[dict], tuple[str, dict]]] = {
    ("wespeaker", "ERes2Net"): lambda a: ("eres2net34_base", _res2_kwargs(a, _ERES2NET, "embed_dim")),
    # ERes2Net34_Base(feat_dim, embed_dim, pooling_func, two_emb_layer) fixes m_channels=32 and the rest
    ("wespeaker", "ERes2Net34_Base"): lambda a: ("eres2net34_base", _res2_kwargs(a, _ERES2NET, "embed_dim")),
    ("3dspeaker", "ERes2NetV2"): lambda a: ("eres2netv2", _res2_kwargs(a, _ERES2NETV2, "embedding_size")),
}
