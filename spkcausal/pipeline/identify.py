"""Stage 7: closed-set identification of the held-out test utterances with each run's trained head: plain logits,
after subtracting the training set's mean embedding, and (Causal Norm heads) TDE logits with stage 6's alpha;
accuracy by shot group (of the long-tailed training dir, for a control run too) with per-speaker intervals.
Files per run E: E/identification.json, E/predictions/<variant>.npz, E/identify.log, rows of E/results.json;
marker E/.done/7."""
from __future__ import annotations

from ..utils import UsageError
from . import steps
from .context import StageContext, has_tde, is_done, join, mark_done, skip_msg
from .tde import tde_alpha_of

__all__ = ["stage_identify"]


def stage_identify(ctx: StageContext) -> None:
    """Stage 7 over the plan's runs (module docstring)."""
    if not ctx.test_dir or ctx.many is None or ctx.few is None:
        raise UsageError("stage identify: needs --test_dir, --many and --few")
    for run in ctx.runs(with_exp=True):
        rec = run.record
        e = ctx.exp_dir(rec)
        if is_done(e, "7"):
            skip_msg("7", f"identify {rec.name}", e)
            continue
        variants, alpha = ["cosine", "mean_sub"], None
        if has_tde(rec):
            variants.append("tde")
            alpha = tde_alpha_of(e)
        steps.identify_variants(variants, ctx.store(rec, ctx.test_dir), ctx.test_dir, ctx.train_dir, exp_dir=e,
                                tde_alpha=alpha, mean_store=ctx.store(rec, ctx.train_of(rec)), many=ctx.many,
                                few=ctx.few, record=e, out=join(e, "identification.json"))
        mark_done(e, "7")
