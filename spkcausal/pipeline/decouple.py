"""Stage 4's decoupled systems (BASE+crt|tau_norm|ncm|lws|oltr): a new classifier on the base run's frozen
embeddings of the training dir (tau_norm: tau chosen on the iden val split), written as the run's experiment
dir with emb/ linking to the base's stores (spkcausal.inference.decoupled). Marker E/.done/4."""
from __future__ import annotations

from ..utils import UsageError
from . import steps
from .context import StageContext, base, is_done, join, mark_done, skip_msg

__all__ = ["stage_decouple"]


def stage_decouple(ctx: StageContext) -> None:
    """The decoupled runs of the plan, after their bases' extraction."""
    for run in ctx.runs():
        rec = run.record
        if rec.kind != "decoupled" or rec.parent is None or rec.method is None:
            continue
        e, b = ctx.exp_dir(rec), join(ctx.exp, rec.parent)
        if is_done(e, "4"):
            skip_msg("4", f"decouple {rec.name}", e)
            continue
        if not (ctx.train_dir and ctx.val_dir):
            raise UsageError(f"stage decouple: decoupled system {rec.name} needs --train_dir and --val_dir")
        if not is_done(b, "4"):
            raise UsageError(f"stage decouple: {rec.name} is built on {b}, which has no embeddings (add its system "
                             "to --systems)")
        train_emb, val_emb = join(b, "emb", base(ctx.train_dir)), join(b, "emb", base(ctx.val_dir))
        print(steps.decouple_line(b, rec.method, e, train_emb, ctx.train_dir, val_emb, ctx.val_dir,
                                  seed=rec.seed or 0), flush=True)
        mark_done(e, "4")

