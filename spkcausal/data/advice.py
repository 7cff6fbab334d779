"""Which long-tail method to try for a measured profile: the last lines of `spkcausal profile`.

The rule is a first-match walk down RULES, on two numbers of the profile (spkcausal.data.longtail.Profile):
the imbalance ratio (max / min utterances per speaker) and the share of speakers in the Few group. A rule
matches when both are within its bounds (None: no bound). The thresholds and the wording live in RULES only,
so that they can follow the long-tail benchmark (docs/demo.md, section "Long-tail benchmark": the methods
trained on long-tailed subsets at several imbalance ratios, against the balanced control of each) without a
change to the logic; the last rule must match everything.
"""
from __future__ import annotations

from collections.abc import Mapping

from ..utils import DataError

__all__ = ["BENCHMARK", "RULES", "recommend", "format_recommendation"]

BENCHMARK = "docs/demo.md#long-tail-benchmark"

# name, imbalance at most, Few share at least, advice. First match wins; edit the bounds and words from the
# benchmark's table (docs/demo.md), not the code of recommend().
RULES: tuple[tuple[str, float | None, float | None, str], ...] = (
    ("balanced", 3.0, None,
     "close to balanced: train the baseline (AAM, natural sampling); a long-tail method has little tail cost "
     "to recover here."),
    ("many_few", None, 0.3,
     "long-tailed with many Few speakers. For verification train De-confound (Causal Norm AAM): on the "
     "benchmark (imbalance 30, 46% Few) it was the only method that lowered held-out EER (-1.45 [-2.79, "
     "-0.11]) and no method lowered seen Few EER. For closed-set identification of tail speakers add Balanced "
     "Softmax or progressive sampling (Few accuracy +16.0 / +14.5 points). Avoid re-weighting and sub-centre "
     "AAM (both raised Few EER). Measure what the tail costs you with `--protocol lt`."),
    ("long_tail", None, None,
     "long-tailed, with most speakers outside the Few group: train the baseline and De-confound (Causal Norm "
     "AAM), the benchmark's only method that lowered held-out EER; Balanced Softmax or progressive sampling "
     "for tail identification; decoupled classifiers (cRT, tau-norm) are cheap checks on the baseline's "
     "embeddings."),
)


def recommend(summary: Mapping, rules: tuple = RULES) -> dict:
    """The first rule of `rules` that a profile summary (Profile.summary / summary.json) meets, with the
    numbers it was judged on: {"rule", "imbalance", "few_share", "advice", "benchmark"}."""
    try:
        imbalance = float(summary["utterances_per_speaker"]["imbalance"])
        few_share = summary["groups"]["few"]["speakers"] / max(1, int(summary["speakers"]))
    except (KeyError, TypeError) as e:
        raise DataError(f"not a long-tail profile summary (missing {e})") from None
    for name, max_imbalance, min_few_share, advice in rules:
        if (max_imbalance is None or imbalance <= max_imbalance) and (min_few_share is None
                                                                       or few_share >= min_few_share):
            return {"rule": name, "imbalance": imbalance, "few_share": few_share, "advice": advice,
                    "benchmark": BENCHMARK}
    raise DataError("no recommendation rule matches (the last rule of RULES must have no bounds)")


def format_recommendation(rec: Mapping) -> str:
    """The recommendation as the lines `spkcausal profile` ends with."""
    return (f"recommendation (imbalance {rec['imbalance']:.3g}, Few speakers {100 * rec['few_share']:.1f}%): "
            f"{rec['advice']}\n  (rule '{rec['rule']}'; the evidence: {rec['benchmark']})")
