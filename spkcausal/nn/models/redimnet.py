"""ReDimNet (Yakovlev et al. 2024, arXiv:2407.18223) as wespeaker builds it, under its checkpoints' key names.

The network keeps one (C*F, T) sequence whose channel-times-frequency product never changes: each stage reshapes
a learnt softmax mix of all earlier stages' outputs to (C, F), strides frequency down while widening channels by
the same factor, runs 2-D blocks, flattens back to 1-D and optionally runs a 1-D time-context block
(four depthwise ConvNeXt-like convolutions and a transformer layer). Attentive statistics pooling and a linear
give the embedding. wespeaker trains it on 72 mel bins. The B0-B6 configurations are wespeaker's.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...schema import AtLeast1
from ...utils import UsageError
from .pooling_stats import AttentiveStats

# stage: (freq stride, 2-D blocks, channel expansion inside the blocks, 1-D block reduction or None)
Stage = tuple[int, int, int, int | None]
# name: (C, 2-D block type, group divisor, stages); wespeaker's ReDimNetB0 ... B6 (their unused kernel sizes left out)
CONFIGS: dict[str, tuple[int, str, int, tuple[Stage, ...]]] = {
    "b0": (10, "basic_resnet", 1, ((1, 2, 1, 30), (2, 3, 2, 30), (1, 3, 3, 30), (2, 4, 2, 10), (1, 3, 1, 10))),
    "b1": (12, "convnext_like", 8, ((1, 2, 1, None), (2, 3, 1, None), (3, 4, 1, 12), (2, 5, 1, 12),
                                    (2, 3, 1, 8))),
    "b2": (16, "convnext_like", 4, ((1, 2, 1, 12), (2, 2, 1, 12), (1, 3, 1, 12), (2, 4, 1, 8), (1, 4, 1, 8),
                                    (2, 4, 1, 4))),
    "b3": (16, "basic_resnet_fwse", 1, ((1, 6, 4, 32), (2, 6, 2, 32), (1, 8, 2, 32), (2, 10, 2, 16),
                                        (1, 10, 1, 16), (2, 8, 1, 16))),
    "b4": (32, "basic_resnet_fwse", 1, ((1, 4, 2, 48), (2, 4, 2, 48), (1, 6, 2, 48), (2, 6, 1, 32),
                                        (1, 8, 1, 24), (2, 4, 1, 16))),
    "b5": (32, "basic_resnet_fwse", 16, ((1, 4, 2, 48), (2, 4, 2, 48), (1, 6, 2, 48), (2, 6, 1, 32),
                                         (1, 8, 1, 24), (2, 4, 1, 16))),
    "b6": (32, "basic_resnet", 32, ((1, 4, 4, 32), (2, 6, 2, 32), (1, 6, 2, 24), (3, 8, 1, 24), (1, 8, 1, 16),
                                    (2, 8, 1, 16))),
}
BLOCK_2D_TYPES = ("convnext_like", "basic_resnet", "basic_resnet_fwse")


class ChannelNorm(nn.Module):
    """LayerNorm over the channel axis (dim 1) of a (B, C, ...) tensor, eps 1e-6."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, ...) -> (B, C, ...)."""
        nd = x.dim()  # explicit permutations: movedim's negative axes reach the ONNX exporter as invalid perms
        y = F.layer_norm(x.permute(0, *range(2, nd), 1), self.weight.shape, self.weight, self.bias, self.eps)
        return y.permute(0, nd - 1, *range(1, nd - 1))


class ConvNeXtBlock(nn.Module):
    """Grouped conv, BatchNorm, GELU, pointwise conv, plus the input; 1-D or 2-D (keys dwconvs.0, norm, pwconv1)."""

    def __init__(self, channels: int, kernel: int | tuple[int, int], dim: int, groups: int):
        super().__init__()
        conv, norm = (nn.Conv1d, nn.BatchNorm1d) if dim == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.dwconvs = nn.ModuleList([conv(channels, channels, kernel, padding="same", groups=groups)])
        self.norm = norm(channels)
        self.pwconv1 = conv(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, [F,] T) -> same shape."""
        return x + self.pwconv1(F.gelu(self.norm(self.dwconvs[0](x))))


class FreqSE(nn.Module):
    """Frequency-wise squeeze-excitation: a gate per frequency row from its mean over channels and time."""

    def __init__(self, freqs: int, hidden: int):
        super().__init__()
        self.squeeze = nn.Linear(freqs, hidden)
        self.exitation = nn.Linear(hidden, freqs)  # the toolkit's spelling: a key name

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, F, T) -> (B, C, F, T)."""
        gate = torch.sigmoid(self.exitation(torch.relu(self.squeeze(x.mean(dim=(1, 3))))))
        return x * gate[:, None, :, None]


class ResBlock(nn.Module):
    """Two (grouped 3x3 + pointwise) convolutions, ReLU before the first BatchNorm, optional frequency SE, plus
    the input. Channels and frequency are unchanged (ReDimNet strides in its stage convolutions)."""

    def __init__(self, channels: int, freqs: int, group_divisor: int, freq_se: bool):
        super().__init__()
        groups = channels // group_divisor
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False, groups=groups)
        self.conv1pw = nn.Conv2d(channels, channels, 1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False, groups=groups)
        self.conv2pw = nn.Conv2d(channels, channels, 1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.se = FreqSE(freqs, min(64, max(channels, 32))) if freq_se else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, F, T) -> (B, C, F, T)."""
        y = self.bn1(torch.relu(self.conv1pw(self.conv1(x))))
        y = self.se(self.bn2(self.conv2pw(self.conv2(y))))
        return torch.relu(y + x)


class Block2d(nn.Module):
    """The 2-D block of a stage, one of BLOCK_2D_TYPES (key prefix `conv_block`)."""

    def __init__(self, kind: str, channels: int, freqs: int, group_divisor: int):
        super().__init__()
        if kind == "convnext_like":
            self.conv_block: nn.Module = ConvNeXtBlock(channels, (3, 3), 2, channels // group_divisor)
        else:
            self.conv_block = ResBlock(channels, freqs, group_divisor, freq_se=kind == "basic_resnet_fwse")

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, F, T) -> (B, C, F, T)."""
        return self.conv_block(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over time, (B, T, D) -> (B, T, D) (keys q_proj, k_proj, v_proj, out_proj)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise UsageError(f"ReDimNet's attention width {dim} is not divisible by {heads} heads: wespeaker's "
                             "configurations need features.n_mels 72 (C * n_mels / reduction must be)")
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D)."""
        b, t, d = x.shape
        q, k, v = (proj(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    """Linear, tanh-approximated GELU, linear (keys intermediate_dense, output_dense)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.intermediate_dense = nn.Linear(dim, hidden)
        self.output_dense = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D)."""
        return self.output_dense(F.gelu(self.intermediate_dense(x), approximate="tanh"))


class TransformerLayer(nn.Module):
    """Post-norm transformer layer over (B, D, T): attention and feed-forward, each added then LayerNormed."""

    def __init__(self, dim: int, hidden: int, heads: AtLeast1 = 4):
        super().__init__()
        self.attention = SelfAttention(dim, heads)
        self.layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feed_forward = FeedForward(dim, hidden)
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        """(B, D, T) -> (B, D, T)."""
        x = x.transpose(1, 2)
        x = self.layer_norm(x + self.attention(x))
        x = self.final_layer_norm(x + self.feed_forward(x))
        return x.transpose(1, 2)


class TimeContext(nn.Module):
    """The 1-D block: reduce C*F to hC, depthwise convs of kernels 7, 19, 31, 59 and a transformer layer,
    expand back, plus the input (wespeaker's 'conv+att' TimeContextBlock1d)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.red_dim_conv = nn.Sequential(nn.Conv1d(dim, hidden, 1), ChannelNorm(hidden))
        self.tcm = nn.Sequential(*(ConvNeXtBlock(hidden, k, 1, hidden) for k in (7, 19, 31, 59)),
                                 TransformerLayer(hidden, hidden))
        self.exp_dim_conv = nn.Conv1d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, D, T) -> (B, D, T)."""
        return x + self.exp_dim_conv(self.tcm(self.red_dim_conv(x)))


class Flatten1d(nn.Module):
    """(B, C, F, T) -> (B, F*C, T), frequency-major (the layout every stage exchanges)."""

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, F, T) -> (B, F*C, T)."""
        return x.transpose(1, 2).flatten(1, 2)


def _stage(c: int, f: int, stride: int, blocks: int, expand: int, reduction: int | None, kind: str,
           group_divisor: int, width: int) -> nn.Sequential:
    """One stage as a Sequential whose indices are the toolkit's: stride conv, blocks, [reduce], flatten, [1-D]."""
    c_out = stride * c
    layers: list[nn.Module] = [nn.Conv2d(c, c_out * expand, kernel_size=(stride, 1), stride=(stride, 1))]
    layers += [Block2d(kind, c_out * expand, f // stride, group_divisor) for _ in range(blocks)]
    if expand != 1:
        layers.append(nn.Sequential(
            nn.Conv2d(c_out * expand, c_out, 3, padding="same", groups=c_out // group_divisor),
            nn.BatchNorm2d(c_out, eps=1e-6), nn.GELU(), nn.Conv2d(c_out, c_out, 1)))
    layers.append(Flatten1d())
    if reduction is not None:
        layers.append(TimeContext(width, width // reduction))
    return nn.Sequential(*layers)


class ReDimNetBackbone(nn.Module):
    """Stem and stages (`backbone.*` keys); `inputs_weights[i]` mixes the outputs of the stem and stages < i."""

    def __init__(self, n_mels: int, C: int, block_2d: str, group_divisor: int, stages: Sequence[Stage]):
        super().__init__()
        if block_2d not in BLOCK_2D_TYPES:
            raise UsageError(f"ReDimNet block_2d_type {block_2d!r}; expected one of {', '.join(BLOCK_2D_TYPES)}")
        self.width = C * n_mels
        # the first entry is a frozen 1 (one input, softmax of one); wespeaker counts it among the parameters
        self.inputs_weights = nn.ParameterList(
            [nn.Parameter(torch.ones(1, 1, 1, 1), requires_grad=False)]
            + [nn.Parameter(torch.zeros(1, n + 1, self.width, 1)) for n in range(1, len(stages) + 1)])
        self.stem = nn.Sequential(nn.Conv2d(1, C, 3, padding="same"), ChannelNorm(C))
        self.shapes: list[tuple[int, int]] = []
        c, f = C, n_mels
        for i, (stride, blocks, expand, reduction) in enumerate(stages):
            if f % stride:
                raise UsageError(f"ReDimNet stage {i} strides frequency by {stride}, which does not divide the "
                                 f"{f} rows it receives (n_mels={n_mels})")
            self.shapes.append((c, f))
            self.add_module(f"stage{i}", _stage(c, f, stride, blocks, expand, reduction, block_2d, group_divisor,
                                                self.width))
            c, f = c * stride, f // stride
        self.mfa = nn.Identity()  # wespeaker's out_channels=None: no 1x1 conv after the last mix

    def _mix(self, outputs: list[Tensor], i: int) -> Tensor:
        weights = torch.softmax(self.inputs_weights[i], dim=1)
        return (weights * torch.stack(outputs, dim=1)).sum(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, n_mels, T) -> (B, C*n_mels, T)."""
        outputs = [Flatten1d()(self.stem(x))]
        for i, (c, f) in enumerate(self.shapes):
            mixed = self._mix(outputs, i)
            as_2d = mixed.reshape(mixed.shape[0], f, c, mixed.shape[-1]).transpose(1, 2)
            outputs.append(getattr(self, f"stage{i}")(as_2d))
        return self.mfa(self._mix(outputs, len(self.shapes)))


class ReDimNet(nn.Module):
    """ReDimNet with attentive statistics pooling (global context) and a linear embedding layer (`seg_1`)."""

    def __init__(self, n_mels: AtLeast1 = 72, embed_dim: AtLeast1 = 192, C: AtLeast1 = 16,
                 block_2d: str = "convnext_like", group_divisor: AtLeast1 = 4,
                 stages: Sequence[Stage] = CONFIGS["b2"][3]):
        super().__init__()
        self.embed_dim = embed_dim
        self.backbone = ReDimNetBackbone(n_mels, C, block_2d, group_divisor, stages)
        self.pool = AttentiveStats(self.backbone.width, 128, global_context=True)
        self.seg_1 = nn.Linear(self.pool.out_dim, embed_dim)

    def forward(self, feats: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, frames, n_mels) [+ valid frame counts: they mask the pooling only] -> (B, embed_dim)."""
        return self.seg_1(self.pool(self.backbone(feats.transpose(1, 2).unsqueeze(1)), lengths))


def _from_wespeaker(args: dict) -> tuple[str, dict]:
    """wespeaker's generic `ReDimNet(...)` arguments -> the B-configuration with that topology, at args' width."""
    for key, want in (("block_1d_type", "conv+att"), ("pooling_func", "ASTP"), ("global_context_att", True),
                      ("two_emb_layer", False), ("out_channels", None)):
        if args.get(key, want) != want:
            raise UsageError(f"wespeaker ReDimNet with {key}={args[key]!r}: only {key}={want!r} is supported")
    stages = tuple((s[0], s[1], s[2], s[4]) for s in args["stages_setup"])
    topology = (args.get("block_2d_type", "basic_resnet"), args.get("group_divisor", 4), stages)
    for name, (_, block_2d, group_divisor, cfg_stages) in CONFIGS.items():
        if (block_2d, group_divisor, cfg_stages) == topology:
            return f"redimnet_{name}", {"n_mels": args.get("feat_dim", 72), "embed_dim": args.get("embed_dim", 192),
                                        "C": args.get("C", 16)}
    raise UsageError(f"wespeaker ReDimNet topology {topology} is none of B0-B6")


def _from_named(name: str) -> Callable[[dict], tuple[str, dict]]:
    def build(args: dict) -> tuple[str, dict]:
        c, block_2d, group_divisor, stages = CONFIGS[name]
        feat_dim = args.get("feat_dim", 60 if name == "b0" else 72)  # wespeaker's ReDimNetB0 defaults to 60
        return _from_wespeaker({**args, "feat_dim": feat_dim, "C": c, "block_2d_type": block_2d,
                                "group_divisor": group_divisor, "stages_setup": [(*s[:3], None, s[3]) for s in stages]})
    return build


TOOLKIT_BUILDERS: dict[tuple[str, str], Callable[[dict], tuple[str, dict]]] = {
    ("wespeaker", "ReDimNet"): _from_wespeaker,
    **{("wespeaker", f"ReDimNet{name.upper()}"): _from_named(name) for name in CONFIGS},
}


def _named(name: str) -> Callable[..., nn.Module]:
    c_default, block_2d, group_divisor, stages = CONFIGS[name]

    def factory(n_mels: AtLeast1 = 72, embed_dim: AtLeast1 = 192, C: AtLeast1 = c_default) -> nn.Module:
        return ReDimNet(n_mels, embed_dim, C, block_2d, group_divisor, stages)

    factory.__doc__ = f"ReDimNet-{name.upper()} as wespeaker configures it (C={c_default}, {block_2d}), 72 mel bins."
    factory.__name__ = f"redimnet_{name}"
    return factory


def redimnet_tiny(n_mels: AtLeast1 = 72, embed_dim: AtLeast1 = 32, C: AtLeast1 = 2) -> nn.Module:
    """A two-stage ReDimNet (B2's block types) at C=2 for CPU tests and the demo; any n_mels divisible by 8."""
    return ReDimNet(n_mels, embed_dim, C, "convnext_like", 2, ((1, 1, 1, 4), (2, 1, 1, 4)))


FACTORIES: dict[str, Callable[..., nn.Module]] = {
    **{f"redimnet_{name}": _named(name) for name in CONFIGS}, "redimnet_tiny": redimnet_tiny}
