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
    if not 1 <= imbalance < float("inf"):  # NaN fails too
        raise UsageError(f"imbalance must be a finite number >= 1, got {imbalance}")
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
    if max_per_spk is not None and max_per_spk < 1:
        raise UsageError(f"max_per_spk (--max-per-spk): expected an integer >= 1 (the head speaker's utterances), "
                         f"got {max_per_spk}")
    if order not in ("random", "size"):
        raise UsageError(f"unknown order {order!r}; expected 'random' or 'size'")
    rng = np.random.default_rng(seed)
    spk2utt = data.spk2utt
    speakers = [s for s in sorted(spk2utt) if len(spk2utt[s]) > heldout_per_spk]
    if len(speakers) < 2:
        raise DataError(f"{len(speakers)} speaker(s) have more than {heldout_per_spk} utterances (the held-out ones); "
                        "expected at least 2 for a long-tailed subset (a head and a tail)", data.path)
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
    kept = [min(int(targets[rank]), int(avail[i])) for rank, i in enumerate(ranked)]
    if imbalance > 1 and max(kept) == min(kept):
        raise DataError(f"every one of the {len(kept)} speakers would keep {kept[0]} utterance(s): a flat subset, "
                        f"not long-tailed; expected a head above the tail for imbalance {imbalance:g} (more "
                        f"utterances per speaker beyond the {heldout_per_spk} held out, or a larger --max-per-spk)",
                        data.path)
    train: list[str] = []
    for rank, i in enumerate(ranked):
        train += rest[speakers[i]][: kept[rank]]
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


def water_fill(avail: np.ndarray, total: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Per-speaker counts min(avail, L) summing to `total`, plus one more for a seeded random choice of the
    speakers that have more than L: the balanced counts of `total` utterances under the caps `avail`; returns
    (counts, L)."""
    avail = np.asarray(avail, dtype=np.int64)
    if total > int(avail.sum()):
        raise DataError(f"{total} utterances asked for, the speakers have only {int(avail.sum())}")
    # sum_s min(avail_s, L) grows with L: the largest L with a sum <= total, by bisection
    lo, hi = 0, int(avail.max(initial=0))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if int(np.minimum(avail, mid).sum()) <= total:
            lo = mid
        else:
            hi = mid - 1
    counts = np.minimum(avail, lo)
    rest = total - int(counts.sum())
    if rest:  # fewer than the speakers above the level, else L + 1 would fit
        counts[rng.choice(np.flatnonzero(avail > lo), size=rest, replace=False)] += 1
    return counts, lo


def _match_duration(durs: list[np.ndarray], picks: list[np.ndarray], target: float, tol: float) -> int:
    """Swap picked and unpicked utterances within speakers (greedy, largest useful change first) until the
    picked total is within tol * target of target; the number of swaps, or -1 when no swap helps any more."""
    swaps = 0
    chosen = [np.zeros(len(d), dtype=bool) for d in durs]
    for c, p in zip(chosen, picks):
        c[p] = True
    total = float(sum(d[c].sum() for d, c in zip(durs, chosen)))
    while abs(total - target) > tol * target:
        need = target - total
        best, best_gap = None, abs(need)
        for s, (d, c) in enumerate(zip(durs, chosen)):
            if c.all() or not c.any():
                continue
            # the extreme swap of this speaker: its most useful change in the direction of `need`
            i = np.flatnonzero(c)[np.argmin(d[c])] if need > 0 else np.flatnonzero(c)[np.argmax(d[c])]
            j = np.flatnonzero(~c)[np.argmax(d[~c])] if need > 0 else np.flatnonzero(~c)[np.argmin(d[~c])]
            gap = abs(need - (d[j] - d[i]))
            if gap < best_gap - 1e-12:
                best, best_gap = (s, i, j), gap
        if best is None:
            return -1
        s, i, j = best
        chosen[s][i], chosen[s][j] = False, True
        total += float(durs[s][j] - durs[s][i])
        swaps += 1
    for k, c in enumerate(chosen):
        picks[k] = np.flatnonzero(c)
    return swaps


def balanced_control(data: DataDir, lt_subset: DataDir, seed: int = 0, exclude: set[str] | frozenset = frozenset(),
                     tolerance: float = 0.05) -> tuple[DataDir, dict]:
    """A balanced control of a long-tailed subset: the same speakers and number of utterances, drawn from `data`
    (less `exclude`, e.g. the held-out utterances), as evenly over speakers as their utterances allow.

    Counts by water-filling (`water_fill`): every speaker gets min(available, L), L the level that makes the
    total equal to the subset's, the remainder one each to random speakers above the level. Utterances are a
    seeded random draw within each speaker; when both dirs have durations, draws are then swapped within
    speakers until the total duration is within `tolerance` of the subset's (DataError when no swap gets
    there). Returns the control and a summary (level, achieved hours ratio, swaps)."""
    if not 0 <= tolerance < 1:
        raise UsageError(f"tolerance must be in [0, 1), got {tolerance}")
    rng = np.random.default_rng(seed)
    lt_spk = lt_subset.spk2utt
    missing = sorted(set(lt_subset.utt2spk) - set(data.utt2spk))
    if missing:
        raise DataError(f"{len(missing)} utterances of the long-tailed subset are not in the source dir "
                        f"(first: {missing[0]}): not a subset of it", data.path)
    pool = data.subset(u for u in data.utt2spk if u not in exclude).spk2utt
    speakers = sorted(lt_spk)
    short = [s for s in speakers if s not in pool]
    if short:
        raise DataError(f"speaker {short[0]} of the long-tailed subset has no utterance left in the source dir")
    avail = np.array([len(pool[s]) for s in speakers])
    counts, level = water_fill(avail, len(lt_subset), rng)
    picks = [rng.permutation(a)[:c] for a, c in zip(avail, counts)]
    has_dur = bool(lt_subset.utt2dur) and all(u in data.utt2dur for s in speakers for u in pool[s])
    info: dict = {"speakers": len(speakers), "utterances": int(counts.sum()), "level": int(level),
                  "at_level_plus_one": int((counts > level).sum()), "capped_below_level": int((avail < level).sum()),
                  "seed": seed, "tolerance": tolerance, "hours_longtail": None, "hours_control": None,
                  "hours_ratio": None, "swaps": 0}
    if has_dur:
        durs = [np.array([data.utt2dur[u] for u in pool[s]]) for s in speakers]
        target = float(sum(lt_subset.utt2dur[u] for u in lt_subset.utt2spk))
        swaps = _match_duration(durs, picks, target, tolerance)
        got = float(sum(d[p].sum() for d, p in zip(durs, picks)))
        if swaps < 0:
            raise DataError(f"cannot match the long-tailed subset's {target / 3600:.3f} h within "
                            f"{100 * tolerance:g}% with the same speakers and counts: best {got / 3600:.3f} h "
                            f"(ratio {got / target:.4f})", data.path)
        info.update(hours_longtail=target / 3600, hours_control=got / 3600, hours_ratio=got / target, swaps=swaps)
    else:
        log.warning("balanced control: no utt2dur in both dirs, durations not matched")
    utts = [pool[s][i] for s, p in zip(speakers, picks) for i in p]
    log.info("balanced control: %d speakers, %d utterances, level %d (%d at level + 1, %d below), hours ratio %s",
             len(speakers), len(utts), level, info["at_level_plus_one"], info["capped_below_level"],
             "-" if info["hours_ratio"] is None else f"{info['hours_ratio']:.4f}")
    return data.subset(utts), info
