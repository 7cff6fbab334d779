"""Seeded, balanced trial lists for corpora that ship none (LibriSpeech) or for any data dir.

Algorithm of `make_trials` (everything below is driven by one `numpy.random.default_rng(seed)`
and by key-sorted inputs, so a seed gives the same list on every run of a given numpy version):

1. `n_target = floor(num_trials * target_ratio + 0.5)`, `n_nontarget = num_trials - n_target`.
2. Candidate target pairs of a speaker are unordered pairs of two different utterances of that
   speaker; with `cross_session` and a dir that has `utt2sess`, only pairs from two different
   sessions (chapters, YouTube ids, genres). Non-target candidates are unordered pairs of
   utterances of two different speakers. Every candidate set is indexed without being listed
   (utterances sorted by group; pair (i, j) with j in a later group), so sampling is exact and
   O(trials), even on a VoxCeleb2-sized dir.
3. Targets are spread over speakers as evenly as their capacities allow ("water filling"):
   every speaker gets min(capacity, L) pairs for the largest level L that does not overshoot,
   and the few remaining pairs go one each to speakers drawn at random among those with room.
   Within a speaker the pairs are drawn uniformly without replacement. Head speakers therefore
   do not dominate the target trials of a long-tailed dir.
4. Non-targets are drawn uniformly without replacement from all different-speaker pairs.
5. Each pair's enrol/test order is a coin flip; the list is sorted by (enrol, test).

Consequences: no self-pairs, no trial twice (neither as (a, b) twice nor as (a, b) and (b, a)),
target pairs from different sessions when the dir knows them. A request that the dir cannot
satisfy raises DataError saying how many trials it can give, unless `fit` lowers it first
(`fit_num_trials`: targets down to the dir's capacity, non-targets in the same proportion).

Seen-speaker lists (the recipes' `seen_test` / `seen_dev`, on the held-out utterances of the *training*
speakers): every speaker of such a dir holds the same number of held-out utterances, so the water filling
gives every speaker about the same number of targets, and the uniformly drawn non-targets put a speaker in
the enrolment seat about equally often too. Each shot group of the enrolment speaker therefore gets targets
and non-targets in proportion to its number of speakers, at the list's overall target ratio.
"""
from __future__ import annotations

import logging

import numpy as np

from ..utils import DataError, UsageError
from .datadir import DataDir
from .trialio import Trials

__all__ = ["make_trials", "target_capacity", "fit_num_trials"]

log = logging.getLogger("spkcausal.data.trials")


def _group_layout(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """For items sorted by group: index where each item's group ends, cumulative pair counts, total.

    Pair (i, j) is valid when j lies in a group after i's; item i has `n - end[i]` such partners."""
    n = len(groups)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    change = np.flatnonzero(groups[1:] != groups[:-1]) + 1
    bounds = np.concatenate([change, [n]])
    sizes = np.diff(np.concatenate([[0], bounds]))
    end = np.repeat(bounds, sizes).astype(np.int64)
    cum = np.cumsum(n - end)
    return end, cum, int(cum[-1])


def _pairs_from_flat(flat: np.ndarray, end: np.ndarray, cum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map flat pair indices in [0, total) back to item index pairs (i, j), i before j."""
    i = np.searchsorted(cum, flat, side="right")
    before = np.where(i > 0, cum[np.maximum(i - 1, 0)], 0)
    j = end[i] + (flat - before)
    return i, j


def _sessions(data: DataDir, cross_session: bool) -> dict[str, str] | None:
    if not cross_session or not data.utt2sess:
        return None
    lacking = [u for u in data.utt2spk if u not in data.utt2sess]
    if lacking:
        where = data.path / "utt2sess" if data.path is not None else "utt2sess"
        raise DataError(f"{len(lacking)} utterance(s) have no session, e.g. {sorted(lacking)[:3]}; "
                        "complete utt2sess or pass cross_session=False", where)
    return data.utt2sess


def _speaker_layouts(data: DataDir, sess: dict[str, str] | None) -> list[tuple]:
    """Per speaker (sorted): its utterances ordered by session, and their pair layout."""
    out = []
    for spk, utts in sorted(data.spk2utt.items()):
        if sess is None:
            ordered = np.array(utts, dtype=object)
            groups = np.arange(len(utts))
        else:
            ordered = np.array(sorted(utts, key=lambda u: (sess[u], u)), dtype=object)
            groups = np.array([sess[u] for u in ordered], dtype=object)
        end, cum, total = _group_layout(groups)
        out.append((spk, ordered, end, cum, total))
    return out


def target_capacity(data: DataDir, cross_session: bool = True) -> int:
    """Number of distinct target trials the dir allows (cross-session ones when it knows sessions)."""
    return sum(lay[4] for lay in _speaker_layouts(data, _sessions(data, cross_session)))


def _water_fill(caps: np.ndarray, want: int, rng: np.random.Generator) -> np.ndarray:
    """Split `want` over bins of capacity `caps` as evenly as possible; ties broken at random."""
    lo, hi = 0, int(caps.max(initial=0))
    while lo < hi:  # largest level whose capped sum stays <= want
        mid = (lo + hi + 1) // 2
        if np.minimum(caps, mid).sum() <= want:
            lo = mid
        else:
            hi = mid - 1
    quota = np.minimum(caps, lo)
    rest = want - int(quota.sum())
    if rest:
        room = np.flatnonzero(caps > lo)
        quota[rng.choice(room, size=rest, replace=False)] += 1
    return quota


def fit_num_trials(data: DataDir, num_trials: int, target_ratio: float = 0.5, cross_session: bool = True) -> int:
    """`num_trials`, or fewer when the dir has fewer distinct target pairs than `num_trials * target_ratio`:
    then every target pair and non-targets at the same ratio."""
    n_tgt = int(np.floor(num_trials * target_ratio + 0.5))
    cap = target_capacity(data, cross_session)
    if n_tgt <= cap or target_ratio <= 0.0:
        return num_trials
    if cap == 0:
        where = data.path if data.path is not None else "data dir"
        raise DataError("no target pair: every speaker has a single utterance (or a single session); hold out "
                        "more utterances per speaker or allow same-session targets", where)
    return max(1, int(np.floor(cap / target_ratio)))


def make_trials(data: DataDir, num_trials: int, seed: int, target_ratio: float = 0.5,
                cross_session: bool = True, fit: bool = False) -> Trials:
    """A reproducible balanced trial list over a data dir (algorithm in the module docstring); `fit` lowers
    `num_trials` to what the dir allows (fit_num_trials)."""
    if fit and num_trials > 0 and 0.0 <= target_ratio <= 1.0:
        num_trials = fit_num_trials(data, num_trials, target_ratio, cross_session)
    if num_trials <= 0:
        raise UsageError(f"num_trials must be positive, got {num_trials}")
    if not 0.0 <= target_ratio <= 1.0:
        raise UsageError(f"target_ratio must lie in [0, 1], got {target_ratio}")
    where = data.path if data.path is not None else "data dir"
    n_tgt = int(np.floor(num_trials * target_ratio + 0.5))
    n_non = num_trials - n_tgt
    rng = np.random.default_rng(seed)
    sess = _sessions(data, cross_session)
    if cross_session and sess is None:
        log.info("%s has no utt2sess: target pairs may come from the same session", where)

    layouts = _speaker_layouts(data, sess)
    caps = np.array([lay[4] for lay in layouts], dtype=np.int64)
    if n_tgt > caps.sum():
        kind = "cross-session " if sess is not None else ""
        raise DataError(f"{n_tgt} target trials requested but the dir allows only {int(caps.sum())} distinct "
                        f"{kind}target pairs ({len(layouts)} speakers); lower --num-trials or --target-ratio", where)
    enroll: list[np.ndarray] = []
    test: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    quota = _water_fill(caps, n_tgt, rng) if n_tgt else np.zeros(len(layouts), np.int64)
    for (_, ordered, end, cum, total), q in zip(layouts, quota):
        if q:
            i, j = _pairs_from_flat(rng.choice(total, size=int(q), replace=False), end, cum)
            enroll.append(ordered[i])
            test.append(ordered[j])
    labels.append(np.ones(n_tgt, np.int8))

    if n_non:
        utts = np.array(sorted(data.utt2spk, key=lambda u: (data.utt2spk[u], u)), dtype=object)
        spks = np.array([data.utt2spk[u] for u in utts], dtype=object)
        end, cum, total = _group_layout(spks)
        if n_non > total:
            raise DataError(f"{n_non} non-target trials requested but the dir allows only {total} distinct "
                            f"different-speaker pairs ({len(layouts)} speakers, {len(utts)} utterances)", where)
        i, j = _pairs_from_flat(rng.choice(total, size=n_non, replace=False), end, cum)
        enroll.append(utts[i])
        test.append(utts[j])
    labels.append(np.zeros(n_non, np.int8))

    e = np.concatenate(enroll).astype(str) if enroll else np.zeros(0, str)
    t = np.concatenate(test).astype(str) if test else np.zeros(0, str)
    lab = np.concatenate(labels)
    flip = rng.random(len(e)) < 0.5
    e, t = np.where(flip, t, e), np.where(flip, e, t)
    order = np.lexsort((t, e))
    return Trials(enroll=e[order], test=t[order], labels=lab[order])
