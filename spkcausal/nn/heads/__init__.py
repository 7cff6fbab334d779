"""Classifier heads: linear, cosine, AAM (ArcFace), Causal Norm and Causal Norm AAM (docs/design.md section 2).

Every head maps (embeddings (B, D), labels (B,) or None) to logits (B, C) and keeps its class weights in
`.weight` (C, D), or (C, K, D) for K sub-centres per class (`subcenters`, AAM and Causal Norm AAM). Margins are
applied only in training mode and only when labels are given, so eval-time logits are margin-free. The Causal
Norm heads track the moving-average feature `mean_feature` (x_bar) as a registered buffer, updated inside
forward in training mode from the detached raw embeddings: `x_bar <- mu * x_bar + mean_batch(x)` (no (1 - mu)
factor, as in the reference code; both forms give exactly the same direction from a zero start, and only the
direction is used).

Precision: the cosine, AAM and Causal Norm heads compute their whole logit path (normalisation, the cosine
matmul, the margin, the scale) in float32 even inside an autocast region: autocast is switched off in their
methods and bf16/fp16 inputs are cast up (float64 stays float64). In bf16 a cosine near 1 rounds to 1, where
sin(theta) and with it cos(theta + m) lose all precision. The plain linear head is left to autocast.

Long-tail options of `aam` and `causal_norm_aam` (spkcausal.nn.longtail; docs/causal.md): `class_margins: ldam`
(per-class margin m_c = m * (n_min / n_c)^(1/4)), `subcenters: K` (class score = best sub-centre) and
`feature_transfer` (tail features spread like the head's, training only). All default off, and off they leave
the head exactly as it was (same parameters, buffers and numbers).

Modules: ops (the registry, the K-chunk operations, the float32 logit path), margins (linear, cosine, AAM and
ArcFace's margin), causal (Causal Norm, Causal Norm AAM), oltr (OLTR's two-stage head), build (a head from its
config section), protocols (what the trainer and the assembler ask of a head).
"""
from __future__ import annotations

from .build import build_head, check_head_kwargs
from .causal import CausalNormAAMHead, CausalNormHead, is_causal
from .margins import AAMHead, CosineHead, LinearHead
from .oltr import OLTRHead
from .ops import (
    EPS,
    FEATURE_NORMS,
    HEADS,
    FeatureNorm,
    causal_norm_weight,
    feature_heads,
    normalize_heads,
    split_heads,
    squash_heads,
)
from .protocols import EpochHook, ExtraLoss, MarginSchedule, MovingMean

__all__ = ["HEADS", "EPS", "FEATURE_NORMS", "LinearHead", "CosineHead", "AAMHead", "CausalNormHead",
           "CausalNormAAMHead", "OLTRHead", "build_head", "check_head_kwargs", "is_causal", "split_heads",
           "normalize_heads", "squash_heads", "feature_heads", "FeatureNorm", "causal_norm_weight",
           "MarginSchedule", "EpochHook", "MovingMean", "ExtraLoss"]
