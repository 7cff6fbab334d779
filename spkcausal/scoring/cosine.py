"""Trial scoring against an embedding store: cosine, mean subtraction, S-norm / AS-norm, CN-Celeb Avg enrolment.

Every embedding (enrol, test, cohort) is centred by the mean of `mean_store` when one is given, then length
normalised; the score is the dot product. An enrol key listed in an enrol map (`<eval_dir>/enroll2utt`,
`key utt utt ...`) is the mean of its segments' raw embeddings (CN-Celeb Avg protocol), centred and
normalised like any other. Work is per unique key and per block of trials: no Python loop per trial.

Score normalisation with a cohort C (e.g. per-speaker means of the training set):
  S-norm:  s' = ((s - mu_e)/sd_e + (s - mu_t)/sd_t) / 2, mu/sd over the scores of e (or t) against all of C;
  AS-norm: the same with mu/sd over the top-N highest cohort scores of e (and of t) only.
sd uses Bessel's correction (ddof=1), as wespeaker's torch.std does.

AS-norm's N is sized to the cohort: an int is a count, a float in (0, 1] a share of the cohort
(`resolve_top_n`); N above TOP_SHARE_WARN of the cohort is warned about, because on a small cohort a large
N turns AS-norm into S-norm (measured on a 756-entry cohort: top 300 lowered EER but raised minDCF(0.01)
from 0.59 to 0.77). `choose_asnorm_top` picks N on a labelled dev list by minDCF.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from ..data.datadir import read_list_kv
from ..data.embeddings import EmbeddingStore, speaker_means
from ..data.trialio import Trials, read_trials, write_scores
from ..utils import DataError, PathLike, UsageError, atomic_dir, check_writable, get_logger, setup_logging, writing

__all__ = ["Scorer", "ScorerInputs", "TrialSides", "store_mean", "speaker_means", "cohort_stats", "score_trials",
           "score_files", "NORMS", "TOP_SHARE_WARN", "resolve_top_n", "parse_top_n", "choose_asnorm_top",
           "choose_asnorm_top_files"]

NORMS = ("none", "snorm", "asnorm")
TOP_SHARE_WARN = 0.2  # AS-norm top-N above this share of the cohort draws a warning
# minDCF(p) decides the top-N only when one false alarm moves it by at most this much (normalised): on a dev list
# with fewer non-targets, minDCF at p = 0.01 jumps by whole tenths per trial, and the choice is noise.
MIN_DCF_STEP = 0.05
BLOCK = 1 << 16  # trials per block: bounds temporary memory at a few tens of MB
log = get_logger(__name__)


def store_mean(store: EmbeddingStore, block: int = BLOCK) -> np.ndarray:
    """Mean embedding of a whole store (float64 accumulation, read block by block)."""
    total = np.zeros(store.dim, dtype=np.float64)
    for lo in range(0, len(store), block):
        total += np.asarray(store.matrix[lo:lo + block], dtype=np.float64).sum(axis=0)
    return total / max(len(store), 1)


def _normalise(x: np.ndarray, mean: np.ndarray | None, name: Callable[[int], str] | None = None,
               where: PathLike | None = None) -> np.ndarray:
    """Centre (optional) and length-normalise rows; float32 out (cosine needs no more precision). A zero row
    is a DataError naming `name(row)` (its key) and `where` (its store)."""
    x = np.array(x, dtype=np.float32)
    if mean is not None:
        x -= np.asarray(mean, dtype=np.float32)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    if (norm == 0).any():
        zero = np.flatnonzero(norm == 0)
        first = f" (first: {name(int(zero[0]))})" if name is not None else ""
        after = " after mean subtraction" if mean is not None else ""
        raise DataError(f"{len(zero)} embeddings have zero norm{after}{first}: a cosine needs a non-zero vector",
                        where)
    x /= norm[:, None].astype(np.float32)
    return x


def parse_top_n(text: str) -> int | float:
    """A command-line top-N: digits are a count ("300"), a number with a point a share of the cohort ("0.1")."""
    try:
        value: int | float = int(text) if text.strip().isdigit() else float(text)
    except ValueError:
        raise UsageError(f"top-N {text!r} is neither a count (300) nor a share of the cohort (0.1)") from None
    resolve_top_n(value, 1_000_000)  # range check only
    return value


def resolve_top_n(top_n: int | float, cohort_size: int) -> int:
    """Count of cohort scores AS-norm keeps: an int is a count (capped at the cohort), a float in (0, 1] that
    share of the cohort, rounded, at least 2."""
    if isinstance(top_n, (bool, np.bool_)) or not isinstance(top_n, (int, float, np.integer, np.floating)):
        raise UsageError(f"top-N must be a count or a share of the cohort, got {top_n!r}")
    if isinstance(top_n, (int, np.integer)):
        if top_n < 2:
            raise UsageError(f"top-N must be at least 2, got {top_n}")
        return min(int(top_n), cohort_size)
    if not 0.0 < float(top_n) <= 1.0:
        raise UsageError(f"a top-N share of the cohort must be in (0, 1], got {top_n} (pass an integer for a count)")
    return min(max(2, int(round(float(top_n) * cohort_size))), cohort_size)


def _warn_top_share(k: int, cohort_size: int) -> None:
    share = k / max(cohort_size, 1)
    if share > TOP_SHARE_WARN:
        log.warning("AS-norm top-N %d is %.0f%% of the %d-entry cohort (more than %.0f%%): AS-norm then behaves "
                    "like S-norm and can raise minDCF; pass a smaller N, a share such as 0.1, or choose it on a "
                    "dev list (spkcausal asnorm-top)", k, 100 * share, cohort_size, 100 * TOP_SHARE_WARN)


def cohort_stats(emb: np.ndarray, cohort: np.ndarray, top_n: int | None, block: int = 4096) -> tuple[np.ndarray,
                                                                                                   np.ndarray]:
    """Mean and std (ddof=1) of each row's scores against the cohort: all of them (top_n None, S-norm) or
    the top_n highest (AS-norm). Both inputs are already normalised; blocks keep memory at block x cohort."""
    from tqdm import tqdm  # numpy only: torch's import alone (about 3 s) would dominate a recipe's scoring calls

    c = np.ascontiguousarray(cohort, dtype=np.float32)
    n = len(emb)
    k = None if top_n is None else min(int(top_n), len(cohort))
    if k is not None and k < 2:
        raise UsageError(f"top-N must be at least 2 (cohort has {len(cohort)} entries)")
    mu = np.empty(n, dtype=np.float64)
    sd = np.empty(n, dtype=np.float64)
    for lo in tqdm(range(0, n, block), desc="cohort statistics", unit="block", disable=None, leave=False):
        s = np.ascontiguousarray(emb[lo:lo + block], dtype=np.float32) @ c.T
        if k is not None and k < s.shape[1]:
            s = np.partition(s, s.shape[1] - k, axis=1)[:, s.shape[1] - k:]  # the k highest, in any order
        s = s.astype(np.float64)
        mu[lo:lo + block] = s.mean(axis=1)
        sd[lo:lo + block] = s.std(axis=1, ddof=1)
    return mu, sd


@dataclass
class TrialSides:
    """One trial list against a store: unique keys (centred, normalised vectors, raw norms, has-embedding mask),
    each kept trial's enrol and test position among them, the kept-trial mask and the plain cosine scores."""

    vec: np.ndarray
    ok: np.ndarray
    raw_norm: np.ndarray  # L2 norm of the stored (un-centred, un-normalised) embedding, per unique key
    e_pos: np.ndarray
    t_pos: np.ndarray
    keep: np.ndarray
    cosine: np.ndarray


@dataclass
class Scorer:
    """Scores trials against one store, with optional centring, cohort and enrol map (shared by trial lists)."""

    store: EmbeddingStore
    mean: np.ndarray | None = None
    cohort: np.ndarray | None = None  # raw cohort embeddings (centred and normalised here)
    norm: str = "none"
    top_n: int | float = 300  # a count, or a share of the cohort when a float in (0, 1]
    enroll_map: dict[str, list[str]] | None = None

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise UsageError(f"unknown normalisation {self.norm!r}; expected one of {', '.join(NORMS)}")
        if self.norm != "none" and self.cohort is None:
            raise UsageError(f"--norm {self.norm} needs a cohort")
        self._cohort_n = None if self.cohort is None else _normalise(self.cohort, self.mean,
                                                                     lambda i: f"cohort row {i}")
        self.top_k: int | None = None
        if self.norm == "asnorm" and self._cohort_n is not None:  # (asnorm without a cohort was refused above)
            self.top_k = resolve_top_n(self.top_n, self.cohort_size)
            _warn_top_share(self.top_k, self.cohort_size)
        self._emap = list((self.enroll_map or {}).items())
        # Key -> row: store rows first, then one virtual row per enrol-map entry (it overrides a store key).
        self._lut = self.store.key_index
        if self._emap:
            self._lut = dict(self._lut)
            self._lut.update({k: len(self.store) + j for j, (k, _) in enumerate(self._emap)})

    @property
    def cohort_size(self) -> int:
        """Entries of the cohort, 0 without one."""
        return 0 if self._cohort_n is None else len(self._cohort_n)

    def rows(self, keys: Sequence[str] | np.ndarray) -> np.ndarray:
        """Row of each key (-1 when absent): store rows, or len(store) + j for the j-th enrol-map entry."""
        keys = keys.tolist() if isinstance(keys, np.ndarray) else keys
        return np.fromiter(map(self._lut.get, keys, repeat(-1)), dtype=np.int64, count=len(keys))

    def _key_of(self, row: int) -> str:
        """The key of a Scorer row: a store key, or an enrol-map entry's name."""
        return self.store.keys[row] if row < len(self.store) else self._emap[row - len(self.store)][0]

    def raw_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw (as stored, not centred or normalised) float32 embeddings of sorted unique rows, and a mask of
        rows that have one (an enrol-map entry with a segment missing from the store has none)."""
        n_store = len(self.store)
        n_direct = int(np.searchsorted(rows, n_store))
        x = np.empty((len(rows), self.store.dim), dtype=np.float32)
        x[:n_direct] = self.store.matrix[rows[:n_direct]]  # sorted rows: the memory map is read in order
        ok = np.ones(len(rows), dtype=bool)
        for j in range(n_direct, len(rows)):  # few (CN-Celeb: 196), each the mean of a handful of segments
            seg = self.store.lookup(self._emap[rows[j] - n_store][1], allow_missing=True)
            if (seg < 0).any():
                ok[j] = False
                x[j] = 1.0  # placeholder with a norm; never scored
            else:
                x[j] = np.asarray(self.store.matrix[np.sort(seg)], dtype=np.float64).mean(axis=0)
        return x, ok

    def sides(self, trials: Trials, allow_missing: bool = False, source: PathLike | None = None) -> TrialSides:
        """Per unique key and per kept trial, what scoring a list needs (missing keys raise unless allow_missing)."""
        n = len(trials)
        e_row, t_row = self.rows(trials.enroll), self.rows(trials.test)
        used = np.unique(np.concatenate([e_row, t_row]))
        used = used[used >= 0]
        raw, ok = self.raw_rows(used)
        raw_norm = np.sqrt(np.einsum("ij,ij->i", raw, raw, dtype=np.float64))
        vec = _normalise(raw, self.mean, lambda i: self._key_of(int(used[i])), self.store.path)
        e_pos = np.searchsorted(used, e_row)
        t_pos = np.searchsorted(used, t_row)
        ok_end = np.append(ok, False)  # sentinel: absent keys (row -1) look up position len(used)
        e_ok = ok_end[np.where(e_row >= 0, e_pos, len(used))]
        t_ok = ok_end[np.where(t_row >= 0, t_pos, len(used))]
        keep = e_ok & t_ok
        if not keep.all():
            bad = np.flatnonzero(~keep)
            missing = list(dict.fromkeys(
                k for i in bad for k, good in ((trials.enroll[i], e_ok[i]), (trials.test[i], t_ok[i])) if not good))
            line = None if trials.line_no is None else int(trials.line_no[bad[0]])
            msg = (f"{len(missing)} keys have no embedding in {self.store.path} (first: {', '.join(missing[:5])}); "
                   f"{len(bad)} of {n} trials affected")
            if not allow_missing:
                raise DataError(msg + "; pass --allow-missing to skip them", source, line)
            log.warning("%s: skipped (--allow-missing)", msg)
            e_pos, t_pos = e_pos[keep], t_pos[keep]
        cosine = np.empty(len(e_pos), dtype=np.float64)
        for lo in range(0, len(e_pos), BLOCK):
            e, t = vec[e_pos[lo:lo + BLOCK]], vec[t_pos[lo:lo + BLOCK]]
            cosine[lo:lo + BLOCK] = np.einsum("ij,ij->i", e, t, dtype=np.float64)
        return TrialSides(vec=vec, ok=ok, raw_norm=raw_norm, e_pos=e_pos, t_pos=t_pos, keep=keep, cosine=cosine)

    def key_stats(self, sides: TrialSides, top_k: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Cohort mean and std of every unique key of `sides` (top_k None: the whole cohort, S-norm)."""
        if self._cohort_n is None:
            raise UsageError("cohort statistics need a cohort")
        mu = np.zeros(len(sides.ok))
        sd = np.ones(len(sides.ok))
        mu[sides.ok], sd[sides.ok] = cohort_stats(sides.vec[sides.ok], self._cohort_n, top_k)
        return mu, sd

    def normalised(self, sides: TrialSides, norm: str, top_k: int | None = None) -> np.ndarray:
        """Scores of the kept trials under a normalisation ("none", "snorm", or "asnorm" with top_k entries)."""
        if norm == "none":
            return sides.cosine
        mu, sd = self.key_stats(sides, top_k if norm == "asnorm" else None)
        e, t = sides.e_pos, sides.t_pos
        return 0.5 * ((sides.cosine - mu[e]) / sd[e] + (sides.cosine - mu[t]) / sd[t])

    def score(self, trials: Trials, allow_missing: bool = False, source: PathLike | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """(scores of the kept trials, boolean mask of kept trials); missing keys raise unless allow_missing."""
        sides = self.sides(trials, allow_missing, source)
        return self.normalised(sides, self.norm, self.top_k), sides.keep


def score_trials(trials: Trials, store: EmbeddingStore, mean: np.ndarray | None = None,
                 cohort: np.ndarray | None = None, norm: str = "none", top_n: int | float = 300,
                 enroll_map: dict[str, list[str]] | None = None, allow_missing: bool = False) -> tuple[np.ndarray,
                                                                                                      np.ndarray]:
    """Score one trial list; returns (scores of kept trials, mask of kept trials)."""
    return Scorer(store, mean, cohort, norm, top_n, enroll_map).score(trials, allow_missing)


@dataclass(frozen=True)
class ScorerInputs:
    """The stores and options a Scorer is built from, as paths (what `spkcausal score`, `asnorm-top` and `qmf`
    share): `cohort` is a store; with `cohort_data` (a data dir whose utt2spk covers it) its per-speaker means
    form the cohort, otherwise its rows are used as they are."""

    emb: PathLike
    mean_store: PathLike | None = None
    cohort: PathLike | None = None
    cohort_data: PathLike | None = None
    norm: str = "none"
    top_n: int | float = 300
    enroll_map: PathLike | None = None

    def with_(self, **changes: Any) -> ScorerInputs:
        """A copy with some fields changed (e.g. the normalisation a command forces)."""
        return replace(self, **changes)

    def load(self) -> Scorer:
        """Open the stores and build the Scorer."""
        store = EmbeddingStore.open(self.emb)
        mean = None
        if self.mean_store:
            mstore = EmbeddingStore.open(self.mean_store)
            _same_dim(mstore, store, "mean store")
            mean = store_mean(mstore)
        cohort_emb = None
        if self.cohort:
            cstore = EmbeddingStore.open(self.cohort)
            _same_dim(cstore, store, "cohort store")
            cohort_emb = (speaker_means(cstore, self.cohort_data)[1] if self.cohort_data
                          else np.asarray(cstore.matrix))
            log.info("cohort: %d embeddings from %s", len(cohort_emb), self.cohort)
        emap = read_list_kv(self.enroll_map) if self.enroll_map else None
        return Scorer(store, mean, cohort_emb, self.norm, self.top_n, emap)


def _same_dim(other: EmbeddingStore, store: EmbeddingStore, what: str) -> None:
    if other.dim != store.dim:
        raise DataError(f"{what} has {other.dim}-dim embeddings; the scored store {store.path} has {store.dim}: "
                        "both must come from the same model", other.path)


def _subset(trials: Trials, keep: np.ndarray) -> Trials:
    return Trials(enroll=trials.enroll[keep], test=trials.test[keep], labels=trials.labels[keep],
                  line_no=None if trials.line_no is None else trials.line_no[keep])


def score_files(trial_paths: Sequence[PathLike], inputs: ScorerInputs, out_dir: PathLike,
                allow_missing: bool = False) -> list[Path]:
    """Score each trial list into `<out_dir>/<trial file name>.score` (`enroll test score label`) with the Scorer
    of `inputs`; the directory is replaced whole (atomic_dir, other files kept), so a failure leaves it as it was."""
    out_dir = Path(out_dir)
    check_writable(out_dir / "score.log")
    names = [Path(t).name for t in trial_paths]
    if len(set(names)) != len(names):
        raise UsageError(f"trial lists share a file name, outputs would collide: {names}")
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(out_dir / "score.log")
    scorer = inputs.load()
    if scorer.top_k is not None:
        log.info("AS-norm: top %d of a %d-entry cohort (--asnorm-top %s)", scorer.top_k, scorer.cohort_size,
                 inputs.top_n)
    # Every list is read and scored before any is written: a bad second list leaves no output at all.
    done = []
    for tpath in trial_paths:
        trials = read_trials(tpath)
        scores, keep = scorer.score(trials, allow_missing, source=tpath)
        if not keep.any():
            raise DataError(f"none of its {len(trials)} trials has both embeddings in {inputs.emb}: "
                            "nothing to score (wrong store or trial list?)", tpath)
        done.append((tpath, trials if keep.all() else _subset(trials, keep), scores, int((~keep).sum())))
    outs = []
    with atomic_dir(out_dir, carry=True) as tmp:
        for tpath, trials, scores, skipped in done:
            out = out_dir / (Path(tpath).name + ".score")
            write_scores(tmp / out.name, trials, scores)
            log.info("%s: %d trials scored, %d skipped, norm=%s -> %s", tpath, len(scores), skipped, inputs.norm,
                     out)
            outs.append(out)
    return outs


DEFAULT_TOP_CANDIDATES: tuple[int | float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 50, 100, 200, 300)


def choose_asnorm_top(scorer: Scorer, trials: Trials, candidates: Sequence[int | float] = DEFAULT_TOP_CANDIDATES,
                      p_target: float = 0.01, allow_missing: bool = False, source: PathLike | None = None) -> dict:
    """AS-norm top-N chosen on a labelled list: minDCF(p_target) and EER at each candidate (counts, or shares
    of the cohort; several resolving to one count are evaluated once); best = lowest minDCF, ties -> smaller N.
    When the list is too small for minDCF(p_target) to resolve anything (one false alarm moves it by more than
    MIN_DCF_STEP), the lowest EER decides instead, and the result says so (`criterion`, `why`).

    Returns {"best": count, "criterion": "min_dcf" | "eer", "why", "p_target", "cohort_size", "cosine": {...},
    "snorm": {...}, "curve": [{"top_n", "candidates", "share", "min_dcf", "eer"}, ...]} (curve in increasing N)."""
    from .metrics import compute_min_dcf, eer_with_threshold

    if scorer._cohort_n is None:
        raise UsageError("choosing the AS-norm top-N needs a cohort")
    if not trials.has_labels:
        raise DataError("the dev trial list has no target/nontarget labels", source)
    size = scorer.cohort_size
    by_k: dict[int, list] = {}
    for c in candidates:
        by_k.setdefault(resolve_top_n(c, size), []).append(c)
    sides = scorer.sides(trials, allow_missing, source)
    labels = trials.labels[sides.keep]

    def point(scores: np.ndarray) -> dict:
        return {"min_dcf": compute_min_dcf(scores, labels, p_target), "eer": eer_with_threshold(scores, labels)[0]}

    curve = [{"top_n": k, "candidates": by_k[k], "share": k / size, **point(scorer.normalised(sides, "asnorm", k))}
             for k in sorted(by_k)]
    n_non = int((~labels.astype(bool)).sum())
    fa_step = (1.0 - p_target) / (max(n_non, 1) * min(p_target, 1.0 - p_target))  # normalised DCF of one FA
    criterion, why = "min_dcf", f"one false alarm moves minDCF({p_target:g}) by {fa_step:.3f}"
    if fa_step > MIN_DCF_STEP:
        criterion = "eer"
        why += (f" (> {MIN_DCF_STEP}: {n_non} non-targets are too few for p_target {p_target:g}; "
                f"at least {int(np.ceil((1.0 - p_target) / (MIN_DCF_STEP * min(p_target, 1.0 - p_target))))} "
                "needed), so EER decides")
        log.warning("AS-norm top-N: %s", why)
    best = min(curve, key=lambda r: (r[criterion], r["top_n"]))  # ties go to the smaller N
    log.info("AS-norm top-N on %d dev trials (cohort %d) by %s: %s -> best %d", len(labels), size, criterion,
             ", ".join(f"{r['top_n']}: {r[criterion]:.4f}" for r in curve), best["top_n"])
    return {"best": best["top_n"], "criterion": criterion, "why": why, "p_target": p_target, "cohort_size": size,
            "n_trials": int(len(labels)), "cosine": point(sides.cosine),
            "snorm": point(scorer.normalised(sides, "snorm")), "curve": curve}


def choose_asnorm_top_files(trials: PathLike, inputs: ScorerInputs, out: PathLike,
                            candidates: Sequence[int | float] = DEFAULT_TOP_CANDIDATES, p_target: float = 0.01,
                            allow_missing: bool = False) -> dict:
    """choose_asnorm_top from paths (the stores and options of `spkcausal score`); the result goes to `out`
    as JSON (atomically) and is returned."""
    import json

    from ..utils import write_text_atomic

    scorer = inputs.with_(norm="none", top_n=300).load()
    res = choose_asnorm_top(scorer, read_trials(trials), candidates, p_target, allow_missing, trials)
    res["trials"] = str(trials)
    write_text_atomic(out, json.dumps(res, indent=1) + "\n")
    return res
