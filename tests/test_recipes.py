"""The recipes end to end on the corpus fixtures, stage by stage (re-runs change nothing), with their recorded
figures checked against independent recomputations from the files the stages wrote; the option parser and
the stage functions' argument checks."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fixtures_cnceleb import make_cnceleb
from fixtures_librispeech import make_librispeech
from fixtures_train import python_path
from fixtures_voxceleb import make_voxceleb1
from sklearn.metrics import roc_curve

from spkcausal.data.datadir import DataDir
from spkcausal.experiments.expdir import ExpDir
from spkcausal.inference.tde_alpha import ALPHA_GRID
from spkcausal.report.results import load_results, row_label

pytestmark = pytest.mark.slow  # the recipes run end to end in bash (minutes)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- option parsing


def _bash(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # this venv's spkcausal
    return subprocess.run(["bash", "-c", script, "test.sh", *args], capture_output=True, text=True, env=env)


def test_parse_options_sets_known_variables_and_rejects_typos():
    script = f'stage=1; stop_stage=8; gpus=""; tiny=false; . {ROOT}/tools/parse_options.sh; ' \
             'echo "$stage|$stop_stage|$gpus|$tiny|$*"'
    r = _bash(script, "--stage", "3", "--stop-stage=5", "--gpus", "0,1", "--tiny", "true", "rest")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "3|5|0,1|true|rest"
    r = _bash(script, "--stgae", "3")
    assert r.returncode != 0 and "unknown option --stgae" in r.stderr
    r = _bash(script, "--tiny", "yes")
    assert r.returncode != 0 and "expects true or false" in r.stderr
    r = _bash(script, "--stage")
    assert r.returncode != 0 and "needs a value" in r.stderr


def test_stage_functions_reject_missing_unknown_and_valueless_arguments():
    src = f". {ROOT}/recipes/common/stages.sh; "
    r = _bash(src + 'stage_train --exp x --systems "a b" --conf_dir c')
    assert r.returncode != 0 and "stage_train: --train_dir is required" in r.stderr
    r = _bash(src + "stage_extract --exp x --systems a --num_avg 2 --dirs d --mode pad --workers 0 --fwe 2")
    assert r.returncode != 0 and "unknown argument '--fwe'" in r.stderr
    # stages 4-7 in Python (`spkcausal stage`): argparse's one line, the recipe stops
    r = _bash(src + "stage_identify --exp x --systems a --test_dir t --train_dir r --many 3 --few 1 --fwe 2; "
                    "echo GO ON")
    assert r.returncode == 2 and "unrecognized arguments: --fwe 2" in r.stderr and "GO ON" not in r.stdout
    assert len(r.stderr.strip().splitlines()) == 1
    r = _bash(src + "stage_report --exp x --systems a --trials")
    assert r.returncode != 0 and "--trials needs a value" in r.stderr
    # a shared function sees only its arguments: the caller's variables of the same name do not leak in
    r = _bash(src + 'exp=LEAK; f() { local exp systems opt=""; stage_args f "exp systems opt?" "$@"; '
                    'echo "$exp|$systems|$opt"; }; f --systems "a b" --exp e; echo "$exp"')
    assert r.returncode == 0 and r.stdout.split() == ["e|a", "b|", "LEAK"], r.stderr


# ---------------------------------------------------------------- the environment a recipe runs in


def test_an_interpreter_of_ones_own_is_used_as_it_is(tmp_path):
    """SPKCAUSAL_PYTHON: printed back, nothing created or installed (the venv setup_env would manage stays absent)."""
    env = dict(os.environ, SPKCAUSAL_PYTHON=sys.executable, SPKCAUSAL_VENV=str(tmp_path / "venv"),
               PYTHONPATH=python_path(ROOT))
    r = subprocess.run(["bash", str(ROOT / "tools" / "setup_env.sh")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == sys.executable and r.stderr == ""
    assert not (tmp_path / "venv").exists()


def test_an_interpreter_without_spkcausal_is_refused_naming_it(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")  # imports nothing, as an environment without spkcausal
    fake.chmod(0o755)
    env = dict(os.environ, SPKCAUSAL_PYTHON=str(fake), SPKCAUSAL_VENV=str(tmp_path / "venv"))
    r = subprocess.run(["bash", str(ROOT / "tools" / "setup_env.sh")], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    assert f"SPKCAUSAL_PYTHON={fake}: that interpreter cannot import spkcausal" in r.stderr
    assert not (tmp_path / "venv").exists()


# ---------------------------------------------------------------- recipes end to end


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["SPKCAUSAL_PYTHON"] = sys.executable  # used as it is: the suite never installs into its own interpreter
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    return env


def _run(recipe: str, cwd: Path, *args: str) -> str:
    r = subprocess.run(["bash", str(ROOT / "recipes" / recipe / "run.sh"), *args], cwd=cwd, env=_env(),
                       capture_output=True, text=True)
    assert r.returncode == 0, f"{recipe} {args} failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return r.stdout + r.stderr


def _snapshot(*dirs: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for d in dirs:
        for p in sorted(d.rglob("*")):
            if p.is_file():
                out[str(p)] = (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


# two held-out test utterances per speaker: the seen-speaker list needs target pairs; the fixtures' few
# utterances per speaker rarely give two sessions, so same-session targets are allowed here
COMMON = ["--val_per_speaker", "1", "--test_per_speaker", "2", "--num_avg", "2", "--asnorm_top", "3", "--nj", "1",
          "--extract_workers", "0", "--seen_same_session_ok", "true"]
ALPHAS = ["--alphas", "0,0.5,1,1.5"]  # a user's grid; without --alphas the recipe uses the library's


def _score_file(path: Path) -> tuple[list[str], list[str], np.ndarray | None, np.ndarray]:
    """enroll, test, scores (None for a trial list) and is-target of `enroll test [score] target|nontarget`
    lines, read here with plain Python rather than the library's reader."""
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    scores = np.array([float(r[2]) for r in rows]) if len(rows[0]) == 4 else None
    return [r[0] for r in rows], [r[1] for r in rows], scores, np.array([r[-1] == "target" for r in rows])


def _sklearn_eer_min_dcf(scores: np.ndarray, is_target: np.ndarray, p: float = 0.01) -> tuple[float, float]:
    """EER where the ROC segment crosses Pmiss = Pfa, and normalised minDCF, from sklearn's ROC points."""
    fpr, tpr, _ = roc_curve(is_target, scores, drop_intermediate=False)
    fnr = 1.0 - tpr
    d = fnr - fpr  # +1 at the highest threshold, -1 at the lowest
    j = int(np.argmax(d <= 0))
    w = d[j - 1] / (d[j - 1] - d[j])
    eer = fpr[j - 1] + w * (fpr[j] - fpr[j - 1])
    return float(eer), float(np.min(p * fnr + (1 - p) * fpr) / min(p, 1 - p))


def _store(path: Path) -> dict[str, np.ndarray]:
    keys = (path / "keys.txt").read_text().split()
    return dict(zip(keys, np.load(path / "embeddings.npy").astype(np.float64)))


def _tde(x: np.ndarray, xbar: np.ndarray, alpha: float, k: int = 2) -> np.ndarray:
    """Per chunk: x^k/|x^k| - alpha (x^k/|x^k| . d^k) d^k with d^k = xbar^k/|xbar^k| (docs/design.md section 2)."""
    d = len(xbar) // k
    parts = []
    for c in range(k):
        xk = x[..., c * d:(c + 1) * d] / np.linalg.norm(x[..., c * d:(c + 1) * d], axis=-1, keepdims=True)
        dk = xbar[c * d:(c + 1) * d] / np.linalg.norm(xbar[c * d:(c + 1) * d])
        parts.append(xk - alpha * (xk @ dk)[..., None] * dk)
    return np.concatenate(parts, axis=-1)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _tables(text: str) -> dict[str, tuple[list[str], dict[str, list[str]]]]:
    """Every markdown table of a report under its bold title: (header, {row label: cells})."""
    out, lines = {}, text.splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith("**") and i + 2 < len(lines) and lines[i + 2].startswith("| "):
            head = [c.strip() for c in lines[i + 2].strip("|").split("|")]
            rows = {}
            for row in lines[i + 4:]:
                if not row.startswith("| "):
                    break
                cells = [c.strip() for c in row.strip("|").split("|")]
                rows[cells[0]] = cells[1:]
            out[ln.strip("*").split(" (")[0].split(":")[0]] = (head, rows)
    return out


def _point(cell: str) -> float | None:
    return None if cell == "-" else float(cell.split()[0])


def _check_table(exp: Path, names: list[str]) -> None:
    """Every figure of report.md is the one recorded in the experiments' results.json (the mean over the seeds
    of a system run with several), and each run's interval holds its point estimate."""
    tables = _tables((exp / "report.md").read_text())
    runs: dict[tuple[str, str], list[dict]] = {}
    for name in names:
        for v, row in json.loads((exp / name / "results.json").read_text())["rows"].items():
            label = row_label(exp / name, v, row)
            runs.setdefault((re.sub(r"_seed\d+$", "", name), v), []).append({**row, "label": label})
    want = {}
    for rows in runs.values():
        alphas = sorted({r["tde_alpha"] for r in rows if r.get("tde_alpha") is not None})
        label = rows[0]["label"] + (f" (alpha={alphas[0]:g})" if len(alphas) == 1 else
                                    f" (alpha {alphas[0]:g}-{alphas[-1]:g})" if alphas else "")
        if label.startswith(("cRT", "tau-norm")) and not any(r.get("identification") for r in rows):
            continue  # a decoupled system's score normalisations: its base's verification rows, not repeated
        want[label + (f" ({len(rows)} seeds)" if len(rows) > 1 else "")] = rows
    ver_head, ver = tables["Verification"]
    assert ver_head[:3] == ["System", "EER (%)", "minDCF (0.01)"]
    _, iden = tables["Closed-set identification accuracy"]
    assert sorted(set(ver) | set(iden)) == sorted(want)

    def mean(values: list) -> float | None:
        return None if any(v is None for v in values) else float(np.mean(values))

    for label, rows in want.items():
        vs = [r.get("verification") or {} for r in rows]
        dec = label.startswith(("cRT", "tau-norm"))  # the base's embeddings: in the identification table only
        assert not (dec and label in ver)
        if vs[0] and not dec:
            # the table prints 2 decimals of a percentage: rounding <= 0.005
            assert _point(ver[label][0]) == pytest.approx(100 * mean([v["eer"] for v in vs]), abs=0.006)
            # the table prints 4 decimals: rounding <= 5e-5
            assert _point(ver[label][1]) == pytest.approx(mean([v["min_dcf"]["0.01"] for v in vs]), abs=6e-5)
            assert all(v["eer_ci"][0] - 1e-12 <= v["eer"] <= v["eer_ci"][1] + 1e-12 for v in vs)
        for k, g in enumerate(("many", "medium", "few")):
            grps = [((r.get("seen") or {}).get("groups") or {}).get(g) for r in rows]
            if not dec and all(x and "eer" in x for x in grps):
                # 2 decimals, as above
                assert _point(ver[label][2 + k]) == pytest.approx(100 * mean([x["eer"] for x in grps]), abs=0.006)
                assert all(x["eer_ci"][0] - 1e-12 <= x["eer"] <= x["eer_ci"][1] + 1e-12 for x in grps)
        for k, g in enumerate(("many", "medium", "few", "overall")):
            ids = [r.get("identification") or {} for r in rows]
            if all(i.get(g) is not None and not math.isnan(i[g]) for i in ids):
                # 2 decimals, as above
                assert _point(iden[label][k]) == pytest.approx(100 * mean([i[g] for i in ids]), abs=0.006)
                assert all(i[f"{g}_ci"][0] - 1e-12 <= i[g] <= i[f"{g}_ci"][1] + 1e-12 for i in ids)


def _train_counts(data: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in (data / "train" / "utt2spk").read_text().splitlines():
        counts[line.split()[1]] = counts.get(line.split()[1], 0) + 1
    return counts


def _group(n: int, many: int, few: int) -> str:
    return "many" if n > many else "few" if n < few else "medium"


def _check_seen(data: Path, exp: Path, names: list[str], many: int, few: int) -> None:
    """The seen-speaker lists: held-out utterances of training speakers only, never a training utterance; the
    recorded per-group EERs are sklearn's on the trials of that group of the enrolment speaker."""
    train = set(DataDir.load(data / "train").utt2spk)
    counts = _train_counts(data)
    for lst, split in (("seen_test", "iden_test"), ("seen_dev", "iden_val")):
        if lst == "seen_dev" and not (data / "trials" / lst).exists():
            continue  # one val utterance per speaker: no target pair, no dev list (stage 2 says so)
        enroll, test, _, is_target = _score_file(data / "trials" / lst)
        u2s = DataDir.load(data / split).utt2spk
        assert is_target.any() and (~is_target).any()
        assert not (set(enroll) | set(test)) & train  # no utterance that training saw
        assert set(enroll) | set(test) <= set(u2s) and {u2s[e] for e in enroll} <= set(counts)
    u2s = DataDir.load(data / "iden_test").utt2spk
    for name in names:
        rows = load_results(exp / name)["rows"]  # file references where the tree is now (results.store)
        for variant, row in rows.items():
            seen = row["seen"]
            enroll, _, scores, is_target = _score_file(seen["scores"])
            grp = np.array([_group(counts[u2s[e]], many, few) for e in enroll])
            for g, rec in seen["groups"].items():
                sel = grp == g
                if rec is None or "eer" not in rec:
                    assert not sel.any() or is_target[sel].all() or not is_target[sel].any()
                    continue
                assert (rec["n_target"], rec["n_nontarget"]) == (int(is_target[sel].sum()),
                                                                 int((~is_target[sel]).sum()))
                eer, dcf = _sklearn_eer_min_dcf(scores[sel], is_target[sel])
                # float64 counts vs scikit-learn's float64 ROC
                assert rec["eer"] == pytest.approx(eer, abs=1e-9), (name, variant, g)
                assert rec["min_dcf"]["0.01"] == pytest.approx(dcf, abs=1e-9)  # as above


def _check_outputs(exp: Path, systems: list[str], eval_name: str, trial: str, alphas: list[float]) -> None:
    for name in systems:
        e = exp / name
        res = load_results(e)
        if (e / "decoupled.json").is_file():  # cRT / tau-norm: the base's embeddings and verification rows
            info = ExpDir(e).decoupled()  # its base stored relative to e (issue 27)
            assert not Path(json.loads((e / "decoupled.json").read_text())["base"]).is_absolute()
            base = load_results(info.base)["rows"]
            assert (e / "emb").resolve() == (info.base / "emb").resolve()
            for v, row in res["rows"].items():
                assert row["verification"] == base[v]["verification"] and row["seen"] == base[v]["seen"]
                assert row_label(e, v, row).startswith(("cRT (on Baseline", "tau-norm (tau="))
                if v in ("cosine", "mean_sub"):  # identification with the new head (not with a score normalisation)
                    ckpt = Path(row["identification"]["checkpoint"])
                    assert ckpt.resolve() == (e / "avg_model.pt").resolve()
            continue
        assert (e / "avg_model.pt").is_file() and (e / "checkpoints" / "epoch_0002.pt").is_file()
        for variant in ("cosine", "mean_sub", "asnorm"):
            ver = res["rows"][variant]["verification"]
            assert Path(ver["scores"]) == (e / "scores" / variant / f"{trial}.score").resolve()
            enroll, test, scores, is_target = _score_file(ver["scores"])
            eer, dcf = _sklearn_eer_min_dcf(scores, is_target)
            # float64 counts vs scikit-learn's float64 ROC
            assert ver["eer"] == pytest.approx(eer, abs=1e-9) and ver["min_dcf"]["0.01"] == pytest.approx(dcf, abs=1e-9)
            assert ver["n_target"] == int(is_target.sum()) and ver["n_nontarget"] == int((~is_target).sum())
        # the cosine scores are those of the evaluation dir's raw embeddings
        enroll, test, scores, _ = _score_file(e / "scores" / "cosine" / f"{trial}.score")
        store = _store(e / "emb" / eval_name)
        # 6 decimals in the file (5e-7) plus float32 cosines (~2e-7); allclose adds 1e-5 relative
        assert np.allclose(scores, [_cos(store[a], store[b]) for a, b in zip(enroll, test)], atol=2e-6)
        if "cnaam" not in name:  # no Causal Norm head (spkcausal model-info said so): no TDE anywhere
            assert not any(v.startswith("tde") for v in res["rows"]) and not (e / "tde_alpha.json").exists()
            continue
        alpha = json.loads((e / "tde_alpha.json").read_text())
        assert alpha["grid"] == alphas and set(alphas) <= set(alpha["alphas"])
        assert len(alpha["accuracy"]) == len(alpha["alphas"]) and len(alpha["alphas"]) <= len(alphas) + 1
        assert alpha["heuristic_from"].startswith("training embeddings")
        if (exp.parent / "data" / "trials" / "seen_dev").exists():  # the seen-speaker dev list's curves
            assert alpha["dev_lists"][0]["trials"].endswith("seen_dev")
        last = (e / "tde_alpha.txt").read_text().splitlines()[-1].split()
        assert last[0] == "alpha" and float(last[1]) == alpha["alpha"]
        for v in ("tde", "tde_mean_sub", "tde_asnorm"):
            assert res["rows"][v]["tde_alpha"] == alpha["alpha"]
        assert res["rows"]["tde"]["identification"]["tde_alpha"] == alpha["alpha"]
        # the TDE'd store is the raw one transformed with the chosen alpha, and the tde scores are its cosines
        raw = np.load(e / "emb" / eval_name / "embeddings.npy").astype(np.float64)
        tde = np.load(e / "emb" / f"{eval_name}_tde" / "embeddings.npy").astype(np.float64)
        xbar = np.load(e / "emb" / eval_name / "mean_feature.npy").astype(np.float64)
        # float32 TDE of unit chunks vs float64: <= (d + 3) eps (1 + alpha), ~3e-6
        assert np.allclose(tde, _tde(raw, xbar, alpha["alpha"]), atol=1e-5)
        enroll, test, scores, _ = _score_file(e / "scores" / "tde_cosine" / f"{trial}.score")
        tstore = _store(e / "emb" / f"{eval_name}_tde")
        # as the raw cosines
        assert np.allclose(scores, [_cos(tstore[a], tstore[b]) for a, b in zip(enroll, test)], atol=2e-6)
    _check_table(exp, systems)
    assert (exp / f"det_{Path(trial).stem}.png").stat().st_size > 1000


def test_voxceleb_recipe_stage_by_stage(tmp_path):
    make_voxceleb1(tmp_path / "vox1")
    args = ["--vox1_root", str(tmp_path / "vox1"), "--train_set", "vox1_dev", "--systems",
            "tiny_aam tiny_cnaam tiny_aam+crt tiny_cnaam+lm", "--many", "2", "--few", "2", "--lm_conf",
            str(ROOT / "recipes" / "conf" / "tiny_lm.yaml"), "--lm_num_avg", "2", *COMMON, *ALPHAS]
    _run("voxceleb", tmp_path, *args, "--stop_stage", "2")
    assert (tmp_path / "data" / "vox1_dev" / "wav.scp").is_file() and (tmp_path / "data" / "longtail.png").is_file()
    held = set(DataDir.load(tmp_path / "data" / "iden_test").utt2spk)
    assert held and not held & set(DataDir.load(tmp_path / "data" / "train").utt2spk)
    _run("voxceleb", tmp_path, *args, "--stage", "3", "--stop_stage", "3")
    assert (tmp_path / "exp" / "tiny_cnaam" / "checkpoints" / "epoch_0002.pt").is_file()
    assert not (tmp_path / "exp" / "tiny_aam" / "avg_model.pt").exists()  # averaging is stage 4's ...
    assert (tmp_path / "exp" / "tiny_cnaam" / "avg_model.pt").is_file()  # ... except for a base of a +lm run
    # the merged config: the one shared recipes/conf/tiny_aam.yaml plus what run.sh added
    cfg = yaml.safe_load((tmp_path / "exp" / "tiny_aam" / "config.yaml").read_text())
    shared = yaml.safe_load((ROOT / "recipes" / "conf" / "tiny_aam.yaml").read_text())
    assert cfg["model"] == shared["model"] and cfg["head"] == shared["head"] and cfg["seed"] == shared["seed"]
    assert tmp_path / cfg["data"]["train"] == tmp_path / "data" / "train"  # --data is relative to the cwd here
    # +lm: the base's config, then the overlay, from the base's averaged model (network, head and x_bar)
    lm = yaml.safe_load((tmp_path / "exp" / "tiny_cnaam_lm" / "config.yaml").read_text())
    base = yaml.safe_load((tmp_path / "exp" / "tiny_cnaam" / "config.yaml").read_text())
    assert tmp_path / lm["train"]["init_from"] == tmp_path / "exp" / "tiny_cnaam" / "avg_model.pt"
    assert lm["train"]["init_head"] is True and (lm["head"]["margin"], lm["data"]["chunk_seconds"]) == (0.3, 1.0)
    assert {k: v for k, v in lm["head"].items() if k != "margin"} == \
        {k: v for k, v in base["head"].items() if k != "margin"}
    _run("voxceleb", tmp_path, *args, "--stage", "4")
    names = ["tiny_aam", "tiny_cnaam", "tiny_aam_crt", "tiny_cnaam_lm"]
    _check_outputs(tmp_path / "exp", names, "vox1_test", "veri_test2.txt", [0.0, 0.5, 1.0, 1.5])
    _check_seen(tmp_path / "data", tmp_path / "exp", names, 2, 2)
    before = _snapshot(tmp_path / "data", tmp_path / "exp")
    log = _run("voxceleb", tmp_path, *args)  # every stage again: all finished, nothing may change
    assert _snapshot(tmp_path / "data", tmp_path / "exp") == before
    # stages 1, 2, seen lists, 8; 3, 4, 5, 7 per trained system (+lm too); 6 (TDE) for the two Causal Norm
    # systems; 4, 5, 7 for the cRT system
    assert log.count("skipping") == 4 + 4 * 3 + 2 + 3
    res = json.loads((tmp_path / "exp" / "tiny_cnaam_lm" / "results.json").read_text())
    assert row_label(tmp_path / "exp" / "tiny_cnaam_lm", "cosine", res["rows"]["cosine"]) == \
        "De-confound (Causal Norm AAM) + LM"
    diffs = json.loads((tmp_path / "exp" / "report.json").read_text())["differences"]
    refs = {Path(d["reference"][0]).name for d in diffs if Path(d["system"]).name == "tiny_cnaam_lm"
            and d["variant"] == "cosine"}
    assert refs == {"tiny_cnaam", "tiny_aam"}  # what LM adds; against the baseline (it has no +lm run here)
    assert [int(s) for s in re.findall(r"stage (\d) finished", log)] == list(range(1, 9))

    # --gpus passes through to torchrun: without CUDA the two ranks train and extract on CPU over gloo
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    _run("voxceleb", tmp_path, *args, "--systems", "tiny_cnaam", "--exp", "exp_ddp", "--gpus", "0,1",
         "--master_port", port, "--stage", "3", "--stop_stage", "4")
    e = tmp_path / "exp_ddp" / "tiny_cnaam"
    assert torch.load(e / "checkpoints" / "epoch_0002.pt", weights_only=True)["world_size"] == 2
    subprocess.run([sys.executable, "-m", "spkcausal", "extract-dirs", "--exp", str(e), "--data",
                    str(tmp_path / "data" / "vox1_test"), "--out-dir", str(tmp_path / "single"), "--num-workers",
                    "0"], check=True, env=_env(), capture_output=True)
    sharded = np.load(e / "emb" / "vox1_test" / "embeddings.npy")  # rank slices merged back in key order
    # other batch shapes, same float32 model: each ~6e-7 relative off float64 (test_models)
    assert np.allclose(sharded, np.load(tmp_path / "single" / "vox1_test" / "embeddings.npy"), atol=1e-5)


def test_cnceleb_recipe_end_to_end(tmp_path):
    fx = make_cnceleb(tmp_path / "cn")
    # corpus overrides go first, the user's last: min_seconds 0.3 wins, log_every comes from the corpus
    args = ["--cn1_root", str(fx["cn1_root"]), "--cn2_root", str(fx["cn2_root"]), "--combine_min_sec", "1.0",
            "--systems", "tiny_cnaam", "--many", "2", "--few", "2", "--corpus_overrides",
            "data.min_seconds=0.2 train.log_every=3", "--train_overrides",
            "data.min_seconds=0.3 data.chunk_seconds=0.3", *COMMON, *ALPHAS]
    _run("cnceleb", tmp_path, *args, "--stop_stage", "4")
    cfg = yaml.safe_load((tmp_path / "exp" / "tiny_cnaam" / "config.yaml").read_text())
    assert (cfg["data"]["min_seconds"], cfg["data"]["chunk_seconds"], cfg["train"]["log_every"]) == (0.3, 0.3, 3)
    _run("cnceleb", tmp_path, *args, "--stage", "5")
    exp = tmp_path / "exp"
    _check_outputs(exp, ["tiny_cnaam"], "cnceleb_eval", "trials_concat", [0.0, 0.5, 1.0, 1.5])
    # the Avg protocol was scored too, with the enrolment map: enrolment = mean of its segments' embeddings
    enroll, test, scores, _ = _score_file(exp / "tiny_cnaam" / "scores" / "cosine" / "trials_avg.score")
    assert len(scores) == fx["trials"] and all(e.endswith("-enroll-avg") for e in enroll)
    segs = {}
    for line in (tmp_path / "data" / "cnceleb_eval" / "enroll2utt").read_text().splitlines():
        spk, *utts = line.split()
        segs[spk] = utts
    store = _store(exp / "tiny_cnaam" / "emb" / "cnceleb_eval")
    want = [_cos(np.mean([store[u] for u in segs[a]], axis=0), store[b]) for a, b in zip(enroll, test)]
    assert np.allclose(scores, want, atol=2e-6)  # as the raw cosines
    before = _snapshot(tmp_path / "data", exp)
    _run("cnceleb", tmp_path, *args, "--stage", "5", "--stop_stage", "6")
    assert _snapshot(tmp_path / "data", exp) == before


def test_librispeech_recipe_end_to_end(tmp_path):
    """Two training seeds (exp/tiny_cnaam_seed<k>), the seen-speaker dev list choosing alpha by EER, the report's
    mean ± std over seeds against numpy, and a re-run with one more seed that trains only that seed."""
    make_librispeech(tmp_path / "ls")
    common = list(COMMON)
    common[common.index("--val_per_speaker") + 1] = "2"  # two val utterances per reader: the seen dev list has targets
    common[common.index("--asnorm_top") + 1] = "dev"  # the recipes' default: top-N chosen on that dev list
    args = ["--libri_root", str(tmp_path / "ls"), "--eval_set", "dev-clean", "--num_trials", "20",
            "--num_dev_trials", "20", "--systems", "tiny_cnaam", "--many", "3", "--few", "3", "--train_overrides",
            "data.min_seconds=0.3 data.chunk_seconds=0.3", "--alpha_on", "dev_eer", *common]
    _run("librispeech", tmp_path, *args, "--stop_stage", "1")
    trials = (tmp_path / "data" / "trials" / "dev-clean").read_text().split("\n")
    assert len([t for t in trials if t]) == 20
    _run("librispeech", tmp_path, *args, "--stage", "2", "--seeds", "1 2")
    exp = tmp_path / "exp"
    names = ["tiny_cnaam_seed1", "tiny_cnaam_seed2"]
    assert [yaml.safe_load((exp / n / "config.yaml").read_text())["seed"] for n in names] == [1, 2]
    # no --alphas: stage 6 sweeps the library's grid
    _check_outputs(exp, names, "dev-clean", "dev-clean", [float(a) for a in ALPHA_GRID])
    _check_seen(tmp_path / "data", exp, names, 3, 3)
    # the back-end on the seen-speaker dev list: AS-norm top-N chosen there, calibration and QMF trained on its
    # AS-norm scores and applied to the evaluation list (LLR rows), the calibrated threshold of `verify`
    e = exp / names[0]
    top = json.loads((e / "asnorm_top.json").read_text())
    assert top["trials"].endswith("seen_dev") and top["best"] in [c["top_n"] for c in top["curve"]]
    cal = json.loads((e / "backend" / "asnorm_cal.json").read_text())
    _, _, raw, _ = _score_file(e / "scores" / "asnorm" / "dev-clean.score")
    _, _, llr, is_t = _score_file(e / "scores" / "asnorm_cal" / "dev-clean.score")
    # 6 decimals in both files, and one float64 affine map
    assert np.allclose(llr, cal["weights"][0] * raw + cal["bias"], atol=2e-6)
    res = json.loads((e / "results.json").read_text())["rows"]
    ver = res["asnorm_cal"]["verification"]
    direct = 0.5 * (np.log2(1 + np.exp(-llr[is_t])).mean() + np.log2(1 + np.exp(llr[~is_t])).mean())
    assert ver["llr"] and ver["cllr"] == pytest.approx(direct, rel=1e-9)  # float64 formula on the same llrs
    for v in ("asnorm_qmf", "tde_asnorm_cal", "tde_asnorm_qmf"):
        ver = res[v]["verification"]
        # the point estimate inside its bootstrap interval, up to float64 summation order: a resample that equals
        # the list sums its terms in another order (1 ulp apart under SSE kernels, 2 threads: issue 26)
        lo, hi = ver["cllr_ci"]
        slack = 1e-12 * abs(ver["cllr"])
        assert ver["llr"] and lo - slack <= ver["cllr"] <= hi + slack, v
    qmf = json.loads((e / "backend" / "asnorm_qmf.json").read_text())
    assert qmf["kind"] == "qmf" and qmf["inputs"][0] == "score" and len(qmf["inputs"]) > 1
    thr = json.loads((e / "threshold.json").read_text())
    slope = json.loads((e / "backend" / "cosine_cal.json").read_text())["weights"][0]
    # calibrated where the dev list's calibration rises with the score, else its EER threshold (a tiny list)
    assert thr["kind"] == ("calibrated" if slope > 0 else "eer") and thr["scores"].endswith("seen_dev.score")
    # alpha by EER on the seen-speaker dev list (ties: the smaller alpha); the dev-clean curve recorded beside it,
    # recomputed from the dev readers' raw embeddings
    alpha = json.loads((exp / names[0] / "tde_alpha.json").read_text())
    seen_dev, clean = alpha["dev_lists"]
    assert seen_dev["trials"].endswith("seen_dev") and clean["trials"].endswith("dev-clean")
    best = min(range(len(alpha["alphas"])), key=lambda i: (seen_dev["eer"][i], alpha["alphas"][i]))
    assert alpha["alpha"] == alpha["alphas"][best] and alpha["criterion_name"] == "dev_eer"
    store = _store(exp / names[0] / "emb" / "dev-clean")
    xbar = np.load(exp / names[0] / "emb" / "dev-clean" / "mean_feature.npy").astype(np.float64)
    enroll, test, _, is_target = _score_file(tmp_path / "data" / "trials" / "dev-clean")
    for a, recorded in zip(alpha["alphas"], clean["eer"]):
        s = [_cos(_tde(store[x], xbar, a), _tde(store[y], xbar, a)) for x, y in zip(enroll, test)]
        # float64 counts vs scikit-learn's float64 ROC
        assert recorded == pytest.approx(_sklearn_eer_min_dcf(np.array(s), is_target)[0], abs=1e-9), a
    # the report: mean ± std over the two seeds of every recorded figure
    ver = _tables((exp / "report.md").read_text())["Verification"][1]
    eers = [json.loads((exp / n / "results.json").read_text())["rows"]["cosine"]["verification"]["eer"]
            for n in names]
    cell = next(v for k, v in ver.items() if k.startswith("De-confound (Causal Norm AAM)") and "seed" in k)[0]
    assert cell == f"{100 * np.mean(eers):.2f} ± {100 * np.std(eers, ddof=1):.2f}"
    before = _snapshot(tmp_path / "data", exp)
    _run("librispeech", tmp_path, *args, "--stage", "1", "--stop_stage", "1", "--seeds", "1 2")
    _run("librispeech", tmp_path, *args, "--stage", "8", "--seeds", "1 2")
    assert _snapshot(tmp_path / "data", exp) == before
    # one more seed: only it is trained
    _run("librispeech", tmp_path, *args, "--stage", "3", "--stop_stage", "3", "--seeds", "1 2 3")
    assert (exp / "tiny_cnaam_seed3" / ".done" / "3").is_file()
    assert {k: v for k, v in _snapshot(exp).items() if "_seed3" not in k} == \
        {k: v for k, v in before.items() if k.startswith(str(exp))}


def test_ablation_configs_differ_from_the_causal_norm_system_only_in_k_and_gamma():
    """The grid K=1 gamma=0 (plain AAM through the Causal Norm AAM head), K=2 gamma=0, K=4 gamma=1/32 at the
    same scale, margin and training as the K=2 gamma=1/32 system, for the corpus recipes and the demo."""
    want = {"cn_k1_g0": (1, 0.0), "cn_k2_g0": (2, 0.0), "cn_k4_g1_32": (4, 1 / 32)}
    for conf_dir, base_name, prefix in ((ROOT / "recipes" / "conf", "ecapa512_cnaam", "ecapa512_"),
                                        (ROOT / "recipes" / "mini" / "conf", "cnaam", "")):
        base = yaml.safe_load((conf_dir / f"{base_name}.yaml").read_text())
        assert (base["head"]["num_heads"], base["head"]["gamma"]) == (2, 1 / 32)
        found = sorted(p.stem for p in (conf_dir / "ablation").glob("*.yaml"))
        assert found == sorted(prefix + k for k in want)
        for name, (k, gamma) in want.items():
            cfg = yaml.safe_load((conf_dir / "ablation" / f"{prefix}{name}.yaml").read_text())
            assert (cfg["head"].pop("num_heads"), cfg["head"].pop("gamma")) == (k, gamma)
            cfg.pop("exp_dir", None)
            ref = yaml.safe_load((conf_dir / f"{base_name}.yaml").read_text())
            ref["head"].pop("num_heads"), ref["head"].pop("gamma"), ref.pop("exp_dir", None)
            assert cfg == ref, name


def test_training_overrides_put_the_recipes_own_first_and_the_users_after():
    """The overrides stage 3 gives every system: the recipe's own, then --musan / --rirs, --train_overrides and
    --init_from, so that a user's key wins (apply_overrides applies them in order)."""
    src = f". {ROOT}/recipes/common/defaults.sh; . {ROOT}/recipes/common/stages.sh; "
    r = _bash(src + 'musan=/m rirs=/r train_overrides="train.epochs=4 head.margin=0.3" init_from=/p; '
                    'training_overrides train.epochs=2 model.embed_dim=32')
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["train.epochs=2", "model.embed_dim=32", "augment.musan=/m", "augment.rirs=/r",
                                "train.epochs=4", "head.margin=0.3", "train.init_from=/p"]
    from spkcausal.nn.config import apply_overrides

    assert apply_overrides({"train": {"epochs": 16}}, r.stdout.split())["train"]["epochs"] == 4
    r = _bash(src + "training_overrides")
    assert r.returncode == 0 and r.stdout.split() == []


@pytest.mark.parametrize("recipe", ["voxceleb", "cnceleb", "librispeech", "mini"])
def test_every_recipe_passes_the_shared_options_to_training(recipe):
    """--musan, --rirs, --train_overrides and --init_from (a pretrained model to fine-tune, docs/models.md) are
    options of every corpus recipe and the demo (parse_options refuses unknown ones), and each recipe builds stage
    3's overrides with training_overrides (the demo once dropped all but --init_from without a word)."""
    run = ROOT / "recipes" / recipe / "run.sh"
    r = subprocess.run(["bash", str(run), "--musan", "/m", "--rirs", "/r", "--train_overrides", "train.epochs=1",
                        "--init_from", "/pretrained/exp", "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assigned = re.findall(r"^\s*overrides=.*$", run.read_text(), re.M)
    assert len(assigned) == 1 and assigned[0].startswith("overrides=$(training_overrides "), assigned
    r = subprocess.run(["bash", str(run), "--init_fro", "/x", "--help"], capture_output=True, text=True)
    assert r.returncode != 0 and "unknown option --init_fro" in r.stderr


@pytest.mark.parametrize("workers,expected", [("", None), ("3", "3")])
def test_stage_extract_leaves_workers_to_the_device_default_unless_given(tmp_path, workers, expected):
    """Stage 4 passes --num-workers only when the recipe sets extract_workers (the default "" lets `extract`
    choose: none on CPU, 2 on GPU)."""
    src = (f'. {ROOT}/recipes/common/stages.sh; launch() {{ echo "LAUNCH $*"; }}; '
           'spkcausal() { if [ "$1" = plan ]; then command spkcausal "$@"; fi; }; ')
    r = _bash(src + f'stage_extract --exp {tmp_path} --systems aam --num_avg 2 --dirs d --mode pad '
                    f'--workers "{workers}"')
    assert r.returncode == 0, r.stderr
    launches = [line.split() for line in r.stdout.splitlines() if line.startswith("LAUNCH")]
    assert len(launches) == 1 and launches[0][1] == "extract-dirs"
    args = launches[0]
    got = args[args.index("--num-workers") + 1] if "--num-workers" in args else None
    assert got == expected
