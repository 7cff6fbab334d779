"""Experiments as data (issue 27): the run plan names every run (bash loops over `spkcausal plan`), run.json
round-trips and refuses an unknown version in one line, and the report reads a run's identity from run.json:
the same report as the legacy reading of directory names, from renamed or copied trees too."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from fixtures_report import add_decoupled, report_tree, write_run_records

from spkcausal.cli import main
from spkcausal.experiments.expdir import ExpDir
from spkcausal.experiments.plan import format_line, plan_runs
from spkcausal.experiments.runs import RUN_VERSION, RunRecord, read_run, write_run
from spkcausal.experiments.variants import LLR_VARIANTS, VARIANT_NAMES, Variant, variant
from spkcausal.utils import DataError, UsageError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A report_tree of two systems x seeds 0 1, without run.json (the legacy layout)."""
    root = tmp_path_factory.mktemp("seeded")
    return root, report_tree(root, n_boot=20, seeds=(0, 1))


def _report(root: Path, exps: list[str], out: str, *extra: str) -> tuple[str, str]:
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["report", *exps, "--out", out, "--bootstrap", "20", *extra]) == 0
    finally:
        os.chdir(cwd)
    return (root / out / "report.md").read_text(), (root / out / "report.json").read_text()


RECORDS = [RunRecord("aam", "train", "aam"),
           RunRecord("aam_lm_seed3", "lm", "aam_lm", 3, "aam", "aam_seed3", method="lm", config_hash="ab" * 32,
                     causal=False),
           RunRecord("aam_ncm_seed0", "decoupled", "aam_ncm", 0, "aam", "aam_seed0", method="ncm", causal=False),
           RunRecord("aam_control", "train", "aam_control", base="aam", control=True, causal=True)]


@pytest.mark.parametrize("rec", RECORDS, ids=[r.name for r in RECORDS])
def test_run_json_round_trips(tmp_path, rec):
    write_run(tmp_path / rec.name, rec)
    assert read_run(tmp_path / rec.name) == rec
    assert read_run(tmp_path) is None  # a dir older than run.json: no record, the legacy path


@pytest.mark.parametrize("change, needle", [({"version": RUN_VERSION + 1}, "version 2 is not one this spkcausal reads"),
                                            ({"format": "spkcausal-results"}, "not a spkcausal-run file"),
                                            ({"kind": "finetune"}, "kind 'finetune'"),
                                            ({"seed": "3"}, "seed '3'"),
                                            ({"colour": 1}, "unknown key 'colour'")])
def test_a_bad_run_json_is_refused_in_one_line(seeded, tmp_path, monkeypatch, capsys, change, needle):
    """read_run names the file and the field; `spkcausal report` over such a dir ends in that line, exit 2."""
    root = tmp_path / "t"
    shutil.copytree(seeded[0], root)
    exps = sorted((root / "exp").iterdir())
    write_run_records(exps)
    path = exps[0] / "run.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(DataError) as err:
        read_run(exps[0])
    assert needle in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    monkeypatch.chdir(root)
    assert main(["report", *map(str, exps), "--out", "rep", "--bootstrap", "20"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "run.json" in lines[0], lines


def test_the_plan_names_runs_and_parents(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "aam.yaml").write_text("head: {name: aam}\n")
    (conf / "cn.yaml").write_text("head: {name: causal_norm_aam}\n")
    runs = plan_runs(["aam", "cn", "aam+lm", "aam+ncm", "aam+control"], [0, 1], conf)
    got = [(r.record.name, r.record.kind, r.record.system, r.record.seed, r.record.parent, r.record.control,
            r.record.causal) for r in runs]
    assert got == [("aam_seed0", "train", "aam", 0, None, False, False),
                   ("aam_seed1", "train", "aam", 1, None, False, False),
                   ("cn_seed0", "train", "cn", 0, None, False, True), ("cn_seed1", "train", "cn", 1, None, False, True),
                   ("aam_lm_seed0", "lm", "aam_lm", 0, "aam_seed0", False, False),
                   ("aam_lm_seed1", "lm", "aam_lm", 1, "aam_seed1", False, False),
                   ("aam_ncm_seed0", "decoupled", "aam_ncm", 0, "aam_seed0", False, False),
                   ("aam_ncm_seed1", "decoupled", "aam_ncm", 1, "aam_seed1", False, False),
                   ("aam_control_seed0", "train", "aam_control", 0, None, True, False),
                   ("aam_control_seed1", "train", "aam_control", 1, None, True, False)]
    assert format_line(runs[4]) == f"aam_lm_seed0 lm aam_lm 0 aam_seed0 false false lm {conf}/aam.yaml aam+lm@0"
    assert [r.record.name for r in plan_runs([str(conf / "cn.yaml")])] == ["cn"]
    assert [r.record.parent for r in plan_runs(["aam+lm"], [2])] == ["aam_seed2"]  # trained before
    with pytest.raises(UsageError, match="comes twice"):
        plan_runs(["aam", "aam"])
    with pytest.raises(UsageError, match="EXT one of lm, crt"):
        plan_runs(["aam+foo"])


def test_plan_answers_causal_without_torch(tmp_path):
    """`spkcausal plan` reads a trained run's merged config (its overrides included), never importing torch."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "x.yaml").write_text("head: {name: aam}\n")
    (tmp_path / "exp" / "x").mkdir(parents=True)
    (tmp_path / "exp" / "x" / "config.yaml").write_text("head: {name: causal_norm}\n")  # trained with head.name=...
    code = ("import sys; from spkcausal.cli import main; rc = main(['plan', 'x', 'x+crt', '--conf-dir', "
            f"{str(tmp_path / 'conf')!r}, '--exp', {str(tmp_path / 'exp')!r}, '--field', 'causal']); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.split() == ["true", "false"], r.stderr


def test_variants_are_one_typed_list():
    assert VARIANT_NAMES[:3] == ("cosine", "mean_sub", "asnorm") and "tde" in VARIANT_NAMES
    assert variant("tde_asnorm_qmf") == Variant(tde=True, norm="asnorm", backend="qmf")
    assert variant("tde").scores_dir == "tde_cosine" and variant("asnorm_cal").llr
    assert LLR_VARIANTS == ("asnorm_cal", "asnorm_qmf", "tde_asnorm_cal", "tde_asnorm_qmf")
    with pytest.raises(UsageError, match="unknown scoring variant 'tde_cosine'"):
        variant("tde_cosine")


def test_report_from_run_json_equals_the_legacy_reading_and_ignores_dir_names(seeded, tmp_path):
    """The report of a tree with run.json is the one the legacy name parsing gave; with run.json the dirs can be
    renamed (the report's rows name the dirs' runs by run.json, not by the names)."""
    root = tmp_path / "t"
    shutil.copytree(seeded[0], root)
    exps = [f"exp/{e.name}" for e in seeded[1]]
    legacy = _report(root, exps, "legacy")
    write_run_records([root / e for e in exps])
    assert _report(root, exps, "runs") == legacy
    renamed = []
    for i, e in enumerate(exps):
        new = f"exp/run{i}"
        (root / e).rename(root / new)
        renamed.append(new)
    md, js = _report(root, renamed, "renamed")
    assert md == legacy[0]
    want = json.loads(legacy[1])
    got = json.loads(js)
    for r in want["rows"]:
        r["exp"] = None
    for r in got["rows"]:
        r["exp"] = None
    assert got == want


def test_bench_seeds_planning_of_aam_and_aam_ncm_finds_its_runs(seeded, tmp_path):
    """tools/bench_seeds.sh --systems "aam aam+ncm" reports over the runs the plan names (aam_ncm_seed<k>, not
    the aam+ncm_seed<k> it used to ask for), decoupled rows in the identification table."""
    root = tmp_path / "t"
    shutil.copytree(seeded[0], root)
    write_run_records(sorted((root / "exp").iterdir()))
    for k in (0, 1):
        add_decoupled(root / "exp" / f"aam_seed{k}", "ncm")
    env = {**os.environ, "SPKCAUSAL_PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "tools" / "bench_seeds.sh"), "--report-only", "--seeds", "0 1",
                        "--systems", "aam aam+ncm", "--out", str(root)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((root / "exp" / "bench_seeds" / "report.json").read_text())
    runs = {(Path(x["exp"]).name, x["variant"]) for x in rep["rows"]}
    assert {n for n, _ in runs} == {"aam_seed0", "aam_seed1", "aam_ncm_seed0", "aam_ncm_seed1"}
    md = (root / "exp" / "bench_seeds" / "report.md").read_text()
    assert "NCM (on Baseline (AAM))" in md


def test_expdir_reads_a_copied_decoupled_run_where_it_is_now(seeded, tmp_path):
    """decoupled.json stores its base relative: a copied tree's decoupled run names the copy's base."""
    root = tmp_path / "t"
    shutil.copytree(seeded[0], root)
    write_run_records(sorted((root / "exp").iterdir()))
    dec = add_decoupled(root / "exp" / "aam_seed1", "crt")
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, symlinks=True)
    info = ExpDir(copy / "exp" / dec.name).decoupled()
    assert info is not None and info.method == "crt" and info.base == (copy / "exp" / "aam_seed1").resolve()
    assert read_run(copy / "exp" / dec.name) == replace(read_run(dec), name=dec.name)
    here = copy / "exp" / dec.name
    assert ExpDir(here).scores("tde", "list") == here / "scores/tde_cosine/list.score"
    assert yaml.safe_load((dec / "config.yaml").read_text())["head"]["name"] == "aam"


def test_expdir_accessors(tmp_path):
    """ExpDir finds an experiment's files, and a missing or malformed one is a DataError naming it."""
    e = ExpDir(tmp_path / "x")
    assert e.config() == {} and e.run() is None and e.averaged_model is None and e.stores() == {}
    assert e.threshold() is None and e.tde_alpha() is None and e.decoupled() is None
    (e.path / "checkpoints").mkdir(parents=True)
    for n in ("epoch_0010.pt", "epoch_0002.pt"):
        (e.path / "checkpoints" / n).write_bytes(b"")
    (e.path / "avg_model.pt").write_bytes(b"")
    (e.path / "emb" / "test").mkdir(parents=True)
    (e.path / "emb" / "test" / "store.json").write_text("{}")
    assert [p.name for p in e.checkpoints()] == ["epoch_0002.pt", "epoch_0010.pt"]
    assert e.averaged_model == e.path / "avg_model.pt" and e.store("test") == e.path / "emb" / "test"
    with pytest.raises(DataError, match="no embedding store 'train' \\(stores: test\\)"):
        e.store("train")
    (e.path / "tde_alpha.json").write_text('{"alpha": 0.75}')
    assert e.tde_alpha() == 0.75
    (e.path / "tde_alpha.json").write_text('{"alpha": NaN}')
    with pytest.raises(DataError, match="not a finite number"):
        e.tde_alpha()
    (e.path / "config.yaml").write_text("- a list\n")
    with pytest.raises(DataError, match="expected a mapping"):
        e.config()
    (e.path / "decoupled.json").write_text('{"format": "spkcausal-decoupled", "version": 9, "method": "crt"}')
    with pytest.raises(DataError, match="version 9 is not a decoupled.json"):
        e.decoupled()


def test_stage_train_runs_the_plan_and_the_protocols_control(tmp_path):
    """stages.sh's stage_train loops over `spkcausal plan`: each run's config, its --plan-run SYSTEM@SEED (what run.json
    records), the +lm runs from their parent's averaged model after every trained run, and the protocol's control
    (BASE+control, a run the plan marks) on --control_dir; `launch` is replaced by an echo (no training)."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "a.yaml").write_text("head: {name: aam}\n")
    script = f"""set -euo pipefail
. {ROOT}/recipes/common/stages.sh
launch() {{ echo "LAUNCH $*"; }}
spkcausal() {{ if [ "$1" = plan ]; then command spkcausal "$@"; else :; fi; }}
mark_done exp/a_seed0 3
stage_train --exp exp --systems "a a+lm a+control" --conf_dir conf --train_dir tr --seeds "0" --lm_conf lm.yaml \\
  --num_avg 2 --control_dir ctl
"""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("LAUNCH")] == [
        "LAUNCH train --config conf/a.yaml --plan-run a+control@0 --resume exp_dir=exp/a_control_seed0 data.train=ctl "
        "seed=0",
        "LAUNCH train --config conf/a.yaml --config lm.yaml --plan-run a+lm@0 --resume exp_dir=exp/a_lm_seed0 "
        "data.train=tr seed=0 train.init_from=exp/a_seed0/avg_model.pt train.init_head=true"]
    assert "skipping" in r.stderr  # a_seed0 was trained before
    r = subprocess.run(["bash", "-c", script.replace(" --control_dir ctl", "")], cwd=tmp_path, capture_output=True,
                       text=True, env=env)
    assert r.returncode != 0 and "a_control_seed0 is the protocol's balanced control: it needs" in r.stderr


def test_train_records_its_plan_run(tmp_path, capsys):
    """`spkcausal train --plan-run SYSTEM@SEED` writes the plan's record with the merged config's hash and the head
    class's answer; a --plan-run that is not the experiment dir's run is refused before training, in one line."""
    from spkcausal.cli.train import _write_record
    from spkcausal.experiments.runs import config_hash

    e = tmp_path / "exp" / "tiny_cnaam_lm_seed2"
    e.mkdir(parents=True)
    cfg = {"head": {"name": "causal_norm_aam"}, "train": {"init_from": "exp/tiny_cnaam_seed2/avg_model.pt"}}
    (e / "config.yaml").write_text(yaml.safe_dump(cfg))
    _write_record(e, "tiny_cnaam+lm@2")
    assert read_run(e) == RunRecord("tiny_cnaam_lm_seed2", "lm", "tiny_cnaam_lm", 2, "tiny_cnaam", "tiny_cnaam_seed2",
                                    method="lm", config_hash=config_hash(cfg), causal=True)
    rc = main(["train", "--config", str(ROOT / "recipes" / "conf" / "tiny_cnaam.yaml"), "--plan-run", "tiny_cnaam@1",
               f"exp_dir={tmp_path / 'exp' / 'other'}", f"data.train={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "is run tiny_cnaam_seed1 of the plan, but the experiment dir is" in err[0]
    assert not (tmp_path / "exp" / "other").exists()
