"""Reading the report's markdown back in tests (test_report, test_figures), and a small experiment tree to report on
(test_report_paths)."""
from __future__ import annotations

from pathlib import Path


def md_table(text: str, title: str) -> dict[str, list[str]]:
    """Rows (label -> cells) of the markdown table under the bold title that starts with `title`."""
    lines = text.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith(f"**{title}"))
    rows = {}
    for ln in lines[i + 4:]:
        if not ln.startswith("| "):
            break
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


# ------------------------------------------------------------------ a small experiment tree (no training)

TREE_SYSTEMS = (("aam", "aam"), ("cnaam", "causal_norm_aam"))
# training utterances per speaker: Many (> 30), Medium (10-30) and Few (< 10) speakers for the seen list and
# identification
TREE_COUNTS = {"m0": 40, "m1": 35, "d0": 20, "d1": 15, "f0": 6, "f1": 4}
TREE_SHOTS = (30, 10)


def _write_scores(path: Path, enroll, test, scores, labels) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{e} {t} {s:.6f} {'target' if lab else 'nontarget'}\n"
                            for e, t, s, lab in zip(enroll, test, scores, labels)))
    return str(path)


def report_tree(root: Path, n_boot: int = 50, seeds: tuple[int, ...] | None = None) -> list[Path]:
    """The experiment dirs of a small tree laid out as the recipes lay it out (`root/data/{test,train}`,
    `root/exp/<system>[_seed<k>]` with score files, identification predictions and results.json, recorded through
    the public record_* functions with paths relative to `root` as the recipes give them); run with cwd = root."""
    import os

    import numpy as np
    import yaml

    from spkcausal.results.records import record_identification, record_seen, record_verification
    from spkcausal.scoring.bootstrap import bootstrap_accuracy

    cwd = os.getcwd()
    os.chdir(root)
    try:
        rng = np.random.default_rng(7)
        n = 240
        enroll = [f"e{i % 12}-u{i}" for i in range(n)]
        test = [f"t{i}" for i in range(n)]
        labels = rng.random(n) < 0.3
        for split, keys, spk in (("test", enroll, [e.split("-")[0] for e in enroll]),):
            Path("data", split).mkdir(parents=True, exist_ok=True)
            Path("data", split, "utt2spk").write_text("".join(f"{k} {s}\n" for k, s in sorted(set(zip(keys, spk)))))
        Path("data/train").mkdir(parents=True, exist_ok=True)
        Path("data/train/utt2spk").write_text("".join(f"{s}-t{i} {s}\n" for s, c in TREE_COUNTS.items()
                                                      for i in range(c)))
        spks = list(TREE_COUNTS)
        seen_enroll = [f"{spks[i % len(spks)]}-v{i}" for i in range(n)]
        Path("data/seen").mkdir(parents=True, exist_ok=True)
        Path("data/seen/utt2spk").write_text("".join(f"{k} {k.split('-')[0]}\n" for k in seen_enroll))
        y_true = np.repeat(np.arange(len(spks)), 8)
        counts = np.array([TREE_COUNTS[s] for s in spks])
        exps = []
        for name, head in TREE_SYSTEMS:
            for k in (seeds or (None,)):
                e = Path("exp", name if k is None else f"{name}_seed{k}")
                e.mkdir(parents=True, exist_ok=True)
                (e / "config.yaml").write_text(yaml.safe_dump({"head": {"name": head}, "model": {"embed_dim": 8}}))
                variants = ("cosine", "tde") if head.startswith("causal") else ("cosine",)
                for v in variants:
                    ver = rng.normal(size=n) * 1.5 + 3 * labels
                    record_verification(e, v, _write_scores(e / "scores" / v / "list.score", enroll, test, ver,
                                                            labels), utt2spk="data/test/utt2spk", n_boot=n_boot)
                    seen = rng.normal(size=n) * 1.5 + 3 * labels
                    record_seen(e, v, _write_scores(e / "scores" / v / "seen.score", seen_enroll, test, seen,
                                                    labels), "data/seen/utt2spk", "data/train", *TREE_SHOTS,
                                n_boot=n_boot)
                    pred = np.where(rng.random(len(y_true)) < 0.7, y_true, rng.integers(0, len(spks), len(y_true)))
                    pred_file = e / "predictions" / f"{v}.npz"
                    pred_file.parent.mkdir(parents=True, exist_ok=True)
                    np.savez(pred_file, utts=np.array([f"i{j}" for j in range(len(y_true))]), y_true=y_true,
                             y_pred=pred, train_counts=counts, speakers=np.array(spks))
                    acc = bootstrap_accuracy(y_true, pred, counts, n_boot, many=TREE_SHOTS[0], few=TREE_SHOTS[1])
                    record_identification(e, v, {"many": acc["many"], "medium": acc["medium"], "few": acc["few"],
                                                 "overall": acc["mean_per_class"], "top1": acc["top1"],
                                                 **{f"{g}_ci": acc[f"{g}_ci"] for g in ("many", "medium", "few")},
                                                 "overall_ci": acc["mean_per_class_ci"],
                                                 "thresholds": dict(zip(("many", "few"), TREE_SHOTS)),
                                                 "tde_alpha": 0.5 if v == "tde" else None,
                                                 "predictions": str(Path(pred_file).resolve()),
                                                 "checkpoint": str(e / "avg_model.pt"), "data": "data/iden_test",
                                                 "train_data": "data/train"})
                exps.append(root / e)
        return exps
    finally:
        os.chdir(cwd)


def write_run_records(exps: list[Path]) -> None:
    """run.json in each dir of a report_tree, as `spkcausal train --plan-run SYSTEM@SEED` writes it (the plan's record
    of the dir's system and seed, the config's hash, the head's causality)."""
    import yaml

    from spkcausal.experiments.plan import record_for
    from spkcausal.experiments.runs import write_run

    heads = dict(TREE_SYSTEMS)
    for e in exps:
        system, _, seed = e.name.partition("_seed")  # the tree's own layout, known here, never read by the code
        cfg = yaml.safe_load((e / "config.yaml").read_text())
        write_run(e, record_for(e, cfg, heads[system].startswith("causal"), f"{system}@{seed}"))


def add_decoupled(base: Path, method: str) -> Path:
    """A decoupled run beside `base` (a report_tree dir with run.json) as `spkcausal decouple` lays it out: a copy
    of the base's results (a decoupled system's verification rows are its base's), decoupled.json with the base
    relative, run.json from the base's record."""
    import json
    import shutil

    import yaml

    from spkcausal.experiments.expdir import DECOUPLED_FORMAT, DECOUPLED_VERSION
    from spkcausal.experiments.plan import decoupled_record
    from spkcausal.experiments.runs import write_run

    system, _, seed = base.name.partition("_seed")
    out = base.parent / f"{system}_{method}{'_seed' + seed if seed else ''}"
    shutil.copytree(base, out)
    (out / "run.json").unlink()
    cfg = yaml.safe_load((base / "config.yaml").read_text())
    (out / "decoupled.json").write_text(json.dumps({
        "format": DECOUPLED_FORMAT, "version": DECOUPLED_VERSION, "method": method, "base": f"../{base.name}",
        "base_checkpoint": f"../{base.name}/avg_model.pt", "base_config": cfg, "seed": 0, "n_train": 10}))
    write_run(out, decoupled_record(out, base, method, cfg))
    return out
