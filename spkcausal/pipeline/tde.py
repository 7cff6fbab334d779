"""Stage 6: TDE for the runs with a Causal Norm head. Alpha is chosen on a dev set, never on the test trials
(by default identification accuracy on the iden val split; dev_eer / dev_min_dcf: the first dev trial list),
over the grid plus the 1/mean-cos heuristic on the training embeddings, every dev list's curve recorded
(E/tde_alpha.json; the printed choice in E/tde_alpha.txt, its last line `alpha A`). Then TDE'd stores
(`<store>_tde`) of the eval, training, seen and dev stores, and stage 5's scoring and back-end on them (rows tde,
tde_mean_sub, tde_asnorm, tde_asnorm_cal, tde_asnorm_qmf). Marker E/.done/6.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..inference.tde_alpha import ALPHA_GRID, CRITERIA, choose_alpha
from ..utils import UsageError, setup_logging, write_text_atomic
from . import steps
from .context import StageContext, has_tde, is_done, join, log, mark_done, scoped_logs, skip_msg
from .score import Scoring, asnorm_top_of, check_lists, score_and_record

__all__ = ["tde_alpha_of", "stage_tde"]


def tde_alpha_of(e: str) -> float:
    """The alpha stage 6 chose for run E (the last `alpha A` line of E/tde_alpha.txt)."""
    path = Path(e) / "tde_alpha.txt"
    found = None
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "alpha":
                found = words[1]
    try:
        return float(found)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UsageError(f"no chosen alpha in {path}: run stage 6 first (remove {e}/.done/6 to redo it)") from None


def _choose(ctx: StageContext, e: str, val_store: str, train_store: str, lists: list[str],
            stores: list[str]) -> float:
    """tde-alpha for one run: the sweep in E/tde_alpha.json, the printed choice in E/tde_alpha.txt."""
    with scoped_logs():
        setup_logging(join(e, "tde_alpha.log"))
        res = choose_alpha(val_store, exp_dir=e, data_dir=ctx.val_dir, trials=lists or None,
                           alphas=list(ALPHA_GRID) if ctx.alphas is None else ctx.alphas,
                           out=join(e, "tde_alpha.json"), trials_emb=stores or None, criterion=ctx.alpha_on,
                           heuristic_emb=train_store)
    text = steps.alpha_text(res)
    print(text, end="", flush=True)
    write_text_atomic(join(e, "tde_alpha.txt"), text)
    return res["alpha"]


def stage_tde(ctx: StageContext) -> None:
    """Stage 6 over the plan's runs (module docstring); decoupled runs and heads other than Causal Norm are
    left out."""
    from ..inference.tde import tde_store

    check_lists(ctx, "tde")
    if ctx.alpha_on not in CRITERIA:
        raise UsageError(f"stage tde: --alpha_on {ctx.alpha_on} ({', '.join(CRITERIA)})")
    if ctx.alpha_on != "iden_val" and not ctx.dev_trials:
        raise UsageError(f"stage tde: --alpha_on {ctx.alpha_on} needs --dev_trials")
    for run in ctx.runs(with_exp=True):
        rec = run.record
        if rec.kind == "decoupled":
            continue
        e = ctx.exp_dir(rec)
        if not has_tde(rec):
            log(f"stage 6: {rec.name} has no Causal Norm head: no TDE")
            continue
        if is_done(e, "6"):
            skip_msg("6", f"TDE {rec.name}", e)
            continue
        train_dir = ctx.train_of(rec)
        # a dev list stage 2 could not build (e.g. one val utterance per speaker) is left out
        kept = [(d, ctx.dev_dirs[i] if i < len(ctx.dev_dirs) and ctx.dev_dirs[i] else ctx.val_dir)
                for i, d in enumerate(ctx.dev_trials) if os.path.isfile(d)]
        lists, dirs = [d for d, _ in kept], [dd for _, dd in kept]
        stores = [ctx.store(rec, dd) for dd in dirs]
        ev, tr = ctx.store(rec, ctx.eval_dir), ctx.store(rec, train_dir)
        alpha = _choose(ctx, e, ctx.store(rec, ctx.val_dir), tr, lists, stores)
        log(f"stage 6: {rec.name}: TDE alpha {alpha!r} (by {ctx.alpha_on}; dev curves in {e}/tde_alpha.json)")
        pairs = [ev, tr] + ([ctx.store(rec, ctx.seen_dir)] if ctx.seen_trials else []) + stores[:1]
        for raw in pairs:
            print(tde_store(raw, f"{raw}_tde", alpha), flush=True)
        top = asnorm_top_of(e, ctx.asnorm_top, lists[0] if lists else "", stores[0] if stores else "", tr, train_dir)
        s = Scoring(e, f"{ev}_tde", f"{tr}_tde", train_dir, top, "tde_")
        score_and_record(ctx, s, f"{ctx.store(rec, ctx.seen_dir)}_tde" if ctx.seen_dir else "",
                         lists[0] if lists else "", f"{stores[0]}_tde" if stores else "", dirs[0] if dirs else "",
                         ctx.train_dir, tde_alpha=alpha)
        mark_done(e, "6")
