"""ECAPA-TDNN (Desplanques et al. 2020) in our own code, in SpeechBrain's state-dict layout.

The module names and parameter shapes are those of `speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN`
(`blocks.0.conv.conv.weight`, `blocks.1.res2net_block.blocks.0.norm.norm.running_mean`, `asp.tdnn...`,
`asp_bn.norm...`, `fc.conv...`), so SpeechBrain checkpoints and our earlier checkpoints (built on SpeechBrain's
class) load as they are, and the forward pass computes the same operations: "same" convolutions padded by
reflection, masks from relative lengths (`arange(L) < rel * L` in rel's dtype), attentive statistics pooling with
global context and eps 1e-12. Building it needs torch alone: importing the SpeechBrain package cost a `verify` or
a training start about 3 s (docs/scale.md, start-up). tests/test_ecapa.py checks it against SpeechBrain's module.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...schema import AtLeast1


def _mask(rel: Tensor, length: int) -> Tensor:
    """(B, 1, L) mask of the valid frames, in rel's dtype; broadcast (not expanded) so a trace keeps the batch axis."""
    steps = torch.arange(length, device=rel.device, dtype=rel.dtype)
    return (steps.unsqueeze(0) < (rel * length).unsqueeze(1)).to(rel.dtype).unsqueeze(1)


class _Conv(nn.Module):
    """Conv1d whose output keeps the input's length (reflection padding); the weights sit under `.conv`."""

    def __init__(self, cin: int, cout: int, kernel: AtLeast1 = 1, dilation: AtLeast1 = 1, groups: AtLeast1 = 1):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"kernel size {kernel}: 'same' padding needs an odd kernel")
        self.pad = dilation * (kernel - 1) // 2
        self.conv = nn.Conv1d(cin, cout, kernel, dilation=dilation, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, L) -> (B, C', L)."""
        if self.pad:
            x = F.pad(x, (self.pad, self.pad), mode="reflect")
        return self.conv(x)


class _Norm(nn.Module):
    """BatchNorm1d under `.norm` (SpeechBrain's wrapper level in the keys)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise over batch and time."""
        return self.norm(x)


class TDNNBlock(nn.Module):
    """conv -> ReLU -> BatchNorm (-> channel dropout while training)."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: AtLeast1 = 1, groups: AtLeast1 = 1,
                 dropout: float = 0.0):
        super().__init__()
        self.conv = _Conv(cin, cout, kernel, dilation, groups)
        self.activation = nn.ReLU()
        self.norm = _Norm(cout)
        self.dropout = nn.Dropout1d(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, L) -> (B, C', L)."""
        return self.dropout(self.norm(self.activation(self.conv(x))))


class Res2NetBlock(nn.Module):
    """Channels cut into `scale` groups; group i > 0 goes through a TDNN block with group i - 1's output added."""

    def __init__(self, channels: int, scale: int, kernel: int, dilation: int):
        super().__init__()
        if channels % scale:
            raise ValueError(f"{channels} channels do not split into res2net_scale={scale} groups")
        width = channels // scale
        self.scale = scale
        self.blocks = nn.ModuleList(TDNNBlock(width, width, kernel, dilation) for _ in range(scale - 1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, L) -> (B, C, L)."""
        parts = torch.chunk(x, self.scale, dim=1)
        out = [parts[0]]
        y = None
        for block, part in zip(self.blocks, parts[1:]):
            y = block(part if y is None else part + y)
            out.append(y)
        return torch.cat(out, dim=1)


class SEBlock(nn.Module):
    """Squeeze-and-excitation over the valid frames' mean."""

    def __init__(self, channels: int, se_channels: int):
        super().__init__()
        self.conv1 = _Conv(channels, se_channels)
        self.relu = nn.ReLU()
        self.conv2 = _Conv(se_channels, channels)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor, rel: Tensor | None = None) -> Tensor:
        """Scale each channel of x (B, C, L) by a gate computed from its mean over the valid frames."""
        if rel is None:
            s = x.mean(dim=2, keepdim=True)
        else:
            m = _mask(rel, x.shape[-1])
            s = (x * m).sum(dim=2, keepdim=True) / m.sum(dim=2, keepdim=True)
        return self.sigmoid(self.conv2(self.relu(self.conv1(s)))) * x


class SERes2NetBlock(nn.Module):
    """TDNN (k=1) -> Res2Net -> TDNN (k=1) -> SE, plus the input (through a 1x1 conv when the width changes)."""

    def __init__(self, cin: int, cout: int, scale: int, se_channels: int, kernel: int, dilation: int,
                 groups: AtLeast1 = 1, dropout: float = 0.0):
        super().__init__()
        self.out_channels = cout
        self.tdnn1 = TDNNBlock(cin, cout, 1, 1, groups, dropout)
        self.res2net_block = Res2NetBlock(cout, scale, kernel, dilation)
        self.tdnn2 = TDNNBlock(cout, cout, 1, 1, groups, dropout)
        self.se_block = SEBlock(cout, se_channels)
        self.shortcut = _Conv(cin, cout) if cin != cout else None

    def forward(self, x: Tensor, rel: Tensor | None = None) -> Tensor:
        """(B, C, L) -> (B, C', L)."""
        residual = x if self.shortcut is None else self.shortcut(x)
        return self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x))), rel) + residual


def _weighted_stats(x: Tensor, w: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation over time of x (B, C, L) under weights w summing to 1 over L."""
    mean = (w * x).sum(dim=2)
    std = torch.sqrt((w * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2).clamp(eps))
    return mean, std


class AttentiveStatisticsPooling(nn.Module):
    """Channel-wise attention over time (from the frames and, with global context, the utterance's mean and std),
    then the attention-weighted mean and std: (B, C, L) -> (B, 2C, 1)."""

    def __init__(self, channels: int, attention_channels: AtLeast1 = 128, global_context: bool = True):
        super().__init__()
        self.eps = 1e-12
        self.global_context = global_context
        self.tdnn = TDNNBlock(channels * (3 if global_context else 1), attention_channels, 1, 1)
        self.tanh = nn.Tanh()
        self.conv = _Conv(attention_channels, channels)

    def forward(self, x: Tensor, rel: Tensor | None = None) -> Tensor:
        """Pool over the valid frames (`rel`: relative lengths in (0, 1], None = all)."""
        length = x.shape[-1]
        if rel is None:
            rel = torch.ones(x.shape[0], device=x.device)
        mask = _mask(rel, length)
        attn = x
        if self.global_context:
            mean, std = _weighted_stats(x, mask / mask.sum(dim=2, keepdim=True).float(), self.eps)
            attn = torch.cat([x, mean.unsqueeze(2).expand(-1, -1, length), std.unsqueeze(2).expand(-1, -1, length)],
                             dim=1)
        attn = self.conv(self.tanh(self.tdnn(attn)))
        attn = F.softmax(attn.masked_fill(mask == 0, float("-inf")), dim=2)
        mean, std = _weighted_stats(x, attn, self.eps)
        return torch.cat((mean, std), dim=1).unsqueeze(2)


class EcapaTDNN(nn.Module):
    """The ECAPA-TDNN trunk: (B, frames, n_mels) [+ relative lengths] -> (B, 1, lin_neurons), SpeechBrain's keys."""

    def __init__(self, input_size: int, channels: Sequence[int] = (512, 512, 512, 512, 1536),
                 kernel_sizes: Sequence[int] = (5, 3, 3, 3, 1), dilations: Sequence[int] = (1, 2, 3, 4, 1),
                 attention_channels: AtLeast1 = 128, res2net_scale: AtLeast1 = 8, se_channels: AtLeast1 = 128,
                 global_context: bool = True, groups: Sequence[int] = (1, 1, 1, 1, 1), dropout: float = 0.0,
                 lin_neurons: AtLeast1 = 192):
        super().__init__()
        ch = list(channels)
        if not len(ch) == len(kernel_sizes) == len(dilations) == len(groups) or len(ch) < 3:
            raise ValueError("channels, kernel_sizes, dilations and groups need the same length (>= 3)")
        if len(set(ch[1:-1])) != 1:
            raise ValueError(f"channels {ch}: the SE-Res2Net blocks (all but the first and last) need one width")
        self.channels = ch
        self.blocks = nn.ModuleList([TDNNBlock(input_size, ch[0], kernel_sizes[0], dilations[0], groups[0], dropout)])
        for i in range(1, len(ch) - 1):
            self.blocks.append(SERes2NetBlock(ch[i - 1], ch[i], res2net_scale, se_channels, kernel_sizes[i],
                                              dilations[i], groups[i], dropout))
        self.mfa = TDNNBlock(ch[-2] * (len(ch) - 2), ch[-1], kernel_sizes[-1], dilations[-1], groups[-1], dropout)
        self.asp = AttentiveStatisticsPooling(ch[-1], attention_channels, global_context)
        self.asp_bn = _Norm(ch[-1] * 2)
        self.fc = _Conv(ch[-1] * 2, lin_neurons)

    def forward(self, x: Tensor, rel: Tensor | None = None) -> Tensor:
        """Features (B, frames, n_mels) and relative lengths (B,) -> embeddings (B, 1, lin_neurons)."""
        x = self.blocks[0](x.transpose(1, 2))
        outs = []
        for block in self.blocks[1:]:
            x = block(x, rel)
            outs.append(x)
        x = self.asp(self.mfa(torch.cat(outs, dim=1)), rel)
        return self.fc(self.asp_bn(x)).transpose(1, 2)


class Ecapa(nn.Module):
    """ECAPA-TDNN with the (B, frames, n_mels) -> (B, D) interface; `channels` [C]*4 + [3C] sets the width
    (C=512 default, C=1024 for the large one); the trunk sits under `.net` (checkpoint keys `net.blocks...`)."""

    forwards_to = EcapaTDNN  # what **kwargs reach (registry.accepted_keys), less the two it sets itself
    forwards_except = ("input_size", "lin_neurons")

    def __init__(self, n_mels: AtLeast1 = 80, channels: tuple[int, ...] = (512, 512, 512, 512, 1536),
                 embed_dim: AtLeast1 = 192, **kwargs):
        super().__init__()
        self.embed_dim = embed_dim
        self.net = EcapaTDNN(n_mels, channels=list(channels), lin_neurons=embed_dim, **kwargs)

    def forward(self, feats: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, frames, n_mels) [+ valid frame counts] -> (B, embed_dim); lengths mask the attentive pooling."""
        rel = None if lengths is None else lengths.to(feats.device).float() / feats.shape[1]
        return self.net(feats, rel).squeeze(1)
