"""CAM++ (Wang et al. 2023, arXiv:2303.00332), laid out as wespeaker's and 3D-Speaker's checkpoints name it.

A 2-D residual front (FCM) over (freq, time), then a densely connected TDNN whose every layer gates its output
with context-aware masking: a sigmoid mask from the utterance mean plus 100-frame segment means. Statistics
pooling and a batch-normed linear give the embedding. The two toolkits differ in one place only: wespeaker pools
sqrt(var + 1e-7), 3D-Speaker torch.std (no eps); `std_eps` selects (both use the unbiased variance).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...schema import AtLeast1
from ...utils import UsageError
from .pooling_stats import temporal_stats

SEGMENT = 100  # frames per segment of the CAM layer's context
DENSE_BLOCKS = ((12, 1), (24, 2), (16, 2))  # (layers, dilation) of the three dense blocks, kernel 3
WESPEAKER_STD_EPS = 1e-7


class BnRelu(nn.Module):
    """BatchNorm then ReLU; the norm lives at `.batchnorm` (the toolkits' `nonlinear.batchnorm` keys)."""

    def __init__(self, channels: int, relu: bool = True, affine: bool = True):
        super().__init__()
        self.batchnorm = nn.BatchNorm1d(channels, affine=affine)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, C, T)."""
        x = self.batchnorm(x)
        return torch.relu(x) if self.relu else x


class ResBlock2d(nn.Module):
    """Two 3x3 convolutions with a shortcut; the stride halves frequency only, time keeps its resolution."""

    def __init__(self, in_ch: int, out_ch: int, freq_stride: int):
        super().__init__()
        stride = (freq_stride, 1)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if freq_stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, F, T) -> (B, C', F', T)."""
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.shortcut(x))


class FrontFCM(nn.Module):
    """The 2-D front: stem conv, two stages of two residual blocks and a last conv, each halving frequency."""

    def __init__(self, n_mels: int, channels: AtLeast1 = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = nn.Sequential(ResBlock2d(channels, channels, 2), ResBlock2d(channels, channels, 1))
        self.layer2 = nn.Sequential(ResBlock2d(channels, channels, 2), ResBlock2d(channels, channels, 1))
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        # the toolkits size the next layer as channels * (n_mels // 8); the convolutions give ceil(n_mels / 8)
        # rows, so an n_mels that is not a multiple of 8 fails there as it does here
        self.out_channels = channels * (n_mels // 8)

    def forward(self, feats: Tensor) -> Tensor:
        """(B, n_mels, T) -> (B, channels * n_mels / 8, T)."""
        x = torch.relu(self.bn1(self.conv1(feats.unsqueeze(1))))
        x = torch.relu(self.bn2(self.conv2(self.layer2(self.layer1(x)))))
        return x.flatten(1, 2)


def segment_means(x: Tensor, seg_len: int = SEGMENT) -> Tensor:
    """Each frame's mean over its `seg_len`-frame segment (the last one partial), broadcast back to (B, C, T)."""
    means = F.avg_pool1d(x, kernel_size=seg_len, stride=seg_len, ceil_mode=True)
    return means.repeat_interleave(seg_len, dim=-1)[..., :x.shape[-1]]


class ContextMask(nn.Module):
    """CAM: a dilated conv whose output a sigmoid mask gates, from global and segment-level context."""

    def __init__(self, bn_channels: int, out_channels: int, dilation: int, reduction: AtLeast1 = 2):
        super().__init__()
        self.linear_local = nn.Conv1d(bn_channels, out_channels, 3, padding=dilation, dilation=dilation,
                                      bias=False)
        self.linear1 = nn.Conv1d(bn_channels, bn_channels // reduction, 1)
        self.linear2 = nn.Conv1d(bn_channels // reduction, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, bn_channels, T) -> (B, out_channels, T)."""
        context = x.mean(dim=-1, keepdim=True) + segment_means(x)
        gate = torch.sigmoid(self.linear2(torch.relu(self.linear1(context))))
        return self.linear_local(x) * gate


class DenseLayer(nn.Module):
    """BN-ReLU, 1x1 bottleneck, BN-ReLU, CAM: `growth` new channels from all the block's channels so far."""

    def __init__(self, in_channels: int, growth: int, bn_channels: int, dilation: int):
        super().__init__()
        self.nonlinear1 = BnRelu(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bn_channels, 1, bias=False)
        self.nonlinear2 = BnRelu(bn_channels)
        self.cam_layer = ContextMask(bn_channels, growth, dilation)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, T) -> (B, growth, T)."""
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class DenseBlock(nn.Module):
    """`num_layers` dense layers (`tdnnd1`, `tdnnd2`, ...), each appending its output to the running features."""

    def __init__(self, num_layers: int, in_channels: int, growth: int, bn_channels: int, dilation: int):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"tdnnd{i + 1}", DenseLayer(in_channels + i * growth, growth, bn_channels, dilation))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, C + num_layers * growth, T)."""
        for layer in self.children():
            x = torch.cat([x, layer(x)], dim=1)
        return x


class ConvNorm(nn.Module):
    """A conv with a BatchNorm before (`pre_norm`, the transition layers) or after it (the first TDNN and the
    embedding layer); keys `linear` and `nonlinear.batchnorm`."""

    def __init__(self, in_ch: int, out_ch: int, kernel: AtLeast1 = 1, stride: AtLeast1 = 1, pre_norm: bool = False,
                 relu: bool = True, affine: bool = True):
        super().__init__()
        self.pre_norm = pre_norm
        self.nonlinear = BnRelu(in_ch if pre_norm else out_ch, relu=relu, affine=affine)
        self.linear = nn.Conv1d(in_ch, out_ch, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, C', T'); a (B, C) input (the pooled statistics) is one frame."""
        if x.dim() == 2:
            return self.forward(x.unsqueeze(-1)).squeeze(-1)
        return self.linear(self.nonlinear(x)) if self.pre_norm else self.nonlinear(self.linear(x))


class DenseTDNN(nn.Module):
    """The 1-D trunk (`xvector.*` keys): TDNN (stride 2), three dense blocks with halving transitions, BN-ReLU,
    statistics pooling and the embedding layer (a 1x1 conv with a non-affine BatchNorm)."""

    def __init__(self, in_channels: int, embed_dim: int, growth_rate: int, bn_size: int, init_channels: int,
                 std_eps: float):
        super().__init__()
        self.std_eps = std_eps
        self.tdnn = ConvNorm(in_channels, init_channels, kernel=5, stride=2)
        ch = init_channels
        for i, (num_layers, dilation) in enumerate(DENSE_BLOCKS, start=1):
            self.add_module(f"block{i}", DenseBlock(num_layers, ch, growth_rate, bn_size * growth_rate, dilation))
            ch += num_layers * growth_rate
            self.add_module(f"transit{i}", ConvNorm(ch, ch // 2, pre_norm=True))
            ch //= 2
        self.out_nonlinear = BnRelu(ch)
        self.dense = ConvNorm(2 * ch, embed_dim, relu=False, affine=False)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, C, T) [+ valid frame counts of T] -> (B, embed_dim)."""
        x = self.tdnn(x)
        for i in range(1, len(DENSE_BLOCKS) + 1):
            x = getattr(self, f"transit{i}")(getattr(self, f"block{i}")(x))
        x = self.out_nonlinear(x)
        pooled_len = None if lengths is None else (lengths.to(x.device).long() + 1) // 2  # the TDNN's stride 2
        return self.dense(temporal_stats(x, pooled_len, self.std_eps))


class CAMPPlus(nn.Module):
    """CAM++: (B, frames, n_mels) -> (B, embed_dim). Both toolkits fix the FCM front at 32 channels;
    `front_channels` narrows it for our tiny variant only."""

    def __init__(self, n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 512, growth_rate: AtLeast1 = 32,
                 bn_size: AtLeast1 = 4, init_channels: AtLeast1 = 128, std_eps: float = WESPEAKER_STD_EPS,
                 front_channels: AtLeast1 = 32):
        super().__init__()
        if n_mels % 8:
            raise UsageError(f"CAM++ needs n_mels divisible by 8 (its front halves frequency 3 times), got {n_mels}")
        self.embed_dim = embed_dim
        self.head = FrontFCM(n_mels, front_channels)
        self.xvector = DenseTDNN(self.head.out_channels, embed_dim, growth_rate, bn_size, init_channels, std_eps)
        for m in self.modules():  # the toolkits' initialisation of the 1-D trunk, for training from scratch
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feats: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, frames, n_mels) [+ valid frame counts: they mask the pooling only] -> (B, embed_dim)."""
        return self.xvector(self.head(feats.transpose(1, 2)), lengths)


def _campplus_args(toolkit: str) -> Callable[[dict], tuple[str, dict]]:
    def build(args: dict) -> tuple[str, dict]:
        pooling = args.get("pooling_func", "TSTP")
        if pooling != "TSTP" or args.get("config_str", "batchnorm-relu") != "batchnorm-relu":
            raise UsageError(f"{toolkit} CAMPPlus with pooling_func={pooling!r}, config_str="
                             f"{args.get('config_str')!r}: only TSTP and 'batchnorm-relu' are supported")
        kw = {"n_mels": args.get("feat_dim", 80),
              "embed_dim": args.get("embed_dim", args.get("embedding_size", 512)),
              "std_eps": WESPEAKER_STD_EPS if toolkit == "wespeaker" else 0.0}
        kw.update({k: args[k] for k in ("growth_rate", "bn_size", "init_channels") if k in args})
        return "campplus", kw
    return build


TOOLKIT_BUILDERS: dict[tuple[str, str], Callable[[dict], tuple[str, dict]]] = {
    ("wespeaker", "CAMPPlus"): _campplus_args("wespeaker"),
    ("3dspeaker", "CAMPPlus"): _campplus_args("3dspeaker"),
}


def campplus(n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 512, growth_rate: AtLeast1 = 32, bn_size: AtLeast1 = 4,
             init_channels: AtLeast1 = 128, std_eps: float = WESPEAKER_STD_EPS) -> nn.Module:
    """CAM++ as wespeaker's VoxCeleb config (7,176,224 parameters); std_eps=0.0 is 3D-Speaker's pooling."""
    return CAMPPlus(n_mels, embed_dim, growth_rate, bn_size, init_channels, std_eps)


def campplus_tiny(n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 32, growth_rate: AtLeast1 = 4, bn_size: AtLeast1 = 2,
                  init_channels: AtLeast1 = 16, std_eps: float = WESPEAKER_STD_EPS) -> nn.Module:
    """A narrow CAM++ (same depth, an 8-channel front) for CPU tests and the demo."""
    return CAMPPlus(n_mels, embed_dim, growth_rate, bn_size, init_channels, std_eps, front_channels=8)


FACTORIES: dict[str, Callable[..., nn.Module]] = {"campplus": campplus, "campplus_tiny": campplus_tiny}
