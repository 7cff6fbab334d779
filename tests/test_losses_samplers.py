"""Long-tail losses against direct formulas; samplers' class frequencies, determinism, sharding, resume; cRT."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_train import np_log_softmax

from spkcausal.data.samplers import build_sampler, class_probabilities
from spkcausal.inference.decoupled import retrain_classifier, tau_normalize, tau_normalize_head
from spkcausal.nn.heads import LinearHead
from spkcausal.nn.losses import build_loss, class_weights
from spkcausal.utils import UsageError


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.randn(12, 5) * 3, torch.randint(0, 5, (12,))


def test_ce_equals_torch_cross_entropy(batch):
    logits, labels = batch
    # float32, the same log-softmax: measured 2e-7, 60x under the default bound
    torch.testing.assert_close(build_loss("ce")(logits, labels), F.cross_entropy(logits, labels))


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_matches_direct_formula(batch, gamma):
    logits, labels = batch
    lp = np_log_softmax(logits.double().numpy())[np.arange(12), labels.numpy()]
    want = np.mean(-((1 - np.exp(lp)) ** gamma) * lp)
    # float32 focal loss vs float64 formula: ~10 eps
    assert build_loss("focal", gamma=gamma)(logits, labels).item() == pytest.approx(want, rel=1e-5)


def test_class_weights_direct_formulas():
    counts = np.array([500, 50, 5, 1])
    inv = 1 / counts
    # float32 weights of a float64 formula: 1 ulp
    np.testing.assert_allclose(class_weights(counts, "inverse").numpy(), inv * 4 / inv.sum(), rtol=1e-6)
    beta = 0.99
    eff = (1 - beta) / (1 - beta ** counts)
    np.testing.assert_allclose(class_weights(counts, "effective_number", beta).numpy(), eff * 4 / eff.sum(),  # as above
                               rtol=1e-6)
    np.testing.assert_allclose(class_weights([7, 7, 7], "inverse").numpy(), np.ones(3), rtol=1e-6)  # as above
    with pytest.raises(ValueError, match="at least one"):
        class_weights([3, 0], "inverse")


@pytest.mark.parametrize("name,extra", [("inverse", {}), ("effective_number", {"beta": 0.9}),
                                        ("focal", {"weighting": "inverse", "gamma": 1.0})])
def test_reweighted_losses_match_direct_formula(batch, name, extra):
    logits, labels = batch
    counts = np.array([100, 30, 10, 3, 1])
    loss = build_loss(name, class_counts=counts, **extra)
    scheme = extra.get("weighting", name)
    w = class_weights(counts, scheme, extra.get("beta", 0.9999)).double().numpy()
    lp = np_log_softmax(logits.double().numpy())[np.arange(12), labels.numpy()]
    g = extra.get("gamma", 0.0) if name == "focal" else 0.0
    want = np.mean(w[labels.numpy()] * -((1 - np.exp(lp)) ** g) * lp)
    assert loss(logits, labels).item() == pytest.approx(want, rel=1e-5)  # float32 loss vs float64 formula


def test_build_loss_errors():
    with pytest.raises(UsageError, match="needs class_counts"):
        build_loss("inverse")
    with pytest.raises(UsageError, match="already sets the weighting"):
        build_loss("inverse", class_counts=[3, 1], weighting="effective_number")
    with pytest.raises(UsageError) as err:
        build_loss("hinge")
    assert str(err.value) == ("unknown loss 'hinge'; expected one of balanced_softmax, ce, effective_number, focal, "
                              "inverse, none")


def test_unknown_sampler_lists_the_schemes():
    with pytest.raises(UsageError) as err:
        build_sampler("balanced", LABELS)
    assert str(err.value) == ("unknown sampler 'balanced'; expected one of class_balanced, episodic, "
                              "episodic_natural, natural, progressive, sqrt")
    with pytest.raises(UsageError, match="unknown sampler"):
        class_probabilities(np.array([3, 1]), "balanced")


LABELS = np.repeat(np.arange(4), [400, 100, 25, 4])


@pytest.mark.parametrize("name", ["class_balanced", "sqrt", "natural"])
def test_sampler_class_frequencies(name):
    s = build_sampler(name, LABELS, seed=3, num_samples=40000)
    freq = np.bincount(LABELS[s.indices()], minlength=4) / 40000
    counts = np.array([400, 100, 25, 4.0])
    want = {"class_balanced": np.ones(4), "sqrt": np.sqrt(counts), "natural": counts}[name]
    want = want / want.sum()
    # 40k draws: binomial std <= 0.0025, so 0.01 is a 4-sigma band
    np.testing.assert_allclose(freq, want, atol=0.01)  # sampling frequencies: a sample estimate, not rounding
    if name == "class_balanced":  # within a class every member is drawn, roughly uniformly
        few = s.indices()[LABELS[s.indices()] == 3]
        assert set(few.tolist()) == set(np.flatnonzero(LABELS == 3).tolist())


def test_natural_sampler_is_a_permutation_and_epochs_differ():
    s = build_sampler("natural", LABELS, seed=1)
    a = s.indices()
    assert sorted(a.tolist()) == list(range(len(LABELS)))
    s.set_epoch(1)
    assert not np.array_equal(a, s.indices())


@pytest.mark.parametrize("name", ["natural", "class_balanced", "sqrt"])
def test_sampler_determinism_sharding_and_resume(name):
    a = build_sampler(name, LABELS, seed=7)
    b = build_sampler(name, LABELS, seed=7)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    assert list(build_sampler(name, LABELS, seed=8)) != list(build_sampler(name, LABELS, seed=7))
    # three ranks: equal lengths, and interleaving them gives back the padded global order
    shards = [build_sampler(name, LABELS, seed=7, num_replicas=3, rank=r) for r in range(3)]
    for s in shards:
        s.set_epoch(2)
    lens = {len(s) for s in shards}
    assert lens == {int(np.ceil(len(LABELS) / 3))}
    glob = shards[0].global_order()
    inter = np.stack([s.indices() for s in shards], axis=1).reshape(-1)
    np.testing.assert_array_equal(inter, glob)
    assert np.array_equal(glob[: len(LABELS)], a.global_order())
    # resume at position 100 of rank 1 via state_dict, in a fresh sampler
    full = list(shards[1])
    shards[1].set_start(100)
    state = shards[1].state_dict()
    fresh = build_sampler(name, LABELS, seed=7, num_replicas=3, rank=1)
    fresh.load_state_dict(state)
    assert list(fresh) == full[100:] and len(fresh) == len(full) - 100
    fresh.set_epoch(3)
    assert len(fresh) == len(full)
    with pytest.raises(ValueError, match="seed"):
        build_sampler(name, LABELS, seed=9).load_state_dict(state)


def test_tau_normalize_direct_formula():
    w = torch.randn(5, 4) * torch.tensor([[0.1], [1.0], [3.0], [10.0], [0.5]])
    for tau in (0.0, 0.5, 1.0):
        want = w.numpy() / np.linalg.norm(w.numpy(), axis=1, keepdims=True) ** tau
        # float32 tau-normalised weights vs float64: a few ulp
        np.testing.assert_allclose(tau_normalize(w, tau).numpy(), want, rtol=1e-6)
    head = LinearHead(4, 5)
    with torch.no_grad():
        head.weight.copy_(w)
    tau_normalize_head(head, 1.0)
    # float32 norms of unit rows: a few ulp
    np.testing.assert_allclose(head.weight.detach().norm(dim=1).numpy(), np.ones(5), rtol=1e-6)


def test_crt_recovers_tail_classes_on_frozen_features():
    """Balanced re-training on separable, long-tailed features classifies every class of a balanced test set."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 4
    counts = [300, 20, 3]
    x = np.concatenate([c + rng.normal(size=(n, 8)) for c, n in zip(centres, counts)]).astype(np.float32)
    y = np.repeat(np.arange(3), counts)
    clf = retrain_classifier(x, y, 3, epochs=15, batch_size=64, lr=0.05, seed=0)
    xt = np.concatenate([c + rng.normal(size=(50, 8)) for c in centres]).astype(np.float32)
    pred = clf(torch.from_numpy(xt)).argmax(1).numpy()
    per_class = [(pred[i * 50:(i + 1) * 50] == i).mean() for i in range(3)]
    assert min(per_class) > 0.9
    again = retrain_classifier(x, y, 3, epochs=15, batch_size=64, lr=0.05, seed=0)
    assert torch.equal(again.weight, clf.weight)  # seeded: reproducible
