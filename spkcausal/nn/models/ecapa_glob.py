"""wespeaker's ECAPA-TDNN (GLOB: attentive pooling with global context), laid out as its checkpoints name it.

It differs from speechbrain's ECAPA (`ecapa.py`) in the order ReLU-then-BatchNorm, in a dilation that grows
2, 3, 4 over the three SE-Res2 blocks, a linear SE, and a frame-level conv fixed at 1536 channels and an
attention bottleneck fixed at 128 whatever the block width `channels` is (as in wespeaker, where neither is a
constructor argument; only our tiny variant narrows them).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ...schema import AtLeast1
from ...utils import UsageError
from .pooling_stats import AttentiveStats

FRAME_CHANNELS = 1536  # wespeaker's 512 * 3, independent of `channels`
ATTENTION_BOTTLENECK = 128
RES2_SCALE = 8


class ConvReluBn(nn.Module):
    """Conv1d, ReLU, BatchNorm1d (keys `conv`, `bn`)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: AtLeast1 = 1, dilation: AtLeast1 = 1):
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation)
        self.bn = nn.BatchNorm1d(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, C', T)."""
        return self.bn(torch.relu(self.conv(x)))


class Res2Conv(nn.Module):
    """Res2Net's hierarchical split: `scale` channel groups, each but the last convolved after adding the
    previous group's output (keys `convs.i`, `bns.i`)."""

    def __init__(self, channels: int, dilation: int, scale: int = RES2_SCALE):
        super().__init__()
        if channels % scale:
            raise UsageError(f"ECAPA channels must be divisible by {scale}, got {channels}")
        self.width = channels // scale
        self.convs = nn.ModuleList(nn.Conv1d(self.width, self.width, 3, padding=dilation, dilation=dilation)
                                   for _ in range(scale - 1))
        self.bns = nn.ModuleList(nn.BatchNorm1d(self.width) for _ in range(scale - 1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, C, T)."""
        groups = x.split(self.width, dim=1)
        outs, y = [], None
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            y = groups[i] if y is None else y + groups[i]
            y = bn(torch.relu(conv(y)))
            outs.append(y)
        outs.append(groups[-1])
        return torch.cat(outs, dim=1)


class SqueezeExcite(nn.Module):
    """Channel gates from the time-averaged features through a 128-unit linear bottleneck."""

    def __init__(self, channels: int, bottleneck: AtLeast1 = 128):
        super().__init__()
        self.linear1 = nn.Linear(channels, bottleneck)
        self.linear2 = nn.Linear(bottleneck, channels)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, C, T)."""
        gate = torch.sigmoid(self.linear2(torch.relu(self.linear1(x.mean(dim=-1)))))
        return x * gate.unsqueeze(-1)


class SERes2Block(nn.Module):
    """1x1 conv, dilated Res2 conv, 1x1 conv, SE, plus the input (key prefix `se_res2block.0` ... `.3`)."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.se_res2block = nn.Sequential(ConvReluBn(channels, channels), Res2Conv(channels, dilation),
                                          ConvReluBn(channels, channels), SqueezeExcite(channels))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, C, T)."""
        return x + self.se_res2block(x)


class EcapaGlob(nn.Module):
    """ECAPA-TDNN as wespeaker builds `ECAPA_TDNN_GLOB_c512` (channels=512) or narrower: (B, frames, n_mels) ->
    (B, embed_dim)."""

    def __init__(self, n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 192, channels: AtLeast1 = 512,
                 global_context: bool = True, emb_bn: bool = False, frame_channels: int = FRAME_CHANNELS,
                 attention_bottleneck: AtLeast1 = ATTENTION_BOTTLENECK):
        super().__init__()
        self.embed_dim = embed_dim
        self.layer1 = ConvReluBn(n_mels, channels, kernel=5)
        self.layer2 = SERes2Block(channels, dilation=2)
        self.layer3 = SERes2Block(channels, dilation=3)
        self.layer4 = SERes2Block(channels, dilation=4)
        self.conv = nn.Conv1d(3 * channels, frame_channels, 1)
        self.pool = AttentiveStats(frame_channels, attention_bottleneck, global_context)
        self.bn = nn.BatchNorm1d(self.pool.out_dim)
        self.linear = nn.Linear(self.pool.out_dim, embed_dim)
        self.bn2 = nn.BatchNorm1d(embed_dim) if emb_bn else nn.Identity()

    def forward(self, feats: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, frames, n_mels) [+ valid frame counts: they mask the pooling only] -> (B, embed_dim)."""
        x2 = self.layer2(self.layer1(feats.transpose(1, 2)))
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        x = torch.relu(self.conv(torch.cat([x2, x3, x4], dim=1)))
        return self.bn2(self.linear(self.bn(self.pool(x, lengths))))


def _ecapa_args(glob_default: bool, channels_default: int | None) -> Callable[[dict], tuple[str, dict]]:
    def build(args: dict) -> tuple[str, dict]:
        if args.get("pooling_func", "ASTP") != "ASTP":
            raise UsageError(f"wespeaker ECAPA_TDNN with pooling_func={args['pooling_func']!r}: only ASTP is "
                             "supported")
        if not args.get("global_context_att", glob_default):
            raise UsageError("wespeaker ECAPA_TDNN without global_context_att is not supported (only GLOB)")
        kw = {"n_mels": args.get("feat_dim", 80), "embed_dim": args.get("embed_dim", 192),
              "channels": args.get("channels", channels_default), "emb_bn": bool(args.get("emb_bn", False))}
        return "ecapa_glob_c512", kw
    return build


TOOLKIT_BUILDERS: dict[tuple[str, str], Callable[[dict], tuple[str, dict]]] = {
    ("wespeaker", "ECAPA_TDNN"): _ecapa_args(False, 512),
    ("wespeaker", "ECAPA_TDNN_GLOB_c512"): _ecapa_args(True, 512),
}


def ecapa_glob_c512(n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 192, channels: AtLeast1 = 512,
                    emb_bn: bool = False) -> nn.Module:
    """wespeaker's ECAPA-TDNN GLOB c512 (6,190,720 parameters at embed_dim 192)."""
    return EcapaGlob(n_mels, embed_dim, channels, emb_bn=emb_bn)


def ecapa_glob_tiny(n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 32, channels: AtLeast1 = 16,
                    emb_bn: bool = False) -> nn.Module:
    """A narrow wespeaker-layout ECAPA for CPU tests; unlike the toolkit's narrow variants, its frame conv and
    attention bottleneck shrink too (96 and 16 instead of the fixed 1536 and 128)."""
    return EcapaGlob(n_mels, embed_dim, channels, emb_bn=emb_bn, frame_channels=96, attention_bottleneck=16)


FACTORIES: dict[str, Callable[..., nn.Module]] = {"ecapa_glob_c512": ecapa_glob_c512,
                                                  "ecapa_glob_tiny": ecapa_glob_tiny}
