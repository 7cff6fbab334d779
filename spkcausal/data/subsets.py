"""Training / held-out splits of a data dir: ImageNet-LT-style long-tailed subsets (`longtail_subset`, the
count curve `target_counts`) and held-out val / test utterances of training speakers (`split_heldout`)."""
from __future__ import annotations

import numpy as np

from ..utils import DataError, UsageError, get_logger
from .datadir import DataDir

log = get_logger(__name__)


def target_counts(n_classes: int, n_max: int, imbalance: float, profile: str = "exp", pareto_alpha: float = 6.0,
                  exp_power: float = 1.0, rounding: str = "half_up") -> np.ndarray:
    """Per-rank target counts, rank 0 = n_max, rank C-1 = n_max / imbalance, rounded, at least 1.

    With t = rank / (C-1): `exp` is n_max * imbalance^-(t^exp_power) (CIFAR-LT for exp_power 1), `pareto` the
    Lomax survival n_max * (1 + t (imbalance^(1/pareto_alpha) - 1))^-pareto_alpha. `rounding` of x = n_max * f:
    "half_up" (floor(x + 1/2)) is what longtail_subset uses and feasible_n_max's inversion assumes;
    "half_even" (numpy.round) is what the synthetic corpus was generated with, kept so that a seed still gives
    the same corpus. They differ only where x is exactly k + 1/2 with k even.
    """
    if imbalance < 1:
        raise UsageError(f"imbalance must be >= 1, got {imbalance}")
    if pareto_alpha <= 0 or exp_power <= 0:
        raise UsageError(f"pareto_alpha and exp_power must be > 0, got {pareto_alpha} and {exp_power}")
    t = np.arange(n_classes) / max(1, n_classes - 1)
    if profile == "exp":
        frac = imbalance ** -(t ** exp_power)
    elif profile == "pareto":  # the scale is set so that the last rank is 1/imbalance
        frac = (1 + t * (imbalance ** (1 / pareto_alpha) - 1)) ** -pareto_alpha
    else:
        raise UsageError(f"unknown profile {profile!r}; expected 'exp' or 'pareto'")
    if rounding == "half_up":
        x = np.floor(n_max * frac + 0.5)
    elif rounding == "half_even":
        x = np.round(n_max * frac)
    else:
        raise UsageError(f"unknown rounding {rounding!r}; expected 'half_up' or 'half_even'")
    return np.maximum(1, x).astype(np.int64)


def feasible_n_max(avail: np.ndarray, imbalance: float, profile: str = "exp", pareto_alpha: float = 6.0) -> int:
    """Largest n_max whose targets all fit (i-th largest count >= i-th target), then trimmed to imbalance * tail."""
    a = np.sort(np.asarray(avail, dtype=np.int64))[::-1]
    frac = target_counts(len(a), 10**9, imbalance, profile, pareto_alpha) / 1e9
    # round(n * f) <= a  <=>  n < (a + 0.5) / f; float fuzz is settled by the exact check below
    n = max(1, int(np.min(np.ceil((a + 0.5) / frac) - 1)))
    while n > 1 and (target_counts(len(a), n, imbalance, profile, pareto_alpha) > a).any():
        n -= 1
    while (target_counts(len(a), n + 1, imbalance, profile, pareto_alpha) <= a).all():
        n += 1
    # Smaller n_max stays feasible; lower it so max/min = n_max / n_tail is as close to imbalance as integers allow.
    n_tail = int(target_counts(len(a), n, imbalance, profile, pareto_alpha)[-1])
    return max(1, min(n, int(np.floor(imbalance * n_tail + 1e-9))))


def _random_feasible_ranks(avail: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Speaker index of each rank: uniform among the unassigned speakers that can meet the rank's target."""
    free = np.ones(len(avail), dtype=bool)
    ranked = np.empty(len(avail), dtype=np.int64)
    for rank, t in enumerate(targets):
        ok = np.flatnonzero(free & (avail >= t))
        i = int(rng.choice(ok)) if len(ok) else int(np.flatnonzero(free)[np.argmax(avail[free])])
        ranked[rank] = i
        free[i] = False
    return ranked


def longtail_subset(data: DataDir, imbalance: float, profile: str = "exp", max_per_spk: int | None = None,
                    heldout_per_spk: int = 10, seed: int = 0, order: str = "random",
                    pareto_alpha: float = 6.0) -> tuple[DataDir, DataDir]:
    """Split a data dir into a long-tailed training dir and a balanced held-out dir (ImageNet-LT / CIFAR-LT style).

    1. Speakers with more than `heldout_per_spk` utterances are kept; each gives `heldout_per_spk` utterances,
       drawn at random, to the held-out dir. The others are dropped from both.
    2. Targets t_0 >= ... >= t_{C-1} come from target_counts(C, n_max, imbalance, profile), with n_max =
       `max_per_spk` or, by default, feasible_n_max: the largest n_max the remaining utterances can meet.
    3. Ranks are filled from the head: `order="random"` (seeded) gives rank i to a speaker drawn uniformly
       among the unassigned ones that have at least t_i utterances left (as CIFAR-LT / ImageNet-LT pick classes
       at random), or, when none has, to the one with most left, capped; `"size"` gives ranks by utterances
       left (desc, ties by speaker id), capped. Either way max/min = n_max / round(n_max / imbalance) whenever
       the data can satisfy every target.
    4. Each speaker's training utterances are its first t_i (capped) in a seeded random order.
    """
    if heldout_per_spk < 0:
        raise UsageError("heldout_per_spk must be >= 0")
    if order not in ("random", "size"):
        raise UsageError(f"unknown order {order!r}; expected 'random' or 'size'")
    rng = np.random.default_rng(seed)
    spk2utt = data.spk2utt
    speakers = [s for s in sorted(spk2utt) if len(spk2utt[s]) > heldout_per_spk]
    if not speakers:
        raise DataError(f"no speaker has more than {heldout_per_spk} utterances", data.path)
    heldout: list[str] = []
    rest: dict[str, list[str]] = {}
    for s in speakers:
        utts = spk2utt[s]
        perm = rng.permutation(len(utts))
        heldout += [utts[i] for i in perm[:heldout_per_spk]]
        rest[s] = [utts[i] for i in perm[heldout_per_spk:]]
    avail = np.array([len(rest[s]) for s in speakers])
    if max_per_spk is not None:
        n_max = int(max_per_spk)
    else:
        n_max = feasible_n_max(avail, imbalance, profile, pareto_alpha)
    targets = target_counts(len(speakers), n_max, imbalance, profile, pareto_alpha)
    if order == "random":
        ranked = _random_feasible_ranks(avail, targets, rng)
    else:
        ranked = np.lexsort((np.arange(len(speakers)), -avail))
    capped = int((avail[ranked] < targets).sum())
    log.info("long-tail subset: %d speakers, n_max %d, imbalance %g (%s), %d target(s) capped by the data",
             len(speakers), n_max, imbalance, profile, capped)
    train: list[str] = []
    for rank, i in enumerate(ranked):
        train += rest[speakers[i]][: min(int(targets[rank]), int(avail[i]))]
    return data.subset(train), data.subset(heldout)


def split_heldout(data: DataDir, val_per_spk: int, test_per_spk: int, min_train: int = 1,
                  seed: int = 0) -> tuple[DataDir, DataDir, DataDir]:
    """(train, val, test) DataDirs: every speaker with at least val+test+min_train utterances gives a seeded
    random `val_per_spk` to val and `test_per_spk` to test; all other utterances stay in train.

    Unlike `longtail_subset` this keeps the training distribution as it is (minus the held-out utterances):
    speakers too small to give a held-out set are trained on but not scored."""
    if val_per_spk < 0 or test_per_spk < 0 or min_train < 0 or val_per_spk + test_per_spk == 0:
        raise UsageError("val_per_spk, test_per_spk, min_train must be >= 0 and val + test > 0")
    rng = np.random.default_rng(seed)
    val: list[str] = []
    test: list[str] = []
    need = val_per_spk + test_per_spk + min_train
    for _spk, utts in sorted(data.spk2utt.items()):
        if len(utts) < need:
            continue
        perm = rng.permutation(len(utts))
        val += [utts[i] for i in perm[:val_per_spk]]
        test += [utts[i] for i in perm[val_per_spk:val_per_spk + test_per_spk]]
    if not test and not val:
        raise DataError(f"no speaker has the {need} utterances a held-out split needs", data.path)
    held = set(val) | set(test)
    return data.subset([u for u in data.utt2spk if u not in held]), data.subset(val), data.subset(test)
