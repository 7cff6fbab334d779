"""Property tests of the report's inputs (issue 26): results.json contents, the file references its rows hold, and
the `--paper-map` grammar, each against an oracle written from the documented format (results.store,
experiments.paths, report.paper docstrings), not from the code.

- A valid results.json (format 2, or format 1 with paths as given) loads to the figures written, and every
  reference resolves to the file it names, where the tree is now: in place, moved or copied.
- A results.json corrupted in a generated way (a value of another type, NaN, a key dropped, a referenced file
  deleted, another format version) ends in one line naming the file (results.json, or the missing file with it):
  never another exception, never a report that silently lost a row or a difference.
- `--paper-map` items parse as an independent reading of `NAME=SYSTEM[:VARIANT]` says, or are refused in one line.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spkcausal.experiments.paths import locate, stored_path
from spkcausal.experiments.runs import legacy_identity
from spkcausal.report.paper import K_ROWS, PAPER_ROWS, parse_row_map
from spkcausal.report.results import collect_rows
from spkcausal.report.tables import build_tables
from spkcausal.results.evidence import Intervals
from spkcausal.results.store import load_results, need
from spkcausal.utils import SpkcausalError

FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
MANY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
IV = Intervals(0.01, 5, 0.95)  # few resamples: the property is about reading, not the intervals
N = 40
CASES: Counter = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    print("\nreport-input cases: " + ", ".join(f"{k} {v}" for k, v in sorted(CASES.items())))


# ------------------------------------------------------------------ a tiny tree: two experiments, one list


@pytest.fixture(scope="module")
def base_tree(tmp_path_factory) -> Path:
    """`root/data/test/utt2spk`, `root/exp/{a,b}/list.score` (same trials), `root/outside/x.score` (a file that
    will stand for one outside the tree)."""
    root = tmp_path_factory.mktemp("props")
    rng = np.random.default_rng(0)
    lab = np.arange(N) % 3 == 0
    enroll = [f"e{i % 5}-u{i}" for i in range(N)]
    (root / "data" / "test").mkdir(parents=True)
    (root / "data" / "test" / "utt2spk").write_text("".join(f"{e} {e.split('-')[0]}\n" for e in enroll))
    for name in ("a", "b"):
        (root / "exp" / name).mkdir(parents=True)
        (root / "exp" / name / "list.score").write_text("".join(
            f"{e} t{i} {s:.4f} {'target' if t else 'nontarget'}\n"
            for i, (e, s, t) in enumerate(zip(enroll, rng.normal(size=N) + 2 * lab, lab))))
    return root


def _row(eer: float, dcf: float, ref: dict) -> dict:
    return {"verification": {"eer": eer, "eer_ci": [eer / 2, min(1.0, eer * 1.5)], "min_dcf": {"0.01": dcf},
                             **ref}}


def _write(exp: Path, rows: dict, version: int = 2) -> Path:
    path = exp / "results.json"
    path.write_text(json.dumps({"format": "spkcausal-results", "version": version, "rows": rows}))
    return path


# ------------------------------------------------------------------ references: valid ones resolve, moved or not

WHERE = st.sampled_from(["exp", "tree", "outside"])


@settings(FEW, max_examples=60)
@given(where=WHERE, version=st.sampled_from([1, 2]), relative=st.booleans(), move=st.sampled_from(
    ["stay", "move", "copy"]), depth=st.integers(0, 2))
def test_references_resolve_to_the_file_where_the_tree_is_now(base_tree, tmp_path_factory, where, version,
                                                              relative, move, depth):
    """Oracle: a file inside the tree is found at its place in the tree as it is now (never the original's);
    one outside it stays where it was."""
    work = tmp_path_factory.mktemp("ref")
    root = work / "orig"
    shutil.copytree(base_tree, root)
    exp = root / "exp" / "a"
    target = {"exp": exp / "list.score", "tree": root / "data" / "test" / "utt2spk",
              "outside": work / "elsewhere" / "x.score"}[where]
    target.parent.mkdir(parents=True, exist_ok=True)
    if where == "outside":
        shutil.copy(root / "exp" / "b" / "list.score", target)
    cwd = os.getcwd()
    os.chdir(root)  # the recipes' cwd: format 1 stored paths relative to it
    try:
        if version == 2:
            stored = stored_path(target, exp)
        else:
            stored = os.path.relpath(target, root) if relative and where != "outside" else str(target)
    finally:
        os.chdir(cwd)
    assert Path(stored).is_absolute() == (where == "outside" or version == 1 and not relative)
    new_root = root
    if move != "stay":
        new_root = work.joinpath(*["d"] * depth, "new")
        new_root.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if move == "copy" else shutil.move)(root, new_root)
    new_exp = new_root / "exp" / "a"
    CASES[f"reference {where} v{version} {move}"] += 1
    got, found = locate(stored, new_exp, legacy=version == 1, kind="file")
    want = target if where == "outside" else new_root / target.relative_to(root)
    assert found and got == want.resolve()


@settings(FEW, max_examples=30)
@given(form=st.sampled_from(["avg_model.pt", "checkpoints/epoch_0002.pt", "."]), relative=st.booleans(),
       seed=st.sampled_from([None, 1]), move=st.sampled_from(["stay", "move", "copy"]), cwd_new=st.booleans())
def test_a_run_records_parent_is_found_where_the_tree_is_now(tmp_path_factory, form, relative, seed, move,
                                                              cwd_new):
    """The parent of a fine-tuned run (config train.init_from, as the recipes write it: relative to their cwd or
    absolute) is the parent's system in the tree as it is now; a copy's parent is never the original's."""
    work = tmp_path_factory.mktemp("run")
    root = work / "orig"
    parent = root / "exp" / ("aam" if seed is None else f"aam_seed{seed}")
    (parent / "checkpoints").mkdir(parents=True)
    (parent / "avg_model.pt").write_bytes(b"x")
    (parent / "checkpoints" / "epoch_0002.pt").write_bytes(b"x")
    src = parent / form if form != "." else parent
    child = root / "exp" / ("aam_lm" if seed is None else f"aam_lm_seed{seed}")
    child.mkdir()
    init = os.path.relpath(src, root) if relative else str(src)
    (child / "config.yaml").write_text(f"train: {{init_from: '{init}'}}\n")
    new_root = root if move == "stay" else work / "new"
    if move != "stay":
        (shutil.copytree if move == "copy" else shutil.move)(root, new_root)
    cwd = os.getcwd()
    os.chdir(new_root if cwd_new else work)  # the report run from the tree's root, or from elsewhere
    try:
        got = legacy_identity(new_root / child.relative_to(root))[2]
    finally:
        os.chdir(cwd)
    CASES[f"run parent {move}"] += 1
    assert got is not None and Path(got).resolve() == (new_root / "exp" / "aam").resolve()


# ------------------------------------------------------------------ results.json: valid and corrupted

NUMBERS = st.floats(0.0, 1.0, allow_nan=False)
BAD_VALUES = st.sampled_from([float("nan"), float("inf"), "0.1", True, [], {}, [0.1], [0.1, "x"], None, -1,
                              "", {"0.01": "x"}, [0.1, 0.2, 0.3]])


def _oracle_row_ok(row) -> bool:
    """The documented layout, read independently: a row is an object; its verification part (if any) an
    object with `eer` a finite number, `eer_ci` null or two finite numbers, `min_dcf` an object of finite
    numbers (or null), `scores` / `utt2spk` null or a non-empty string; the row needs a figure."""
    if not isinstance(row, dict):
        return False
    ver = row.get("verification")
    if ver is None:
        return False  # the generated rows have no other part: no figure
    if not isinstance(ver, dict):
        return False

    def num(v, null=True):
        return (v is None and null) or (type(v) in (int, float) and math.isfinite(v))

    if not num(ver.get("eer"), null=False):
        return False
    ci = ver.get("eer_ci")
    if not (ci is None or isinstance(ci, list) and len(ci) == 2 and all(num(x, False) for x in ci)):
        return False
    dcf = ver.get("min_dcf")
    if not (dcf is None or isinstance(dcf, dict) and all(num(x) for x in dcf.values())):
        return False
    return all(ver.get(k) is None or isinstance(ver.get(k), str) and ver.get(k) for k in ("scores", "utt2spk"))


def _mutate(row: dict, key: str, value, drop: bool) -> dict:
    ver = dict(row["verification"])
    if drop:
        ver.pop(key, None)
    else:
        ver[key] = value
    return {"verification": ver}


def _check_report(exps: list[Path], results: Path) -> tuple[list, dict] | str:
    """The rows and the tables' summary, or the one-line error (which must name `results` or its files)."""
    try:
        rows = collect_rows(exps)
        return rows, build_tables(rows, IV)[1]
    except SpkcausalError as e:
        msg = str(e)
        assert "\n" not in msg and str(results) in msg, msg
        return msg


@FEW
@given(eer=NUMBERS, dcf=NUMBERS, key=st.sampled_from(["eer", "eer_ci", "min_dcf", "scores", "utt2spk"]),
       value=BAD_VALUES, how=st.sampled_from(["valid", "value", "drop", "delete file", "version"]))
def test_results_json_loads_or_is_refused_naming_the_file(base_tree, tmp_path_factory, eer, dcf, key, value, how):
    """Oracle: a valid row loads to its figures and pairs with the other experiment (one difference); a row the
    layout forbids, a deleted referenced file or an unknown format version is one line naming results.json."""
    root = tmp_path_factory.mktemp("res") / "t"
    shutil.copytree(base_tree, root)
    a, b = root / "exp" / "a", root / "exp" / "b"
    ref = {"scores": "list.score", "utt2spk": "../../data/test/utt2spk"}
    _write(b, {"cosine": _row(0.2, 0.5, ref)})
    row = _row(eer, dcf, ref)
    if how in ("value", "drop"):
        row = _mutate(row, key, value, how == "drop")
    res = _write(a, {"cosine": row}, 3 if how == "version" else 2)
    if how == "delete file":
        (a / "list.score").unlink()
    got = _check_report([a, b], res)
    ver = row.get("verification") or {}
    ok = how == "valid" or how in ("value", "drop") and _oracle_row_ok(row) and \
        ver.get("scores") in (ref["scores"], None) and ver.get("utt2spk") in (ref["utt2spk"], None)
    CASES[f"results.json {'accepted' if ok else 'refused'}"] += 1
    if not ok:
        assert isinstance(got, str), f"{how} {key}={value!r} accepted"
        if how == "delete file":
            assert str((a / "list.score").resolve()) in got
        return
    assert not isinstance(got, str), got
    rows, summary = got
    ra = next(r for r in rows if r["exp"] == str(a))
    assert ra["verification"]["eer"] == ver["eer"]
    assert ra["verification"].get("scores") in (None, str((a / "list.score").resolve()))
    # a row with its score file pairs with the reference's: its difference is there, never silently dropped
    eer_diffs = [d for d in summary["differences"] if "eer" in d["differences"]]
    assert len(eer_diffs) == (1 if ver.get("scores") else 0)


@pytest.fixture(scope="module")
def recorded_tree(tmp_path_factory) -> Path:
    """Two experiments with every part of a row recorded (fixtures_report.report_tree)."""
    from fixtures_report import report_tree

    root = tmp_path_factory.mktemp("recorded")
    report_tree(root, n_boot=5)
    return root


def _leaves(value, where=()):
    """Every key path of a JSON value (objects and lists), leaves and inner nodes."""
    yield where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        yield from _leaves(v, (*where, k))


@FEW
@given(draw=st.data(), value=BAD_VALUES, drop=st.booleans())
def test_any_part_of_a_recorded_row_corrupted_is_read_or_refused_in_one_line(recorded_tree, draw, value, drop):
    """A value of another type (or a key dropped) anywhere in a recorded row: the report's tables are built or
    the error is one line naming results.json; never another exception."""
    res = recorded_tree / "exp" / "cnaam" / "results.json"
    clean = res.read_text()
    data = json.loads(clean)
    paths = [p for p in _leaves(data["rows"]) if p]
    path = draw.draw(st.sampled_from(paths))
    parent = data["rows"]
    for k in path[:-1]:
        parent = parent[k]
    if drop and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    res.write_text(json.dumps(data))
    try:
        got = _check_report([recorded_tree / "exp" / "aam", recorded_tree / "exp" / "cnaam"], res)
    finally:
        res.write_text(clean)
    CASES[f"recorded row {'refused' if isinstance(got, str) else 'read'}"] += 1


@FEW
@given(version=st.sampled_from([1, 2]), mangled=st.sampled_from(["", "[]", "{", '{"format": "x"}',
                                                                 '{"format": "spkcausal-results", "rows": []}']))
def test_results_json_that_is_not_a_results_object_is_refused(tmp_path_factory, version, mangled):
    exp = tmp_path_factory.mktemp("bad") / "e"
    exp.mkdir()
    (exp / "results.json").write_text(mangled)
    with pytest.raises(SpkcausalError) as e:
        load_results(exp)
    assert str(exp / "results.json") in str(e.value) and "\n" not in str(e.value)


def test_need_names_results_json_and_the_missing_file(base_tree, tmp_path):
    root = tmp_path / "t"
    shutil.copytree(base_tree, root)
    a = root / "exp" / "a"
    _write(a, {"cosine": _row(0.1, 0.5, {"scores": "gone.score"})})
    with pytest.raises(SpkcausalError, match=re.escape(f"{a}/results.json: rows.cosine.verification.scores refers "
                                                       f"to {(a / 'gone.score').resolve()}")):
        collect_rows([a])  # whether or not a pairing would read it
    row = {"exp": str(a), "variant": "cosine", "verification": {"scores": str(a / "gone.score")}}
    with pytest.raises(SpkcausalError, match="results.json: rows.cosine.verification.scores refers"):
        need(row, "verification", "scores")


# ------------------------------------------------------------------ the --paper-map grammar

NAMES = [r.name for r in PAPER_ROWS + K_ROWS]
GRAMMAR = re.compile("({})=([^:]+)(?::(\\S+))?".format("|".join(re.escape(n) for n in sorted(NAMES, key=len,
                                                                                              reverse=True))), re.S)


def oracle_paper_map(items: list[str]):
    """NAME=SYSTEM[:VARIANT], read from the documented grammar: NAME is one of the row names (which may hold
    '='), SYSTEM non-empty up to the first ':', VARIANT (after it) non-empty without whitespace; a row once.
    None for a list the grammar refuses."""
    out = {}
    for item in items:
        m = GRAMMAR.fullmatch(item)
        if m is None or m.group(1) in out:
            return None
        out[m.group(1)] = (m.group(2), m.group(3))
    return out


ITEM = st.one_of(
    st.builds(lambda n, s, v: f"{n}={s}" + (f":{v}" if v is not None else ""), st.sampled_from(NAMES),
              st.text("abc_=: 0", max_size=6), st.one_of(st.none(), st.text("abtde_: \t", max_size=5))),
    st.text(max_size=12),
    st.builds(lambda n, s: f"{n}{s}", st.sampled_from(NAMES), st.text("=:x", max_size=4)),
)


WELL_FORMED = st.builds(lambda n, s, v: f"{n}={s}" + (f":{v}" if v else ""), st.sampled_from(NAMES),
                        st.text("abc_0=K() ", min_size=1, max_size=6),
                        st.one_of(st.none(), st.text("tde_:", max_size=4)))


@MANY
@given(items=st.one_of(st.lists(WELL_FORMED, max_size=3), st.lists(ITEM, max_size=4)))
def test_paper_map_parses_as_the_grammar_says(items):
    want = oracle_paper_map(items)
    CASES[f"paper-map {'accepted' if want is not None else 'refused'}"] += 1
    try:
        got = parse_row_map(items)
    except SpkcausalError as e:
        assert want is None, f"{items!r} refused: {e}"
        assert "\n" not in str(e) and "--paper-map" in str(e)
        return
    assert got == want, items
