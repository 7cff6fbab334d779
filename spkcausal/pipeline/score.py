"""Stage 5: scoring (cosine, mean subtraction, AS-norm), the calibrated back-end and the verify threshold, for
every run of the plan; also the scoring that stage 6 repeats on TDE'd embeddings (`score_and_record`).

Files per run E: E/scores/<variant>/<list>.score, E/asnorm_top.json (AS-norm's top-N chosen on the dev list),
E/backend/{asnorm_cal,asnorm_qmf,cosine_cal}.json, E/threshold.json, rows of E/results.json; marker E/.done/5.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..inference.api import set_threshold
from ..scoring.calibration import apply_calibration_file
from ..scoring.cosine import ScorerInputs, parse_top_n
from ..scoring.qmf import apply_qmf_files
from ..utils import SpkcausalError, UsageError
from . import steps
from .context import StageContext, base, is_done, join, log, mark_done, skip_msg

__all__ = ["Scoring", "score_variants", "record_variants", "asnorm_top_of", "backend_variants", "verify_threshold",
           "score_and_record", "stage_score"]

LISTED = ("cosine", "mean_sub", "asnorm")


@dataclass(frozen=True)
class Scoring:
    """How one run's lists are scored: its embeddings of the eval dir `ev`, of the training dir `tr` (mean and
    AS-norm cohort, with `train_dir`'s speakers), the top-N, and the row prefix ("" or "tde_")."""
    e: str
    ev: str
    tr: str
    train_dir: str
    top: str
    prefix: str = ""

    def out(self, variant: str) -> str:
        """The score dir of a variant: E/scores/<prefix><variant>."""
        return join(self.e, "scores", self.prefix + variant)


def score_variants(s: Scoring, store: str, trials: Sequence[str], enroll_map: str = "") -> None:
    """Cosine, mean-subtracted and AS-norm scores of each list (keys in `store`), printing the score files."""
    em = enroll_map or None
    outs = steps.score(trials, store, s.out("cosine"), enroll_map=em)
    outs += steps.score(trials, store, s.out("mean_sub"), mean_store=s.tr, enroll_map=em)
    outs += steps.score(trials, store, s.out("asnorm"), mean_store=s.tr, cohort=s.tr, cohort_data=s.train_dir,
                        top=s.top, enroll_map=em)
    for o in outs:
        print(o, flush=True)


def _norm_inputs(store: str, s: Scoring):  # noqa: ANN202 (ScorerInputs; the import stays lazy)

    return ScorerInputs(store, mean_store=s.tr, cohort=s.tr, cohort_data=s.train_dir)


def record_variants(e: str, se: str, prefix: str, name: str, utt2spk: str, seen: tuple[str, int, int] | None = None,
                    tde_alpha: float | None = None) -> None:
    """The rows <prefix>{cosine,mean_sub,asnorm} of E/results.json from SE's score files of list `name`, and
    <prefix>asnorm_{cal,qmf} where the back-end wrote them (row `tde` for tde_cosine); `seen`: by shot group."""
    rows = list(LISTED) + [r for r in ("asnorm_cal", "asnorm_qmf")
                           if os.path.isfile(join(se, "scores", prefix + r, f"{name}.score"))]
    pairs = [("tde" if prefix + r == "tde_cosine" else prefix + r, join(se, "scores", prefix + r, f"{name}.score"))
             for r in rows]
    for line in steps.record_lines(e, pairs, utt2spk, tde_alpha=tde_alpha, seen=seen):
        print(line, flush=True)


def asnorm_top_of(e: str, top: str, dev: str, ds: str, tr: str, train_dir: str) -> str:
    """`top`, or with top `dev` the count chosen by minDCF(0.01) on the dev list (kept in E/asnorm_top.json and
    reused by stage 6 and by re-runs)."""
    if top != "dev":
        return top
    out = join(e, "asnorm_top.json")
    if not os.path.isfile(out) and not (dev and os.path.isfile(dev)):
        raise UsageError("--asnorm_top dev needs the seen-speaker dev list (stage 2: seen_dev)")

    return str(steps.asnorm_top(dev, ScorerInputs(ds, mean_store=tr, cohort=tr, cohort_data=train_dir), out,
                                reuse=True))


def backend_variants(s: Scoring, dev: str, ds: str, dd: str, items: Sequence[tuple[str, str, str]]) -> None:
    """The calibrated back-end of the AS-norm scores: the dev list scored like the others; a linear calibration
    and QMF trained on its scores (E/backend/<prefix>asnorm_{cal,qmf}.json) and applied to each (list name,
    store, data dir) of `items`: E/scores/<prefix>{asnorm_cal,asnorm_qmf}/<list>.score."""
    steps.score([dev], ds, s.out("asnorm"), mean_store=s.tr, cohort=s.tr, cohort_data=s.train_dir, top=s.top)
    dev_scores = join(s.out("asnorm"), f"{base(dev)}.score")
    cal, qmf = join(s.e, "backend", f"{s.prefix}asnorm_cal.json"), join(s.e, "backend", f"{s.prefix}asnorm_qmf.json")
    print(steps.train_calibration(dev_scores, cal), flush=True)
    print(steps.train_qmf(dev_scores, _norm_inputs(ds, s).with_(top_n=parse_top_n(s.top)), [dd], qmf), flush=True)
    for name, store, data_dir in items:
        raw = join(s.out("asnorm"), f"{name}.score")
        apply_calibration_file(cal, raw, join(s.out("asnorm_cal"), f"{name}.score"))
        apply_qmf_files(qmf, raw, _norm_inputs(store, s), [data_dir], join(s.out("asnorm_qmf"), f"{name}.score"))


def verify_threshold(e: str, dev: str, ds: str) -> None:
    """The threshold of `spkcausal verify`: cosine scores of the dev list, a linear calibration of them
    (E/backend/cosine_cal.json) and the raw score where its LLR meets the Bayes threshold for p_target 0.01
    (E/threshold.json); the dev list's EER threshold when the calibration does not rise with the score."""
    dn = base(dev)
    steps.score([dev], ds, join(e, "scores", "cosine"))
    scores, cal = join(e, "scores", "cosine", f"{dn}.score"), join(e, "backend", "cosine_cal.json")
    steps.train_calibration(scores, cal)
    try:
        set_threshold(e, scores, calibration=cal, p_target=0.01)
        log(f"stage 5: {base(e)}: verify threshold in {e}/threshold.json (calibrated on {dn}, p_target 0.01)")
    except SpkcausalError as err:  # a dev list too small or too poor for a rising calibration
        log(f"stage 5: {base(e)}: {err}")
        set_threshold(e, scores)
        log(f"stage 5: {base(e)}: no usable calibration on {dn}: verify threshold = its EER threshold")


def score_and_record(ctx: StageContext, s: Scoring, seen_store: str, dev: str = "", dev_store: str = "",
                     dev_dir: str = "", group_dir: str = "", scores_from: str = "",
                     tde_alpha: float | None = None) -> None:
    """What stages 5 and 6 do for one run: score the lists (and the seen-speaker list) three ways, the back-end
    on the dev list, and record the first list's and the seen list's rows; `scores_from`: record that run's
    score files instead of scoring (a decoupled run has its base's embeddings)."""
    se = scores_from or s.e
    if not scores_from:
        score_variants(s, s.ev, ctx.trials, ctx.enroll_map)
        items = [(base(t), s.ev, ctx.eval_dir) for t in ctx.trials]
        if ctx.seen_trials:
            score_variants(s, seen_store, [ctx.seen_trials])
            items.append((base(ctx.seen_trials), seen_store, ctx.seen_dir))
        if dev:
            backend_variants(s, dev, dev_store, dev_dir, items)
    record_variants(s.e, se, s.prefix, base(ctx.trials[0]), join(ctx.eval_dir, "utt2spk"), tde_alpha=tde_alpha)
    if ctx.seen_trials:
        assert ctx.many is not None and ctx.few is not None  # check_lists
        record_variants(s.e, se, s.prefix, base(ctx.seen_trials), join(ctx.seen_dir, "utt2spk"),
                        (group_dir, ctx.many, ctx.few), tde_alpha)


def check_lists(ctx: StageContext, stage: str) -> None:
    """The options stages 5 and 6 need together (one line naming what is missing)."""
    if not ctx.trials:
        raise UsageError(f"stage {stage}: --trials needs at least one trial list")
    if ctx.seen_trials and not (ctx.seen_dir and ctx.many is not None and ctx.few is not None):
        raise UsageError(f"stage {stage}: --seen_trials needs --seen_dir --many --few")


def stage_score(ctx: StageContext) -> None:
    """Stage 5 over the plan's runs (module docstring); a decoupled run records its base's score files."""
    check_lists(ctx, "score")
    dev = ctx.dev_trials[0] if ctx.dev_trials else ""
    if dev and not ctx.dev_dirs:
        raise UsageError("stage score: --dev_trials needs --dev_dir")
    if dev and not os.path.isfile(dev):
        dev = ""  # stage 2 could not build it (one val utterance per speaker): no back-end
    for run in ctx.runs():
        rec = run.record
        e = ctx.exp_dir(rec)
        se = join(ctx.exp, rec.parent) if rec.kind == "decoupled" and rec.parent else e
        if is_done(e, "5"):
            skip_msg("5", f"score {rec.name}", e)
            continue
        train_dir = ctx.train_of(rec)
        ds = ctx.store(rec, ctx.dev_dirs[0]) if dev else ""
        tr = ctx.store(rec, train_dir)
        if se == e:
            top = asnorm_top_of(e, ctx.asnorm_top, dev, ds, tr, train_dir)
        else:
            if not is_done(se, "5"):
                raise UsageError(f"stage score: {rec.name} reuses the scores of {se}: score that system first")
            log(f"stage 5: {rec.name} has the embeddings of {base(se)}: its verification rows are that system's")
            top = ""
        s = Scoring(e, ctx.store(rec, ctx.eval_dir), tr, train_dir, top)
        score_and_record(ctx, s, ctx.store(rec, ctx.seen_dir) if ctx.seen_dir else "", dev, ds,
                         ctx.dev_dirs[0] if dev else "", ctx.train_dir, "" if se == e else se)
        if se == e and dev:
            verify_threshold(e, dev, ds)
        mark_done(e, "5")
