"""Closed-set identification and TDE alpha selection against independent NumPy computations, and the
held-out split of a data dir."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spkcausal.data.datadir import DataDir, write_kv
from spkcausal.data.embeddings import write_store
from spkcausal.data.subsets import split_heldout
from spkcausal.inference.identify import identify
from spkcausal.inference.tde_alpha import choose_alpha
from spkcausal.nn.heads import AAMHead, CausalNormAAMHead
from spkcausal.utils import DataError

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



# ---------------------------------------------------------------- identification and alpha


def _ckpt(path: Path, head, name: str, speakers: list[str], **head_cfg) -> Path:
    torch.save({"config": {"head": {"name": name, **head_cfg}}, "head": head.state_dict(), "speakers": speakers},
               path)
    return path


def _np_tde_logits(w, x, xbar, alpha, k, tau, gamma):
    """Independent float64 loop over classes and chunks of the TDE logit formula (docs/design.md section 2)."""
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
            assert res[g] == pytest.approx(want[g]), (alpha, g)  # accuracies: ratios of counts, exact
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
    # ratios of counts
    assert res["overall"] == pytest.approx(want["overall"]) and res["few"] == pytest.approx(want["few"])
    with pytest.raises(DataError, match="Causal Norm"):
        identify(s["tmp"] / "emb", s["tmp"] / "held", s["tmp"] / "train", ckpt=ckpt, tde_alpha=0.5)


def test_choose_alpha_on_dev_matches_numpy_and_records_curve(iden_setup):
    s = iden_setup
    xbar = s["head"].mean_feature.numpy().astype(np.float64)
    alphas = [0.0, 0.4, 0.8, 1.2, 1.6]
    res = choose_alpha(s["tmp"] / "emb", ckpt=s["ckpt"], data_dir=s["tmp"] / "held", alphas=alphas,
                       out=s["tmp"] / "alpha.json", heuristic=False)
    assert res["alphas"] == alphas and res["alpha_source"] == "grid"
    accs = [_group_acc(s["y"], _np_tde_logits(s["w"], s["x"], xbar, a, 2, 10.0, 0.05).argmax(1), s["counts"], 6,
                       3)["overall"] for a in alphas]
    assert res["accuracy"] == pytest.approx(accs)  # ratios of counts
    best = max(range(len(alphas)), key=lambda i: (accs[i], -alphas[i]))
    assert res["alpha"] == alphas[best]
    assert json.loads((s["tmp"] / "alpha.json").read_text())["alpha"] == res["alpha"]
    # the heuristic 1 / mean cos(x^k, d^k), computed directly
    d = len(xbar) // 2
    cos = [s["x"][:, c * d:(c + 1) * d] @ (xbar[c * d:(c + 1) * d] / np.linalg.norm(xbar[c * d:(c + 1) * d]))
           / np.linalg.norm(s["x"][:, c * d:(c + 1) * d], axis=1) for c in range(2)]
    with_h = choose_alpha(s["tmp"] / "emb", ckpt=s["ckpt"], data_dir=s["tmp"] / "held", alphas=alphas)
    h = 1.0 / np.mean(cos)
    # float32 store vs float64 here: cosines of d = 8 terms are <= 11 eps (1.3e-6) relative off
    assert with_h["heuristic_alpha"] == pytest.approx(h, rel=1e-5) and "dev embeddings" in with_h["heuristic_from"]
    # the heuristic is one more candidate, in order, with its own accuracy
    assert with_h["alphas"] == sorted(alphas + [with_h["heuristic_alpha"]])
    i = with_h["alphas"].index(with_h["heuristic_alpha"])
    acc_h = _group_acc(s["y"], _np_tde_logits(s["w"], s["x"], xbar, with_h["heuristic_alpha"], 2, 10.0, 0.05).argmax(1),
                       s["counts"], 6, 3)["overall"]
    assert with_h["accuracy"][i] == pytest.approx(acc_h)  # ratios of counts
    assert with_h["alpha_source"] == ("heuristic" if acc_h > max(accs) else "grid")
    # computed on a training store when one is given, and said so
    write_store(s["tmp"] / "train_emb", [f"t{i}" for i in range(len(s["x"]))], s["x"][::-1].astype(np.float32))
    on_train = choose_alpha(s["tmp"] / "emb", ckpt=s["ckpt"], data_dir=s["tmp"] / "held", alphas=alphas,
                            heuristic_emb=s["tmp"] / "train_emb")
    assert on_train["heuristic_alpha"] == pytest.approx(h, rel=1e-5)  # as above (float32 store)
    assert on_train["heuristic_from"].startswith("training embeddings")


def test_alpha_grid_reaches_three_in_quarter_steps():
    from spkcausal.inference.tde_alpha import ALPHA_GRID

    # the grid is exact in binary
    assert ALPHA_GRID[0] == 0.0 and ALPHA_GRID[-1] == 3.0 and np.allclose(np.diff(ALPHA_GRID), 0.25)


def _eer(scores, labels):
    """EER by brute force over thresholds: the crossing of Pmiss and Pfa (interpolated)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    d = (1 - tpr) - fpr
    j = int(np.argmax(d <= 0))
    w = d[j - 1] / (d[j - 1] - d[j])
    return float(fpr[j - 1] + w * (fpr[j] - fpr[j - 1]))


def test_choose_alpha_by_dev_trial_eer_matches_numpy(iden_setup):
    s = iden_setup
    keys = sorted((s["tmp"] / "emb" / "keys.txt").read_text().split())
    spk = {k: k.split("-")[0] for k in keys}
    lines, pairs = [], []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            lab = spk[a] == spk[b]
            lines.append(f"{a} {b} {'target' if lab else 'nontarget'}\n")
            pairs.append((a, b, lab))
    (s["tmp"] / "dev_trials").write_text("".join(lines))
    alphas = [0.0, 0.5, 1.0, 2.0]
    res = choose_alpha(s["tmp"] / "emb", ckpt=s["ckpt"], data_dir=s["tmp"] / "held", trials=s["tmp"] / "dev_trials",
                       alphas=alphas, criterion="dev_eer", heuristic=False)
    emb = dict(zip((s["tmp"] / "emb" / "keys.txt").read_text().split(),
                   np.load(s["tmp"] / "emb" / "embeddings.npy").astype(np.float64)))
    xbar = s["head"].mean_feature.numpy().astype(np.float64)
    want = []
    for a in alphas:
        def tde(x, a=a):
            parts = []
            for c in range(2):
                xk = x[c * 4:(c + 1) * 4] / np.linalg.norm(x[c * 4:(c + 1) * 4])
                dk = xbar[c * 4:(c + 1) * 4] / np.linalg.norm(xbar[c * 4:(c + 1) * 4])
                parts.append(xk - a * (xk @ dk) * dk)
            return np.concatenate(parts)
        sc = [tde(emb[x]) @ tde(emb[y]) / np.linalg.norm(tde(emb[x])) / np.linalg.norm(tde(emb[y]))
              for x, y, _ in pairs]
        want.append(_eer(np.array(sc), np.array([p[2] for p in pairs])))
    assert res["eer"] == pytest.approx(want, abs=1e-9)  # float64 EER on the same scores
    best = min(range(len(alphas)), key=lambda i: (want[i], alphas[i]))  # ties: the smaller alpha
    assert res["alpha"] == alphas[best] and res["criterion_name"] == "dev_eer"
    assert len(res["accuracy"]) == len(alphas)  # the accuracy curve is still recorded beside it
    with pytest.raises(ValueError, match="needs a labelled dev trial list"):
        choose_alpha(s["tmp"] / "emb", ckpt=s["ckpt"], data_dir=s["tmp"] / "held", criterion="dev_min_dcf")


def test_identify_keeps_predictions_and_intervals(iden_setup):
    s = iden_setup
    res = identify(s["tmp"] / "emb", s["tmp"] / "held", s["tmp"] / "train", ckpt=s["ckpt"], many=6, few=3,
                   predictions=s["tmp"] / "pred" / "cosine.npz", n_boot=300)
    saved = np.load(res["predictions"])
    held = dict(line.split() for line in (s["tmp"] / "held" / "utt2spk").read_text().splitlines())
    assert sorted(saved["utts"].tolist()) == sorted(held)
    assert [saved["speakers"][y] for y in saved["y_true"]] == [held[u] for u in saved["utts"]]
    # the saved predictions give the recorded accuracies again
    again = _group_acc(saved["y_true"], saved["y_pred"], saved["train_counts"], 6, 3)
    for g in ("many", "medium", "few", "overall"):
        assert res[g] == pytest.approx(again[g])  # the same computation twice: equal
        lo, hi = res[f"{g}_ci"]
        assert lo - 1e-12 <= res[g] <= hi + 1e-12
    assert saved["speakers"].tolist() == ["s0", "s1", "s2", "s3", "s4"]
