"""Use a trained model from Python: `spkcausal.load_model(path)` -> `SpeakerModel` with embed / score / verify.

    import spkcausal
    m = spkcausal.load_model("demo/exp/cnaam")          # an experiment dir or any checkpoint file
    e = m.embed("a.wav")                                 # (D,) float32; a list of inputs gives (N, D)
    s = m.score("a.wav", "b.wav", tde_alpha="stored", mean_sub=True)
    s, accepted, t = m.verify("a.wav", "b.wav")          # the threshold stored with the model

Inputs are audio paths (any rate soundfile reads; resampled, channels averaged) or waveforms (a 1-D tensor /
array, or (channels, samples), averaged) at `sample_rate` (default: the model's). Embedding runs through
`extract.embed_source`, the loop the recipes' `extract` uses, so a file gives the same vector either way.

What an experiment dir stores, and where the API finds it:
  `tde_alpha.json` ("alpha")      TDE's alpha chosen on the dev set (recipe stage 6): `tde_alpha="stored"`;
  `emb/<train dir name>/`          the training set's raw store: its mean is the `mean_sub=True` mean (the
                                   mean of its TDE'd vectors when TDE is on, as the recipe scores);
  `threshold.json`                 the accept / reject threshold `verify` uses and the scoring it was set for,
                                   written by `set_threshold` (`spkcausal set-threshold`) from a dev score file.
Pass `tde_alpha=`, `mean=` or `threshold=` explicitly to override or to use a bare checkpoint file.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..experiments.expdir import ALPHA_FILE, THRESHOLD_FILE, ExpDir
from ..experiments.paths import stored_path
from ..utils import DataError, PathLike, UsageError, write_text_atomic

Input = Union[str, Path, np.ndarray, "torch.Tensor"]  # noqa: F821 (torch is imported lazily)


def experiment_dir_of(path: PathLike) -> Path | None:
    """The experiment dir a checkpoint or dir belongs to (`exp/`, `exp/avg_model.pt`, `exp/checkpoints/x.pt`)."""
    p = Path(path)
    if p.is_dir():
        return p
    if p.parent.name == "checkpoints":
        return p.parent.parent
    return p.parent if (p.parent / "config.yaml").is_file() else None


def read_threshold(exp_dir: PathLike) -> dict[str, Any] | None:
    """The stored threshold record of an experiment (None when there is none; experiments.expdir checks it)."""
    return ExpDir(exp_dir).threshold()


def set_threshold(exp_dir: PathLike, scores: PathLike, tde_alpha: float | None = None,
                  mean_sub: bool = False, calibration: PathLike | None = None,
                  p_target: float | None = None) -> dict[str, Any]:
    """Store the accept / reject threshold of an experiment as `<exp_dir>/threshold.json`, with the scoring
    (TDE alpha, mean subtraction) that produced the scores, so `verify` scores the same way: the EER threshold
    of a labelled dev score file, or with `calibration` (a linear model of `spkcausal calibrate` trained on those
    scores) the raw score at which the calibrated LLR meets the Bayes threshold -logit(p_target)."""
    from ..data.trialio import read_scores
    from ..scoring.metrics import eer_with_threshold

    table = read_scores(scores, need_labels=True)
    s, labels = table.scores, table.labels
    eer, thr = eer_with_threshold(s, labels)
    rec = {"threshold": float(thr), "kind": "eer", "eer": float(eer), "scores": stored_path(scores, exp_dir),
           "num_trials": int(len(s)), "tde_alpha": None if tde_alpha is None else float(tde_alpha),
           "mean_sub": bool(mean_sub)}
    if calibration is not None:
        from ..scoring.calibration import CalibrationModel, bayes_threshold

        model = CalibrationModel.load(calibration)
        if model.kind != "linear" or model.weights[0] <= 0:
            raise DataError("a verify threshold needs a linear calibration (score -> llr) with a positive slope; "
                            "QMF depends on quality measures per trial", calibration)
        p = float(model.p_target if p_target is None else p_target)
        rec.update(kind="calibrated", p_target=p, calibration=stored_path(calibration, exp_dir),
                   threshold=float((bayes_threshold(p) - model.bias) / model.weights[0]))
    if not math.isfinite(rec["threshold"]):
        raise DataError(f"the threshold came out as {rec['threshold']}; refusing to store it", calibration or scores)
    write_text_atomic(Path(exp_dir) / THRESHOLD_FILE, json.dumps(rec, indent=1) + "\n")
    return rec


def _as_mono(x: Any) -> np.ndarray:
    """A 1-D float32 array from a 1-D or (channels, samples) tensor / array (channels averaged)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=0, dtype=np.float32)
    if x.ndim != 1:
        raise UsageError(f"a waveform must be (samples,) or (channels, samples); got shape {x.shape}")
    return x


class SpeakerModel:
    """User-facing API over a TrainedModel: embed / score / verify audio with what its experiment stores.

    Holds the loaded extractor (eval mode), its front-end, head (for x_bar), and the experiment's stored TDE
    alpha, training-set mean and calibrated threshold."""

    def __init__(self, path: PathLike, device: str = "cpu", tde_alpha: float | None = None,
                 mean: np.ndarray | PathLike | None = None, threshold: float | None = None,
                 min_seconds: float = 0.5):
        from ..nn.assemble import assemble
        from ..nn.distributed import resolve_device

        self.device = resolve_device(device)
        self.trained = assemble(path, device=self.device, need_head=False)
        self.model, self.config = self.trained.model, self.trained.config
        self.fbank = self.trained.frontend
        self.sample_rate = int(self.fbank.sample_rate)
        self.min_seconds = float(min_seconds)
        self.exp_dir = experiment_dir_of(path)
        self._alpha, self._mean_src, self._threshold = tde_alpha, mean, threshold
        self._means: dict[float | None, np.ndarray] = {}

    @property
    def is_causal(self) -> bool:
        """True when the checkpoint has a Causal Norm head (so TDE applies)."""
        return self.trained.is_causal

    # ------------------------------------------------------------------ what the experiment stores

    def stored_alpha(self) -> float | None:
        """The alpha given to load_model, else the experiment's tde_alpha.json, else None."""
        if self._alpha is not None:
            return float(self._alpha)
        return None if self.exp_dir is None else ExpDir(self.exp_dir).tde_alpha()

    def _resolve_alpha(self, tde_alpha: float | str | None) -> float | None:
        if tde_alpha is None:
            return None
        if tde_alpha == "stored":
            alpha = self.stored_alpha()
            if alpha is None:
                raise UsageError(f"no stored TDE alpha ({ALPHA_FILE} in the experiment dir): give one "
                                 "(--tde-alpha A / --tde A on the command line, tde_alpha=A in Python)")
        else:
            alpha = float(tde_alpha)
        if self.trained.head is None:
            raise DataError("TDE needs a Causal Norm head; this checkpoint has none", self.trained.path)
        self.trained.require_causal()
        return alpha

    def train_store(self) -> Path:
        """The experiment's raw training-set store (`emb/<train dir name>`)."""
        train = self.config["data"].get("train")
        if self.exp_dir is None or not train:
            raise UsageError("no experiment dir / training set to find the mean in; pass mean=STORE_OR_ARRAY")
        store = self.exp_dir / "emb" / Path(str(train)).name
        if not (store / "store.json").is_file():
            raise DataError("no training-set store for mean subtraction (run the recipe's extraction stage, "
                            "or pass mean=)", store)
        return store

    def mean_embedding(self, tde_alpha: float | None = None) -> np.ndarray:
        """The centring mean: given (array or store), else the training store's (TDE'd with `tde_alpha`)."""
        if tde_alpha in self._means:
            return self._means[tde_alpha]
        from ..data.embeddings import EmbeddingStore
        from ..scoring.cosine import store_mean

        src = self._mean_src
        if isinstance(src, np.ndarray) or hasattr(src, "detach"):
            mean = np.asarray(src.detach().cpu() if hasattr(src, "detach") else src, dtype=np.float64)
        else:
            store = EmbeddingStore.open(Path(src) if src is not None else self.train_store())
            if tde_alpha is None or src is not None:
                mean = store_mean(store)
            else:
                from .tde import tde_embeddings

                x = tde_embeddings(np.array(store.matrix, dtype=np.float32), self._x_bar(), tde_alpha,
                                   self._num_heads(), self.trained.feature_norm)
                mean = x.astype(np.float64).mean(axis=0)
        self._means[tde_alpha] = mean
        return mean

    def _x_bar(self) -> np.ndarray:
        return self.trained.mean_feature()

    def _num_heads(self) -> int:
        return self.trained.num_heads

    # ------------------------------------------------------------------ embedding and scoring

    def embed(self, x: Input | Sequence[Input], sample_rate: int | None = None, tde_alpha: float | str | None = None,
              mean_sub: bool = False, batch_seconds: float = 200.0, num_workers: int = 0,
              progress: bool | None = None, short: str = "error") -> np.ndarray:
        """(D,) embedding of one input, (N, D) of a list; optionally TDE'd and centred (as scored).

        Inputs shorter than `min_seconds` raise a DataError naming them (short="repeat": repeat them up to it,
        as the recipes' extraction does). A progress bar shows for more than a few inputs."""
        from .extract import AudioSource, embed_source

        single = isinstance(x, (str, Path)) or hasattr(x, "shape")
        items = [x] if single else list(x)
        if not items:
            raise UsageError("nothing to embed")
        sr = self.sample_rate if sample_rate is None else int(sample_rate)
        prepared: list[PathLike | np.ndarray] = []
        for item in items:
            if isinstance(item, (str, Path)):
                prepared.append(str(item))
                continue
            wave = _as_mono(item)
            if sr != self.sample_rate:
                from ..data.audio import resample

                wave = resample(wave, sr, self.sample_rate)
            prepared.append(wave)
        source = AudioSource(prepared, self.sample_rate, int(round(self.min_seconds * self.sample_rate)),
                             resample=True, short=short)
        show = len(items) > 8 if progress is None else progress
        emb = embed_source(self.model, self.fbank, source, self.device, batch_seconds, mode="exact",
                           num_workers=num_workers, progress=show)
        emb = self.transform(emb, tde_alpha, mean_sub)
        return emb[0] if single else emb

    def transform(self, emb: np.ndarray, tde_alpha: float | str | None = None, mean_sub: bool = False) -> np.ndarray:
        """Raw (N, D) embeddings -> TDE'd (`tde_alpha`) and centred (`mean_sub`), as the scorer sees them."""
        alpha = self._resolve_alpha(tde_alpha)
        if alpha is not None:
            from .tde import tde_embeddings

            emb = tde_embeddings(np.asarray(emb, np.float32), self._x_bar(), alpha, self._num_heads(),
                                 self.trained.feature_norm)
        if mean_sub:
            emb = (np.asarray(emb, np.float32) - self.mean_embedding(alpha).astype(np.float32)).astype(np.float32)
        return emb

    def score(self, a: Input, b: Input, tde_alpha: float | str | None = None, mean_sub: bool = False,
              sample_rate: int | None = None) -> float:
        """Cosine score of two inputs (after optional TDE and centring), as `spkcausal score` computes it."""
        ea, eb = self.embed([a, b], sample_rate=sample_rate, tde_alpha=tde_alpha, mean_sub=mean_sub,
                            progress=False)
        na, nb = np.linalg.norm(ea.astype(np.float64)), np.linalg.norm(eb.astype(np.float64))
        if na == 0 or nb == 0:
            which = [str(x) if isinstance(x, (str, Path)) else f"input {i + 1} (an array)"
                     for i, (x, n) in enumerate(((a, na), (b, nb))) if n == 0]
            raise DataError(f"the embedding of {' and '.join(which)} has zero norm (silent or constant audio?); "
                            "a cosine needs a non-zero vector")
        return float(np.dot(ea.astype(np.float64), eb.astype(np.float64)) / (na * nb))

    def threshold(self) -> tuple[float, dict[str, Any]]:
        """(threshold, record): the one given to load_model, else the experiment's threshold.json."""
        if self._threshold is not None:
            if not math.isfinite(float(self._threshold)):
                raise UsageError(f"threshold {self._threshold!r} is not a finite number")
            return float(self._threshold), {"kind": "given", "tde_alpha": None, "mean_sub": False}
        rec = None if self.exp_dir is None else read_threshold(self.exp_dir)
        if rec is None:
            raise UsageError("no stored threshold (threshold.json, written by `spkcausal set-threshold`); "
                             "pass a threshold")
        return float(rec["threshold"]), rec

    def verify(self, a: Input, b: Input, threshold: float | None = None, tde_alpha: float | str | None = None,
               mean_sub: bool = False) -> tuple[float, bool, float]:
        """(score, accepted, threshold): a given threshold with the given scoring, else the stored threshold
        with the scoring it was set for."""
        if threshold is not None and not math.isfinite(float(threshold)):
            raise UsageError(f"threshold {threshold!r} is not a finite number")
        if threshold is None:
            threshold, rec = self.threshold()
            if rec["kind"] != "given":
                tde_alpha, mean_sub = rec.get("tde_alpha"), bool(rec.get("mean_sub"))
        s = self.score(a, b, tde_alpha=tde_alpha, mean_sub=mean_sub)
        return s, s >= threshold, float(threshold)


def load_model(path: PathLike, device: str = "cpu", tde_alpha: float | None = None,
               mean: np.ndarray | PathLike | None = None, threshold: float | None = None) -> SpeakerModel:
    """Load an experiment dir (avg_model.pt, else its newest checkpoint) or a checkpoint file for inference."""
    return SpeakerModel(path, device=device, tde_alpha=tde_alpha, mean=mean, threshold=threshold)


AUDIO_EXTS = ("wav", "flac", "ogg", "mp3", "m4a", "opus", "sph")


def collect_inputs(inputs: Sequence[PathLike], exts: Sequence[str] = AUDIO_EXTS) -> list[tuple[str, str]]:
    """(key, path) of every input: an audio file (key: its name without extension), a directory (recursive, by
    extension; key: the relative path without extension) or a Kaldi wav.scp (its keys; no pipes)."""
    from ..data.datadir import read_wav_scp

    out: list[tuple[str, str]] = []
    suffixes = {"." + e.lower().lstrip(".") for e in exts}
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
            if not found:
                raise DataError(f"no audio files ({', '.join(sorted(suffixes))}) under it", p)
            out += [(str(f.relative_to(p).with_suffix("")).replace("\\", "/"), str(f)) for f in found]
        elif p.name == "wav.scp" or p.suffix == ".scp":
            out += [(key, str(value)) for key, value in read_wav_scp(p).items()]
        elif p.is_file():
            out.append((p.stem, str(p)))
        else:
            raise DataError("no such file or directory", p)
    seen: dict[str, str] = {}
    for key, path in out:
        if key in seen:
            raise DataError(f"two inputs get the key {key!r} ({seen[key]} and {path}); embed them separately", path)
        if any(c.isspace() for c in key):
            raise DataError(f"key {key!r} contains whitespace", path)
        seen[key] = path
    return out


def embed_to_store(path: PathLike, inputs: Sequence[PathLike], out_dir: PathLike, tde_alpha: float | str | None = None,
                   mean_sub: bool = False, ark: bool = False, device: str = "auto", batch_seconds: float = 200.0,
                   num_workers: int = 2, short: str = "error") -> Path:
    """Embed files / directories / wav.scp lists into a store at `out_dir` (+ xvector.ark/scp with `ark`)."""
    from ..data.embeddings import write_store

    items = collect_inputs(inputs)
    m = SpeakerModel(path, device=device)
    emb = m.embed([p for _, p in items], tde_alpha=tde_alpha, mean_sub=mean_sub, batch_seconds=batch_seconds,
                  num_workers=num_workers, progress=None, short=short)
    alpha = m._resolve_alpha(tde_alpha)
    meta = {"checkpoint": str(m.trained.path), "inputs": [str(i) for i in inputs], "tde_alpha": alpha,
            "mean_sub": bool(mean_sub), "num_utts": len(items)}
    return write_store(out_dir, [k for k, _ in items], emb, meta, ark=ark)
