"""Long-tail head options (LDAM margins, sub-centres, feature transfer, the capsule feature norm): formulas, defaults,
exact resume, loading."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_train import assert_same_weights, kill_after_checkpoint, make_corpus, subprocess_env, tiny_config

from spkcausal.data.datadir import DataDir
from spkcausal.inference.tde import tde_embeddings, tde_logits
from spkcausal.nn.assemble import assemble
from spkcausal.nn.checkpoint import find_resume_checkpoint, load_checkpoint
from spkcausal.nn.config import load_yaml, merge_defaults, save_config
from spkcausal.nn.heads import build_head
from spkcausal.nn.network import build_network
from spkcausal.train.trainer import train
from spkcausal.utils import UsageError

REPO = Path(__file__).resolve().parents[1]
HEADS = ("aam", "causal_norm_aam")
COUNTS = np.array([40, 10, 5, 1, 2])


def _head(name: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    extra = {"num_heads": 2} if name == "causal_norm_aam" else {}
    return build_head(name, 8, len(COUNTS), scale=16.0, margin=0.3, **extra, **kw).double()


def _direct_logits(head, x: np.ndarray, labels: np.ndarray | None, m_rows: np.ndarray | None) -> np.ndarray:
    """Logits from the formulas in numpy: per chunk r * cos(theta + m [target]) summed, best sub-centre first."""
    w = head.weight.detach().double().numpy()
    w = w[:, None] if w.ndim == 2 else w  # (C, S, D)
    causal = hasattr(head, "num_heads")
    chunks = head.num_heads if causal else 1
    d = x.shape[1] // chunks
    cos, ratio = [], []
    for k in range(chunks):
        xk, wk = x[:, k * d:(k + 1) * d], w[..., k * d:(k + 1) * d]
        wn = np.linalg.norm(wk, axis=-1)
        cos.append(np.einsum("bd,csd->bcs", xk / np.linalg.norm(xk, axis=1, keepdims=True), wk / wn[..., None]))
        ratio.append(wn / (wn + head.gamma) if causal else np.ones_like(wn))
    free = sum(r[None] * c for r, c in zip(ratio, cos))  # margin-free per sub-centre (B, C, S)
    best = free.argmax(-1)
    out = 0.0
    for c, r in zip(cos, ratio):
        cb = np.take_along_axis(c, best[..., None], -1)[..., 0]
        rb = np.take_along_axis(np.broadcast_to(r, c.shape), best[..., None], -1)[..., 0]
        if labels is not None:
            rows = np.arange(len(labels))
            theta = np.arccos(cb[rows, labels])
            assert (theta + m_rows < np.pi).all()  # inside ArcFace's monotonic range: plain cos(theta + m)
            cb = cb.copy()
            cb[rows, labels] = np.cos(theta + m_rows)
        out = out + rb * cb
    return head.scale / chunks * out


@pytest.mark.parametrize("name", HEADS)
def test_ldam_margins_follow_the_formula_and_the_schedule(name):
    head = _head(name, class_margins="ldam", class_counts=COUNTS).train()
    m_c = 0.3 * (COUNTS.min() / COUNTS) ** 0.25
    # float32 margins of a float64 formula: 0.5 ulp of 0.3
    assert np.allclose(head.class_margin(torch.arange(5)).squeeze(-1).numpy(), m_c, atol=1e-7)
    torch.manual_seed(1)
    x, y = torch.randn(12, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 3, 3, 0, 1, 4, 2, 3])
    for m in (0.3, 0.1):  # the schedule's set_margin scales every class margin
        head.set_margin(m)
        got = head(x, y).detach().numpy()
        want = _direct_logits(head, x.numpy(), y.numpy(), m * (COUNTS.min() / COUNTS[y.numpy()]) ** 0.25)
        np.testing.assert_allclose(got, want, atol=1e-6)  # the scale buffer is float32
    # The rarest class gets the full margin, the most frequent one the least.
    assert m_c[3] == pytest.approx(0.3) and m_c.argmin() == 0  # float64
    head.eval()
    # float64 head (.double()) vs float64 formula
    np.testing.assert_allclose(head(x, y).detach().numpy(), _direct_logits(head, x.numpy(), None, None), atol=1e-9)


@pytest.mark.parametrize("name", HEADS)
def test_subcenter_logits_are_the_best_subcentre(name):
    head = _head(name, subcenters=3).train()
    assert tuple(head.weight.shape) == (5, 3, 8)
    torch.manual_seed(2)
    x, y = torch.randn(10, 8, dtype=torch.float64), torch.randint(0, 5, (10,))
    got = head(x, y).detach().numpy()
    np.testing.assert_allclose(got, _direct_logits(head, x.numpy(), y.numpy(), np.full(10, 0.3)), atol=1e-9)  # as above
    head.eval()
    free = head(x).detach().numpy()
    np.testing.assert_allclose(free, _direct_logits(head, x.numpy(), None, None), atol=1e-9)  # as above
    # The best sub-centre is not always the first one (the max is doing something).
    w = F.normalize(head.weight.detach().double(), dim=-1)
    assert len(set(torch.einsum("bd,csd->bcs", F.normalize(x, dim=-1), w).argmax(-1).flatten().tolist())) == 3
    if name == "causal_norm_aam":
        xbar = torch.randn(8, dtype=torch.float64)
        head.mean_feature.copy_(xbar)
        # TDE with alpha 0 is the head; the head on TDE'd embeddings is the TDE logit formula, per sub-centre.
        torch.testing.assert_close(tde_logits(head, x, alpha=0.0), head(x))  # float64 head: default float64 tolerance
        torch.testing.assert_close(head.classify_normalized(tde_embeddings(x, xbar, 0.7, 2)),  # float64, as above
                                   tde_logits(head, x, alpha=0.7))


@pytest.mark.parametrize("name", HEADS)
def test_default_options_leave_the_head_exactly_as_before(name):
    plain, opt = _head(name), _head(name, subcenters=1, class_margins=None, feature_transfer=None,
                                    class_counts=COUNTS)
    assert plain.state_dict().keys() == opt.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), opt.state_dict().values()))
    torch.manual_seed(3)
    x, y = torch.randn(6, 8, dtype=torch.float64), torch.randint(0, 5, (6,))
    assert torch.equal(plain.train()(x, y), opt.train()(x, y))
    assert torch.equal(plain.eval()(x), opt.eval()(x))


def _angles(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    return torch.acos((F.normalize(x, dim=-1) * centres).sum(-1).clamp(-1, 1))


def _cloud(centres: torch.Tensor, labels: torch.Tensor, angle: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Points at the given angle from their class centre, in random directions, with random norms."""
    w = centres[labels]
    t = torch.randn(w.shape, generator=gen, dtype=w.dtype)
    t = F.normalize(t - (t * w).sum(-1, keepdim=True) * w, dim=-1)
    u = torch.cos(angle)[:, None] * w + torch.sin(angle)[:, None] * t
    return u * (1 + torch.rand(len(u), 1, generator=gen, dtype=w.dtype))


@pytest.mark.parametrize("name", HEADS)
def test_feature_transfer_spreads_tail_features_like_the_head_and_is_off_at_eval(name):
    d, counts = 32, np.array([100, 5, 5, 5])
    kw = {"num_heads": 2} if name == "causal_norm_aam" else {}
    torch.manual_seed(0)
    head = build_head(name, d, 4, scale=16.0, margin=0.2, feature_transfer={"head_share": 0.25},
                      class_counts=counts, **kw).double()
    torch.manual_seed(0)
    plain = build_head(name, d, 4, scale=16.0, margin=0.2, **kw).double()
    assert head.feature_transfer.head_mask.tolist() == [True, False, False, False]
    centres = F.normalize(head.weight.detach(), dim=-1)
    gen = torch.Generator().manual_seed(5)
    labels = torch.cat([torch.zeros(300, dtype=torch.long), torch.randint(1, 4, (300,), generator=gen)])
    angle = torch.where(labels == 0, 0.8, 0.15).double()
    x = _cloud(centres, labels, angle, gen)
    head.train()
    out = head.transfer(x, labels)
    tail = labels > 0
    # Head-speaker features are untouched; tail ones keep their norm and now spread like the head's.
    assert torch.equal(out[~tail], x[~tail])
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))  # float64: default 1e-7 is ~1e9 eps64
    spread = head.feature_transfer.spread
    # first batch: the batch's mean theta^2 (float64; the cloud's angles are exact to 1.3e-6 relative, not rounding)
    assert spread.tolist() == pytest.approx([0.64, 0.0225], rel=1e-5)
    before = (_angles(x[tail], centres[labels[tail]]) ** 2).mean().item()
    after = (_angles(out[tail], centres[labels[tail]]) ** 2).mean().item()
    # float64 as above; `after` is a 300-sample estimate of the head's spread, hence 10%
    assert before == pytest.approx(0.0225, rel=1e-5) and after == pytest.approx(0.64, rel=0.1)
    # strength scales the added variance: half of the gap.
    half = build_head(name, d, 4, feature_transfer={"head_share": 0.25, "strength": 0.5}, class_counts=counts,
                      **kw).double()
    half.weight.data.copy_(head.weight.data)
    mid = (_angles(half.train().transfer(x, labels)[tail], centres[labels[tail]]) ** 2).mean().item()
    assert mid == pytest.approx(0.0225 + 0.5 * (0.64 - 0.0225), rel=0.1)  # a sample estimate, as `after`
    # Off at eval and without labels: the same logits as the head without transfer.
    head.eval(), plain.eval()
    assert torch.equal(head(x, labels), plain(x, labels))
    head.train(), plain.train()
    assert torch.equal(head(x), plain(x))
    if name == "causal_norm_aam":  # x_bar tracks the features before any transfer
        head.mean_feature.zero_(), plain.mean_feature.zero_()
        head(x, labels), plain(x, labels)
        assert torch.equal(head.mean_feature, plain.mean_feature)


def test_head_options_reject_typos_and_wrong_types():
    cases = [({"subcentres": 3}, "subcentres"), ({"subcenters": "three"}, "subcenters"),
             ({"subcenters": 0}, "subcenters"), ({"class_margins": "ldan"}, "class_margins"),
             ({"feature_transfer": {"strenght": 1.0}}, "strenght"), ({"feature_transfer": 3}, "feature_transfer"),
             ({"feature_transfer": {"strength": 2.0}}, "strength"),
             ({"feature_transfer": {"head_share": 0.2, "head_min_count": 3}}, "not both")]
    for opts, word in cases:
        cfg = merge_defaults({"model": {"name": "resnet_tiny", "embed_dim": 16}, "head": {"name": "aam", **opts}})
        with pytest.raises(UsageError, match=word):
            build_network(cfg, 4, class_counts=np.ones(4))
    with pytest.raises(UsageError, match="class counts"):
        build_head("aam", 8, 4, class_margins="ldam", class_counts=np.ones(3))


# The head options' demo configs (the loss / sampler ones are checked in tests/test_lt_losses.py).
LT_CONFIGS = [REPO / "recipes" / "mini" / "conf" / "lt" / f"{n}.yaml"
              for n in ("feature_transfer", "ldam", "subcenter")]


@pytest.mark.parametrize("path", LT_CONFIGS, ids=lambda p: p.stem)
def test_lt_demo_configs_change_only_the_head(path):
    base = load_yaml(REPO / "recipes" / "mini" / "conf" / "aam.yaml")
    cfg = load_yaml(path)
    assert {k: v for k, v in cfg.items() if k != "head"} == {k: v for k, v in base.items() if k != "head"}
    extra = set(cfg["head"]) - set(base["head"])
    assert len(extra) == 1 and {k: v for k, v in cfg["head"].items() if k not in extra} == base["head"]
    head = build_network(merge_defaults(cfg), 4, class_counts=np.array([8, 4, 2, 1])).head
    assert {"ldam": head.class_margins == "ldam", "subcenter": head.subcenters == 3,
            "feature_transfer": head.feature_transfer is not None}[path.stem]


# ------------------------------------------------------------------ training: exact resume, loading


METHODS = {"ldam": {"class_margins": "ldam"}, "subcenter": {"subcenters": 3},
           "feature_transfer": {"feature_transfer": {"head_share": 0.25, "strength": 1.0}},
           "capsule": {"feature_norm": "capsule"}}  # the paper's Capsule head (tests/test_paper_systems.py)


@pytest.fixture(scope="module")
def lt_corpus(tmp_path_factory):
    """The tiny corpus cut to a long tail: 6, 3, 2 and 1 utterances."""
    root = tmp_path_factory.mktemp("ltcorpus")
    src = DataDir.load(make_corpus(root, utts_per_spk=6))
    keep = {"spk1": 6, "spk2": 3, "spk3": 2, "spk4": 1}
    utts = [u for u in src.utts if int(u.split("-u")[1]) < keep[src.utt2spk[u]]]
    DataDir(wav={u: src.wav[u] for u in utts}, utt2spk={u: src.utt2spk[u] for u in utts}).write(root / "lt")
    return root / "lt"


def _lt_config(data_dir: Path, exp: Path, method: str, head: str = "aam", **sections) -> dict:
    extra = {"num_heads": 2} if head == "causal_norm_aam" else {}
    return tiny_config(data_dir, exp, sampler={"num_samples": 40},
                       head={"name": head, "scale": 16.0, "margin": 0.2, **extra, **METHODS[method]},
                       margin={"start_epoch": 0, "end_epoch": 1.5},
                       train={"epochs": 2, "batch_size": 8, "ckpt_every_steps": 3, "keep_last": 10}, **sections)


def _assert_same_final(exp: Path, ref: Path) -> None:
    a, b = exp / "checkpoints" / "epoch_0002.pt", ref / "checkpoints" / "epoch_0002.pt"
    assert load_checkpoint(a)["step"] == load_checkpoint(b)["step"] == 10
    assert_same_weights(a, b)


def _killed_and_resumed(cfg: dict, exp: Path, conf: Path) -> None:
    save_config(cfg, conf)
    cmd = [sys.executable, "-m", "spkcausal", "train", "--config", str(conf), "data.num_workers=1"]
    kill_after_checkpoint(cmd, subprocess_env(), step=3)
    ckpt = load_checkpoint(find_resume_checkpoint(exp / "checkpoints"))
    assert ckpt["step"] == 3  # mid-epoch (5 steps per epoch)
    out = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=subprocess_env(), timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_sigkill_mid_epoch_resume_is_exact_and_the_model_loads(method, lt_corpus, tmp_path):
    head = "causal_norm_aam" if method in ("subcenter", "capsule") else "aam"
    torch.set_num_threads(1)
    ref = train(_lt_config(lt_corpus, tmp_path / "ref", method, head))
    assert ref.step == 10
    _killed_and_resumed(_lt_config(lt_corpus, tmp_path / "killed", method, head), tmp_path / "killed",
                        tmp_path / "conf.yaml")
    _assert_same_final(tmp_path / "killed", tmp_path / "ref")

    # Loading for inference rebuilds the head without counts; its buffers come back from the checkpoint.
    tm = assemble(exp_dir=tmp_path / "ref")
    counts = np.array([6, 3, 2, 1])
    if method == "ldam":
        # float32 buffer of a float64 formula: 1 ulp
        np.testing.assert_allclose(tm.head.margin_scale.numpy(), (1 / counts) ** 0.25, rtol=1e-6)
    elif method == "subcenter":
        assert tuple(tm.head.weight.shape) == (4, 3, 16) and tm.is_causal
    elif method == "capsule":  # the option comes back from the config; TDE of its stores needs it
        assert tm.head.feature_norm == tm.feature_norm == "capsule" and tm.is_causal
    else:
        ft = tm.head.feature_transfer
        assert ft.head_mask.tolist() == [True, False, False, False] and (ft.seen == 1).all()
        assert ft.spread[0] > 0 and ft.spread[1] > 0
    from spkcausal.data.embeddings import EmbeddingStore
    from spkcausal.inference.extract import embed_utterances, extract

    store = EmbeddingStore.open(extract(lt_corpus, tmp_path / "emb", exp_dir=tmp_path / "ref", num_workers=0,
                                        device="cpu"))
    data = DataDir.load(lt_corpus)
    direct = embed_utterances(tm.model, tm.frontend, data, data.utts, num_workers=0, progress=False)
    got = np.stack([store.matrix[store.index(u)] for u in data.utts])
    # other batch shapes, same float32 model: each ~6e-7 relative off float64 (test_models)
    np.testing.assert_allclose(got, direct, atol=1e-4)
    meta = json.loads((tmp_path / "emb" / "extract.json").read_text())
    assert meta["feature_norm"] == ("capsule" if method == "capsule" else "l2")
    with torch.no_grad():
        logits = tm.head(torch.from_numpy(direct))
    assert logits.shape == (len(data.utts), 4) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_sharded_run_with_ldam_resumes_exactly(lt_corpus, tmp_path):
    from spkcausal.data.shards import make_shards

    shards = tmp_path / "sh"
    make_shards(lt_corpus, shards, utts_per_shard=3, seed=1)
    data = {"train": None, "shards": str(shards), "shuffle_buffer": 3}
    torch.set_num_threads(1)
    ref = train(_lt_config(Path("unused"), tmp_path / "ref", "ldam", "causal_norm_aam", data=data))
    assert ref.step == 10
    # float32 buffer of a float64 formula
    np.testing.assert_allclose(ref.net.head.margin_scale.numpy(), (1 / np.array([6, 3, 2, 1])) ** 0.25, rtol=1e-6)
    _killed_and_resumed(_lt_config(Path("unused"), tmp_path / "killed", "ldam", "causal_norm_aam", data=data),
                        tmp_path / "killed", tmp_path / "conf.yaml")
    _assert_same_final(tmp_path / "killed", tmp_path / "ref")
