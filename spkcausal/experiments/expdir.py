"""An experiment dir and its files, by typed accessors instead of path joins spread over the package (torch-free):

    config.yaml          the merged training config            ExpDir.config()
    run.json             the run's identity (runs)             ExpDir.run()
    checkpoints/*.pt     epoch checkpoints                     ExpDir.checkpoints()
    avg_model.pt         the averaged model                    ExpDir.averaged_model
    emb/<name>/          embedding stores (store.json)         ExpDir.stores(), ExpDir.store(name)
    scores/<dir>/<list>.score   scores of a variant            ExpDir.scores(variant, list)
    results.json         figures (read by the results store)   ExpDir.results_file
    threshold.json       verify's threshold                    ExpDir.threshold()
    tde_alpha.json       TDE's alpha chosen on a dev set       ExpDir.tde_alpha()
    decoupled.json       a decoupled classifier's method, base ExpDir.decoupled()

A path a side file stores is relative to the experiment dir where the file lies in its tree (experiments.paths):
`decoupled.json`'s base and base checkpoint too since its version 2 (version 1 stored them absolute).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..utils import DataError, PathLike
from .paths import locate
from .runs import RunRecord, read_run
from .variants import variant

__all__ = ["ExpDir", "DecoupledInfo", "DECOUPLED_FILE", "DECOUPLED_FORMAT", "DECOUPLED_VERSION", "THRESHOLD_FILE",
           "ALPHA_FILE", "check_threshold"]

DECOUPLED_FILE, DECOUPLED_FORMAT, DECOUPLED_VERSION = "decoupled.json", "spkcausal-decoupled", 2
THRESHOLD_FILE = "threshold.json"
ALPHA_FILE = "tde_alpha.json"


@dataclass(frozen=True)
class DecoupledInfo:
    """What decoupled.json says: the method, the base experiment and checkpoint (where they are now), the base's
    config, tau (tau_norm), and the whole record."""

    method: str
    base: Path
    base_checkpoint: Path
    base_config: dict
    tau: float | None
    raw: dict


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"not JSON ({e})", path) from None


def check_threshold(rec: Any, path: Path) -> dict:
    """A threshold record as `spkcausal set-threshold` writes it, or a DataError naming the file and the field."""
    value = rec.get("threshold") if isinstance(rec, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"not a threshold record (threshold {value!r} is not a number)", path)
    if not math.isfinite(value):  # NaN would reject every trial, inf would reject or accept them all
        raise DataError(f"threshold {value!r} is not a finite number", path)
    alpha = rec.get("tde_alpha")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                              or not math.isfinite(alpha)):
        raise DataError(f"tde_alpha {alpha!r}: expected a finite number or null", path)
    if not isinstance(rec.get("mean_sub", False), bool) or not isinstance(rec.get("kind", "eer"), str):
        raise DataError("mean_sub must be true or false and kind a string", path)
    return rec


class ExpDir:
    """One experiment dir (module docstring); nothing is read until asked."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ExpDir({str(self.path)!r})"

    def config(self) -> dict:
        """The merged config of config.yaml ({} when the dir has none: not trained yet)."""
        path = self.path / "config.yaml"
        if not path.is_file():
            return {}
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise DataError(f"not YAML ({e})", path) from None
        if data is not None and not isinstance(data, dict):
            raise DataError(f"expected a mapping of config sections, got {type(data).__name__}", path)
        return data or {}

    def run(self) -> RunRecord | None:
        """The run.json record (None: an experiment older than run.json)."""
        return read_run(self.path)

    def checkpoints(self) -> list[Path]:
        """The epoch checkpoints, oldest first."""
        return sorted((self.path / "checkpoints").glob("*.pt"))

    @property
    def averaged_model(self) -> Path | None:
        """avg_model.pt, when averaged."""
        p = self.path / "avg_model.pt"
        return p if p.is_file() else None

    def stores(self) -> dict[str, Path]:
        """Embedding stores by name (emb/<name> holding store.json)."""
        return {p.parent.name: p.parent for p in sorted((self.path / "emb").glob("*/store.json"))}

    def store(self, name: str) -> Path:
        """The store of one data dir's name; a DataError naming the ones there are when it is missing."""
        found = self.stores()
        if name not in found:
            raise DataError(f"no embedding store {name!r} (stores: {', '.join(found) or 'none'})", self.path / "emb")
        return found[name]

    def scores(self, variant_name: str, list_name: str) -> Path:
        """Where a variant's scores of a trial list are (scores/<variant dir>/<list>.score)."""
        return self.path / "scores" / variant(variant_name).scores_dir / f"{list_name}.score"

    @property
    def results_file(self) -> Path:
        """results.json (read and written by the results store, results.store)."""
        return self.path / "results.json"

    def threshold(self) -> dict | None:
        """The threshold record of threshold.json, checked (None when there is none)."""
        path = self.path / THRESHOLD_FILE
        return check_threshold(_json(path), path) if path.is_file() else None

    def tde_alpha(self) -> float | None:
        """The alpha of tde_alpha.json (None when TDE's alpha was not chosen)."""
        path = self.path / ALPHA_FILE
        if not path.is_file():
            return None
        data = _json(path)
        alpha = data.get("alpha") if isinstance(data, dict) else None
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise DataError(f"no alpha in it (alpha {alpha!r}: expected a number)", path)
        if not math.isfinite(alpha):
            raise DataError(f"alpha {alpha} is not a finite number", path)
        return float(alpha)

    def decoupled(self) -> DecoupledInfo | None:
        """What decoupled.json says (None: not a decoupled classifier); version 1 (absolute paths, no format) is
        read too."""
        path = self.path / DECOUPLED_FILE
        if not path.is_file():
            return None
        data = _json(path)
        if not isinstance(data, dict):
            raise DataError("expected a JSON object", path)
        version = data.get("version", 1)
        if version not in (1, DECOUPLED_VERSION) or data.get("format", DECOUPLED_FORMAT) != DECOUPLED_FORMAT:
            raise DataError(f"{data.get('format')!r} version {version!r} is not a decoupled.json this spkcausal "
                            f"reads ({DECOUPLED_FORMAT} 1 or {DECOUPLED_VERSION})", path)
        try:
            method, base, ckpt = str(data["method"]), str(data["base"]), str(data["base_checkpoint"])
        except KeyError as e:
            raise DataError(f"no {e.args[0]!r} in it", path) from None
        legacy = version == 1
        tau = data.get("tau")
        return DecoupledInfo(method, locate(base, self.path, legacy, "dir")[0],
                             locate(ckpt, self.path, legacy, "file")[0], dict(data.get("base_config") or {}),
                             None if tau is None else float(tau), data)
