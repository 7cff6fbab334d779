"""Which long-tail method to try for a measured profile: the last lines of `spkcausal profile`.

The rule is a first-match walk down RULES, on two numbers of the profile (spkcausal.data.longtail.Profile):
the imbalance ratio (max / min utterances per speaker) and the share of speakers in the Few group. A rule
matches when both are within its bounds (None: no bound). The thresholds and the wording live in RULES only,
so that they can follow the benchmarks (docs/demo.md, sections "Long-tail benchmark" and "The tail's cost, with
power, and the encoder-side methods": the tail's cost against a balanced control at several imbalance ratios,
and what each method recovers of it) without a change to the logic; the last rule must match everything.
"""
from __future__ import annotations

from collections.abc import Mapping

from ..utils import DataError

__all__ = ["BENCHMARK", "RULES", "recommend", "format_recommendation"]

BENCHMARK = "docs/demo.md#the-tails-cost-with-power-and-the-encoder-side-methods"

# name, imbalance at most, Few share at least, advice. First match wins; edit the bounds and words from the
# benchmark's table (docs/demo.md), not the code of recommend().
RULES: tuple[tuple[str, float | None, float | None, str], ...] = (
    ("balanced", 3.0, None,
     "close to balanced: train the baseline (AAM, natural sampling); a long-tail method has little tail cost "
     "to recover here."),
    ("many_few", None, 0.3,
     "long-tailed with many Few speakers: the tail costs them seen-speaker EER (+1.9 [+1.1, +2.8] points at "
     "imbalance 30 on the tail-cost benchmark; +1.0 [+0.7, +1.3] fine-tuning a pretrained model) and no method "
     "recovered it. Keep natural sampling: speaker-uniform episodic batches, with or without a prototypical, "
     "semi-siamese or k-positive loss, raised held-out EER by 3.1 to 5.6 points, and episodes drawn by "
     "frequency, alone or with k-positive, left seen Few EER where it was; speed perturbation weighted to Few "
     "speakers, its copies as new speakers or keeping their speaker, did not lower it (keeping the speaker "
     "raised it 1.7 points), nor did noise and reverberation, for every speaker alike or weighted to the "
     "tail, nor self-supervised pre-training on the same data (its gains were those of training three times "
     "as long); re-weighting and sub-centre AAM raised Few EER. Train to convergence before you measure: at "
     "48 epochs instead of 16 the cost grew to +3.7 [+2.3, +5.0], and De-confound (Causal Norm AAM), whose "
     "estimate alone lowered seen Few EER at 16 epochs, recovered none of it at 48, nor did feature transfer. "
     "At 48 epochs k-positive contrast in frequency-drawn episodes lowered held-out EER (-1.1 [-1.9, -0.3]) "
     "but raised minDCF and cost identification; with two crops per utterance under natural sampling instead "
     "it changed nothing. For closed-set identification of tail speakers add Balanced "
     "Softmax (Few accuracy +11 to +16 points). More utterances per tail speaker is what closes the gap; "
     "measure yours with `--protocol lt`."),
    ("long_tail", None, None,
     "long-tailed, with most speakers outside the Few group: train the baseline and De-confound (Causal Norm "
     "AAM) with natural sampling (speaker-uniform batches raised EER for everyone on the tail-cost benchmark); "
     "Balanced Softmax for tail identification; decoupled classifiers (cRT, tau-norm) are cheap checks on the "
     "baseline's embeddings."),
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
