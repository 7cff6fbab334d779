"""TDE on logits and on embeddings: agreement, the NumPy formula, alpha = 0, the heuristic and the alpha sweep."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from spkcausal.inference.tde import (
    alpha_heuristic,
    format_alpha_curve,
    sweep_alpha,
    tde_embeddings,
    tde_logits,
)
from spkcausal.nn.heads import CausalNormHead


def np_tde_logits(x, w, xbar, alpha, k, tau, gamma):
    """docs/design.md's TDE logit formula, written independently in float64 loops."""
    x, w, xbar = (np.asarray(a, np.float64) for a in (x, w, xbar))
    d = x.shape[1] // k
    y = np.zeros((x.shape[0], w.shape[0]))
    for b in range(x.shape[0]):
        for i in range(w.shape[0]):
            for h in range(k):
                sl = slice(h * d, (h + 1) * d)
                xs, ws, ds = x[b, sl], w[i, sl], xbar[sl] / np.linalg.norm(xbar[sl])
                den = np.linalg.norm(ws) + gamma
                cos_xd = xs.dot(ds) / np.linalg.norm(xs)
                y[b, i] += ws.dot(xs) / (den * np.linalg.norm(xs)) - alpha * cos_xd * ws.dot(ds) / den
    return tau / k * y


EPS32 = float(np.finfo(np.float32).eps)


def f32_bound(alpha: float, tau: float = 16.0, d: int = 16) -> float:
    """What float32 can reach on a TDE logit: each cosine (a normalised dot product of at most d terms) is off by
    up to about (d + 3) eps, the alpha term adds a second one scaled by alpha, and tau scales both."""
    return tau * (d + 3) * EPS32 * (1 + abs(alpha))


def trained_head(k, seed=0, d=16, c=5):
    """A Causal Norm head whose x_bar was tracked on a few positive-mean (ReLU-like) batches."""
    torch.manual_seed(seed)
    head = CausalNormHead(d, c, num_heads=k).train()
    for _ in range(4):
        head(torch.rand(8, d) + 0.1)
    return head.eval()


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("alpha", [0.0, 0.7, 2.5])
def test_tde_logits_equal_head_on_tde_embeddings_and_numpy(k, alpha):
    head = trained_head(k)
    x = torch.randn(6, 16) + 0.5
    y = tde_logits(head, x, alpha=alpha)
    e = tde_embeddings(x, head.mean_feature, alpha, k)
    via_emb = head.classify_normalized(e).detach()
    assert y.dtype == torch.float32
    want = np_tde_logits(x.numpy(), head.weight.detach().numpy(), head.mean_feature.numpy(), alpha, k, 16.0, 1 / 32)
    # both float32 routes (logit formula, head on TDE embeddings) against float64, not against each other
    np.testing.assert_allclose(y.numpy(), want, rtol=0, atol=f32_bound(alpha))
    np.testing.assert_allclose(via_emb.numpy(), want, rtol=0, atol=f32_bound(alpha))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_alpha_zero_is_plain_causal_norm(k):
    head = trained_head(k, seed=1)
    x = torch.randn(7, 16)
    want = np_tde_logits(x.numpy(), head.weight.detach().numpy(), head.mean_feature.numpy(), 0.0, k, 16.0, 1 / 32)
    # alpha = 0 is the plain head: both within float32's reach of the float64 formula
    np.testing.assert_allclose(tde_logits(head, x, alpha=0.0).numpy(), want, rtol=0, atol=f32_bound(0.0))
    np.testing.assert_allclose(head(x).detach().numpy(), want, rtol=0, atol=f32_bound(0.0))
    e = tde_embeddings(x, head.mean_feature, 0.0, k)
    # alpha = 0: every chunk is unit-norm, up to the float32 rounding of a norm of 16 / k terms
    np.testing.assert_allclose(e.reshape(7, k, -1).norm(dim=-1).numpy(), np.ones((7, k)), rtol=(16 // k + 3) * EPS32)


def test_tde_removes_the_head_direction_component_at_alpha_one():
    head = trained_head(2, seed=2)
    x = torch.randn(5, 16).double()
    e = tde_embeddings(x, head.mean_feature.double(), 1.0, 2)
    m = head.mean_feature.double()
    for h in range(2):
        dk = m[h * 8:(h + 1) * 8] / m[h * 8:(h + 1) * 8].norm()
        assert (e[:, h * 8:(h + 1) * 8] @ dk).abs().max() < 1e-12  # float64: orthogonal up to ~10 eps64


def test_numpy_in_numpy_out_and_raw_weight_form():
    head = trained_head(2, seed=3)
    x = np.random.default_rng(0).normal(size=(4, 16))
    e = tde_embeddings(x, head.mean_feature.double().numpy(), 1.5, 2)
    assert isinstance(e, np.ndarray) and e.dtype == np.float64 and e.shape == (4, 16)
    w = head.weight.detach().double().numpy()
    y = tde_logits(w, x, head.mean_feature.double().numpy(), 1.5, num_heads=2, tau=16.0, gamma=1 / 32)
    assert isinstance(y, np.ndarray)
    # float64 in and out: two float64 evaluations of one formula agree to ~1e-15, 1e-9 is loose
    np.testing.assert_allclose(y, np_tde_logits(x, w, head.mean_feature.numpy(), 1.5, 2, 16.0, 1 / 32), rtol=1e-9)
    with pytest.raises(ValueError, match="give mean_feature"):
        tde_logits(w, x, alpha=1.0)


def test_untracked_mean_feature_is_an_error():
    head = CausalNormHead(8, 3).eval()
    with pytest.raises(ValueError, match="never updated"):
        tde_logits(head, torch.randn(2, 8), alpha=1.0)


def test_alpha_heuristic_matches_direct_mean_cosine():
    rng = np.random.default_rng(1)
    feats = rng.random((50, 8)) + 0.05
    xbar = feats.mean(0) * 3.0
    want_cos = []
    for h in range(2):
        f, m = feats[:, h * 4:(h + 1) * 4], xbar[h * 4:(h + 1) * 4]
        want_cos.append((f @ m) / (np.linalg.norm(f, axis=1) * np.linalg.norm(m)))
    want = 1.0 / np.mean(want_cos)
    assert alpha_heuristic(feats, xbar, 2) == pytest.approx(want, rel=1e-10)  # float64 both sides
    with pytest.raises(ValueError, match="feature sign"):
        alpha_heuristic(-feats, xbar, 2)


def test_sweep_picks_best_and_reports_curve():
    curve = {0.0: 5.0, 0.5: 3.0, 1.0: 2.0, 1.5: 2.0, 2.0: 4.0}
    s = sweep_alpha(lambda a: curve[a], list(curve), maximize=False)
    assert s.best_alpha == 1.0 and s.best_value == 2.0 and s.values == list(curve.values())
    assert "1.000 2.000000 *" in format_alpha_curve(s.alphas, s.values, s.best_alpha)
    assert sweep_alpha(lambda a: curve[a], list(curve), maximize=True).best_alpha == 0.0


def _mean_per_class_accuracy(labels, pred):
    return float(np.mean([np.mean(pred[labels == c] == c) for c in np.unique(labels)]))


def test_alpha_sweep_on_a_constructed_dev_set_picks_the_alpha_that_separates_tail_classes():
    # Per chunk (K = 2, 4 dims each): x_bar points along e0, class 0 (the "head" class) has weight e0, classes
    # 1..3 have weights e1..e3. Tail samples are 0.6 e_c + e0: cos 0.857 to class 0, 0.514 to their own class.
    # By hand, TDE logits (up to the common factor tau/K * 1/(1 + gamma)) are, for a tail sample,
    # class 0: 0.857 (1 - alpha), own class: 0.514, so it is right once alpha > 0.4; for a head sample (e0 plus
    # small noise) class 0 gets about 1 - alpha against noise, so it is right while alpha < 1.
    # Mean per-class accuracy: 1/4 at alpha 0, 1 for alpha in (0.4, 1), 3/4 from alpha 1.5 on.
    rng = np.random.default_rng(0)
    eye = np.eye(4)
    head = CausalNormHead(8, 4, num_heads=2).eval()
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(np.hstack([eye, eye])).float())
        head.mean_feature.copy_(torch.tensor([3.0, 0, 0, 0, 2.0, 0, 0, 0]))
    labels = np.repeat(np.arange(4), 6)
    chunk = np.where(labels[:, None] == 0, eye[0], 0.6 * eye[labels] + eye[0])
    x = np.hstack([chunk, chunk]) + 0.02 * rng.standard_normal((len(labels), 8))
    alphas = [3.0, 0.6, 1.5, 0.5, 0.0]  # not sorted: the tie (0.5 and 0.6 both give 1.0) goes to the smaller
    w, xbar = head.weight.detach().numpy(), head.mean_feature.numpy()

    def score(a):
        return _mean_per_class_accuracy(labels, tde_logits(head, torch.from_numpy(x), alpha=a).numpy().argmax(1))

    s = sweep_alpha(score, alphas, maximize=True)
    want = [_mean_per_class_accuracy(labels, np_tde_logits(x, w, xbar, a, 2, 16.0, 1 / 32).argmax(1))
            for a in alphas]
    assert s.alphas == alphas and s.values == pytest.approx(want)  # accuracies: ratios of counts, exact
    assert dict(zip(alphas, s.values)) == {3.0: 0.75, 1.5: 0.75, 0.6: 1.0, 0.5: 1.0, 0.0: 0.25}
    assert (s.best_alpha, s.best_value, s.maximize) == (0.5, 1.0, True)
    # Minimising the error rate instead picks the same alpha.
    err = sweep_alpha(lambda a: 1.0 - score(a), alphas, maximize=False)
    assert (err.best_alpha, err.best_value, err.maximize) == (0.5, 0.0, False)
    with pytest.raises(ValueError, match="no alpha"):
        sweep_alpha(score, [], maximize=True)
