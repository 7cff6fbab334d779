"""Long-tail methods that reach the embedding: logit adjustment / Balanced Softmax, DRW and the progressively
balanced sampler, against direct formulas, through the trainer, and across a SIGKILL + exact resume."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_train import (
    assert_same_weights,
    fake_shard_index,
    kill_after_checkpoint,
    make_corpus,
    np_log_softmax,
    subprocess_env,
    tiny_config,
)

from spkcausal.data.datadir import DataDir
from spkcausal.data.samplers import build_sampler, class_probabilities
from spkcausal.data.shards import load_shards, make_shards
from spkcausal.data.shardstream import ShardTrainStream, shard_loader
from spkcausal.nn.checkpoint import find_resume_checkpoint, load_checkpoint
from spkcausal.nn.config import merge_defaults, save_config
from spkcausal.nn.losses import WeightedLoss, build_loss
from spkcausal.utils import UsageError

REPO = Path(__file__).resolve().parents[1]
COUNTS = np.array([100, 30, 10, 3, 1])
LT_COUNTS = {"spk1": 6, "spk2": 3, "spk3": 2, "spk4": 1}  # the long-tailed training corpus below


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.randn(16, 5) * 3, torch.randint(0, 5, (16,))


@pytest.fixture(scope="module")
def lt_corpus(tmp_path_factory):
    """The tiny four-speaker corpus cut to a long tail of 6 / 3 / 2 / 1 utterances."""
    root = tmp_path_factory.mktemp("ltcorpus")
    full = DataDir.load(make_corpus(root, utts_per_spk=6))
    keep = [u for u in full.utts if int(u.split("-u")[1]) < LT_COUNTS[full.utt2spk[u]]]
    out = root / "data_lt"
    DataDir(wav={u: full.wav[u] for u in keep}, utt2spk={u: full.utt2spk[u] for u in keep}).write(out)
    return out


# ------------------------------------------------------------------ logit adjustment / Balanced Softmax


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_logit_adjustment_equals_direct_log_softmax(batch, tau):
    logits, labels = batch
    z = logits.double().numpy() + tau * np.log(COUNTS / COUNTS.sum())
    want = -np_log_softmax(z)[np.arange(16), labels.numpy()].mean()
    got = build_loss("ce", class_counts=COUNTS, logit_adjust=tau)(logits, labels).item()
    assert got == pytest.approx(want, rel=1e-5)  # float32 loss (|loss| ~ 2) vs float64: ~10 eps
    assert got != pytest.approx(build_loss("ce")(logits, labels).item(), rel=1e-3)  # the offset did something


def test_logit_adjustment_composes_with_focal_and_reweighting(batch):
    logits, labels = batch
    gamma, beta, tau = 2.0, 0.9, 0.7
    eff = (1 - beta) / (1 - beta ** COUNTS)
    w = eff * len(COUNTS) / eff.sum()
    lp = np_log_softmax(logits.double().numpy() + tau * np.log(COUNTS / COUNTS.sum()))[np.arange(16), labels.numpy()]
    want = np.mean(w[labels.numpy()] * -((1 - np.exp(lp)) ** gamma) * lp)
    got = build_loss("focal", class_counts=COUNTS, gamma=gamma, beta=beta, weighting="effective_number",
                     logit_adjust=tau)(logits, labels).item()
    assert got == pytest.approx(want, rel=1e-5)  # as above


def test_balanced_softmax_is_logit_adjustment_at_tau_one(batch):
    logits, labels = batch
    bs = build_loss("balanced_softmax", class_counts=COUNTS)(logits, labels)
    # one float32 formula written two ways: equal (measured), default float32 tolerance
    torch.testing.assert_close(bs, build_loss("ce", class_counts=COUNTS, logit_adjust=1.0)(logits, labels))
    # Ren et al.'s own form: -log(n_y exp(z_y) / sum_j n_j exp(z_j)).
    z = logits.double().numpy()
    num = COUNTS[labels.numpy()] * np.exp(z[np.arange(16), labels.numpy()])
    want = -np.log(num / (COUNTS * np.exp(z)).sum(1)).mean()
    assert bs.item() == pytest.approx(want, rel=1e-5)  # as above
    with pytest.raises(UsageError, match="logit_adjust"):
        build_loss("balanced_softmax", class_counts=COUNTS, logit_adjust=2.0)
    with pytest.raises(UsageError, match="class_counts"):
        build_loss("ce", logit_adjust=1.0)
    with pytest.raises(UsageError, match="loss.logit_adjust"):
        build_loss("ce", class_counts=COUNTS, logit_adjust="strong")


def test_logit_adjustment_changes_training_not_eval_logits_or_embeddings(lt_corpus, tmp_path):
    """Two trainers differing only in the loss: the same network and eval outputs, the given logits left alone,
    but another training loss and so another first update."""
    from spkcausal.nn.distributed import DistInfo
    from spkcausal.train.steps import train_step
    from spkcausal.train.trainer import Trainer

    torch.manual_seed(3)
    feats, labels = torch.randn(6, 50, 40), torch.tensor([0, 0, 1, 2, 3, 0])
    out = {}
    for name in ("ce", "balanced_softmax"):
        cfg = merge_defaults(tiny_config(lt_corpus, tmp_path / name, loss={"name": name}))
        tr = Trainer(cfg, DistInfo())
        net = tr.net
        net.eval()
        with torch.no_grad():
            emb, eval_logits = net(feats)
        net.train()
        _, train_logits = net(feats, labels)
        given = train_logits.detach().clone()
        loss = tr.loss_fn(train_logits, labels)
        assert torch.equal(train_logits.detach(), given)  # no in-place adjustment of the head's logits
        _, step_logits = train_step(net, tr.loss_fn, tr.optimizer, tr.scaler, feats, labels)
        out[name] = {"state": {k: v.clone() for k, v in net.state_dict().items()}, "emb": emb,
                     "eval": eval_logits, "loss": loss.item(), "step_logits": step_logits}
    a, b = out["ce"], out["balanced_softmax"]
    assert torch.equal(a["emb"], b["emb"]) and torch.equal(a["eval"], b["eval"])
    assert torch.equal(a["step_logits"], b["step_logits"])  # what the trainer's accuracy counts: the head's own
    prior = np.log(np.array([6, 3, 2, 1]) / 12)
    z = a["step_logits"].double().numpy() + prior
    # float32 loss as recorded in the history, vs float64
    assert b["loss"] == pytest.approx(-np_log_softmax(z)[np.arange(6), labels.numpy()].mean(), rel=1e-4)
    assert abs(a["loss"] - b["loss"]) > 1e-3
    moved = max((a["state"][k].double() - b["state"][k].double()).abs().max().item()
                for k in a["state"] if a["state"][k].is_floating_point())
    assert moved > 1e-6  # another gradient, another update


# ------------------------------------------------------------------ DRW


def test_drw_weights_follow_the_effective_number_from_the_switch_epoch(batch):
    logits, labels = batch
    beta = 0.99
    eff = (1 - beta) / (1 - beta ** COUNTS)
    want_w = eff * len(COUNTS) / eff.sum()
    loss = build_loss("ce", class_counts=COUNTS, beta=beta, drw_epoch=2)
    lp = np_log_softmax(logits.double().numpy())[np.arange(16), labels.numpy()]
    for epoch in range(4):
        loss.set_epoch(epoch)
        if epoch < 2:
            assert loss.active_weight() is None
            # plain cross-entropy: float32 (|loss| ~ 2) against float64, ~10 eps
            assert loss(logits, labels).item() == pytest.approx(-lp.mean(), rel=1e-5)
        else:
            # float32 weights of a float64 formula: 1 ulp
            np.testing.assert_allclose(loss.active_weight().numpy(), want_w, rtol=1e-6)
            # float32 weighted loss vs float64
            assert loss(logits, labels).item() == pytest.approx(np.mean(want_w[labels.numpy()] * -lp), rel=1e-5)
    # DRW defers a named weighting too; without class counts, or with a bad epoch, it is refused.
    inv = build_loss("inverse", class_counts=COUNTS, drw_epoch=1)
    inv.set_epoch(1)
    # float32 weights of a float64 formula
    np.testing.assert_allclose(inv.active_weight().numpy(), (1 / COUNTS) * 5 / (1 / COUNTS).sum(), rtol=1e-6)
    with pytest.raises(UsageError, match="class_counts"):
        build_loss("ce", drw_epoch=1)
    with pytest.raises(UsageError, match="loss.drw_epoch"):
        build_loss("ce", class_counts=COUNTS, drw_epoch=1.5)


def test_trainer_tells_the_loss_the_epoch(lt_corpus, tmp_path, monkeypatch):
    from spkcausal.train.trainer import train

    seen: list[np.ndarray | None] = []
    forward = WeightedLoss.forward

    def record(self, logits, labels):
        w = self.active_weight()
        seen.append(None if w is None else w.numpy().copy())
        return forward(self, logits, labels)

    monkeypatch.setattr(WeightedLoss, "forward", record)
    cfg = tiny_config(lt_corpus, tmp_path / "exp", sampler={"num_samples": 16},
                      loss={"name": "ce", "drw_epoch": 1, "beta": 0.9}, train={"epochs": 3, "batch_size": 8})
    assert train(cfg).step == 6
    n = np.array([6, 3, 2, 1])
    eff = (1 - 0.9) / (1 - 0.9 ** n)
    assert seen[:2] == [None, None]  # epoch 0: plain
    for w in seen[2:]:
        np.testing.assert_allclose(w, eff * 4 / eff.sum(), rtol=1e-6)  # float32 weights of a float64 formula
    assert len(seen) == 6


# ------------------------------------------------------------------ progressive sampler

LABELS = np.repeat(np.arange(4), [400, 100, 25, 4])


def _formula(counts: np.ndarray, t: int, T: int) -> np.ndarray:
    return (1 - t / T) * counts / counts.sum() + (t / T) / len(counts)


def test_progressive_sampler_goes_from_natural_to_uniform_on_files():
    counts = np.bincount(LABELS).astype(float)
    T, n = 10, 40000
    freqs = {}
    for t in (0, T - 1):
        s = build_sampler("progressive", LABELS, seed=3, num_samples=n, epochs=T)
        s.set_epoch(t)
        freq = np.bincount(LABELS[s.indices()], minlength=4) / n
        p = _formula(counts, t, T)
        # float64 both sides
        np.testing.assert_allclose(class_probabilities(counts, "progressive", t, T), p, rtol=1e-12)
        # multinomial draws: 5 binomial standard deviations per class
        assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / n)), (t, freq, p)
        freqs[t] = freq
    assert np.abs(freqs[0] - counts / counts.sum()).max() < 0.015  # first epoch: natural
    assert np.abs(freqs[T - 1] - 0.25).max() < 0.06  # last: within 1/T of uniform
    assert freqs[T - 1][3] > 20 * freqs[0][3]  # the tail class really gained
    # deterministic per (seed, epoch); another epoch is another order
    a, b = (build_sampler("progressive", LABELS, seed=3, epochs=T) for _ in range(2))
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b)
    b.set_epoch(5)
    assert list(a) != list(b)
    # a resume with another train.epochs would follow another schedule: refused
    with pytest.raises(ValueError, match="epochs"):
        build_sampler("progressive", LABELS, seed=3, epochs=T + 1).load_state_dict(a.state_dict())
    build_sampler("sqrt", LABELS, seed=3, epochs=T + 1).load_state_dict(
        build_sampler("sqrt", LABELS, seed=3, epochs=T).state_dict())  # static schemes do not care


def test_progressive_sampler_goes_from_natural_to_uniform_on_shards():
    counts = np.array([400, 200, 100, 50, 25, 10])
    labels = np.repeat(np.arange(6), counts)
    index = fake_shard_index(labels[np.random.default_rng(1).permutation(len(labels))], per_shard=25)
    T, n = 10, 16000
    freqs = {}
    for t in (0, T - 1):
        st = ShardTrainStream(index, 100, batch_size=8, seed=0, name="progressive", epochs=T, num_samples=n,
                              buffer_size=512)
        reads, emits = st.plan(t, 0)
        assert len(emits) == n
        freq = np.bincount(st.labels[reads[emits]], minlength=6) / n
        p = _formula(counts.astype(float), t, T)
        # The FIFO window emits about as a multinomial of n draws would (a window much larger than the tail's
        # share keeps its weight sum steady): 5 binomial standard deviations.
        assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / n)), (t, freq, p)
        freqs[t] = freq
        again = ShardTrainStream(index, 100, batch_size=8, seed=0, name="progressive", epochs=T, num_samples=n,
                                 buffer_size=512).plan(t, 0)
        assert np.array_equal(again[0], reads) and np.array_equal(again[1], emits)  # a function of (seed, epoch)
    assert freqs[T - 1][5] > 5 * freqs[0][5]


def test_progressive_shard_stream_resumes_mid_epoch_exactly(lt_corpus, tmp_path):
    make_shards(lt_corpus, tmp_path / "sh", utts_per_shard=2, seed=0)
    index = load_shards(tmp_path / "sh")
    st = ShardTrainStream(index, 4000, batch_size=3, seed=2, name="progressive", epochs=4, num_samples=18,
                          buffer_size=4)
    st.set_epoch(3)
    full = list(shard_loader(st, num_workers=0))
    st.set_epoch(3)
    st.set_start(9)
    tail = list(shard_loader(st, num_workers=0))
    assert len(full) == 6 and len(tail) == 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(tail, full[3:]))
    st.set_epoch(0)
    first = list(shard_loader(st, num_workers=0))
    assert not all(torch.equal(a[2], b[2]) for a, b in zip(first, full))


# ------------------------------------------------------------------ exact resume after SIGKILL


def _resume_config(corpus: Path, exp: Path, **sections) -> dict:
    base = {"sampler": {"num_samples": 32}, "features": {"n_mels": 40, "dither": 1.0},
            "train": {"epochs": 3, "batch_size": 8, "ckpt_every_steps": 5, "keep_last": 10}}
    return tiny_config(corpus, exp, **{**base, **sections})


@pytest.mark.slow
@pytest.mark.parametrize("sections", [
    {"loss": {"name": "ce", "drw_epoch": 1, "beta": 0.9}},  # killed at step 5: mid-epoch, after the switch
    {"sampler": {"name": "progressive", "num_samples": 32}},
], ids=["drw", "progressive"])
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(lt_corpus, tmp_path, sections):
    from spkcausal.train.trainer import train

    torch.set_num_threads(1)
    ref = train(_resume_config(lt_corpus, tmp_path / "ref", **sections))
    assert ref.step == 12  # 3 epochs x 4 steps
    plain = train(_resume_config(lt_corpus, tmp_path / "plain"))
    exp = tmp_path / "killed"
    conf = tmp_path / "conf.yaml"
    save_config(_resume_config(lt_corpus, exp, **sections), conf)
    cmd = [sys.executable, "-m", "spkcausal", "train", "--config", str(conf), "data.num_workers=1"]
    kill_after_checkpoint(cmd, subprocess_env(), step=5)
    ckpt = load_checkpoint(find_resume_checkpoint(exp / "checkpoints"))
    assert ckpt["step"] == 5  # epoch 1 (0-based), step 1 of it
    out = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stderr
    # a resume replays the same float32 ops: equal (measured 0); 1e-6 spare
    assert_same_weights(exp / "checkpoints" / "epoch_0003.pt", tmp_path / "ref" / "checkpoints" / "epoch_0003.pt",
                        atol=1e-6)
    # and the method changed the run: the plain (ce, natural) run ends elsewhere
    diff = max((p.detach().double() - q.detach().double()).abs().max().item()
               for p, q in zip(ref.net.parameters(), plain.net.parameters()))
    assert diff > 1e-4


# ------------------------------------------------------------------ demo configs

LT_CONFS = ["balanced_softmax", "drw", "focal", "progressive", "reweight"]


def test_lt_demo_configs_differ_from_the_baseline_only_in_loss_or_sampler():
    import yaml

    conf = REPO / "recipes" / "mini" / "conf"
    base = yaml.safe_load((conf / "aam.yaml").read_text())
    assert set(LT_CONFS) <= {p.stem for p in (conf / "lt").glob("*.yaml")}
    labels = np.repeat(np.arange(4), [40, 10, 3, 1])
    for name in LT_CONFS:
        cfg = merge_defaults(yaml.safe_load((conf / "lt" / f"{name}.yaml").read_text()))
        assert {k: v for k, v in cfg.items() if k not in ("loss", "sampler")} == \
            {k: v for k, v in merge_defaults(base).items() if k not in ("loss", "sampler")}, name
        assert (cfg["loss"], cfg["sampler"]) != (base["loss"], base["sampler"])
        kwargs = {k: v for k, v in cfg["loss"].items() if k != "name"}
        assert isinstance(build_loss(cfg["loss"]["name"], class_counts=np.bincount(labels), **kwargs), WeightedLoss)
        build_sampler(cfg["sampler"]["name"], labels, epochs=cfg["train"]["epochs"])
    drw = yaml.safe_load((conf / "lt" / "drw.yaml").read_text())
    assert drw["loss"]["drw_epoch"] == 12 and drw["train"]["epochs"] == 16
