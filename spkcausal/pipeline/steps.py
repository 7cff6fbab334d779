"""One step per command the recipes' stages used to start (`spkcausal score`, `asnorm-top`, `calibrate`, `qmf`,
`record-scores`, `tde-alpha`, `identify`): the library calls and the lines the command printed, so that a stage
and the command give the same files and the same text. The CLI commands call these too."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..scoring.cosine import ScorerInputs, choose_asnorm_top_files, parse_top_n, score_files
from ..utils import DataError, PathLike, UsageError, setup_logging, write_text_atomic
from .context import scoped_logs

__all__ = ["score", "asnorm_top", "reuse_asnorm_top", "train_calibration", "train_qmf", "record_lines",
           "alpha_text", "identify_line", "identify_variants", "decouple_line"]


def score(trials: Sequence[PathLike], emb: str, out_dir: str, mean_store: str | None = None,
          cohort: str | None = None, cohort_data: str | None = None, top: str = "300",
          enroll_map: str | None = None, allow_missing: bool = False, norm: str | None = None) -> list[Path]:
    """`spkcausal score`: cosine (mean-subtracted with `mean_store`; AS-norm against `cohort`) scores of each
    trial list into `<out_dir>/<list name>.score`; returns the score files."""
    norm = norm or ("asnorm" if cohort else "none")
    if norm != "none" and not cohort:
        raise UsageError(f"--norm {norm} needs --cohort STORE")
    inputs = ScorerInputs(emb, mean_store=mean_store, cohort=cohort, cohort_data=cohort_data, norm=norm,
                          top_n=parse_top_n(top), enroll_map=enroll_map)
    with scoped_logs():
        return score_files(trials, inputs, out_dir, allow_missing=allow_missing)


def reuse_asnorm_top(out: PathLike) -> int:
    """The top-N an earlier `asnorm-top` chose (its JSON's `best`)."""
    try:
        best = json.loads(Path(out).read_text())["best"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"not an asnorm-top choice (expected JSON with 'best'): {e}", out) from None
    if not isinstance(best, int) or isinstance(best, bool) or best < 1:
        raise DataError(f"'best' must be a count >= 1, got {best!r}", out)
    return best


def asnorm_top(trials: PathLike, inputs: Any, out: PathLike, reuse: bool = False, **kw: Any) -> int:
    """`spkcausal asnorm-top`: AS-norm's top-N chosen on a labelled dev list (ScorerInputs `inputs`), its curve
    in `out`; `reuse`: the choice already in `out`, when there is one."""
    if reuse and Path(out).is_file():  # a recipe re-run reads the earlier choice
        return reuse_asnorm_top(out)
    with scoped_logs():
        return choose_asnorm_top_files(trials, inputs, out, **kw)["best"]


def train_calibration(dev: PathLike, out: PathLike, p_target: float = 0.01) -> str:
    """`spkcausal calibrate --dev`: a linear calibration trained on a labelled score file; returns its line."""
    from ..scoring.calibration import train_calibration_file

    m = train_calibration_file(dev, out, p_target)
    return (f"{out}: llr = {m.weights[0]:.6g} * score + {m.bias:.6g}; dev Cllr {m.dev['cllr']:.4f}, "
            f"minCllr {m.dev['min_cllr']:.4f}")


def train_qmf(dev: PathLike, inputs: Any, utt2dur: Sequence[PathLike], out: PathLike, p_target: float = 0.01,
              measures: Sequence[str] | None = None) -> str:
    """`spkcausal qmf --dev`: QMF trained on a labelled score file; returns its line."""
    from ..scoring.qmf import train_qmf_files

    m = train_qmf_files(dev, inputs, utt2dur, out, p_target=p_target, **({"measures": measures} if measures else {}))
    return f"{out}: QMF on {', '.join(m.inputs)}; dev Cllr {m.dev['cllr']:.4f}, minCllr {m.dev['min_cllr']:.4f}"


def _ci(v: float, ci: list | None, scale: float, digits: int) -> str:
    return f"{scale * v:.{digits}f}" + (f" [{scale * ci[0]:.{digits}f}, {scale * ci[1]:.{digits}f}]" if ci else "")


def record_lines(exp: str, pairs: Sequence[tuple[str, str]], utt2spk: str | None, label: str | None = None,
                 tde_alpha: float | None = None, p_targets: Sequence[float] = (0.01, 0.05),
                 seen: tuple[str, int, int] | None = None, n_boot: int = 1000, seed: int = 0,
                 llr: bool | None = None) -> list[str]:
    """`spkcausal record-scores`: each (variant, score file) into `exp`'s results.json rows (`seen`: (training
    dir, many, few), by shot group of the enrolment speaker); the tde* variants carry `tde_alpha`. Returns the
    printed lines."""
    from ..results.records import record_seen, record_verification, row_label

    lines = []
    for variant, path in pairs:
        alpha = tde_alpha if variant.startswith("tde") else None
        if seen is not None:
            data = record_seen(exp, variant, path, utt2spk or "", seen[0], seen[1], seen[2], label, p_targets,
                               alpha, n_boot, seed)
            groups = data["rows"][variant]["seen"]["groups"]
            lines.append(f"{row_label(exp, variant, data['rows'][variant])} (seen speakers): " + "  ".join(
                f"{g} EER {_ci(v['eer'], v['eer_ci'], 100, 2)}%" if v and "eer" in v else f"{g} -"
                for g, v in groups.items()))
            continue
        data = record_verification(exp, variant, path, label, p_targets, alpha, utt2spk, n_boot, seed, llr=llr)
        v = data["rows"][variant]["verification"]
        extra = (f" Cllr {_ci(v['cllr'], v['cllr_ci'], 1, 4)} minCllr {v['min_cllr']:.4f} "
                 + " ".join(f"actDCF({p}) {_ci(x, v['act_dcf_ci'][p], 1, 4)}" for p, x in v["act_dcf"].items())
                 if v.get("llr") else "")
        lines.append(f"{row_label(exp, variant, data['rows'][variant])}: EER {_ci(v['eer'], v['eer_ci'], 100, 3)}% "
                     + " ".join(f"minDCF({p}) {_ci(x, v['min_dcf_ci'][p], 1, 4)}" for p, x in v["min_dcf"].items())
                     + extra)
    return lines


def alpha_text(res: Mapping[str, Any]) -> str:
    """What `spkcausal tde-alpha` prints of a choose_alpha result: the curve, where the choice came from, and
    last `alpha A` (repr: every digit reaches tde-apply and identify)."""
    from ..inference.tde import format_alpha_curve

    curve = {"iden_val": "accuracy", "dev_eer": "eer", "dev_min_dcf": "min_dcf"}[res["criterion_name"]]
    head = (f"# {res['criterion']}; heuristic 1/mean cos: "
            + (f"{res['heuristic_alpha']:.3f}" if res["heuristic_alpha"] is not None else "-")
            + f" ({res['heuristic_from']})")
    return "\n".join([head, format_alpha_curve(res["alphas"], res[curve], res["alpha"]),
                      f"# chosen from the {res['alpha_source']}", f"alpha {res['alpha']!r}"]) + "\n"


def identify_line(variant: str, res: Mapping[str, Any]) -> str:
    """`spkcausal identify`'s line of one variant: accuracy by shot group with its interval (- for an empty group)."""
    return f"{variant}: " + "  ".join(
        f"{g} {100 * res[g]:.2f} [{100 * res[g + '_ci'][0]:.1f}, {100 * res[g + '_ci'][1]:.1f}]"
        if res[g] == res[g] else f"{g} -" for g in ("many", "medium", "few", "overall"))


def identify_variants(variants: Sequence[str], emb: str, data: str, train_data: str, ckpt: str | None = None,
                      exp_dir: str | None = None, tde_alpha: float | None = None, mean_store: str | None = None,
                      many: int = 100, few: int = 20, record: str | None = None, label: str | None = None,
                      predictions: str | None = None, out: str | None = None, n_boot: int = 1000) -> dict:
    """`spkcausal identify`: closed-set accuracy of each variant (cosine, mean_sub, tde), recorded in `record`'s
    results.json and predictions/ when given; prints a line per variant; returns {variant: result}."""
    from ..inference.identify import identify
    from ..results.records import record_identification

    results = {}
    pred_dir = predictions or (f"{record}/predictions" if record else None)
    with scoped_logs():
        setup_logging(record and f"{record}/identify.log")
        for v in variants:
            if v not in ("cosine", "mean_sub", "tde"):
                raise UsageError(f"unknown variant {v!r} (cosine, mean_sub, tde)")
            if v == "tde" and tde_alpha is None or v == "mean_sub" and not mean_store:
                raise UsageError(f"variant {v} needs {'--tde-alpha' if v == 'tde' else '--mean-store'}")
            res = identify(emb, data, train_data, ckpt=ckpt, exp_dir=exp_dir,
                           tde_alpha=tde_alpha if v == "tde" else None,
                           mean_store=mean_store if v == "mean_sub" else None, many=many, few=few,
                           predictions=f"{pred_dir}/{v}.npz" if pred_dir else None, n_boot=n_boot)
            results[v] = res
            if record:
                record_identification(record, v, res, label)
            print(identify_line(v, res), flush=True)
    if out:
        write_text_atomic(out, json.dumps(results, indent=1) + "\n")
    return results


def decouple_line(exp: str, method: str, out: str, train_emb: str, train_data: str, val_emb: str | None,
                  val_data: str | None, **kw: Any) -> str:
    """`spkcausal decouple`: a decoupled classifier on `exp`'s frozen embeddings, written as experiment `out`;
    returns its line."""
    from ..inference.decoupled import decouple, training_set

    with scoped_logs():
        setup_logging()
        training = training_set(exp, train_emb, train_data)  # checked before `out` is made
        setup_logging(f"{out}/decouple.log")
        info = decouple(exp, method, out, train_emb, train_data, val_emb, val_data, training=training, **kw)
    extra = f", tau {info['tau']:g} chosen on {info['val']}" if method == "tau_norm" else ""
    return f"{out}: {method} on {exp} ({info['n_train']} training embeddings{extra})"
