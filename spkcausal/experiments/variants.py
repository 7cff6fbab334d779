"""The one list of scoring variants and of decoupled-classifier methods, for the CLI, the recipes (through
`spkcausal plan`), the report and the bench scripts.

A variant is one way of using a trained model: the embeddings plain or TDE'd, a score normalisation (none, the
training mean subtracted, AS-norm) and, after AS-norm, a back-end that maps scores to LLRs (linear calibration
or QMF). Its name is the results row (`cosine`, `mean_sub`, `asnorm`, `asnorm_cal`, `asnorm_qmf`, `tde`,
`tde_mean_sub`, ...); its scores dir is `scores/[tde_]{cosine,mean_sub,asnorm}[_cal|_qmf]`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..utils import UsageError

__all__ = ["Variant", "VARIANTS", "VARIANT_NAMES", "LLR_VARIANTS", "DECOUPLED_METHODS", "FINE_TUNES", "variant"]

DECOUPLED_METHODS = ("crt", "tau_norm", "ncm", "lws", "oltr")  # spkcausal decouple --method
FINE_TUNES = ("lm",)  # BASE+lm: the recipes' large-margin fine-tuning of BASE's averaged model


@dataclass(frozen=True)
class Variant:
    """One scoring of a trained model: TDE or not, a normalisation ("", mean_sub, asnorm), a back-end ("",
    cal, qmf; only after asnorm)."""

    tde: bool = False
    norm: str = ""
    backend: str = ""

    @property
    def scores_dir(self) -> str:
        """The dir under `<exp>/scores` that holds its score files."""
        return f"{'tde_' if self.tde else ''}{self.norm or 'cosine'}{'_' + self.backend if self.backend else ''}"

    @property
    def name(self) -> str:
        """The results row: the scores dir's name, except plain TDE, `tde` (not tde_cosine)."""
        return "tde" if self.scores_dir == "tde_cosine" else self.scores_dir

    @property
    def llr(self) -> bool:
        """Whether its scores are calibrated log-likelihood ratios."""
        return bool(self.backend)


# the report's row order: plain, then TDE; within each, the normalisations then the back-ends
VARIANTS = tuple(Variant(tde, norm, backend) for tde in (False, True)
                 for norm, backend in (("", ""), ("mean_sub", ""), ("asnorm", ""), ("asnorm", "cal"),
                                       ("asnorm", "qmf")))
VARIANT_NAMES = tuple(v.name for v in VARIANTS)
LLR_VARIANTS = tuple(v.name for v in VARIANTS if v.llr)


def variant(name: str) -> Variant:
    """The variant of a row name; a UsageError naming the known ones otherwise."""
    for v in VARIANTS:
        if v.name == name:
            return v
    raise UsageError(f"unknown scoring variant {name!r} (one of: {', '.join(VARIANT_NAMES)})")
