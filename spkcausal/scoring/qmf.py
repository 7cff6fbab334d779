"""Quality measure functions (QMF): calibration with utterance quality as extra inputs of the same regression.

Per side of a trial (enrolment e, test t) three qualities are measured:
  log_dur      log of the duration in seconds (utt2dur, or the audio headers of a data dir without one; an
               enrol-map entry lasts the sum of its segments);
  norm         L2 norm of the embedding as stored, before centring and length normalisation (an enrol-map
               entry: the norm of its segments' mean, the vector that is then normalised and scored);
  cohort_mean  the AS-norm cohort mean: mean of the top-N cohort scores, computed by the same
               Scorer / cohort_stats as `spkcausal score --norm asnorm` (so the same mean store, cohort and
               top-N must be given).
Each is offered as `<q>_min` / `<q>_max` over the two sides (symmetric: swapping enrolment and test changes
nothing, and the weaker side is what limits a trial; the default set, 6 measures) or `<q>_enroll` /
`<q>_test` (for protocols where the two sides differ in kind, e.g. CN-Celeb's multi-segment enrolment).
The model then is llr = a * score + sum_k w_k q_k + b, fitted like spkcausal.scoring.calibration's linear model.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..data.trialio import Trials, write_scores
from ..utils import DataError, PathLike, UsageError, get_logger
from .calibration import CalibrationModel, read_labelled, train_calibration
from .cosine import Scorer, ScorerInputs

__all__ = ["QUALITIES", "MEASURES", "DEFAULT_MEASURES", "read_durations", "quality_from_scorer",
           "quality_measures", "train_qmf_files", "apply_qmf_files"]

QUALITIES = ("log_dur", "norm", "cohort_mean")
MEASURES = tuple(f"{q}_{f}" for q in QUALITIES for f in ("min", "max", "enroll", "test"))
DEFAULT_MEASURES = tuple(f"{q}_{f}" for q in QUALITIES for f in ("min", "max"))
log = get_logger(__name__)


def read_durations(sources: Sequence[PathLike]) -> dict[str, float]:
    """Utterance durations (s) from utt2dur files or data dirs (their utt2dur, else their wav.scp's audio headers);
    later sources do not override earlier ones."""
    from ..data.audio import audio_info
    from ..data.datadir import read_kv

    out: dict[str, float] = {}
    for src in sources:
        p = Path(src)
        if p.is_dir() and not (p / "utt2dur").exists():
            table: dict = {}
            for utt, wav in read_kv(p / "wav.scp").items():
                frames, sr, _ = audio_info(str(wav))
                table[utt] = frames / sr
        else:
            table = read_kv(p / "utt2dur" if p.is_dir() else p, float)
        for k, v in table.items():
            out.setdefault(k, float(v))
    return out


def _durations(keys: np.ndarray, utt2dur: Mapping[str, float], enroll_map: Mapping[str, list[str]] | None
               ) -> np.ndarray:
    uniq, inv = np.unique(keys, return_inverse=True)
    emap = enroll_map or {}
    dur = np.empty(len(uniq))
    missing = []
    for i, k in enumerate(uniq.tolist()):
        if k in emap:  # as in Scorer, an enrol-map entry overrides a store key of the same name
            if all(u in utt2dur for u in emap[k]):
                dur[i] = sum(utt2dur[u] for u in emap[k])
            else:
                missing.append(k)
        elif k in utt2dur:
            dur[i] = utt2dur[k]
        else:
            missing.append(k)
    if missing:
        raise DataError(f"{len(missing)} keys have no duration (first: {', '.join(missing[:5])}); give the utt2dur "
                        "(or data dir) of every enrol and test utterance with --utt2dur")
    if (dur <= 0).any():
        raise DataError(f"key {uniq[np.argmax(dur <= 0)]!r} has a duration <= 0")
    return dur[inv]


def _check_measures(measures: Sequence[str]) -> list[str]:
    bad = [m for m in measures if m not in MEASURES]
    if bad or not measures or len(set(measures)) != len(measures):
        raise UsageError(f"quality measures must be distinct names among {', '.join(MEASURES)}; got "
                         f"{', '.join(measures) or 'none'}")
    return list(measures)


def quality_from_scorer(scorer: Scorer, trials: Trials, utt2dur: Mapping[str, float] | None,
                        measures: Sequence[str] = DEFAULT_MEASURES, source: PathLike | None = None) -> np.ndarray:
    """Per-trial quality matrix (len(trials) x len(measures)) with an AS-norm Scorer (its cohort and top-N give
    the cohort means); every trial's keys must have an embedding (and a duration, for log_dur measures)."""
    measures = _check_measures(measures)
    if scorer.top_k is None:
        raise UsageError("quality measures need a Scorer with norm='asnorm' (its cohort and top-N)")
    need = {m.rsplit("_", 1)[0] for m in measures}
    sides = scorer.sides(trials, allow_missing=False, source=source)
    per_side: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if "norm" in need:
        per_side["norm"] = (sides.raw_norm[sides.e_pos], sides.raw_norm[sides.t_pos])
    if "cohort_mean" in need:
        mu = scorer.key_stats(sides, scorer.top_k)[0]
        per_side["cohort_mean"] = (mu[sides.e_pos], mu[sides.t_pos])
    if "log_dur" in need:
        if utt2dur is None:
            raise UsageError("duration measures need utt2dur (--utt2dur)")
        emap = dict(scorer._emap)
        per_side["log_dur"] = (np.log(_durations(trials.enroll, utt2dur, emap)),
                               np.log(_durations(trials.test, utt2dur, emap)))
    cols = []
    for m in measures:
        q, form = m.rsplit("_", 1)
        e, t = per_side[q]
        cols.append({"min": np.minimum, "max": np.maximum}[form](e, t) if form in ("min", "max")
                    else (e if form == "enroll" else t))
    return np.column_stack(cols)


def quality_measures(trials: Trials, inputs: ScorerInputs, utt2dur: Mapping[str, float] | None,
                     measures: Sequence[str] = DEFAULT_MEASURES, source: PathLike | None = None) -> np.ndarray:
    """Per-trial quality matrix from the raw vectors, cohort and options of `inputs` (scored with AS-norm)
    and durations."""
    scorer = inputs.with_(norm="asnorm").load()
    return quality_from_scorer(scorer, trials, utt2dur, measures, source)


def _settings(scorer: Scorer, measures: Sequence[str], inputs: ScorerInputs) -> dict:
    return {"measures": list(measures), "top_n": scorer.top_n, "top_k": scorer.top_k,
            "cohort_size": scorer.cohort_size, "centred": inputs.mean_store is not None,
            "cohort_speaker_means": inputs.cohort_data is not None}


def train_qmf_files(dev_scores: PathLike, inputs: ScorerInputs, utt2dur: Sequence[PathLike], out: PathLike,
                    measures: Sequence[str] = DEFAULT_MEASURES, p_target: float = 0.01) -> CalibrationModel:
    """Train a QMF model on a labelled score file (its keys are the dev trials) and save it to `out` (JSON)."""
    measures = _check_measures(measures)
    trials, scores = read_labelled(dev_scores)
    scorer = inputs.with_(norm="asnorm").load()
    durs = read_durations(utt2dur) if utt2dur else None
    q = quality_from_scorer(scorer, trials, durs, measures, dev_scores)
    try:
        model = train_calibration(scores, trials.labels, p_target, q, measures,
                                  _settings(scorer, measures, inputs))
    except DataError as e:
        raise DataError(e.message, dev_scores) from None
    model.dev["scores"] = str(dev_scores)
    model.save(out)
    return model


def apply_qmf_files(model_path: PathLike, scores_path: PathLike, inputs: ScorerInputs, utt2dur: Sequence[PathLike],
                    out: PathLike) -> Path:
    """Write `enroll test llr [label]` for every line of a score file with a QMF model; the stores and options
    must be those the model was trained with (top-N comes from the model; centring is checked)."""
    from ..data.trialio import read_scores

    model = CalibrationModel.load(model_path)
    if model.kind != "qmf" or not model.quality:
        raise UsageError(f"{model_path} is a linear calibration model: apply it with `spkcausal calibrate`")
    settings = model.quality
    if bool(settings.get("centred")) != (inputs.mean_store is not None):
        raise UsageError(f"{model_path} was trained {'with' if settings.get('centred') else 'without'} "
                         "--mean-store; give the same option when applying it")
    if bool(settings.get("cohort_speaker_means")) != (inputs.cohort_data is not None):
        raise UsageError(f"{model_path} was trained {'with' if settings.get('cohort_speaker_means') else 'without'}"
                         " --cohort-data; give the same option when applying it")
    scorer = inputs.with_(norm="asnorm", top_n=settings["top_n"]).load()
    if scorer.cohort_size != settings.get("cohort_size"):
        log.warning("cohort has %d entries, the QMF model was trained with %s", scorer.cohort_size,
                    settings.get("cohort_size"))
    table = read_scores(scores_path, keys=True)
    trials = table.trials()
    durs = read_durations(utt2dur) if utt2dur else None
    q = quality_from_scorer(scorer, trials, durs, model.inputs[1:], scores_path)
    write_scores(out, trials, model.apply(table.scores, q))
    log.info("%s -> %s (QMF: %s)", scores_path, out, ", ".join(model.inputs[1:]))
    return Path(out)
