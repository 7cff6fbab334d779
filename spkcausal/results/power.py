"""How precisely a set of seeds measures a per-seed difference, and how many seeds a target precision needs
(issue 30, item 1: the tail cost's interval, or the minimum detectable effect where the machine cannot afford it).

For n per-seed differences d_k with sample standard deviation s (ddof 1), at two-sided level 1 - alpha:

    half-width   h   = t_{1-alpha/2, n-1} * s / sqrt(n)                      (the Student-t interval's)
    MDE          MDE = (t_{1-alpha/2, n-1} + t_{power, n-1}) * s / sqrt(n)   (two-sided paired t-test)
    seeds needed the least n >= 2 with t_{1-alpha/2, n-1} * s / sqrt(n) <= target half-width

The MDE is the standard approximation of Bloom (1995), "Minimum detectable effects: a simple way to report the
statistical power of experimental designs", Evaluation Review 19(5): the true effect at which the test rejects
with probability `power`, with the noncentral t replaced by a shifted central t. `power_at` gives the exact
power of the two-sided one-sample t-test from the noncentral t (nc = effect * sqrt(n) / s), to say how close
the approximation is at the seeds used (a little below `power` for a few seeds), and `exact_mde` the effect
at which that exact power is `power` (about 5% above Bloom's MDE with three seeds, 1% with five). The seed
counts assume the pilot's s is the true standard deviation: a pilot of a few seeds estimates it loosely, which is
why the report states the s it used.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["LEVEL", "POWER", "half_width", "mde", "power_at", "exact_mde", "seeds_for_half_width", "power_figures"]

LEVEL, POWER = 0.95, 0.80
_MAX_SEEDS = 10_000  # a target this loose or an s this large is a mistake, not a plan


def _tq(q: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def half_width(sd: float, n: int, level: float = LEVEL) -> float | None:
    """Half-width of the Student-t interval of a mean of n values of standard deviation sd (None for n < 2)."""
    if n < 2:
        return None
    return _tq((1.0 + level) / 2.0, n - 1) * sd / math.sqrt(n)


def mde(sd: float, n: int, level: float = LEVEL, power: float = POWER) -> float | None:
    """Minimum detectable effect of a two-sided paired t-test on n per-seed differences of standard deviation sd
    (module docstring; None for n < 2)."""
    if n < 2:
        return None
    return (_tq((1.0 + level) / 2.0, n - 1) + _tq(power, n - 1)) * sd / math.sqrt(n)


def power_at(effect: float, sd: float, n: int, level: float = LEVEL) -> float | None:
    """Exact power of the two-sided one-sample t-test at a true mean `effect` (noncentral t; None for n < 2 or
    sd <= 0)."""
    from scipy.stats import nct

    if n < 2 or not sd > 0:
        return None
    crit = _tq((1.0 + level) / 2.0, n - 1)
    nc = effect * math.sqrt(n) / sd
    return float(nct.sf(crit, n - 1, nc) + nct.cdf(-crit, n - 1, nc))


def exact_mde(sd: float, n: int, level: float = LEVEL, power: float = POWER) -> float | None:
    """The true mean at which the two-sided one-sample t-test on n values of standard deviation sd has exactly
    `power` (power_at solved; None for n < 2 or sd <= 0, or where scipy's noncentral t fails: two seeds)."""
    from scipy.optimize import brentq

    if n < 2 or not sd > 0:
        return None
    # power_at rises with the effect; the root lies between 0.9 and 1.5 times Bloom's MDE for n >= 3
    approx = mde(sd, n, level, power)
    lo, hi = 0.9 * approx, 1.5 * approx  # type: ignore[operator]
    f = lambda e: power_at(e, sd, n, level) - power  # type: ignore[operator]  # noqa: E731
    ends = (f(lo), f(hi))
    if not all(math.isfinite(x) for x in ends) or ends[0] > 0 or ends[1] < 0:
        return None  # scipy's nct returns nan far out in the tail with one degree of freedom
    return float(brentq(f, lo, hi, xtol=1e-12 * sd, rtol=1e-12))


def seeds_for_half_width(sd: float, target: float, level: float = LEVEL) -> int | None:
    """The least number of seeds (>= 2) whose Student-t interval has half-width <= target at standard deviation
    sd; None when it would take more than 10,000."""
    if not target > 0:
        raise ValueError(f"target half-width must be positive, got {target}")
    if sd == 0:
        return 2
    # t_{n-1} >= z: n >= (z s / target)^2 is a lower bound to start from
    from scipy.stats import norm

    n = max(2, math.ceil((float(norm.ppf((1.0 + level) / 2.0)) * sd / target) ** 2))
    while n <= _MAX_SEEDS:
        if half_width(sd, n, level) <= target:  # type: ignore[operator]
            return n
        n += 1
    return None


def power_figures(per_seed: Sequence[float], target: float | None = None, level: float = LEVEL,
                  power: float = POWER) -> dict:
    """sd, n, the interval's half-width, the MDE, the exact power at the MDE, the exact MDE and (with a target
    half-width) the seeds that target needs, for per-seed differences."""
    x = np.asarray(per_seed, dtype=np.float64)
    n = int(len(x))
    sd = float(x.std(ddof=1)) if n > 1 else None
    out: dict = {"n_seeds": n, "sd": sd, "level": level, "power": power, "half_width": None, "mde": None,
                 "power_at_mde": None, "exact_mde": None, "target_half_width": target, "seeds_needed": None}
    if sd is None:
        return out
    out["half_width"], out["mde"] = half_width(sd, n, level), mde(sd, n, level, power)
    out["power_at_mde"] = power_at(out["mde"], sd, n, level)
    out["exact_mde"] = exact_mde(sd, n, level, power)
    if target is not None:
        out["seeds_needed"] = seeds_for_half_width(sd, target, level)
    return out
