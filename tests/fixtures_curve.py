"""Fabricated long-tail protocol trees for the tail-cost curve and the session halves (no training): run dirs with
run.json and results.json, either with hand-chosen per-seed figures or with seen-speaker score files over data dirs
whose sessions are known."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from spkcausal.data.datadir import DataDir
from spkcausal.experiments.runs import RunRecord, write_run
from spkcausal.results.records import record_seen, update_results

HEADS = {"aam": "aam", "cnaam": "causal_norm_aam"}
SHOTS = {"many": 10, "few": 4}  # Many > 10 training utterances, Few < 4


def run_dir(root: Path, system: str, seed: int, control: bool = False) -> Path:
    """A run dir `root/<system>[_control]_seed<seed>` with config.yaml and the plan's run.json."""
    sysname = f"{system}_control" if control else system
    e = root / f"{sysname}_seed{seed}"
    e.mkdir(parents=True, exist_ok=True)
    (e / "config.yaml").write_text(yaml.safe_dump({"head": {"name": HEADS[system]}}))
    write_run(e, RunRecord(name=e.name, kind="train", system=sysname, seed=seed, base=system if control else None,
                           control=control))
    return e


def figure_row(x: dict) -> dict:
    """A result row with the given figures (fractions): eer, min_dcf, seen_eer_{many,medium,few}, acc_few."""
    groups = {g: {"eer": x[f"seen_eer_{g}"], "min_dcf": {"0.01": 0.5}} for g in ("many", "medium", "few")}
    return {"verification": {"eer": x["eer"], "min_dcf": {"0.01": x["min_dcf"]}},
            "seen": {"thresholds": SHOTS, "groups": groups},
            "identification": {"many": 0.9, "medium": 0.8, "few": x["acc_few"], "overall": 0.8, "thresholds": SHOTS}}


def figure_tree(root: Path, values: dict[str, dict[str, list[float]]]) -> Path:
    """An experiments dir of the protocol: values[run kind][column] = per-seed figures, run kinds `aam`,
    `aam_control` and optionally `cnaam`; returns `root`."""
    for kind, cols in values.items():
        system, control = kind.removesuffix("_control"), kind.endswith("_control")
        n = len(next(iter(cols.values())))
        for k in range(n):
            e = run_dir(root, system, k, control)
            update_results(e, "cosine", **figure_row({c: v[k] for c, v in cols.items()}))
    return root


# ------------------------------------------------------------------ sessions known

# training speakers: two per shot group; their training sessions
TRAIN_COUNTS = {"m1": 12, "m2": 14, "d1": 6, "d2": 8, "f1": 2, "f2": 3}
TRAIN_SESS = {s: [f"{s}-s1", f"{s}-s2"] if c > 2 else [f"{s}-s1"] for s, c in TRAIN_COUNTS.items()}
# held-out (iden test) utterances per speaker: index -> from a training session or a new one
TEST_PER_SPK = 6


def session_of(spk: str, i: int, all_new: bool = False) -> str:
    """The session of test utterance i of a speaker: even i from a training session (unless all_new), odd i new."""
    if all_new or i % 2:
        return f"{spk}-new{i}"
    return TRAIN_SESS[spk][(i // 2) % len(TRAIN_SESS[spk])]


def session_data(root: Path, all_new: bool = False) -> tuple[Path, Path]:
    """(training dir, iden-test dir) under root/data with utt2sess; returns their paths."""
    tr = {f"{s}-t{j}": (s, TRAIN_SESS[s][j % len(TRAIN_SESS[s])]) for s, c in TRAIN_COUNTS.items() for j in range(c)}
    te = {f"{s}-x{i}": (s, session_of(s, i, all_new)) for s in TRAIN_COUNTS for i in range(TEST_PER_SPK)}
    out = []
    for name, table in (("train", tr), ("iden_test", te)):
        d = DataDir(wav={u: f"/nowhere/{u}.wav" for u in table}, utt2spk={u: s for u, (s, _) in table.items()},
                    utt2sess={u: x for u, (_, x) in table.items()})
        d.write(root / "data" / name)
        out.append(root / "data" / name)
    return out[0], out[1]


def seen_trials(test_dir: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Every ordered pair (enroll < test) of the iden-test utterances, labelled by speaker."""
    u2s = DataDir.load(test_dir).utt2spk
    utts = sorted(u2s)
    pairs = [(a, b) for a in utts for b in utts if a < b]
    return [a for a, _ in pairs], [b for _, b in pairs], np.array([u2s[a] == u2s[b] for a, b in pairs])


def write_scores(path: Path, enroll, test, scores, labels) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{e} {t} {s:.6f} {'target' if lab else 'nontarget'}\n"
                            for e, t, s, lab in zip(enroll, test, scores, labels)))
    return path


def session_tree(root: Path, seeds: int = 3, all_new: bool = False, n_boot: int = 20) -> Path:
    """root/data/{train,iden_test} and root/exp with aam and its control over `seeds` seeds, each with a seen
    score file recorded by shot group (the control's groups and sessions: the long-tailed train dir, as the
    recipes record it); the baseline's scores are noisier on new sessions. Returns root/exp."""
    train, test = session_data(root, all_new)
    enroll, tst, labels = seen_trials(test)
    sess = DataDir.load(test).utt2sess
    new = np.array(["-new" in sess[t] for t in tst])
    exp = root / "exp"
    for k in range(seeds):
        for control in (False, True):
            rng = np.random.default_rng(100 * k + control)
            e = run_dir(exp, "aam", k, control)
            noise = 1.0 + (0.0 if control else 1.5) * new
            scores = rng.normal(size=len(labels)) * noise + 2.0 * labels
            f = write_scores(e / "scores" / "cosine" / "seen_test.score", enroll, tst, scores, labels)
            record_seen(e, "cosine", f, test / "utt2spk", train, SHOTS["many"], SHOTS["few"], p_targets=(0.01,),
                        n_boot=n_boot)
    return exp
