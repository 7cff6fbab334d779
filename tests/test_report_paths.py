"""Experiments that move (issue 26): a report made from a moved or copied experiment tree equals the original's and
reads none of the original's files, for results.json of format 2 (paths relative to the experiment dir) and of
format 1 (paths as given: score files absolute, data dirs relative to the recipe's cwd); a referenced file that is
missing is one line naming it; and the report's other weak inputs end in one line, exit 2."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from fixtures_report import md_table, report_tree, write_run_records

from spkcausal.cli import main
from spkcausal.report.results import collect_rows
from spkcausal.report.tables import build_tables
from spkcausal.results.evidence import Intervals

EXPS = ["exp/aam", "exp/cnaam"]
# the file references of a results.json row (docs/design.md section 7)
REFERENCES = {"verification": ("scores", "utt2spk"), "seen": ("scores", "utt2spk", "train_data"),
              "identification": ("predictions", "checkpoint", "data", "train_data")}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    report_tree(root)
    return root


@pytest.fixture(scope="module")
def reference(tree) -> tuple[str, str]:
    """report.md and report.json of the module's tree, reported in place (a tree report_tree builds anywhere
    has the same figures: its generator is seeded)."""
    cwd = os.getcwd()
    os.chdir(tree)
    try:
        assert main(["report", *EXPS, "--out", "reference", "--bootstrap", "50"]) == 0
    finally:
        os.chdir(cwd)
    return _outputs(tree, "reference")


def as_version1(root: Path) -> None:
    """Rewrite the tree's results.json as format 1 wrote them: score files and predictions absolute (resolved at
    record time), data dirs relative to the recipe's cwd (`root`), `exp` as the recipe gave it."""
    for res in root.glob("exp/*/results.json"):
        exp = res.parent
        data = json.loads(res.read_text())
        if data["version"] == 1:  # written so already
            continue
        for row in data["rows"].values():
            for section, refs in REFERENCES.items():
                for key in refs:
                    if isinstance((row.get(section) or {}).get(key), str):
                        p = (exp / row[section][key]).resolve()
                        row[section][key] = str(p) if key in ("scores", "predictions") else \
                            str(p.relative_to(root.resolve()))
        data.update(version=1, exp=f"exp/{exp.name}")
        res.write_text(json.dumps(data, indent=1))


def _tree(tree: Path, dst: Path, version: int) -> Path:
    shutil.copytree(tree, dst, symlinks=True)
    if version == 1:
        as_version1(dst)
    return dst


def _report(root: Path, monkeypatch, capsys, *extra: str, out: str = "rep") -> tuple[int, str]:
    """`spkcausal report` run from the tree's root, as the recipes run it; (exit status, stderr)."""
    monkeypatch.chdir(root)
    rc = main(["report", *EXPS, "--out", out, "--bootstrap", "50", *extra])
    return rc, capsys.readouterr().err


def _outputs(root: Path, out: str = "rep") -> tuple[str, str]:
    return (root / out / "report.md").read_text(), (root / out / "report.json").read_text()


def _one_line(rc: int, err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _alter_scores_and_predictions(root: Path) -> None:
    """Change every score file and prediction of a tree (still valid files, other figures)."""
    for f in root.glob("exp/*/scores/*/*.score"):
        f.write_text("".join(f"{e} {t} {float(s) + (4 if lab == 'target' else -4):.6f} {lab}\n"
                             for e, t, s, lab in (ln.split() for ln in f.read_text().splitlines())))
    for f in root.glob("exp/*/predictions/*.npz"):
        z = dict(np.load(f))
        z["y_pred"] = z["y_true"]
        np.savez(f, **z)


@pytest.mark.parametrize("version", [2, 1])
def test_a_moved_tree_reports_as_the_original(reference, tmp_path, monkeypatch, capsys, version):
    """report.md and report.json of a tree moved elsewhere (the original gone) are the original's, with the
    differences from the reference (which a moved tree used to drop: 2 differences -> 0, exit 0)."""
    md, js = reference
    assert len(md_table(md, "Differences")) == 2 and len(json.loads(js)["differences"]) == 2
    a = tmp_path / "a"  # a tree of its own (a copy of the module's would still point at the module's)
    a.mkdir()
    report_tree(a)
    if version == 1:
        as_version1(a)
    moved = tmp_path / "far" / "away" / "moved"
    moved.parent.mkdir(parents=True)
    shutil.move(a, moved)
    assert _report(moved, monkeypatch, capsys) == (0, "")
    assert _outputs(moved) == (md, js)
    assert (moved / "rep" / "fig_differences.png").is_file()


@pytest.mark.parametrize("version", [2, 1])
def test_a_copy_reads_none_of_the_originals_files(tree, reference, tmp_path, monkeypatch, capsys, version):
    """A copy made while the original exists reports as the original did, even after the original's score files
    and predictions change (a copy used to pair its rows on the original's current files)."""
    a = _tree(tree, tmp_path / "a", version)
    b = tmp_path / "b"
    shutil.copytree(a, b, symlinks=True)
    _alter_scores_and_predictions(a)
    assert _report(b, monkeypatch, capsys) == (0, "")
    assert _outputs(b) == reference
    # the alteration shows where it is read: the original's differences are others now
    monkeypatch.chdir(a)
    diffs = build_tables(collect_rows(EXPS), Intervals(n_boot=50))[1]["differences"]
    assert diffs != json.loads(reference[1])["differences"]


def test_a_copy_with_run_json_reports_as_the_original(tree, reference, tmp_path, monkeypatch, capsys):
    """run.json (issue 27) in every dir of a copied tree: the copy's report is the original's (run.json names no
    path, and the report reads the run's identity from it instead of the dir's name)."""
    b = tmp_path / "b"
    shutil.copytree(tree, b, symlinks=True)
    write_run_records([b / e for e in EXPS])
    c = tmp_path / "elsewhere" / "c"
    shutil.copytree(b, c, symlinks=True)
    assert _report(c, monkeypatch, capsys) == (0, "")
    assert _outputs(c) == reference


@pytest.mark.parametrize("version", [2, 1])
def test_a_deleted_score_file_fails_naming_it(tree, tmp_path, monkeypatch, capsys, version):
    """One score file results.json refers to, deleted: exit 2 naming results.json and the file, no report (it
    used to drop the difference, or with an original beside the copy, read the original's)."""
    a = _tree(tree, tmp_path / "a", version)
    shutil.copytree(a, tmp_path / "original")  # the original still exists beside the copy
    gone = a / "exp" / "cnaam" / "scores" / "cosine" / "list.score"
    gone.unlink()
    rc, err = _report(a, monkeypatch, capsys)
    _one_line(rc, err, "exp/cnaam/results.json", str(gone.resolve()), "verification.scores", "missing")
    assert not (a / "rep" / "report.md").exists()


def test_results_store_paths_relative_to_the_experiment(tree):
    """Format 2 stores every reference inside the tree relative to the experiment dir, and no `exp` key."""
    data = json.loads((tree / "exp" / "cnaam" / "results.json").read_text())
    assert data["version"] == 2 and "exp" not in data
    row = data["rows"]["tde"]
    assert row["verification"]["scores"] == "scores/tde/list.score"
    assert row["verification"]["utt2spk"] == "../../data/test/utt2spk"
    assert row["seen"]["train_data"] == "../../data/train"
    assert row["identification"]["predictions"] == "predictions/tde.npz"


# ------------------------------------------------------------------ the report's other weak inputs


def test_paper_map_naming_an_unknown_system_is_refused(tree, monkeypatch, capsys):
    rc, err = _report(tree, monkeypatch, capsys, "--paper-table", "--paper-map", "OLTR=nosuch", out="p1")
    _one_line(rc, err, "--paper-map 'OLTR=nosuch'", "no experiment of system 'nosuch'", "aam, cnaam")
    assert not (tree / "p1").exists()


def test_paper_map_naming_an_unknown_variant_is_refused(tree, monkeypatch, capsys):
    rc, err = _report(tree, monkeypatch, capsys, "--paper-table", "--paper-map", "De-confound=cnaam:tdee", out="p2")
    _one_line(rc, err, "'De-confound=cnaam:tdee'", "no variant 'tdee'", "cosine, tde")
    assert not (tree / "p2").exists()


def test_paper_map_without_paper_table_is_refused(tree, monkeypatch, capsys):
    rc, err = _report(tree, monkeypatch, capsys, "--paper-map", "OLTR=aam", out="p3")
    _one_line(rc, err, "--paper-map", "--paper-table")
    assert not (tree / "p3").exists()


@pytest.mark.parametrize("rows", [{"cosine": {"verification": {}}}, {"cosine": {"seen": {"groups": {"few": None}}}},
                                  {}])
def test_an_empty_results_row_is_refused(tree, tmp_path, monkeypatch, capsys, rows):
    a = _tree(tree, tmp_path / "a", 2)
    res = a / "exp" / "aam" / "results.json"
    res.write_text(json.dumps({**json.loads(res.read_text()), "rows": rows}))
    rc, err = _report(a, monkeypatch, capsys)
    _one_line(rc, err, "exp/aam/results.json", "has no figures" if rows else "no result rows")
    assert not (a / "rep" / "report.md").exists()


@pytest.mark.parametrize("where", ["store", "config"])
def test_seeds_of_64_and_32_dims_are_refused(tree, tmp_path, monkeypatch, capsys, where):
    """Two runs of embedding dimensions 64 and 32 are not seeds of one system: one line naming both stores (or
    both configs) and dimensions."""
    a = tmp_path / "a"
    (a / "exp").mkdir(parents=True)
    shutil.copytree(tree / "data", a / "data")
    for k, dim in ((0, 64), (1, 32)):
        e = a / "exp" / f"aam_seed{k}"
        shutil.copytree(tree / "exp" / "aam", e)
        (e / "config.yaml").write_text(yaml.safe_dump({"head": {"name": "aam"}, "model": {"embed_dim": dim}}))
        if where == "store":
            s = e / "emb" / "test"
            s.mkdir(parents=True)
            (s / "store.json").write_text(json.dumps({"format": "spkcausal-embeddings", "n": 0, "dim": dim}))
    monkeypatch.chdir(a)
    rc = main(["report", "exp/aam_seed0", "exp/aam_seed1", "--out", "rep", "--bootstrap", "50"])
    src = "emb/test" if where == "store" else "config.yaml"
    _one_line(rc, capsys.readouterr().err, f"exp/aam_seed1/{src}: 32-dimensional", f"exp/aam_seed0/{src} (64",
              "not seeds of one system")
    assert not (a / "rep").exists()
