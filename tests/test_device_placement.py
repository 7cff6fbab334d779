"""Every registered extractor and head, the Kaldi fbank front-end and every loss keep their work on the device of
their input: a forward and backward on the meta device fails on any tensor that the code creates on the CPU
(`torch.arange(n)`, `torch.tensor(...)` without `device=`), which is what would fail on a GPU. The suite runs
without a GPU, so this is the check that every model (full size too: meta tensors hold no data) is ready for one;
the CUDA tests run the numbers where a GPU exists."""
from __future__ import annotations

import contextlib
import inspect

import numpy as np
import pytest
import torch

from spkcausal.nn.features import Fbank
from spkcausal.nn.heads import HEADS, build_head
from spkcausal.nn.losses import LOSSES, build_loss
from spkcausal.nn.models import MODELS, build_model

META = torch.device("meta")
COUNTS = np.array([50, 20, 10, 5, 3, 2, 1, 1, 1, 1])  # a long tail, for the heads and losses that use counts


@pytest.fixture
def meta_autocast(monkeypatch):
    """torch.autocast knows no meta device; the heads' fp32 islands (`autocast(enabled=False)`) do not move
    tensors, so a no-op context stands in for it there."""
    real = torch.autocast

    def autocast(device_type: str, *args, **kwargs):
        return contextlib.nullcontext() if device_type == "meta" else real(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", autocast)


def n_mels_of(name: str) -> int:
    return inspect.signature(MODELS.get(name)).parameters["n_mels"].default


@pytest.mark.parametrize("name", sorted(MODELS))
def test_extractor_runs_on_the_device_of_its_input(name):
    with META:
        model = build_model(name)
    assert all(p.device == META for p in model.parameters())
    feats = torch.randn(3, 150, n_mels_of(name), device=META, requires_grad=True)
    for training in (True, False):
        model.train(training)
        emb = model(feats)
        assert emb.device == META and emb.shape[0] == 3 and emb.dim() == 2
    model.train()
    model(feats).sum().backward()
    assert feats.grad is not None and feats.grad.device == META


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_runs_on_the_device_of_its_input(name, meta_autocast):
    with META:
        head = build_head(name, 32, len(COUNTS), class_counts=COUNTS)
    head = head.to(META)  # buffers built from numpy class counts too
    x = torch.randn(8, 32, device=META, requires_grad=True)
    labels = torch.randint(0, len(COUNTS), (8,), device=META)
    # OLTR's second stage too: its forward reads the stage from a host mirror, so neither stage reads a device
    # tensor on the host (meta tensors cannot answer such a read; on a GPU it would wait at every step)
    stages = [lambda: None] + ([lambda: head.init_memory(torch.randn(len(COUNTS), 32, device=META))]
                               if name == "oltr" else [])
    for enter_stage in stages:
        enter_stage()
        head.train()
        out = head(x, labels)
        logits = out[0] if isinstance(out, tuple) else out
        assert logits.device == META and logits.shape == (8, len(COUNTS))
        torch.nn.functional.cross_entropy(logits, labels).backward()
        assert x.grad is not None and x.grad.device == META
        head.eval()
        assert head(x).device == META
    assert name != "oltr" or head.memory_ready


# The SpeechBrain front-end is SpeechBrain's modules, whose own fp32 decorator (torch.amp.custom_fwd) knows no
# meta device; tests/test_features.py runs ours on CUDA where there is a GPU.
@pytest.mark.parametrize("training", [False, True])
def test_fbank_runs_on_the_device_of_its_input(training, meta_autocast):
    fbank = Fbank().to(META).train(training)  # training: dither, drawn on the input's device
    out = fbank(torch.randn(3, 32000, device=META), torch.tensor([32000, 20000, 16000], device=META))
    assert out.device == META and out.shape == (3, fbank.num_frames(32000), 80)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_runs_on_the_device_of_its_input(name):
    loss = build_loss(name, class_counts=COUNTS).to(META)
    logits = torch.randn(8, len(COUNTS), device=META, requires_grad=True)
    value = loss(logits, torch.randint(0, len(COUNTS), (8,), device=META))
    assert value.device == META and value.dim() == 0
    value.backward()
    assert logits.grad is not None and logits.grad.device == META


def test_a_cpu_tensor_made_inside_forward_is_caught():
    """The premise of this file: the meta device refuses a CPU operand that a GPU would refuse."""
    class Careless(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.arange(x.shape[-1])

    with pytest.raises(RuntimeError, match="device"):
        Careless()(torch.randn(2, 4, device=META))
