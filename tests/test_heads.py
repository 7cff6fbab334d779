"""Heads against independent NumPy float64 formulas, margins, gradients and the moving-average feature."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from spkcausal.nn.heads import (
    HEADS,
    AAMHead,
    CausalNormAAMHead,
    CausalNormHead,
    CosineHead,
    LinearHead,
    build_head,
    is_causal,
)
from spkcausal.utils import UsageError


def np_causal_norm(x, w, k, tau, gamma):
    """y_i = tau/K sum_k (w_i^k . x^k) / ((||w_i^k|| + gamma) ||x^k||), written independently in float64."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    d = x.shape[1] // k
    y = np.zeros((x.shape[0], w.shape[0]))
    for b in range(x.shape[0]):
        for i in range(w.shape[0]):
            for h in range(k):
                xs, ws = x[b, h * d:(h + 1) * d], w[i, h * d:(h + 1) * d]
                y[b, i] += ws.dot(xs) / ((math.sqrt(ws.dot(ws)) + gamma) * math.sqrt(xs.dot(xs)))
    return tau / k * y


def np_arc(cos, m, easy):
    """ArcFace's target term for one cosine value."""
    phi = math.cos(math.acos(max(-1.0, min(1.0, cos))) + m)
    if easy:
        return phi if cos > 0 else cos
    return phi if cos > math.cos(math.pi - m) else cos - math.sin(math.pi - m) * m


def np_causal_norm_aam(x, w, labels, k, s, gamma, m, easy):
    """y_i = s/K sum_k r_i^k cos(theta_i^k + m [i == label]) in float64."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    d = x.shape[1] // k
    y = np.zeros((x.shape[0], w.shape[0]))
    for b in range(x.shape[0]):
        for i in range(w.shape[0]):
            for h in range(k):
                xs, ws = x[b, h * d:(h + 1) * d], w[i, h * d:(h + 1) * d]
                wn = np.linalg.norm(ws)
                c = ws.dot(xs) / (wn * np.linalg.norm(xs))
                y[b, i] += wn / (wn + gamma) * (np_arc(c, m, easy) if i == labels[b] else c)
    return s / k * y


def np_float32_bound(x, w, labels, k, s, m):
    """What float32 can reach on np_causal_norm_aam's logits: each chunk's cosine is a normalised dot product of
    d = D/K terms, off by at most about (d + 3) float32 eps; the margin term cos(acos(c) + m) multiplies that by
    its condition number sin(theta + m) / sin(theta), which is large for a target near its class weight."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    d = x.shape[1] // k
    eps = float(np.finfo(np.float32).eps)
    bound = np.zeros((x.shape[0], w.shape[0]))
    for b in range(x.shape[0]):
        for i in range(w.shape[0]):
            for h in range(k):
                xs, ws = x[b, h * d:(h + 1) * d], w[i, h * d:(h + 1) * d]
                c = np.clip(ws.dot(xs) / (np.linalg.norm(ws) * np.linalg.norm(xs)), -1.0, 1.0)
                theta = math.acos(c)
                cond = 1.0
                if m and labels is not None and i == labels[b] and c > math.cos(math.pi - m):
                    cond = abs(math.sin(theta + m)) / max(math.sin(theta), 1e-300)
                bound[b, i] += (d + 3) * eps * (1 + cond)
    return s / k * bound


@pytest.mark.parametrize("k", [1, 2, 4])
def test_causal_norm_matches_numpy_formula(k):
    torch.manual_seed(k)
    head = CausalNormHead(16, 7, num_heads=k, tau=16.0, gamma=1 / 32).eval()
    with torch.no_grad():  # weights of very different norms so the gamma term matters
        head.weight.mul_(torch.rand(7, 1) * 3 + 0.01)
    x = torch.randn(5, 16)
    got = head(x).double().detach().numpy()
    want = np_causal_norm(x.numpy(), head.weight.detach().numpy(), k, 16.0, 1 / 32)
    # float32 vs float64: measured 3e-7 (ratio < 0.04 of this bound)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_causal_norm_init_and_attributes():
    head = CausalNormHead(64, 100)
    assert (head.num_heads, head.tau, head.scale, head.gamma, head.momentum) == (2, 16.0, 16.0, 1 / 32, 0.9)
    bound = 1 / math.sqrt(64)
    assert head.weight.abs().max() <= bound and head.weight.abs().max() > 0.9 * bound
    assert torch.equal(head.mean_feature, torch.zeros(64)) and "mean_feature" in dict(head.named_buffers())
    with pytest.raises(ValueError, match="divisible"):
        CausalNormHead(10, 3, num_heads=4)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_causal_norm_aam_per_chunk_path_at_zero_margin_equals_causal_norm(k, monkeypatch):
    # margin == 0 short-circuits to CausalNormHead's own code, so comparing there would prove nothing. A margin
    # of 1e-9 takes the per-chunk r * cos(theta + m) path while cos(theta + 1e-9) equals cos(theta) to far
    # below float32 rounding: docs/design.md's identity "m = 0 gives the Causal Norm logits with tau = s".
    import spkcausal.nn.heads.causal as causal_mod

    calls = []
    real = causal_mod.apply_margin
    monkeypatch.setattr(causal_mod, "apply_margin", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    aam = CausalNormAAMHead(16, 6, num_heads=k, tau=30.0, margin=1e-9).train()
    with torch.no_grad():  # class weights of very different norms, so r_i^k = ||w|| / (||w|| + gamma) matters
        aam.weight.mul_(torch.rand(6, 1) * 3 + 0.01)
    cn = CausalNormHead(16, 6, num_heads=k, tau=30.0).train()
    cn.load_state_dict(aam.state_dict())
    x, labels = torch.randn(8, 16), torch.randint(0, 6, (8,))
    got = aam(x, labels).detach()
    assert len(calls) == k  # one margin application per chunk: the per-chunk path ran
    want = np_causal_norm(x.numpy(), aam.weight.detach().numpy(), k, 30.0, 1 / 32)
    # both float32 routes against the float64 formula, not against each other
    bound = np_float32_bound(x.numpy(), aam.weight.detach().numpy(), None, k, 30.0, 0.0)
    assert np.all(np.abs(got.double().numpy() - want) <= bound)
    assert np.all(np.abs(cn(x, labels).detach().double().numpy() - want) <= bound)


@pytest.mark.parametrize("easy", [False, True])
@pytest.mark.parametrize("k", [1, 2])
def test_causal_norm_aam_margin_matches_numpy(k, easy):
    torch.manual_seed(1)
    head = CausalNormAAMHead(8, 5, num_heads=k, tau=32.0, margin=0.3, easy_margin=easy).train()
    w = head.weight.detach()
    x = torch.randn(6, 8)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    x[0] = -w[0]  # target angle near pi: exercises the threshold / easy-margin branch
    got = head(x, labels).detach().double().numpy()
    want = np_causal_norm_aam(x.numpy(), w.numpy(), labels.numpy(), k, 32.0, 1 / 32, 0.3, easy)
    # float32 vs float64, target near pi (threshold branch, well conditioned)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    # eval mode and no labels are margin-free
    head.eval()
    nomargin = np_causal_norm(x.numpy(), w.numpy(), k, 32.0, 1 / 32)
    np.testing.assert_allclose(head(x, labels).detach().numpy(), nomargin, rtol=1e-5, atol=1e-4)  # as above
    head.train()
    np.testing.assert_allclose(head(x).detach().numpy(), nomargin, rtol=1e-5, atol=1e-4)  # as above


@pytest.mark.parametrize("easy", [False, True])
def test_aam_matches_direct_formula(easy):
    torch.manual_seed(2)
    head = AAMHead(8, 4, scale=30.0, margin=0.2, easy_margin=easy).train()
    w = head.weight.detach().double().numpy()
    x = torch.randn(5, 8)
    x[1] = -head.weight.detach()[2] + 0.01
    labels = torch.tensor([3, 2, 1, 0, 3])
    got = head(x, labels).detach().double().numpy()
    xn = x.double().numpy()
    cos = (xn / np.linalg.norm(xn, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    want = cos.copy()
    for b, lab in enumerate(labels.tolist()):
        want[b, lab] = np_arc(cos[b, lab], 0.2, easy)
    np.testing.assert_allclose(got, 30.0 * want, rtol=1e-5, atol=1e-4)  # float32 vs float64, scale-30 logits
    head.set_margin(0.0)
    assert head.margin == 0.0
    np.testing.assert_allclose(head(x, labels).detach().numpy(), 30.0 * cos, rtol=1e-5, atol=1e-4)  # as above


def test_linear_and_cosine_heads():
    torch.manual_seed(3)
    lin = LinearHead(6, 3, bias=True)
    with torch.no_grad():
        lin.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(4, 6)
    want = x.double().numpy() @ lin.weight.detach().double().numpy().T + np.array([0.5, -1.0, 2.0])
    # float32 vs float64, 6-term dot products
    np.testing.assert_allclose(lin(x).detach().numpy(), want, rtol=1e-5, atol=1e-5)
    cos = CosineHead(6, 3, scale=10.0)
    np.testing.assert_allclose(cos(x).detach().numpy(),  # as above
                               np_causal_norm(x.numpy(), cos.weight.detach().numpy(), 1, 10.0, 0.0),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["linear", "cosine", "aam", "causal_norm", "causal_norm_aam"])
def test_gradcheck_every_head(name):
    torch.manual_seed(4)
    kw = {"num_heads": 2} if name.startswith("causal") else {}
    head = build_head(name, 6, 3, **kw).double().train()
    if hasattr(head, "set_margin"):
        head.set_margin(0.2)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0])

    def f(xx, ww):
        return torch.func.functional_call(head, {"weight": ww}, (xx, labels))

    w = head.weight
    wt = w.detach().clone().requires_grad_(True)
    # float64 finite differences (gradcheck's own tolerance)
    assert torch.autograd.gradcheck(f, (x, wt), eps=1e-6, atol=1e-5)
    out = head(x, labels).sum()
    out.backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_build_head_registry_and_scale_alias():
    h = build_head("causal_norm_aam", 8, 4, scale=20.0, num_heads=4, margin=0.1)
    assert isinstance(h, CausalNormAAMHead) and h.tau == 20.0 and h.num_heads == 4 and h.margin == 0.1
    assert isinstance(build_head("aam", 8, 4, scale=32.0), AAMHead)
    with pytest.raises(UsageError) as err:
        build_head("softmax2", 8, 4)
    assert str(err.value) == ("unknown head 'softmax2'; expected one of "
                              "aam, causal_norm, causal_norm_aam, cosine, linear, oltr")
    with pytest.raises(UsageError, match="either tau or scale"):
        build_head("causal_norm", 8, 4, scale=20.0, tau=16.0)
    assert [n for n in HEADS.names() if is_causal(n)] == ["causal_norm", "causal_norm_aam"]
    from spkcausal.experiments.runs import CAUSAL_HEADS, NON_CAUSAL_HEADS  # the plan's torch-free answer

    assert sorted(CAUSAL_HEADS + NON_CAUSAL_HEADS) == sorted(HEADS.names())
    assert all(is_causal(n) for n in CAUSAL_HEADS) and not any(is_causal(n) for n in NON_CAUSAL_HEADS)
    assert is_causal(h) and not is_causal(build_head("aam", 8, 4)) and not is_causal("nope")


@pytest.mark.parametrize("cls", [CausalNormHead, CausalNormAAMHead])
def test_mean_feature_moves_in_train_only_and_round_trips(cls):
    torch.manual_seed(5)
    head = cls(8, 3, momentum=0.9)
    xs = [torch.randn(4, 8) for _ in range(3)]
    want = np.zeros(8)
    for x in xs:
        head.train()(x.requires_grad_(True), torch.tensor([0, 1, 2, 0]))
        want = 0.9 * want + x.detach().double().numpy().mean(0)
    # float32 recursion of 3 steps vs float64
    np.testing.assert_allclose(head.mean_feature.numpy(), want, rtol=1e-5, atol=1e-6)
    assert not head.mean_feature.requires_grad
    before = head.mean_feature.clone()
    head.eval()(torch.randn(4, 8) + 5)
    assert torch.equal(head.mean_feature, before)
    clone = cls(8, 3)
    clone.load_state_dict(head.state_dict())
    assert torch.equal(clone.mean_feature, before)
    assert torch.equal(clone.weight, head.weight)


def _ddp_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        head = CausalNormHead(6, 3, num_heads=2).train()
        gen = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
        for _ in range(3):
            head(torch.randn(5, 6, generator=gen))
        torch.save(head.mean_feature, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes, each importing torch
def test_mean_feature_identical_across_two_gloo_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert torch.equal(got[0], got[1])
    # The reduction is the mean over the global batch, recomputed here from both ranks' data.
    gens = [torch.Generator().manual_seed(100 + r) for r in range(2)]
    want = torch.zeros(6, dtype=torch.float64)
    for _ in range(3):
        batch = torch.cat([torch.randn(5, 6, generator=g) for g in gens]).double()
        want = 0.9 * want + batch.mean(0)
    np.testing.assert_allclose(got[0].numpy(), want.numpy(), rtol=1e-5, atol=1e-6)  # as above, over two ranks


@pytest.mark.parametrize("name", ["aam", "causal_norm_aam"])
def test_margin_gradient_finite_when_embedding_equals_class_weight(name):
    torch.manual_seed(6)
    head = build_head(name, 8, 3).train()
    with torch.no_grad():  # axis-aligned: target cosine exactly 1.0, where acos' and sqrt(1-cos^2)' are inf
        head.weight.copy_(torch.eye(8)[[0, 1, 4]] * 2.0)
    x = head.weight.detach().clone().requires_grad_(True)
    head(x, torch.tensor([0, 1, 2])).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("name", ["cosine", "aam", "causal_norm", "causal_norm_aam"])
def test_normalised_heads_compute_in_float32_under_bf16_autocast(name):
    torch.manual_seed(7)
    kw = {"num_heads": 2} if name.startswith("causal") else {}
    if name.endswith("aam"):
        kw["margin"] = 0.2
    head = build_head(name, 16, 5, **kw).train()
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    x = torch.randn(8, 16)
    with torch.no_grad():  # target cosines near 1, where bf16 rounds cos to 1 and the margin term is most off
        x[:5] = head.weight[labels[:5]] * 3.0 + 1e-3 * torch.randn(5, 16)

    def run(autocast: bool):
        xx = x.clone().requires_grad_(True)
        head.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = head(xx, labels)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        return y.detach(), xx.grad, head.weight.grad.clone()

    ref, gx_ref, gw_ref = run(False)
    got, gx, gw = run(True)
    assert got.dtype == torch.float32
    # float32 throughout: the same numbers as without autocast, not bf16's ~1e-2 relative error. The same float32
    # ops run either way (autocast is off inside the head): measured equal on every kernel; 1e-6 spare
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=0, atol=1e-6 * head.scale)
    np.testing.assert_allclose(gx.numpy(), gx_ref.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(gw.numpy(), gw_ref.numpy(), rtol=0, atol=1e-6)
    # And the float32 logits are the method's logits (NumPy float64 formula), margin included.
    w = head.weight.detach().numpy()
    if name.startswith("causal"):
        want = np_causal_norm_aam(x.numpy(), w, labels.numpy(), 2, head.scale, 1 / 32, kw.get("margin", 0.0), False)
    else:
        want = head.scale * np_causal_norm_aam(x.numpy(), w, labels.numpy(), 1, 1.0, 0.0, kw.get("margin", 0.0),
                                               False)
    # Bounded by what float32 can reach at these inputs' conditioning, not by one CPU's rounding: the near-1 target
    # cosines put the margin term 2.3e-4 off float64 (measured, 4% of its bound there); bf16 cosines are 1e-1 off.
    bound = np_float32_bound(x.numpy(), w, labels.numpy(), 2 if name.startswith("causal") else 1, head.scale,
                             kw.get("margin", 0.0))
    assert np.all(np.abs(got.numpy() - want) <= bound + 1e-6 * np.abs(want))


def test_protocols_say_what_each_head_can_do():
    # the trainer, the training step and the assembler ask these instead of hasattr: a head that lost a
    # member (a renamed set_margin, say) would silently stop following its schedule
    from spkcausal.nn.heads import EpochHook, ExtraLoss, MarginSchedule, MovingMean
    from spkcausal.nn.losses import EpochLoss, build_loss

    want = {"linear": set(), "cosine": set(), "aam": {MarginSchedule},
            "causal_norm": {MovingMean}, "causal_norm_aam": {MovingMean, MarginSchedule},
            "oltr": {MarginSchedule, EpochHook, ExtraLoss}}
    assert set(want) == set(HEADS.names())
    for name, protocols in want.items():
        head = build_head(name, 8, 4)
        got = {p for p in (MarginSchedule, EpochHook, MovingMean, ExtraLoss) if isinstance(head, p)}
        assert got == protocols, name
    assert isinstance(build_loss("inverse", class_counts=np.array([5, 1]), drw_epoch=1), EpochLoss)
