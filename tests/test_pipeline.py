"""The recipes' stages 5-7 as library functions (spkcausal.pipeline) and their CLI (`spkcausal stage`): one process
per stage over the run plan; the long-tail protocol's control run scores on the control dir with the long-tailed
dir's shot groups; a done stage is skipped; a bad option is one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from spkcausal.cli import main
from spkcausal.data.embeddings import write_store
from spkcausal.pipeline import identify as identify_stage
from spkcausal.pipeline.context import StageContext
from spkcausal.pipeline.score import stage_score

SPK = [f"s{i}" for i in range(6)]


def _dir(path: Path, utts: list[str]) -> list[str]:
    path.mkdir(parents=True, exist_ok=True)
    (path / "utt2spk").write_text("".join(f"{u} {u.split('-')[0]}\n" for u in sorted(utts)))
    (path / "utt2dur").write_text("".join(f"{u} {1.0 + 0.1 * i}\n" for i, u in enumerate(sorted(utts))))
    return sorted(utts)


def _trials(path: Path, utts: list[str]) -> str:
    """Every pair of different utterances: targets within a speaker, non-targets across."""
    lines = [f"{a} {b} {'target' if a.split('-')[0] == b.split('-')[0] else 'nontarget'}\n"
             for i, a in enumerate(utts) for b in utts[i + 1:]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    return str(path)


def _tree(root: Path) -> tuple[StageContext, dict]:
    """data/{train,ctl,eval,val,test} and the raw stores of runs aam and aam_control (stage 4's outputs): 8-dim
    embeddings around one centre per speaker."""
    rng = np.random.default_rng(3)
    centre = {s: rng.normal(size=8) for s in SPK + [f"v{i}" for i in range(4)]}
    dirs = {"train": [f"{s}-t{j}" for i, s in enumerate(SPK) for j in range(2 + 2 * i)],
            "ctl": [f"{s}-c{j}" for s in SPK for j in range(7)],
            "eval": [f"v{i}-e{j}" for i in range(4) for j in range(3)],
            "val": [f"{s}-a{j}" for s in SPK for j in range(2)],
            "test": [f"{s}-b{j}" for s in SPK for j in range(2)]}
    data = {name: _dir(root / "data" / name, utts) for name, utts in dirs.items()}
    for run, train in (("aam", "train"), ("aam_control", "ctl")):
        e = root / "exp" / run
        e.mkdir(parents=True)
        (e / "config.yaml").write_text(yaml.safe_dump({"head": {"name": "aam"}, "model": {"embed_dim": 8}}))
        for name in (train, "eval", "val", "test"):
            keys = data[name]
            emb = np.stack([centre[k.split("-")[0]] + 0.7 * rng.normal(size=8) for k in keys]).astype(np.float32)
            write_store(e / "emb" / name, keys, emb)
    lists = {"veri": _trials(root / "data" / "trials" / "veri", data["eval"]),
             "seen_test": _trials(root / "data" / "trials" / "seen_test", data["test"]),
             "seen_dev": _trials(root / "data" / "trials" / "seen_dev", data["val"])}
    d = {k: str(root / "data" / k) for k in dirs}
    ctx = StageContext(exp=str(root / "exp"), systems=["aam", "aam+control"], seeds=[], train_dir=d["train"],
                       control_dir=d["ctl"], eval_dir=d["eval"], val_dir=d["val"], test_dir=d["test"],
                       trials=[lists["veri"]], asnorm_top="dev", seen_trials=lists["seen_test"], seen_dir=d["test"],
                       many=8, few=4, dev_trials=[lists["seen_dev"]], dev_dirs=[d["val"]])
    return ctx, lists


def _store(path: Path) -> dict[str, np.ndarray]:
    keys = (path / "keys.txt").read_text().split()
    return dict(zip(keys, np.load(path / "embeddings.npy").astype(np.float64)))


def _scores(path: Path) -> dict[tuple[str, str], float]:
    return {(r[0], r[1]): float(r[2]) for r in (ln.split() for ln in path.read_text().splitlines())}


def test_stage_score_scores_the_plan_and_scores_a_control_run_on_its_control_dir(tmp_path, capsys):
    ctx, lists = _tree(tmp_path)
    stage_score(ctx)
    exp = tmp_path / "exp"
    for run, train in (("aam", "train"), ("aam_control", "ctl")):
        e = exp / run
        # mean subtraction with the run's own training store: the control dir's mean for the control run,
        # recomputed here in float64 (scores are float32 cosines: 1e-5 covers their rounding)
        ev, tr = _store(e / "emb" / "eval"), _store(e / "emb" / train)
        mean = np.mean(list(tr.values()), axis=0)
        got = _scores(e / "scores" / "mean_sub" / "veri.score")
        for (a, b), s in got.items():
            x, y = ev[a] - mean, ev[b] - mean
            assert s == pytest.approx(float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)), abs=1e-5)
        assert len(got) == 66  # every pair of 12 eval utterances
        for v in ("cosine", "asnorm", "asnorm_cal", "asnorm_qmf"):
            assert (e / "scores" / v / "veri.score").is_file() and (e / "scores" / v / "seen_test.score").is_file()
        rows = json.loads((e / "results.json").read_text())["rows"]
        assert set(rows) == {"cosine", "mean_sub", "asnorm", "asnorm_cal", "asnorm_qmf"}
        # the seen rows' shot groups: the long-tailed training dir's counts for both runs
        assert rows["cosine"]["seen"]["train_data"].endswith("data/train")
        assert rows["asnorm"]["verification"]["scores"] == "scores/asnorm/veri.score"
        for f in ("asnorm_top.json", "threshold.json", "backend/asnorm_cal.json", "backend/asnorm_qmf.json",
                  ".done/5"):
            assert (e / f).is_file(), f
    # the control's AS-norm cohort: the control dir's speaker means (6 speakers), from its own store
    assert json.loads((exp / "aam_control" / "asnorm_top.json").read_text())["cohort_size"] == 6
    out = capsys.readouterr()
    assert "(seen speakers): many" in out.out
    # a done stage is skipped with the recipes' log line, its files untouched
    before = (exp / "aam" / "results.json").stat().st_mtime_ns
    stage_score(ctx)
    err = capsys.readouterr().err
    assert err.count("done before, skipping") == 2 and f"remove {exp}/aam_control/.done/5 to redo" in err
    assert (exp / "aam" / "results.json").stat().st_mtime_ns == before


def test_stage_identify_gives_a_control_run_its_control_store_and_the_long_tailed_groups(tmp_path, monkeypatch):
    ctx, _ = _tree(tmp_path)
    calls = []
    monkeypatch.setattr(identify_stage.steps, "identify_variants", lambda variants, emb, data, train_data, **kw:
                        calls.append((variants, emb, data, train_data, kw["mean_store"], kw["record"])))
    identify_stage.stage_identify(ctx)
    e, c = f"{ctx.exp}/aam", f"{ctx.exp}/aam_control"
    assert calls == [(["cosine", "mean_sub"], f"{e}/emb/test", ctx.test_dir, ctx.train_dir, f"{e}/emb/train", e),
                     (["cosine", "mean_sub"], f"{c}/emb/test", ctx.test_dir, ctx.train_dir, f"{c}/emb/ctl", c)]
    assert (Path(c) / ".done" / "7").is_file()


def test_stage_cli_errors_are_one_line(tmp_path, capsys):
    ok = ["--exp", str(tmp_path), "--systems", "aam", "--train_dir", "t", "--test_dir", "e", "--many", "3",
          "--few", "1"]
    with pytest.raises(SystemExit) as exc:
        main(["stage", "identify", *ok, "--fwe", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "unrecognized arguments: --fwe 2" in err[0]
    with pytest.raises(SystemExit):
        main(["stage", "identify", *ok[:6]])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "required: --test_dir, --many, --few" in err[0]
    # a control run without its dir: the plan's record says control, the stage names what is missing
    (tmp_path / "aam_control").mkdir()
    (tmp_path / "aam_control" / "config.yaml").write_text("head: {name: aam}\n")
    assert main(["stage", "identify", *ok[:2], "--systems", "aam+control", *ok[4:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "aam_control is the protocol's balanced control: give --control_dir" in err[0]
    # stage 4's decoupled systems: nothing to do without one; one line naming what a decoupled one lacks
    assert main(["stage", "decouple", *ok[:4]]) == 0
    assert main(["stage", "decouple", *ok[:2], "--systems", "aam+crt", "--train_dir", "t"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "decoupled system aam_crt needs --train_dir and --val_dir" in err[0]
