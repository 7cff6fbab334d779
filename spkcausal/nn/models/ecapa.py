"""ECAPA-TDNN through speechbrain's implementation, wrapped to the (B, frames, n_mels) -> (B, D) interface."""
from __future__ import annotations

from torch import Tensor, nn


class Ecapa(nn.Module):
    """speechbrain's ECAPA_TDNN; `channels` [C]*4 + [3C] sets the width (C=512 default, C=1024 for the large one)."""

    forwards_to = "speechbrain.lobes.models.ECAPA_TDNN:ECAPA_TDNN"  # what **kwargs reach (registry.accepted_keys)

    def __init__(self, n_mels: int = 80, channels: tuple[int, ...] = (512, 512, 512, 512, 1536),
                 embed_dim: int = 192, **kwargs):
        super().__init__()
        from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

        self.embed_dim = embed_dim
        self.net = ECAPA_TDNN(n_mels, channels=list(channels), lin_neurons=embed_dim, **kwargs)

    def forward(self, feats: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, frames, n_mels) [+ valid frame counts] -> (B, embed_dim); lengths mask the attentive pooling."""
        rel = None if lengths is None else lengths.to(feats.device).float() / feats.shape[1]
        return self.net(feats, rel).squeeze(1)
