"""Every issue-28 tiny extractor with every head kind and the long-tail options (issue 28: "works with every
head"): built from a config through `build_network`, one optimiser step of `train_step` (the trainer's own step)
leaves a finite gradient in every parameter of the extractor and the head, and the step moves the weights.

A parameter without a gradient is a failure, not a skip: the trainer wraps the network in DDP without
`find_unused_parameters`, which stops on the first step when any trainable parameter is left out of the graph. OLTR is
taken in its stage 2 (memory set), where its meta-embedding uses every head parameter; its stage 1 is AAM."""
from __future__ import annotations

import pytest
import torch
from fixtures_models import HARNESS_MODELS, N_MELS, NEW_TINY_MODELS, require_registered

from spkcausal.nn.config import merge_defaults
from spkcausal.nn.losses import build_loss
from spkcausal.nn.network import build_network
from spkcausal.train.steps import train_step

COUNTS = [6, 3, 2, 1]  # utterances per class: a long tail, so LDAM margins and the class priors differ per class
# (head section, loss section): the plain heads, then the long-tail options of docs/causal.md
HEAD_SETUPS = {
    "linear": ({"name": "linear"}, {"name": "ce"}),
    "cosine": ({"name": "cosine", "scale": 16.0}, {"name": "ce"}),
    "aam": ({"name": "aam", "scale": 16.0, "margin": 0.2}, {"name": "ce"}),
    "causal_norm": ({"name": "causal_norm", "num_heads": 2, "scale": 16.0}, {"name": "ce"}),
    "causal_norm_aam": ({"name": "causal_norm_aam", "num_heads": 2, "scale": 16.0, "margin": 0.2}, {"name": "ce"}),
    "oltr": ({"name": "oltr", "scale": 16.0, "margin": 0.2}, {"name": "ce"}),
    "aam+ldam+drw": ({"name": "aam", "scale": 16.0, "margin": 0.2, "class_margins": "ldam"},
                     {"name": "ce", "drw_epoch": 0}),
    "aam+balanced_softmax": ({"name": "aam", "scale": 16.0, "margin": 0.2}, {"name": "balanced_softmax"}),
    "cnaam+subcenters+transfer+capsule": ({"name": "causal_norm_aam", "num_heads": 2, "scale": 16.0, "margin": 0.2,
                                           "subcenters": 2, "feature_transfer": {"head_share": 0.25},
                                           "feature_norm": "capsule"},
                                          {"name": "focal", "logit_adjust": 1.0}),
}


@pytest.mark.parametrize("model", HARNESS_MODELS[:1] + NEW_TINY_MODELS)
def test_tiny_extractor_takes_a_step_with_every_head_and_long_tail_option(model):
    require_registered(model)
    torch.set_num_threads(1)
    n_mels = N_MELS.get(model, 80)
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(4, 100, n_mels, generator=gen)  # 1 s of frames, batch 4: BatchNorm has statistics
    labels = torch.tensor([0, 1, 2, 3])
    for tag, (head, loss) in HEAD_SETUPS.items():
        torch.manual_seed(0)
        cfg = merge_defaults({"model": {"name": model}, "features": {"n_mels": n_mels}, "head": head, "loss": loss,
                              "train": {"epochs": 2}})
        net = build_network(cfg, num_classes=len(COUNTS), class_counts=COUNTS).train()
        if tag == "oltr":
            net.head.init_memory(torch.randn(len(COUNTS), net.model.embed_dim, generator=gen))
        loss_fn = build_loss(cfg["loss"]["name"], class_counts=COUNTS,
                             **{k: v for k, v in cfg["loss"].items() if k != "name"})
        if hasattr(loss_fn, "set_epoch"):
            loss_fn.set_epoch(0)  # DRW's class weights from epoch 0 on
        before = [p.detach().clone() for p in net.parameters()]
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        loss, logits = train_step(net, loss_fn, opt, torch.amp.GradScaler("cpu", enabled=False), feats, labels)
        assert torch.isfinite(loss) and logits.shape == (4, len(COUNTS)), tag
        for (name, p), p0 in zip(net.named_parameters(), before):
            if not p.requires_grad:  # frozen by design (ReDimNet's first mixing weight, a softmax of one input)
                assert p.grad is None and torch.equal(p.detach(), p0), f"{model} + {tag}: frozen {name} moved"
                continue
            assert p.grad is not None, f"{model} + {tag}: no gradient reaches {name}"
            assert torch.isfinite(p.grad).all(), f"{model} + {tag}: non-finite gradient in {name}"
        grads = torch.cat([p.grad.flatten() for p in net.model.parameters() if p.requires_grad])
        assert grads.abs().max() > 0, f"{model} + {tag}: the extractor's gradient is zero"
        moved = sum(not torch.equal(p.detach(), p0) for p, p0 in zip(net.parameters(), before))
        assert moved > len(before) // 2, f"{model} + {tag}: the step moved only {moved} of {len(before)} tensors"
