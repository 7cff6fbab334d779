"""What an extractor costs: parameters, and multiply-accumulates per second of audio.

Convention (docs/models.md): MACs of one forward pass over 2 s of features (200 frames at the 10 ms shift, batch
1, eval mode), halved to give MACs per second of audio; the front-end (fbank) is not counted. torch's
FlopCounterMode counts the matrix products and convolutions (2 FLOPs per MAC); element-wise ops, pooling and
normalisation are not counted, as in the MAC figures the toolkits publish (thop, ptflops count conv / linear).
"""
from __future__ import annotations

import torch
from torch import nn

FRAMES = 200  # 2 s at the 10 ms frame shift


def count_macs(model: nn.Module, n_mels: int, frames: int = FRAMES) -> int:
    """MACs of one eval-mode forward pass of `model` on a (1, frames, n_mels) input."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, frames, n_mels))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def complexity(model: nn.Module, n_mels: int) -> dict[str, int]:
    """Parameters (all, trainable or not) and MACs per second of audio (see the module docstring)."""
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "macs_per_second": count_macs(model, n_mels, FRAMES) * 100 // FRAMES}
