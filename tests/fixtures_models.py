"""The extractor names issue 28 adds (tiny variants), for tests that run every one of them: a name not registered
on this branch skips with that reason (it comes with another branch), while resnet_tiny / ecapa_tiny, on every
branch, validate the harness."""
from __future__ import annotations

import pytest

NEW_TINY_MODELS = ["wespeaker_resnet_tiny", "resnet_bottleneck_tiny", "simam_resnet_tiny", "eres2net_tiny",
                   "eres2netv2_tiny", "campplus_tiny", "redimnet_tiny", "ecapa_glob_tiny"]
HARNESS_MODELS = ["resnet_tiny", "ecapa_tiny"]
N_MELS = {"redimnet_tiny": 72}  # wespeaker trains ReDimNet on 72 mel bins; the others on 80


def require_registered(name: str) -> None:
    """Skip, naming the model, where this branch does not register it."""
    from spkcausal.nn.models import list_models

    if name not in list_models():
        pytest.skip(f"{name} not registered on this branch")
