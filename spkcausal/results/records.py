"""Per-experiment results (`<exp>/results.json`): what scoring and identification record, and the rows the
report (spkcausal.report) renders.

`results.json` layout (format "spkcausal-results", version 2; read and written by results.store), filled stage by
stage; every file it names is relative to the experiment dir when it lies in the experiment's tree
(experiments.paths), so that a moved or copied tree reports as the original:

    {"format": "spkcausal-results", "version": 2,
     "rows": {"<variant>": {"label": "My label" (only when the user gave one),
                            "verification": {"scores": "<score file>", "eer": 0.051 (a fraction),
                                             "eer_ci": [lo, hi], "min_dcf": {"0.01": ..., "0.05": ...},
                                             "min_dcf_ci": {"0.01": [lo, hi], ...}, "n_target": ...,
                                             "utt2spk": "<eval dir>/utt2spk" (resampling unit), ...},
                            "seen": {"scores": "<seen list score file>", "utt2spk": ..., "train_data": ...,
                                     "thresholds": {"many": 100, "few": 20},
                                     "groups": {"many": {"eer": ..., "eer_ci": ..., "min_dcf": ..., ...}, ...}},
                            "identification": {"many": ..., "many_ci": [lo, hi], "medium": ..., "few": ...,
                                               "overall": ..., "top1": ..., "predictions": "<npz>",
                                               "thresholds": {"many": 100, "few": 20}, ...},
                            "tde_alpha": 0.7}}}

Every EER / minDCF / accuracy carries a 95% bootstrap interval (spkcausal.results.evidence: enrolment speakers
resampled for verification, test speakers within each shot group for identification).

A variant is one way of using the same trained model: `cosine` (plain scoring / plain head), `mean_sub`
(training-set mean subtracted), `asnorm`, `tde` (TDE'd embeddings / TDE logits), `tde_mean_sub`,
`tde_asnorm`. Scoring writes the `verification` part of a variant, identification its `identification`
part; each write re-reads the file and replaces it atomically. A row's label is the one given at record
time (`--label`), else the system name derived from the experiment's `config.yaml` (head, sampler, loss,
the long-tail options) plus the variant, at report time: a renamed system needs no re-scoring.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..experiments.expdir import DECOUPLED_FILE, ExpDir
from ..experiments.runs import init_source, run_identity
from ..experiments.variants import LLR_VARIANTS, VARIANT_NAMES
from ..utils import DataError, PathLike
from .evidence import seen_verification, verification_with_ci
from .store import RESULTS_FILE, load_results, need_all, update_results

__all__ = ["RESULTS_FILE", "VARIANTS", "LLR_VARIANTS", "DECOUPLED_FILE", "system_name", "decoupled_name",
           "variant_label", "row_label", "load_results", "update_results", "record_verification", "record_seen",
           "record_identification", "collect_rows"]

VARIANTS = VARIANT_NAMES  # the one list (experiments.variants); LLR_VARIANTS: scores are calibrated LLRs
_SUFFIX = {"cosine": "", "mean_sub": " + mean subtraction", "asnorm": " + AS-norm",
           "asnorm_cal": " + AS-norm + calibration", "asnorm_qmf": " + AS-norm + QMF"}
# the reference Causal Norm head; other values are labelled
_REF_HEAD = {"num_heads": 2, "gamma": 1.0 / 32, "momentum": 0.9}


def _method_tags(cfg: Mapping[str, Any]) -> list[str]:
    """The long-tail methods of docs/causal.md a config turns on (head options, loss options, the progressive
    sampler), in a fixed order, as short paper-style names."""
    head, loss, scfg = cfg.get("head") or {}, cfg.get("loss") or {}, cfg.get("sampler") or {}
    sampler = str(scfg.get("name", "natural"))
    ft = head.get("feature_transfer")
    tags = []
    if head.get("class_margins"):
        tags.append("LDAM margins")
    if int(head.get("subcenters", 1) or 1) > 1:
        tags.append(f"sub-centres K={int(head['subcenters'])}")
    if ft and not (isinstance(ft, Mapping) and ft.get("enabled") is False):
        tags.append("feature transfer")
    if loss.get("name") == "balanced_softmax":
        tags.append("Balanced Softmax")
    elif loss.get("logit_adjust") is not None:
        tags.append(f"logit adjustment tau={float(loss['logit_adjust']):g}")
    if loss.get("drw_epoch") is not None:
        tags.append(f"DRW from epoch {int(loss['drw_epoch'])}")
    if sampler == "progressive":
        tags.append("progressive sampling")
    # the encoder-side methods (docs/causal.md, "Methods that act on the encoder")
    enc = str((cfg.get("encoder_loss") or {}).get("name", "none"))
    enc_txt = {"prototypical": "angular prototypical loss", "semi_siamese": "semi-siamese contrast",
               "kpositive": "k-positive contrast"}.get(enc)
    if enc_txt:
        tags.append(enc_txt)
    if sampler == "episodic":
        tags.append("episodic batches")
    elif sampler == "episodic_natural":
        tags.append("frequency-drawn episodes")
    views = int(scfg.get("views", 1) or 1)
    if views > 1:  # V crops of each drawn utterance in a batch: another batch, another method
        tags.append(f"{views} views per utterance")
    aug = cfg.get("augment") or {}
    # speed-perturbed copies that keep their speaker's label (augment.speed_new_speakers: false) are another method
    kept = ", speakers kept" if aug.get("speed_perturb") and aug.get("speed_new_speakers") is False else ""
    if aug.get("group_speed") is not None:
        tags.append("tail-aware augmentation" + kept)
    else:
        if aug.get("group_prob") is not None:  # noise / music / babble / reverb only: the label never changes
            tags.append("tail-aware noise augmentation")
        if kept:
            tags.append("speed perturbation" + kept)
    return tags


def _pretraining(source: Mapping[str, Any] | None) -> str:
    """The name suffix of a run started from another run's extractor, by how that one was trained (`source`, its
    config; None where it is not found: a moved or foreign checkpoint)."""
    if source is None or (source.get("data") or {}).get("labels") != "utterance":
        return " + pretrained"
    aug = source.get("augment") or {}
    return " + self-supervised pre-training" + (" with noise / reverb" if aug.get("musan") or aug.get("rirs") else "")


def system_name(cfg: Mapping[str, Any], source: Mapping[str, Any] | None = None) -> str:
    """Paper-style system name from a training config: Baseline (AAM), Re-sampling, De-confound, LDAM margins
    (AAM), ...; the long-tail methods of docs/causal.md name a system of their own or follow De-confound.
    `source`: the config of the run whose extractor `train.init_from` starts from, where known."""
    head = str(cfg.get("head", {}).get("name", "aam"))
    sampler = str((cfg.get("sampler") or {}).get("name", "natural"))
    loss = str((cfg.get("loss") or {}).get("name", "ce"))
    head_txt = {"aam": "AAM", "cosine": "cosine", "linear": "softmax", "causal_norm": "Causal Norm",
                "causal_norm_aam": "Causal Norm AAM"}.get(head, head)
    if (cfg.get("data") or {}).get("labels") == "utterance":  # the classes are utterances: no speaker method applies
        enc = str((cfg.get("encoder_loss") or {}).get("name", "none"))
        return f"Self-supervised pre-training ({'utterance contrast' if enc == 'kpositive' else enc})"
    tags = _method_tags(cfg)
    if head.startswith("causal_norm"):
        capsule = (cfg.get("head") or {}).get("feature_norm") == "capsule"  # the paper's Capsule row
        name = f"{'Capsule' if capsule else 'De-confound'} ({head_txt})"
    elif head == "oltr":  # AAM stage 1, then the meta-embedding (spkcausal.nn.heads.oltr)
        name = "OLTR (AAM, then meta-embedding)"
    elif sampler in ("class_balanced", "sqrt"):
        name = f"Re-sampling ({head_txt}, {sampler.replace('_', '-')})"
    elif loss in ("inverse", "effective_number"):
        name = f"Re-weighting ({head_txt}, {loss.replace('_', ' ')})"
    elif loss == "focal":
        name = f"Focal loss ({head_txt})"
    elif tags:
        name, tags = f"{tags[0][0].upper()}{tags[0][1:]} ({head_txt})", tags[1:]
    else:
        name = f"Baseline ({head_txt})"
    # episodic samplers are named by their tag below
    if head.startswith("causal_norm") and (sampler not in ("natural", "progressive", "episodic", "episodic_natural")
                                           or loss not in ("ce", "balanced_softmax")):
        name += f" + {sampler if sampler != 'natural' else loss}"
    name += "".join(f" + {t}" for t in tags)
    train = cfg.get("train") or {}
    if train.get("init_from"):
        # the recipes' large-margin stage starts from the averaged model and keeps its head (init_head); a system
        # started from a pretrained extractor (--init_from) gets a new head
        name += " + LM" if train.get("init_head") else _pretraining(source)
    if head.startswith("causal_norm"):
        h = cfg.get("head", {})
        k, g = h.get("num_heads", _REF_HEAD["num_heads"]), float(h.get("gamma", _REF_HEAD["gamma"]))
        if k != _REF_HEAD["num_heads"] or g != _REF_HEAD["gamma"]:
            gtxt = "0" if g == 0 else f"1/{1 / g:g}" if (1 / g).is_integer() else f"{g:g}"
            name = name.replace(")", f", K={k}, gamma={gtxt})", 1)
        mu = h.get("momentum", _REF_HEAD["momentum"])
        if mu != _REF_HEAD["momentum"]:
            name = name.replace(")", f", mu={mu})", 1)
    return name


def decoupled_name(info: Mapping[str, Any], base_cfg: Mapping[str, Any]) -> str:
    """'cRT (on Baseline (AAM))' / 'tau-norm (tau=0.6, on ...)' / 'NCM (on ...)' / 'LWS (on ...)' for an
    experiment written by spkcausal decouple."""
    base = system_name(base_cfg)
    if info.get("method") == "tau_norm":
        return f"tau-norm (tau={info.get('tau', 0):g}, on {base})"
    if info.get("method") == "oltr":
        return f"Decouple-OLTR (on {base})"
    return f"{ {'ncm': 'NCM', 'lws': 'LWS'}.get(str(info.get('method')), 'cRT')} (on {base})"


def variant_label(system: str, variant: str) -> str:
    """Row label of a variant: De-confound + TDE reads 'De-confound-TDE (...)', as in the paper."""
    if variant.startswith("tde"):
        rest = variant[len("tde"):].lstrip("_")
        paper = next((p for p in ("De-confound", "Capsule") if system.startswith(p + " (")), None)
        base = system.replace(paper, f"{paper}-TDE", 1) if paper else f"{system} + TDE"
        return base + _SUFFIX.get(rest or "cosine", f" + {rest}")
    return system + _SUFFIX.get(variant, f" + {variant}")


def _exp_system(exp_dir: Path, control: bool = False) -> str:
    """System name of an experiment: decoupled ones from decoupled.json, the others from config.yaml; `control`:
    the long-tail protocol's balanced control (report.tailcost)."""
    e = ExpDir(exp_dir)
    info = e.decoupled()
    if info is not None:
        return decoupled_name(info.raw, info.base_config)
    cfg = e.config()  # read once: the name and the run it started from
    src = init_source(exp_dir, (cfg.get("train") or {}).get("init_from"))
    name = system_name(cfg, ExpDir(src).config() if src is not None else None)
    if control:
        name = name.replace(")", ", balanced control)", 1) if ")" in name else name + " (balanced control)"
    return name


def row_label(exp_dir: PathLike, variant: str, row: Mapping[str, Any], system: str | None = None) -> str:
    """A results row's label: the one the user gave when recording, else the system name of the experiment's
    config.yaml (as this toolkit names it now; `system` when the caller has it already) for the variant."""
    return row.get("label") or variant_label(system or _exp_system(Path(exp_dir), run_identity(exp_dir)[3]), variant)


def record_verification(exp_dir: PathLike, variant: str, score_file: PathLike, label: str | None = None,
                        p_targets: Sequence[float] = (0.01, 0.05), tde_alpha: float | None = None,
                        utt2spk: PathLike | None = None, n_boot: int = 1000, seed: int = 0,
                        llr: bool | None = None) -> dict:
    """EER / minDCF of a labelled score file with 95% intervals from resampling enrolment speakers (`utt2spk`
    of the eval dir; without it, enrolment keys), stored as the variant's verification result; LLR scores
    (`llr`, by default the variants of LLR_VARIANTS) also get Cllr, minCllr and actDCF."""
    llr = variant in LLR_VARIANTS if llr is None else llr
    res = verification_with_ci(str(score_file), str(utt2spk) if utt2spk else None, p_targets, n_boot, seed=seed,
                               llr=llr)
    ver = {"scores": str(score_file), **res}
    return update_results(exp_dir, variant, label, verification=ver, tde_alpha=tde_alpha)


def record_seen(exp_dir: PathLike, variant: str, score_file: PathLike, utt2spk: PathLike, train_data: PathLike,
                many: int, few: int, label: str | None = None, p_targets: Sequence[float] = (0.01, 0.05),
                tde_alpha: float | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """EER / minDCF of a seen-speaker list by shot group of the enrolment speaker (training counts of
    `train_data`), with intervals, stored as the variant's `seen` result."""
    res = seen_verification(str(score_file), str(utt2spk), str(train_data), many, few, p_targets, n_boot, seed=seed)
    return update_results(exp_dir, variant, label, seen=res, tde_alpha=tde_alpha)


def record_identification(exp_dir: PathLike, variant: str, result: Mapping[str, Any],
                          label: str | None = None) -> dict:
    """Store an `identify` result as the variant's identification result."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}  # strict JSON
    return update_results(exp_dir, variant, label, identification=clean, tde_alpha=result.get("tde_alpha"))


def _variant_key(v: str) -> tuple[int, str]:
    return (VARIANTS.index(v), v) if v in VARIANTS else (len(VARIANTS), v)


def _embedding_dim(exp: Path) -> tuple[int, Path] | None:
    """An experiment's embedding dimension and the file that says so: its first embedding store, else its
    config's model.embed_dim; None when neither says."""
    for meta in sorted((exp / "emb").glob("*/store.json")):
        try:
            return int(json.loads(meta.read_text(encoding="utf-8"))["dim"]), meta.parent
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a store the report does not read: its own readers name what is wrong with it
    dim = (ExpDir(exp).config().get("model") or {}).get("embed_dim")
    return (dim, exp / "config.yaml") if isinstance(dim, int) and not isinstance(dim, bool) else None


def _check_seeds(systems: Mapping[Path, str]) -> None:
    """Refuse to average runs of different embedding dimensions as seeds of one system (run.json's system)."""
    first: dict[str, tuple[int, Path]] = {}
    for exp, system in systems.items():
        found = _embedding_dim(exp)
        if found is None:
            continue
        dim, src = first.setdefault(system, found)
        if found[0] != dim:
            raise DataError(f"{found[0]}-dimensional embeddings, but {src} ({dim}-dimensional) is another seed of "
                            f"system {Path(system).name}: runs of different models are not seeds of one system",
                            found[1])


def collect_rows(exp_dirs: Sequence[PathLike], variants: Sequence[str] | None = None) -> list[dict]:
    """One row per (experiment, variant), experiments in the given order, variants in VARIANTS order; `system`
    and `seed` say which training runs are seeds of one system, `parent` the system a fine-tuning started from,
    `control_of` the baseline a balanced control is of (experiments.runs.run_identity: run.json, or the legacy
    reading of the dir name for an experiment without one); file references are absolute paths
    where the experiment is now, and a file the report reads that is missing is a DataError (results.store)."""
    rows = []
    exps = [Path(e) for e in exp_dirs]
    systems = {}
    for exp in exps:
        if not (exp / RESULTS_FILE).is_file():
            raise DataError(f"no {RESULTS_FILE}: run the scoring / identification stages first", exp)
        data = load_results(exp)
        if not data["rows"]:
            raise DataError("no result rows: run the scoring / identification stages first", exp / RESULTS_FILE)
        # per experiment, not per variant: the parent comes from reading config.yaml
        key, seed, parent, control = run_identity(exp)
        systems[exp] = key
        run = {"exp": str(exp), "system": key, "seed": seed, "parent": parent,
               "control_of": _control_of(exp, key) if control else None, "decoupled": (exp / DECOUPLED_FILE).is_file()}
        system = _exp_system(exp, control)  # config.yaml read once per experiment, not once per variant
        for v in sorted(data["rows"], key=_variant_key):
            if variants is not None and v not in variants:
                continue
            r = data["rows"][v]
            rows.append({**run, "variant": v, "label": row_label(exp, v, r, system),
                         "verification": r.get("verification"), "seen": r.get("seen"),
                         "identification": r.get("identification"), "tde_alpha": r.get("tde_alpha")})
            need_all(rows[-1])
    _check_seeds(systems)
    # a parent among the experiments is named as they were given (init_from may spell it otherwise)
    given = {str(Path(r["system"]).resolve()): r["system"] for r in rows}
    for r in rows:
        if r["parent"] is not None:
            r["parent"] = given.get(str(Path(r["parent"]).resolve()), r["parent"])
    return rows


def _control_of(exp: Path, key: str) -> str:
    """The baseline system key a control run is of: run.json's base, or (legacy) its key without `_control`."""
    rec = ExpDir(exp).run()
    return str(exp.parent / rec.base) if rec is not None and rec.base else key.removesuffix("_control")
