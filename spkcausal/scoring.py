"""Trial scoring against an embedding store: cosine, mean subtraction, S-norm / AS-norm, CN-Celeb Avg enrolment.

Every embedding (enrol, test, cohort) is centred by the mean of `mean_store` when one is given, then length
normalised; the score is the dot product. An enrol key listed in an enrol map (`<eval_dir>/enroll2utt`,
`key utt utt ...`) is the mean of its segments' raw embeddings (CN-Celeb Avg protocol), centred and
normalised like any other. Work is per unique key and per block of trials: no Python loop per trial.

Score normalisation with a cohort C (e.g. per-speaker means of the training set):
  S-norm:  s' = ((s - mu_e)/sd_e + (s - mu_t)/sd_t) / 2, mu/sd over the scores of e (or t) against all of C;
  AS-norm: the same with mu/sd over the top-N highest cohort scores of e (and of t) only.
sd uses Bessel's correction (ddof=1), as wespeaker's torch.std does.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np

from .datadir import read_list_kv
from .embeddings import EmbeddingStore, speaker_means
from .trialio import Trials, read_trials, write_scores
from .utils import DataError, PathLike, UsageError, get_logger, setup_logging

__all__ = ["Scorer", "store_mean", "speaker_means", "cohort_stats", "score_trials", "score_files", "NORMS"]

NORMS = ("none", "snorm", "asnorm")
BLOCK = 1 << 16  # trials per block: bounds temporary memory at a few tens of MB
log = get_logger(__name__)


def store_mean(store: EmbeddingStore, block: int = BLOCK) -> np.ndarray:
    """Mean embedding of a whole store (float64 accumulation, read block by block)."""
    total = np.zeros(store.dim, dtype=np.float64)
    for lo in range(0, len(store), block):
        total += np.asarray(store.matrix[lo:lo + block], dtype=np.float64).sum(axis=0)
    return total / max(len(store), 1)


def _normalise(x: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    """Centre (optional) and length-normalise rows; float32 out (cosine needs no more precision)."""
    x = np.array(x, dtype=np.float32)
    if mean is not None:
        x -= np.asarray(mean, dtype=np.float32)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    if (norm == 0).any():
        raise DataError(f"{int((norm == 0).sum())} embeddings have zero norm after mean subtraction")
    x /= norm[:, None].astype(np.float32)
    return x


def cohort_stats(emb: np.ndarray, cohort: np.ndarray, top_n: int | None, block: int = 4096) -> tuple[np.ndarray,
                                                                                                   np.ndarray]:
    """Mean and std (ddof=1) of each row's scores against the cohort: all of them (top_n None, S-norm) or
    the top_n highest (AS-norm). Both inputs are already normalised; blocks keep memory at block x cohort."""
    import torch
    from tqdm import tqdm

    c = torch.from_numpy(np.ascontiguousarray(cohort, dtype=np.float32))
    n = len(emb)
    k = None if top_n is None else min(int(top_n), len(cohort))
    if k is not None and k < 2:
        raise UsageError(f"top-N must be at least 2 (cohort has {len(cohort)} entries)")
    mu = np.empty(n, dtype=np.float64)
    sd = np.empty(n, dtype=np.float64)
    with torch.no_grad():
        for lo in tqdm(range(0, n, block), desc="cohort statistics", unit="block", disable=None, leave=False):
            s = torch.from_numpy(np.ascontiguousarray(emb[lo:lo + block], dtype=np.float32)) @ c.T
            if k is not None:
                s = torch.topk(s, k, dim=1, sorted=False).values
            s = s.double()
            mu[lo:lo + block] = s.mean(dim=1).numpy()
            sd[lo:lo + block] = s.std(dim=1).numpy()
    return mu, sd


@dataclass
class Scorer:
    """Scores trials against one store, with optional centring, cohort and enrol map (shared by trial lists)."""

    store: EmbeddingStore
    mean: np.ndarray | None = None
    cohort: np.ndarray | None = None  # raw cohort embeddings (centred and normalised here)
    norm: str = "none"
    top_n: int = 300
    enroll_map: dict[str, list[str]] | None = None

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise UsageError(f"unknown normalisation {self.norm!r}; expected one of {', '.join(NORMS)}")
        if self.norm != "none" and self.cohort is None:
            raise UsageError(f"--norm {self.norm} needs a cohort")
        self._cohort_n = None if self.cohort is None else _normalise(self.cohort, self.mean)
        self._emap = list((self.enroll_map or {}).items())
        # Key -> row: store rows first, then one virtual row per enrol-map entry (it overrides a store key).
        self._lut = self.store.key_index
        if self._emap:
            self._lut = dict(self._lut)
            self._lut.update({k: len(self.store) + j for j, (k, _) in enumerate(self._emap)})

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """Row of each key (-1 when absent): store rows, or len(store) + j for the j-th enrol-map entry."""
        keys = keys.tolist() if isinstance(keys, np.ndarray) else keys
        return np.fromiter(map(self._lut.get, keys, repeat(-1)), dtype=np.int64, count=len(keys))

    def embed_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centred, normalised float32 embeddings of sorted unique rows, and a mask of rows that have one
        (an enrol-map entry with a segment missing from the store has none)."""
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
        return _normalise(x, self.mean), ok

    def score(self, trials: Trials, allow_missing: bool = False, source: PathLike | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """(scores of the kept trials, boolean mask of kept trials); missing keys raise unless allow_missing."""
        n = len(trials)
        e_row, t_row = self.rows(trials.enroll), self.rows(trials.test)
        used = np.unique(np.concatenate([e_row, t_row]))
        used = used[used >= 0]
        vec, ok = self.embed_rows(used)
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
        scores = np.empty(len(e_pos), dtype=np.float64)
        for lo in range(0, len(e_pos), BLOCK):
            e, t = vec[e_pos[lo:lo + BLOCK]], vec[t_pos[lo:lo + BLOCK]]
            scores[lo:lo + BLOCK] = np.einsum("ij,ij->i", e, t, dtype=np.float64)
        if self.norm != "none":
            mu = np.zeros(len(used))
            sd = np.ones(len(used))
            top = self.top_n if self.norm == "asnorm" else None
            mu[ok], sd[ok] = cohort_stats(vec[ok], self._cohort_n, top)
            scores = 0.5 * ((scores - mu[e_pos]) / sd[e_pos] + (scores - mu[t_pos]) / sd[t_pos])
        return scores, keep


def score_trials(trials: Trials, store: EmbeddingStore, mean: np.ndarray | None = None,
                 cohort: np.ndarray | None = None, norm: str = "none", top_n: int = 300,
                 enroll_map: dict[str, list[str]] | None = None, allow_missing: bool = False) -> tuple[np.ndarray,
                                                                                                      np.ndarray]:
    """Score one trial list; returns (scores of kept trials, mask of kept trials)."""
    return Scorer(store, mean, cohort, norm, top_n, enroll_map).score(trials, allow_missing)


def _subset(trials: Trials, keep: np.ndarray) -> Trials:
    return Trials(enroll=trials.enroll[keep], test=trials.test[keep], labels=trials.labels[keep],
                  line_no=None if trials.line_no is None else trials.line_no[keep])


def score_files(trial_paths: Sequence[PathLike], emb: PathLike, out_dir: PathLike, mean_store: PathLike | None = None,
                cohort: PathLike | None = None, cohort_data: PathLike | None = None, norm: str = "none",
                top_n: int = 300, enroll_map: PathLike | None = None, allow_missing: bool = False) -> list[Path]:
    """Score each trial list into `<out_dir>/<trial file name>.score` (`enroll test score label`), atomically.

    `cohort` is a store; with `cohort_data` (a data dir whose utt2spk covers it) its per-speaker means form
    the cohort, otherwise its rows are used as they are."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(out_dir / "score.log")
    names = [Path(t).name for t in trial_paths]
    if len(set(names)) != len(names):
        raise UsageError(f"trial lists share a file name, outputs would collide: {names}")
    store = EmbeddingStore.open(emb)
    mean = store_mean(EmbeddingStore.open(mean_store)) if mean_store else None
    cohort_emb = None
    if cohort:
        cstore = EmbeddingStore.open(cohort)
        cohort_emb = speaker_means(cstore, cohort_data)[1] if cohort_data else np.asarray(cstore.matrix)
        log.info("cohort: %d embeddings from %s", len(cohort_emb), cohort)
    emap = read_list_kv(enroll_map) if enroll_map else None
    scorer = Scorer(store, mean, cohort_emb, norm, top_n, emap)
    # Every list is read and scored before any is written: a bad second list leaves no output at all.
    done = []
    for tpath in trial_paths:
        trials = read_trials(tpath)
        scores, keep = scorer.score(trials, allow_missing, source=tpath)
        done.append((tpath, trials if keep.all() else _subset(trials, keep), scores, int((~keep).sum())))
    outs = []
    for tpath, trials, scores, skipped in done:
        out = out_dir / (Path(tpath).name + ".score")
        write_scores(out, trials, scores)
        log.info("%s: %d trials scored, %d skipped, norm=%s -> %s", tpath, len(scores), skipped, norm, out)
        outs.append(out)
    return outs
