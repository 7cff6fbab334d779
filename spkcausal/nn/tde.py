"""TDE math on features and Causal Norm heads (Tang et al., NeurIPS 2020; docs/design.md section 2).

With d^k = x_bar^k / ||x_bar^k||:
  logits:     TDE(y_i) = tau/K sum_k [ w_i^k.x^k/((||w_i^k||+gamma)||x^k||)
                                      - alpha cos(x^k, d^k) (w_i^k.d^k)/(||w_i^k||+gamma) ]
  embeddings: e^k = x^k/||x^k|| - alpha (x^k/||x^k|| . d^k) d^k, concatenated over k, not renormalised.
A capsule head (`feature_norm: capsule`, the paper's Capsule-TDE) puts the squash q(x^k) = ||x^k|| / (1 + ||x^k||)
* x^k / ||x^k|| where x^k / ||x^k|| stands first, and keeps the plain cosine in the removed term, as the paper's
code does (its TDE subtracts cos(x^k, d^k) * alpha * d^k from whatever normalised feature the head uses):
  e^k = q(x^k) - alpha cos(x^k, d^k) d^k,   TDE(y_i) = tau/K sum_k e^k . w_i^k / (||w_i^k|| + gamma).
The Causal Norm head applied to e without feature normalisation (`CausalNormHead.classify_normalized`)
gives exactly the TDE logits. Functions accept torch tensors or NumPy arrays and return the same kind.
Kept in the nn layer (beside the heads) so that model-level code (`nn.assemble.head_logits`) uses it;
`spkcausal.inference.tde` re-exports it with the dev-set sweep and the store transform.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..schema import coerce
from ..utils import DataError
from .heads import EPS, FeatureNorm, causal_norm_weight, feature_heads, normalize_heads, split_heads
from .heads.protocols import MovingMean

__all__ = ["ArrayLike", "head_direction", "tde_embeddings", "tde_logits", "mean_head_cosine", "alpha_heuristic"]

ArrayLike = Tensor | np.ndarray


def _as_tensor(a: ArrayLike) -> tuple[Tensor, bool]:
    """Torch view of `a` and whether it came from NumPy."""
    if isinstance(a, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a)), True
    return a, False


def head_direction(mean_feature: ArrayLike, num_heads: int) -> Tensor:
    """d^k = x_bar^k / ||x_bar^k||, concatenated (D,); raises if a chunk of x_bar is zero (never trained)."""
    m, _ = _as_tensor(mean_feature)
    m = m.reshape(-1)
    chunks = split_heads(m, num_heads)
    if any(float(c.norm()) == 0.0 for c in chunks):
        raise DataError("mean_feature has an all-zero chunk: x_bar was never updated (train the head first)")
    return normalize_heads(m, num_heads)


def tde_embeddings(x: ArrayLike, mean_feature: ArrayLike, alpha: float, num_heads: int,
                   feature_norm: str = "l2") -> ArrayLike:
    """TDE'd embeddings e (B, D): per chunk x^k/||x^k|| (capsule: its squash) - alpha cos(x^k, d^k) d^k;
    not renormalised."""
    xt, was_np = _as_tensor(x)
    d = head_direction(mean_feature, num_heads).to(device=xt.device, dtype=xt.dtype)
    xn = normalize_heads(xt, num_heads)
    feature_norm = coerce(feature_norm, FeatureNorm, "head.feature_norm")
    xf = xn if feature_norm == "l2" else feature_heads(xt, num_heads, feature_norm)
    parts = []
    for fk, xk, dk in zip(split_heads(xf, num_heads), split_heads(xn, num_heads), split_heads(d, num_heads)):
        parts.append(fk - alpha * (xk @ dk).unsqueeze(-1) * dk)
    e = torch.cat(parts, dim=-1)
    return e.numpy() if was_np else e


def tde_logits(head_or_weight: nn.Module | ArrayLike, x: ArrayLike, mean_feature: ArrayLike | None = None,
               alpha: float = 0.0, num_heads: int | None = None, tau: float | None = None,
               gamma: float | None = None, feature_norm: str | None = None) -> ArrayLike:
    """TDE logits (B, C) from the logit formula; head attributes fill in num_heads / tau / gamma / x_bar /
    feature_norm (a raw weight matrix: l2 unless given).

    Sub-centre weights (C, S, D): the TDE logit of every sub-centre, then the best per class (as the head)."""
    if isinstance(head_or_weight, nn.Module):
        h = head_or_weight
        weight = h.weight.detach()
        num_heads = h.num_heads if num_heads is None else num_heads
        tau = h.tau if tau is None else tau
        gamma = h.gamma if gamma is None else gamma
        mean_feature = h.mean_feature if mean_feature is None else mean_feature
        feature_norm = (h.feature_norm if isinstance(h, MovingMean) else "l2") if feature_norm is None else feature_norm
    else:
        weight, _ = _as_tensor(head_or_weight)
        if any(v is None for v in (num_heads, tau, gamma, mean_feature)):
            raise ValueError("with a raw weight matrix give mean_feature, num_heads, tau and gamma")
    xt, was_np = _as_tensor(x)
    weight = weight.to(device=xt.device, dtype=xt.dtype)
    d = head_direction(mean_feature, num_heads).to(device=xt.device, dtype=xt.dtype)
    shape = weight.shape
    wn = causal_norm_weight(weight.reshape(-1, shape[-1]), num_heads, gamma)
    xf = feature_heads(xt, num_heads, coerce(feature_norm or "l2", FeatureNorm, "head.feature_norm"))
    y = 0.0
    for xk, fk, wk, dk in zip(split_heads(xt, num_heads), split_heads(xf, num_heads), split_heads(wn, num_heads),
                              split_heads(d, num_heads)):
        cos_xd = F.normalize(xk, dim=-1, eps=EPS) @ dk  # (B,) since ||d^k|| = 1
        y = y + fk @ wk.T - alpha * cos_xd.unsqueeze(-1) * (wk @ dk).unsqueeze(0)
    y = (tau / num_heads) * y
    if len(shape) == 3:
        y = y.view(y.shape[0], shape[0], shape[1]).amax(dim=-1)
    return y.numpy() if was_np else y


def mean_head_cosine(features: ArrayLike, mean_feature: ArrayLike, num_heads: int) -> float:
    """Mean over samples and chunks of cos(x^k, d^k)."""
    xt, _ = _as_tensor(features)
    d = head_direction(mean_feature, num_heads).to(device=xt.device, dtype=xt.dtype)
    xn = normalize_heads(xt, num_heads)
    cos = torch.stack([xk @ dk for xk, dk in zip(split_heads(xn, num_heads), split_heads(d, num_heads))], dim=-1)
    return float(cos.mean())


def alpha_heuristic(features: ArrayLike, mean_feature: ArrayLike, num_heads: int) -> float:
    """The authors' heuristic alpha = 1 / mean cos(x^k, d^k) over (training) features."""
    c = mean_head_cosine(features, mean_feature, num_heads)
    if c <= 0:
        raise DataError(f"mean cosine to the head direction is {c:.4f} <= 0: the heuristic needs features that "
                         "lean toward x_bar (check the feature sign, and that x_bar was tracked on these features)")
    return 1.0 / c
