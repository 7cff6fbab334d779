"""The paper's systems that were missing (docs/causal.md, "The paper's rows"): Capsule and Capsule-TDE, Cosine-TDE,
Decouple-NCM and Decouple-LWS, each against a direct NumPy computation, and the paper-table report."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from spkcausal.data.embeddings import EmbeddingStore, write_store
from spkcausal.inference.decoupled import _linear_probe, decouple, learn_weight_scales
from spkcausal.inference.identify import identify
from spkcausal.inference.tde import tde_store
from spkcausal.nn.checkpoint import load_checkpoint, save_checkpoint
from spkcausal.nn.config import merge_defaults
from spkcausal.nn.heads import build_head, squash_heads
from spkcausal.nn.network import build_network
from spkcausal.nn.tde import tde_embeddings, tde_logits
from spkcausal.report.paper import K_ROWS, NOT_RUN, PAPER_ROWS
from spkcausal.report.results import update_results
from spkcausal.utils import UsageError

REPO = Path(__file__).resolve().parents[1]


def _chunks(a: np.ndarray, k: int) -> list[np.ndarray]:
    return np.split(a, k, axis=-1)


def _np_unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _np_squash(a: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    return n / (1 + n) * a / n


def _trained_head(name: str = "causal_norm_aam", **kw) -> tuple[torch.nn.Module, np.ndarray]:
    """A head whose x_bar has been tracked on a few random batches (float64, so formulas compare at 1e-10)."""
    torch.manual_seed(0)
    head = build_head(name, 12, 5, **kw).double()
    head.train()
    for _ in range(3):
        head(torch.randn(8, 12, dtype=torch.float64) + 0.5, torch.randint(0, 5, (8,)))
    head.eval()
    return head, np.random.default_rng(1).normal(size=(7, 12)) * np.array([0.2] * 6 + [4.0] * 6)


# ------------------------------------------------------------------ Capsule, Capsule-TDE, Cosine-TDE


@pytest.mark.parametrize("k", [1, 2])
def test_capsule_squash_and_logits_equal_the_direct_formulas(k):
    head, x = _trained_head(num_heads=k, tau=16.0, gamma=1 / 32, margin=0.3, feature_norm="capsule")
    xt = torch.from_numpy(x)
    sq = np.concatenate([_np_squash(c) for c in _chunks(x, k)], axis=-1)
    np.testing.assert_allclose(squash_heads(xt, k).numpy(), sq, rtol=1e-12, atol=1e-14)  # float64 both sides
    norms = [np.linalg.norm(c, axis=-1) for c in _chunks(x, k)]
    assert all(np.all((n / (1 + n) < 1) & (n > 0)) for n in norms)  # the squash shortens: not l2's unit length
    w = head.weight.detach().numpy()
    y = sum(xs @ (wk / (np.linalg.norm(wk, axis=-1, keepdims=True) + 1 / 32)).T
            for xs, wk in zip(_chunks(sq, k), _chunks(w, k))) * 16.0 / k
    np.testing.assert_allclose(head(xt).detach().numpy(), y, rtol=1e-10)  # float64 head vs float64 formula
    # training logits: the margin on each chunk's angle, scaled by r_i^k and the squash factor q(||x^k||)
    labels = np.array([0, 1, 2, 3, 4, 0, 1])
    head.train()
    got = head(xt, torch.from_numpy(labels)).detach().numpy()
    want = 0.0
    for xk, wk in zip(_chunks(x, k), _chunks(w, k)):
        wn, xn = np.linalg.norm(wk, axis=-1), np.linalg.norm(xk, axis=-1, keepdims=True)
        cos = _np_unit(xk) @ _np_unit(wk).T
        theta = np.arccos(np.clip(cos, -1, 1)) + 0.3 * np.eye(5)[labels]
        assert np.all(theta < np.pi)  # inside ArcFace's monotone range: no threshold substitute needed
        want = want + (wn / (wn + 1 / 32)) * (xn / (1 + xn)) * np.cos(theta)
    np.testing.assert_allclose(got, 16.0 / k * want, rtol=1e-10)  # float64


@pytest.mark.parametrize("k", [1, 2])
def test_capsule_tde_logits_embeddings_and_store_equal_the_direct_formula(k, tmp_path):
    head, x = _trained_head(num_heads=k, tau=16.0, gamma=1 / 32, feature_norm="capsule")
    alpha, mean = 1.5, head.mean_feature.numpy()
    d = np.concatenate([_np_unit(c) for c in _chunks(mean, k)])
    e = np.concatenate([_np_squash(xk) - alpha * (_np_unit(xk) @ dk)[:, None] * dk
                        for xk, dk in zip(_chunks(x, k), _chunks(d, k))], axis=-1)
    w = head.weight.detach().numpy()
    wt = np.concatenate([wk / (np.linalg.norm(wk, axis=-1, keepdims=True) + 1 / 32) for wk in _chunks(w, k)], -1)
    y = 16.0 / k * e @ wt.T
    np.testing.assert_allclose(tde_logits(head, torch.from_numpy(x), alpha=alpha).numpy(), y, rtol=1e-10)  # float64
    got_e = tde_embeddings(x, mean, alpha, k, "capsule")
    np.testing.assert_allclose(got_e, e, rtol=1e-10, atol=1e-12)  # float64
    # float64
    np.testing.assert_allclose(head.classify_normalized(torch.from_numpy(got_e)).detach().numpy(), y, rtol=1e-10)
    # alpha = 0 is the plain capsule head; the l2 form would differ (the squash is not unit length)
    np.testing.assert_allclose(tde_logits(head, torch.from_numpy(x), alpha=0.0).numpy(),  # float64 both sides
                               head(torch.from_numpy(x)).detach().numpy(), rtol=1e-10)
    assert not np.allclose(tde_embeddings(x, mean, alpha, k), e)  # alpha != 0 moves the embeddings far beyond rounding
    # a raw store extracted from a capsule head records its feature normalisation, and tde-apply uses it
    keys = [f"u{i}" for i in range(len(x))]
    write_store(tmp_path / "raw", keys, x.astype(np.float32), {"num_heads": k, "feature_norm": "capsule"},
                mean.astype(np.float32))
    tde_store(tmp_path / "raw", tmp_path / "tde", alpha)
    # a float32 store of float64 embeddings: 6e-8 relative
    np.testing.assert_allclose(EmbeddingStore.open(tmp_path / "tde").get(keys), e, rtol=1e-4, atol=1e-5)


def test_cosine_tde_equals_the_de_confound_tde_formula_at_gamma_0():
    head, x = _trained_head(num_heads=2, tau=16.0, gamma=0.0)
    alpha, mean, w = 2.0, head.mean_feature.numpy(), head.weight.detach().numpy()
    want = 0.0
    for xk, wk, mk in zip(_chunks(x, 2), _chunks(w, 2), _chunks(mean, 2)):
        dk = _np_unit(mk)
        # design.md section 2 with gamma = 0: w/(||w|| + 0) is the unit weight, so every term is a cosine
        want = want + _np_unit(xk) @ _np_unit(wk).T - alpha * (_np_unit(xk) @ dk)[:, None] * (_np_unit(wk) @ dk)[None]
    want = 16.0 / 2 * want
    np.testing.assert_allclose(tde_logits(head, torch.from_numpy(x), alpha=alpha).numpy(), want, rtol=1e-10)  # float64
    raw = tde_logits(head.weight.detach(), torch.from_numpy(x), head.mean_feature, alpha, 2, 16.0, 0.0)
    np.testing.assert_allclose(raw.numpy(), want, rtol=1e-10)  # float64
    # with alpha = 0 Cosine-TDE is the plain two-chunk cosine classifier
    np.testing.assert_allclose(tde_logits(head, torch.from_numpy(x), alpha=0.0).numpy(),  # float64 both sides
                               head(torch.from_numpy(x)).detach().numpy(), rtol=1e-10)


def test_feature_norm_is_checked_and_off_by_default():
    assert build_head("causal_norm", 8, 3).feature_norm == "l2"
    with pytest.raises(UsageError, match="feature_norm"):
        build_head("causal_norm_aam", 8, 3, feature_norm="squash")
    with pytest.raises(UsageError, match="feature_norm"):
        build_head("aam", 8, 3, feature_norm="capsule")  # only the Causal Norm heads have it


@pytest.mark.parametrize("name", ["cosine_k1", "cosine_k2", "capsule_k1", "capsule_k2", "cnaam_k1"])
def test_paper_demo_configs_change_only_the_head_of_de_confound(name):
    from spkcausal.nn.config import load_yaml

    base = load_yaml(REPO / "recipes" / "mini" / "conf" / "cnaam.yaml")
    cfg = load_yaml(REPO / "recipes" / "mini" / "conf" / "paper" / f"{name}.yaml")
    assert {k: v for k, v in cfg.items() if k != "head"} == {k: v for k, v in base.items() if k != "head"}
    want = {**base["head"], "num_heads": int(name[-1]),
            "gamma": 0.0 if name.startswith("cosine") else base["head"]["gamma"]}
    if name.startswith("capsule"):
        want["feature_norm"] = "capsule"
    assert cfg["head"] == want


# ------------------------------------------------------------------ Decouple-NCM and Decouple-LWS


@pytest.fixture(scope="module")
def base_exp(tmp_path_factory):
    """A 'trained' AAM system on disk: avg_model.pt (tiny extractor + AAM head), training / val / test dirs with
    long-tailed speakers and their stored embeddings (clusters around a centre per speaker)."""
    root = tmp_path_factory.mktemp("decoupled")
    rng = np.random.default_rng(0)
    speakers, counts = [f"spk{i}" for i in range(6)], [30, 20, 10, 5, 3, 2]
    centres = rng.normal(size=(6, 16))
    dirs = {}
    for split, n_of in (("train", counts), ("val", [2] * 6), ("test", [4] * 6)):
        utts = [(f"{s}-{split}{j:02d}", i) for i, s in enumerate(speakers) for j in range(n_of[i])]
        x = np.stack([centres[i] + 0.8 * rng.normal(size=16) for _, i in utts]) * rng.uniform(0.5, 3, (len(utts), 1))
        d = root / split
        d.mkdir()
        (d / "utt2spk").write_text("".join(f"{u} {speakers[i]}\n" for u, i in sorted(utts)))
        write_store(root / "emb" / split, [u for u, _ in utts], x.astype(np.float32))
        dirs[split] = (d, root / "emb" / split, [u for u, _ in utts], np.array([i for _, i in utts]), x)
    cfg = merge_defaults({"model": {"name": "resnet_tiny", "embed_dim": 16}, "head": {"name": "aam", "scale": 16.0}})
    torch.manual_seed(0)
    net = build_network(cfg, 6)
    exp = root / "aam"
    exp.mkdir()
    save_checkpoint({"config": cfg, "model": net.model.state_dict(), "head": net.head.state_dict(),
                     "speakers": speakers}, exp / "avg_model.pt")
    (exp / "emb").symlink_to(root / "emb")
    return exp, dirs


def _decouple(base_exp, method: str, out: Path) -> dict:
    exp, dirs = base_exp
    return decouple(exp, method, out, dirs["train"][1], dirs["train"][0], dirs["val"][1], dirs["val"][0],
                    epochs=4, batch_size=16, lr=0.5, seed=3)


def test_ncm_predictions_equal_a_numpy_nearest_mean_on_the_stored_embeddings(base_exp, tmp_path):
    exp, dirs = base_exp
    info = _decouple(base_exp, "ncm", tmp_path / "aam_ncm")
    assert info["method"] == "ncm" and info["n_train"] == 70
    _, _, _, ytr, xtr = dirs["train"]
    unit = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
    means = np.stack([unit[ytr == c].mean(axis=0) for c in range(6)])
    test_dir, test_store, utts, yte, xte = dirs["test"]
    cos = (xte / np.linalg.norm(xte, axis=1, keepdims=True)) @ (means / np.linalg.norm(means, axis=1,
                                                                                      keepdims=True)).T
    want = cos.argmax(axis=1)
    res = identify(test_store, test_dir, dirs["train"][0], exp_dir=tmp_path / "aam_ncm",
                   predictions=tmp_path / "pred.npz", n_boot=10, many=15, few=4)
    pred = np.load(tmp_path / "pred.npz")
    order = {u: i for i, u in enumerate(utts)}
    idx = np.array([order[str(u)] for u in pred["utts"]])
    np.testing.assert_array_equal(pred["y_pred"], want[idx])
    np.testing.assert_array_equal(pred["y_true"], yte[idx])
    per_class = [np.mean(want[yte == c] == c) for c in range(6)]
    assert res["overall"] == pytest.approx(np.mean(per_class))  # ratios of counts
    # the system reuses the base's extractor and embeddings
    assert (tmp_path / "aam_ncm" / "emb").resolve() == (exp / "emb").resolve()


@pytest.mark.slow
def test_lws_learns_only_the_scales_of_frozen_weights_on_a_frozen_backbone(base_exp, tmp_path):
    exp, dirs = base_exp
    info = _decouple(base_exp, "lws", tmp_path / "aam_lws")
    base, new = load_checkpoint(exp / "avg_model.pt"), load_checkpoint(tmp_path / "aam_lws" / "avg_model.pt")
    assert set(new["model"]) == set(base["model"])
    for name, t in base["model"].items():  # the backbone, tensor by tensor
        assert torch.equal(new["model"][name], t), name
    # the frozen classifier: tau_norm's natural-sampling linear probe, re-trained here with the same seed on the
    # stored float32 embeddings the library reads (the unrounded ones would train to other float32 weights)
    _, _, _, ytr, xtr = dirs["train"]
    w0 = _linear_probe(xtr.astype(np.float32).astype(np.float64), ytr, 6, "natural", 4, 16, 0.5, 3).weight.detach()
    w = new["head"]["weight"]
    f = torch.tensor(info["scales"], dtype=w.dtype)
    assert set(new["head"]) == {"weight"} and new["config"]["head"] == {"name": "linear", "bias": False}
    # only a scale per class: the same float32 training replayed on the same inputs, then the same float32 product:
    # equal (measured, every kernel); 1e-6 spare
    torch.testing.assert_close(w, f[:, None] * w0, rtol=1e-6, atol=1e-7)
    cos = torch.nn.functional.cosine_similarity(w, w0, dim=1)
    # ... directions kept: a float32 cosine of parallel 16-dim rows, within (16 + 3) eps (measured 1 ulp)
    torch.testing.assert_close(cos, torch.ones(6, dtype=cos.dtype), rtol=0, atol=19 * torch.finfo(torch.float32).eps)
    assert (f > 0).all() and f.std() > 1e-3  # learned, not left at 1
    # learn_weight_scales never writes to W
    wc = w0.clone()
    learn_weight_scales(xtr.astype(np.float32), ytr, wc, epochs=1, batch_size=8)
    assert torch.equal(wc, w0)
    assert json.loads((tmp_path / "aam_lws" / "decoupled.json").read_text())["scale_sampler"] == "class_balanced"


# ------------------------------------------------------------------ the paper table


def _fake_run(exp: Path, rng: np.random.Generator, variants=("cosine",)) -> dict:
    figs = {}
    for v in variants:
        acc = {g: float(rng.uniform(0.1, 0.9)) for g in ("many", "medium", "few", "overall")}
        eer, few = float(rng.uniform(0.1, 0.3)), float(rng.uniform(0.1, 0.3))
        update_results(exp, v, identification={**acc, **{f"{g}_ci": [a - 0.05, a + 0.05] for g, a in acc.items()}},
                       verification={"eer": eer, "eer_ci": [eer - 0.01, eer + 0.01]},
                       seen={"groups": {"few": {"eer": few, "min_dcf": {}}}},
                       tde_alpha=1.0 if v == "tde" else None)
        figs[v] = {"acc_many": acc["many"], "acc_overall": acc["overall"], "eer": eer, "seen_eer_few": few}
    return figs


def test_paper_table_prints_every_row_in_the_paper_order_and_marks_the_missing(tmp_path, capsys):
    from spkcausal.cli import main

    rng = np.random.default_rng(5)
    runs = {"aam": ("cosine",), "cnaam": ("cosine", "tde"), "aam_ncm": ("cosine",), "capsule_k1": ("cosine", "tde")}
    exps, figs = [], {}
    for name, variants in runs.items():
        for seed in (0, 1, 2):
            e = tmp_path / "exp" / f"{name}_seed{seed}"
            figs.setdefault(name, []).append(_fake_run(e, rng, variants))
            exps.append(str(e))
    one = tmp_path / "exp" / "focal"  # one run, no seeds: its bootstrap interval is the cell's
    focal = _fake_run(one, rng)
    assert main(["report", *exps, str(one), "--paper-table", "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    names = [ln.split("|")[1].strip() for ln in lines if not ln.startswith("| Paper row")]
    assert names == [r.name for r in PAPER_ROWS] + [r.name for r in K_ROWS]  # all rows, in order, none dropped
    row = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in lines}
    assert row["OLTR"][2:] == [NOT_RUN] * 6 and row["Decouple-OLTR"][2:] == [NOT_RUN] * 6
    assert row["Capsule (K=2)"][2] == NOT_RUN and row["Capsule (K=1)"][1] == "3"
    # a 3-seed cell: mean [t-interval over seeds], checked against scipy
    vals = np.array([f["tde"]["acc_many"] for f in figs["cnaam"]]) * 100
    lo, hi = stats.t.interval(0.95, 2, loc=vals.mean(), scale=stats.sem(vals))
    assert row["De-confound-TDE"][2] == f"{vals.mean():.2f} [{lo:.2f}, {hi:.2f}]"
    assert row["De-confound-TDE (K=2)"][2:] == row["De-confound-TDE"][2:]
    assert "alpha 1" in row["De-confound-TDE"][0]
    assert row["Baseline"][2:] == row["Decouple-Joint"][2:]  # the same jointly trained system
    eer = focal["cosine"]["eer"] * 100
    assert row["Focal Loss"][6] == f"{eer:.2f} [{eer - 1:.2f}, {eer + 1:.2f}]" and row["Focal Loss"][1] == "1"
    assert (tmp_path / "out" / "paper_table.md").read_text() == text.split("\nwrote ")[0]
    content = json.loads((tmp_path / "out" / "paper_table.json").read_text())
    assert [r["row"] for r in content["paper_rows"] if r["run"]] == ["Focal Loss", "Decouple-Joint", "Decouple-NCM",
                                                                    "Baseline", "De-confound", "De-confound-TDE"]
    # a row can be pointed at another system; a wrong name is one clear error
    assert main(["report", *exps, "--paper-table", "--paper-map", "OLTR=aam_ncm", "--out", str(tmp_path)]) == 0
    assert NOT_RUN not in [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| OLTR ")][0]
    assert main(["report", *exps, "--paper-table", "--paper-map", "Nope=aam"]) == 2
    assert "--paper-map expects NAME=SYSTEM" in capsys.readouterr().err


def test_exported_embedder_applies_capsule_tde_as_the_library_does():
    from spkcausal.inference.export import Embedder

    class Ident(torch.nn.Module):
        def forward(self, x, lengths):
            return x

    head, x = _trained_head(num_heads=2, tau=16.0, gamma=1 / 32, feature_norm="capsule")
    mean = head.mean_feature.float()
    xt = torch.from_numpy(x).float()
    for capsule, norm in ((True, "capsule"), (False, "l2")):
        emb = Embedder(Ident(), None, mean, 2, 0.75, capsule=capsule)(xt, torch.ones(len(x)))
        # float32 TDE vs the float64 formula on unit chunks: ~(d + 3) eps
        np.testing.assert_allclose(emb.numpy(), tde_embeddings(xt, mean, 0.75, 2, norm).numpy(), rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.slow
def test_recipes_treat_ncm_and_lws_as_decoupled_and_the_report_names_them():
    import subprocess

    from spkcausal.report.results import decoupled_name, system_name, variant_label

    # the recipes loop over the run plan (stages.sh plan_runs / run_fields over `spkcausal plan`)
    script = (f". {REPO / 'recipes/common/stages.sh'}; for sk in 'aam+ncm 0' 'aam+lws' 'paper/capsule_k2 2'; do "
              "set -- $sk; plan_runs $1 \"${2:-}\"; run_fields \"${RUNS[0]}\"; echo $name $kind; done")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split("\n")[:3] == ["aam_ncm_seed0 decoupled", "aam_lws decoupled", "capsule_k2_seed2 train"]
    assert decoupled_name({"method": "ncm"}, {"head": {"name": "aam"}}) == "NCM (on Baseline (AAM))"
    assert decoupled_name({"method": "lws"}, {"head": {"name": "aam"}}) == "LWS (on Baseline (AAM))"
    capsule = system_name({"head": {"name": "causal_norm_aam", "feature_norm": "capsule"}})
    assert capsule == "Capsule (Causal Norm AAM)"
    assert variant_label(capsule, "tde") == "Capsule-TDE (Causal Norm AAM)"


def test_one_registry_of_decoupled_methods_and_one_row_normaliser():
    from spkcausal.data.embeddings import unit_rows
    from spkcausal.inference.decoupled import DECOUPLE_METHODS, DECOUPLERS

    assert sorted(DECOUPLE_METHODS) == DECOUPLERS.names()
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]], np.float32)
    got = unit_rows(x)
    # exact: 3/5, 4/5 and 1e-3/1e-3 are the float64 quotients of the float64 inputs; a zero row stays zero
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, np.array([[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]]))
