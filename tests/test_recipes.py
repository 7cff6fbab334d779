"""Recipes end to end on the corpus fixtures (stage by stage, re-runs change nothing), the report table from
known results, closed-set identification and TDE alpha selection against independent NumPy computations,
the held-out split and the option parser."""
from __future__ import annotations

import hashlib
import json
import math
import os
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
from fixtures_voxceleb import make_voxceleb1

from spkcausal.datadir import DataDir, write_kv
from spkcausal.embeddings import write_store
from spkcausal.heads import AAMHead, CausalNormAAMHead
from spkcausal.identify import identify
from spkcausal.report import (
    collect_rows,
    format_markdown,
    record_identification,
    record_verification,
    system_name,
    update_results,
    variant_label,
    write_report,
)
from spkcausal.subsets import split_heldout
from spkcausal.tde_alpha import choose_alpha
from spkcausal.trialio import read_scores
from spkcausal.utils import DataError

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- option parsing


def _bash(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script, "test.sh", *args], capture_output=True, text=True)


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


# ---------------------------------------------------------------- held-out split


def _datadir(counts: dict[str, int]) -> DataDir:
    wav, u2s = {}, {}
    for spk, n in counts.items():
        for i in range(n):
            u = f"{spk}-{i:03d}"
            wav[u], u2s[u] = f"/x/{u}.wav", spk
    return DataDir(wav=wav, utt2spk=u2s)


def test_split_heldout_keeps_small_speakers_in_training_only():
    data = _datadir({"a": 10, "b": 4, "c": 3, "d": 1})
    train, val, test = split_heldout(data, val_per_spk=1, test_per_spk=2, min_train=1, seed=5)
    assert set(train.utt2spk) | set(val.utt2spk) | set(test.utt2spk) == set(data.utt2spk)
    assert not (set(train.utt2spk) & set(val.utt2spk)) and not (set(val.utt2spk) & set(test.utt2spk))
    assert not (set(train.utt2spk) & set(test.utt2spk))
    # a and b have the 1 + 2 + 1 utterances needed; c (3) and d (1) are only trained on
    assert sorted(val.spk2utt) == ["a", "b"] and all(len(v) == 1 for v in val.spk2utt.values())
    assert sorted(test.spk2utt) == ["a", "b"] and all(len(v) == 2 for v in test.spk2utt.values())
    assert {s: len(u) for s, u in train.spk2utt.items()} == {"a": 7, "b": 1, "c": 3, "d": 1}
    again = split_heldout(data, 1, 2, 1, seed=5)
    assert again[2].utt2spk == test.utt2spk
    with pytest.raises(DataError):
        split_heldout(data, 5, 5, 1)


# ---------------------------------------------------------------- report


def _exp(tmp: Path, name: str, head: str, sampler: str = "natural") -> Path:
    e = tmp / name
    e.mkdir(parents=True)
    (e / "config.yaml").write_text(yaml.safe_dump({"head": {"name": head}, "sampler": {"name": sampler},
                                                   "loss": {"name": "ce"}}))
    return e


def _iden(many, medium, few, overall, thr=(30, 10)):
    return {"many": many, "medium": medium, "few": few, "overall": overall, "top1": overall,
            "thresholds": {"many": thr[0], "few": thr[1]}}


def test_system_names_follow_the_paper():
    assert system_name({"head": {"name": "aam"}}) == "Baseline (AAM)"
    assert system_name({"head": {"name": "aam"}, "sampler": {"name": "class_balanced"}}) == \
        "Re-sampling (AAM, class-balanced)"
    assert system_name({"head": {"name": "aam"}, "loss": {"name": "inverse"}}).startswith("Re-weighting")
    cn = system_name({"head": {"name": "causal_norm_aam"}})
    assert cn == "De-confound (Causal Norm AAM)"
    assert variant_label(cn, "tde") == "De-confound-TDE (Causal Norm AAM)"
    assert variant_label(cn, "tde_asnorm") == "De-confound-TDE (Causal Norm AAM) + AS-norm"
    assert variant_label("Baseline (AAM)", "mean_sub") == "Baseline (AAM) + mean subtraction"


def test_report_table_from_known_results(tmp_path):
    base = _exp(tmp_path / "exp", "aam", "aam")
    cn = _exp(tmp_path / "exp", "cnaam", "causal_norm_aam")
    update_results(base, "cosine", verification={"scores": "s/veri.txt.score", "eer": 0.0512,
                                                 "min_dcf": {"0.01": 0.4321, "0.05": 0.3}},
                   identification=_iden(0.9, 0.6, 0.125, 0.5))
    update_results(base, "mean_sub", verification={"scores": "m/veri.txt.score", "eer": 0.049,
                                                   "min_dcf": {"0.01": 0.41}})
    update_results(cn, "tde", tde_alpha=0.7, identification=_iden(0.85, 0.7, 0.3333, 0.61))
    update_results(cn, "cosine", verification={"scores": "c/veri.txt.score", "eer": 0.06, "min_dcf": {"0.01": 0.5}},
                   identification=_iden(0.91, 0.62, 0.2, 0.55))
    record_identification(base, "mean_sub", {**_iden(0.88, 0.61, float("nan"), 0.5), "tde_alpha": None})

    text, out = write_report([base, cn])
    assert out == (tmp_path / "exp").resolve()
    lines = text.splitlines()
    assert set(lines[1].replace("|", "").replace(":", "")) == {"-"}  # markdown separator row
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["System", "EER (%)", "minDCF (0.01)", "Many", "Medium", "Few", "Overall"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:6]]
    assert rows[0] == ["Baseline (AAM)", "5.12", "0.4321", "90.00", "60.00", "12.50", "50.00"]
    assert rows[1] == ["Baseline (AAM) + mean subtraction", "4.90", "0.4100", "88.00", "61.00", "-", "50.00"]
    assert rows[2] == ["De-confound (Causal Norm AAM)", "6.00", "0.5000", "91.00", "62.00", "20.00", "55.00"]
    assert rows[3] == ["De-confound-TDE (Causal Norm AAM) (alpha=0.7)", "-", "-", "85.00", "70.00", "33.33",
                       "61.00"]
    assert "Many > 30, Medium 10-30, Few < 10" in text and "on veri.txt." in text
    assert (out / "report.md").read_text() == text
    saved = json.loads((out / "report.json").read_text())
    assert [r["label"] for r in saved["rows"]] == [r[0].split(" (alpha")[0] for r in rows]
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temp files
    # a filter and a caption
    only = format_markdown(collect_rows([base, cn], variants=["tde"]), caption="Demo.")
    assert only.count("\n|") == 2 and "Demo." in only
    # two experiments of the same system are told apart by their directory names
    twin = _exp(tmp_path / "exp", "aam_s8", "aam")
    update_results(twin, "cosine", identification=_iden(0.8, 0.5, 0.2, 0.45))
    table = format_markdown(collect_rows([base, twin], variants=["cosine"]))
    assert "| Baseline (AAM) [aam]" in table and "| Baseline (AAM) [aam_s8]" in table
    # shot-group thresholds must agree across the table
    update_results(cn, "cosine", identification=_iden(0.9, 0.6, 0.1, 0.5, thr=(100, 20)))
    with pytest.raises(DataError, match="different shot-group thresholds"):
        write_report([base, cn])
    with pytest.raises(DataError, match="no results.json"):
        write_report([tmp_path / "nothing"])


def test_record_verification_matches_a_brute_force_eer(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    labels = rng.random(n) < 0.4
    scores = rng.normal(size=n) + 1.5 * labels
    lines = [f"e{i} t{i} {s:.6f} {'target' if lab else 'nontarget'}\n" for i, (s, lab) in enumerate(zip(scores,
                                                                                                          labels))]
    (tmp_path / "list.score").write_text("".join(lines))
    e = _exp(tmp_path, "exp", "aam")
    data = record_verification(e, "cosine", tmp_path / "list.score")
    ver = data["rows"]["cosine"]["verification"]
    s = np.round(scores, 6)
    # brute force: Pmiss / Pfa at every threshold; the EER lies between the closest crossing pair
    thr = np.sort(np.unique(s))
    pmiss = np.array([np.mean(s[labels] < t) for t in thr])
    pfa = np.array([np.mean(s[~labels] >= t) for t in thr])
    i = int(np.argmax(pmiss >= pfa))
    assert min(pmiss[i], pfa[i - 1]) - 1e-9 <= ver["eer"] <= max(pmiss[i], pfa[i - 1]) + 1e-9
    dcf = np.min(0.01 * pmiss + 0.99 * pfa) / 0.01
    assert ver["min_dcf"]["0.01"] == pytest.approx(min(dcf, 1.0), abs=1e-9)
    assert data["rows"]["cosine"]["label"] == "Baseline (AAM)"


# ---------------------------------------------------------------- identification and alpha


def _ckpt(path: Path, head, name: str, speakers: list[str], **head_cfg) -> Path:
    torch.save({"config": {"head": {"name": name, **head_cfg}}, "head": head.state_dict(), "speakers": speakers},
               path)
    return path


def _np_tde_logits(w, x, xbar, alpha, k, tau, gamma):
    """Independent float64 loop over classes and chunks of the TDE logit formula (DESIGN.md section 2)."""
    d = len(xbar) // k
    out = np.zeros((len(x), len(w)))
    for n in range(len(x)):
        for i in range(len(w)):
            tot = 0.0
            for c in range(k):
                sl = slice(c * d, (c + 1) * d)
                wk, xk, mk = w[i, sl], x[n, sl], xbar[sl]
                dk = mk / np.linalg.norm(mk)
                cos_xd = xk @ dk / np.linalg.norm(xk)
                tot += wk @ xk / ((np.linalg.norm(wk) + gamma) * np.linalg.norm(xk))
                tot -= alpha * cos_xd * (wk @ dk) / (np.linalg.norm(wk) + gamma)
            out[n, i] = tau / k * tot
    return out


def _group_acc(y, pred, counts, many, few):
    acc = {c: np.mean(pred[y == c] == c) for c in np.unique(y)}
    groups = {"many": [c for c in acc if counts[c] > many], "few": [c for c in acc if counts[c] < few]}
    groups["medium"] = [c for c in acc if few <= counts[c] <= many]
    out = {g: float(np.mean([acc[c] for c in cs])) if cs else float("nan") for g, cs in groups.items()}
    out["overall"] = float(np.mean(list(acc.values())))
    return out


@pytest.fixture
def iden_setup(tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    speakers = ["s0", "s1", "s2", "s3", "s4"]
    counts = [12, 8, 5, 2, 1]  # many > 6, few < 3 -> s0, s1 many; s2 medium; s3, s4 few
    head = CausalNormAAMHead(8, 5, num_heads=2, tau=10.0, gamma=0.05)
    head.mean_feature.copy_(torch.from_numpy(rng.normal(size=8).astype(np.float32)) + 1.0)
    ckpt = _ckpt(tmp_path / "cn.pt", head, "causal_norm_aam", speakers, num_heads=2, scale=10.0, gamma=0.05)
    write_kv(tmp_path / "train" / "utt2spk", {f"{s}-t{i:02d}": s for s, n in zip(speakers, counts) for i in range(n)})
    # held-out embeddings near their class weight plus a shared offset along x_bar (the "head" pull)
    w = head.weight.detach().numpy().astype(np.float64)
    keys, emb, u2s = [], [], {}
    for c, s in enumerate(speakers):
        for j in range(6):
            key = f"{s}-h{j}"
            keys.append(key)
            emb.append(w[c] / np.linalg.norm(w[c]) + 0.9 * rng.normal(size=8) + 0.6 * head.mean_feature.numpy())
            u2s[key] = s
    emb = np.array(emb, dtype=np.float32)
    write_store(tmp_path / "emb", keys, emb)
    write_kv(tmp_path / "held" / "utt2spk", u2s)
    y = np.array([speakers.index(u2s[k]) for k in sorted(u2s)])
    x = emb[[keys.index(k) for k in sorted(u2s)]].astype(np.float64)
    return {"tmp": tmp_path, "ckpt": ckpt, "head": head, "w": w, "x": x, "y": y, "counts": np.array(counts)}


def test_identify_tde_matches_numpy(iden_setup):
    s = iden_setup
    xbar = s["head"].mean_feature.numpy().astype(np.float64)
    for alpha in (None, 0.0, 0.8):
        res = identify(s["tmp"] / "emb", s["tmp"] / "held", s["tmp"] / "train", ckpt=s["ckpt"], tde_alpha=alpha,
                       many=6, few=3)
        logits = _np_tde_logits(s["w"], s["x"], xbar, alpha or 0.0, 2, 10.0, 0.05)
        want = _group_acc(s["y"], logits.argmax(1), s["counts"], 6, 3)
        for g in ("many", "medium", "few", "overall"):
            assert res[g] == pytest.approx(want[g]), (alpha, g)
        assert res["n_classes"] == {"many": 2, "medium": 1, "few": 2}
        assert res["thresholds"] == {"many": 6, "few": 3}


def test_identify_mean_subtraction_with_aam_head_matches_numpy(tmp_path, iden_setup):
    s = iden_setup
    head = AAMHead(8, 5, scale=16.0, margin=0.2)
    ckpt = _ckpt(tmp_path / "aam.pt", head, "aam", ["s0", "s1", "s2", "s3", "s4"], scale=16.0, margin=0.2)
    rng = np.random.default_rng(3)
    train_emb = rng.normal(size=(20, 8)).astype(np.float32) + 2.0
    write_store(tmp_path / "train_emb", [f"u{i}" for i in range(20)], train_emb)
    res = identify(s["tmp"] / "emb", s["tmp"] / "held", s["tmp"] / "train", ckpt=ckpt,
                   mean_store=tmp_path / "train_emb", many=6, few=3)
    w = head.weight.detach().numpy().astype(np.float64)
    xc = s["x"] - train_emb.astype(np.float64).mean(0)
    cos = (xc / np.linalg.norm(xc, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    want = _group_acc(s["y"], cos.argmax(1), s["counts"], 6, 3)
    assert res["overall"] == pytest.approx(want["overall"]) and res["few"] == pytest.approx(want["few"])
    with pytest.raises(DataError, match="Causal Norm"):
        identify(s["tmp"] / "emb", s["tmp"] / "held", s["tmp"] / "train", ckpt=ckpt, tde_alpha=0.5)


def test_choose_alpha_on_dev_matches_numpy_and_records_curve(iden_setup):
    s = iden_setup
    xbar = s["head"].mean_feature.numpy().astype(np.float64)
    alphas = [0.0, 0.4, 0.8, 1.2, 1.6]
    res = choose_alpha(s["tmp"] / "emb", ckpt=s["ckpt"], data_dir=s["tmp"] / "held", alphas=alphas,
                       out=s["tmp"] / "alpha.json")
    accs = [_group_acc(s["y"], _np_tde_logits(s["w"], s["x"], xbar, a, 2, 10.0, 0.05).argmax(1), s["counts"], 6,
                       3)["overall"] for a in alphas]
    assert res["accuracy"] == pytest.approx(accs)
    best = max(range(len(alphas)), key=lambda i: (accs[i], -alphas[i]))
    assert res["alpha"] == alphas[best]
    assert json.loads((s["tmp"] / "alpha.json").read_text())["alpha"] == res["alpha"]
    # the heuristic 1 / mean cos(x^k, d^k), computed directly
    d = len(xbar) // 2
    cos = [s["x"][:, c * d:(c + 1) * d] @ (xbar[c * d:(c + 1) * d] / np.linalg.norm(xbar[c * d:(c + 1) * d]))
           / np.linalg.norm(s["x"][:, c * d:(c + 1) * d], axis=1) for c in range(2)]
    assert res["heuristic_alpha"] == pytest.approx(1.0 / np.mean(cos), rel=1e-5)


# ---------------------------------------------------------------- recipes end to end


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["SPKCAUSAL_VENV"] = str(Path(sys.executable).parent.parent)
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


COMMON = ["--val_per_spk", "1", "--test_per_spk", "1", "--num_avg", "2", "--asnorm_top", "3", "--nj", "1",
          "--alphas", "0,0.5,1,1.5", "--extract_workers", "0"]


def _check_outputs(exp: Path, systems: list[str], trial: str) -> None:
    for name in systems:
        e = exp / name
        assert (e / "avg_model.pt").is_file() and (e / "checkpoints" / "epoch_0002.pt").is_file()
        res = json.loads((e / "results.json").read_text())
        for variant in ("cosine", "mean_sub", "asnorm"):
            ver = res["rows"][variant]["verification"]
            sc = read_scores(ver["scores"])
            assert Path(ver["scores"]).name == f"{trial}.score"
            assert ver["n_target"] == int((sc.labels == 1).sum()) and 0 <= ver["eer"] <= 1
        iden = res["rows"]["cosine"]["identification"]
        assert 0 <= iden["overall"] <= 1
        if "cnaam" in name:
            alpha = json.loads((e / "tde_alpha.json").read_text())
            assert alpha["alphas"] == [0.0, 0.5, 1.0, 1.5] and len(alpha["accuracy"]) == 4
            assert res["rows"]["tde"]["tde_alpha"] == alpha["alpha"]
            assert res["rows"]["tde"]["identification"]["tde_alpha"] == alpha["alpha"]
            # the TDE'd store is the raw one transformed with the chosen alpha: check one embedding directly
            raw = np.load(e / "emb" / f"{_eval_name(e)}" / "embeddings.npy").astype(np.float64)
            tde = np.load(e / "emb" / f"{_eval_name(e)}_tde" / "embeddings.npy").astype(np.float64)
            xbar = np.load(e / "emb" / f"{_eval_name(e)}" / "mean_feature.npy").astype(np.float64)
            half = len(xbar) // 2
            for c in range(2):
                sl = slice(c * half, (c + 1) * half)
                xk = raw[0, sl] / np.linalg.norm(raw[0, sl])
                dk = xbar[sl] / np.linalg.norm(xbar[sl])
                assert np.allclose(tde[0, sl], xk - alpha["alpha"] * (xk @ dk) * dk, atol=1e-5)
    report = (exp / "report.md").read_text()
    assert "| System" in report and "De-confound-TDE (Causal Norm AAM)" in report
    assert (exp / f"det_{Path(trial).stem}.png").stat().st_size > 1000


def _eval_name(e: Path) -> str:
    return next(p.name for p in (e / "emb").iterdir() if p.name.endswith("_tde") and p.name != "train_tde")[:-4]


@pytest.mark.slow
def test_voxceleb_recipe_stage_by_stage(tmp_path):
    make_voxceleb1(tmp_path / "vox1")
    args = ["--vox1_root", str(tmp_path / "vox1"), "--train_set", "vox1_dev", "--systems", "tiny_aam tiny_cnaam",
            "--many", "2", "--few", "2", *COMMON]
    _run("voxceleb", tmp_path, *args, "--stop_stage", "2")
    assert (tmp_path / "data" / "vox1_dev" / "wav.scp").is_file() and (tmp_path / "data" / "longtail.png").is_file()
    held = set(DataDir.load(tmp_path / "data" / "iden_test").utt2spk)
    assert held and not held & set(DataDir.load(tmp_path / "data" / "train").utt2spk)
    _run("voxceleb", tmp_path, *args, "--stage", "3", "--stop_stage", "3")
    assert (tmp_path / "exp" / "tiny_cnaam" / "checkpoints" / "epoch_0002.pt").is_file()
    assert not (tmp_path / "exp" / "tiny_cnaam" / "avg_model.pt").exists()
    _run("voxceleb", tmp_path, *args, "--stage", "4")
    _check_outputs(tmp_path / "exp", ["tiny_aam", "tiny_cnaam"], "veri_test2.txt")
    before = _snapshot(tmp_path / "data", tmp_path / "exp")
    log = _run("voxceleb", tmp_path, *args)  # every stage again: all finished, nothing may change
    assert _snapshot(tmp_path / "data", tmp_path / "exp") == before
    assert log.count("skipping") == 3 + 4 * 2 + 1  # stages 1, 2, 8; 3, 4, 5, 7 per system; 6 (TDE) for cnaam

    # --gpus passes through to torchrun: without CUDA the two ranks train and extract on CPU over gloo
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    _run("voxceleb", tmp_path, *args, "--systems", "tiny_cnaam", "--exp", "exp_ddp", "--gpus", "0,1",
         "--master_port", port, "--stage", "3", "--stop_stage", "4")
    e = tmp_path / "exp_ddp" / "tiny_cnaam"
    assert torch.load(e / "checkpoints" / "epoch_0002.pt", weights_only=True)["world_size"] == 2
    subprocess.run([str(Path(sys.executable).parent / "spkcausal"), "extract-dirs", "--exp", str(e), "--data",
                    str(tmp_path / "data" / "vox1_test"), "--out-dir", str(tmp_path / "single"), "--num-workers",
                    "0"], check=True, env=_env(), capture_output=True)
    sharded = np.load(e / "emb" / "vox1_test" / "embeddings.npy")  # rank slices merged back in key order
    assert np.allclose(sharded, np.load(tmp_path / "single" / "vox1_test" / "embeddings.npy"), atol=1e-5)


@pytest.mark.slow
def test_cnceleb_recipe_end_to_end(tmp_path):
    fx = make_cnceleb(tmp_path / "cn")
    args = ["--cn1_root", str(fx["cn1_root"]), "--cn2_root", str(fx["cn2_root"]), "--combine_min_sec", "1.0",
            "--systems", "tiny_cnaam", "--many", "2", "--few", "2", "--train_overrides",
            "data.min_seconds=0.3 data.chunk_seconds=0.3", *COMMON]
    _run("cnceleb", tmp_path, *args, "--stop_stage", "4")
    _run("cnceleb", tmp_path, *args, "--stage", "5")
    exp = tmp_path / "exp"
    _check_outputs(exp, ["tiny_cnaam"], "trials_concat")
    # the Avg protocol was scored too, with the enrolment map
    avg = read_scores(exp / "tiny_cnaam" / "scores" / "cosine" / "trials_avg.score", keys=True)
    assert len(avg) == fx["trials"] and all(e.endswith("-enroll-avg") for e in avg.enroll)
    before = _snapshot(tmp_path / "data", exp)
    _run("cnceleb", tmp_path, *args, "--stage", "5", "--stop_stage", "6")
    assert _snapshot(tmp_path / "data", exp) == before


@pytest.mark.slow
def test_librispeech_recipe_end_to_end(tmp_path):
    make_librispeech(tmp_path / "ls")
    args = ["--libri_root", str(tmp_path / "ls"), "--eval_set", "dev-clean", "--num_trials", "20",
            "--num_dev_trials", "20", "--systems", "tiny_cnaam", "--many", "3", "--few", "3", "--train_overrides",
            "data.min_seconds=0.3 data.chunk_seconds=0.3", *COMMON]
    _run("librispeech", tmp_path, *args, "--stop_stage", "1")
    trials = (tmp_path / "data" / "trials" / "dev-clean").read_text().split("\n")
    assert len([t for t in trials if t]) == 20
    _run("librispeech", tmp_path, *args, "--stage", "2")
    exp = tmp_path / "exp"
    _check_outputs(exp, ["tiny_cnaam"], "dev-clean")
    alpha = json.loads((exp / "tiny_cnaam" / "tde_alpha.json").read_text())
    assert len(alpha["eer"]) == 4 and all(0 <= v <= 1 for v in alpha["eer"])  # dev-trial EER curve recorded
    before = _snapshot(tmp_path / "data", exp)
    _run("librispeech", tmp_path, *args, "--stage", "1", "--stop_stage", "1")
    _run("librispeech", tmp_path, *args, "--stage", "8")
    assert _snapshot(tmp_path / "data", exp) == before
    assert math.isfinite(json.loads((exp / "report.json").read_text())["rows"][0]["verification"]["eer"])
