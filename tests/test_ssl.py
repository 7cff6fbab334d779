"""Self-supervised pre-training (docs/causal.md, "Self-supervised pre-training"): every utterance its own class
(`data.labels: utterance`), no classification term (`loss.name: none`), SimCLR's NT-Xent as the k-positive term
with k = 1 over two crops, checked against a direct float64 computation; a run that reads no speaker label; the
baseline trained from it; and the refusals (shards, identification, a loss-free run without an encoder loss)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fixtures_train import make_corpus, tiny_config

from spkcausal.data.datadir import DataDir
from spkcausal.data.dataset import TrainChunkDataset
from spkcausal.data.samplers import build_sampler
from spkcausal.experiments.expdir import ExpDir
from spkcausal.experiments.runs import init_source
from spkcausal.nn.checkpoint import load_checkpoint
from spkcausal.nn.config import merge_defaults
from spkcausal.nn.encoder_losses import kpositive_contrastive
from spkcausal.nn.losses import build_loss
from spkcausal.nn.network import check_components
from spkcausal.results.records import row_label, system_name
from spkcausal.utils import DataError, UsageError

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "recipes" / "mini" / "conf"


def _ssl_sections() -> dict:
    return {"data": {"labels": "utterance"}, "loss": {"name": "none"},
            "sampler": {"name": "episodic", "utts_per_speaker": 2},
            "encoder_loss": {"name": "kpositive", "k": 1, "temperature": 0.1},
            "train": {"epochs": 2, "batch_size": 8}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("ssl_corpus"), utts_per_spk=4)


def test_utterance_labels_make_every_utterance_its_own_class(corpus):
    data = DataDir.load(corpus)
    utts = sorted(data.utts)
    by_utt = TrainChunkDataset(data, utts, 4000, by_utterance=True)
    by_spk = TrainChunkDataset(data, utts, 4000)
    assert by_utt.speakers == utts and by_utt.labels.tolist() == list(range(len(utts)))
    assert (by_utt.class_counts() == 1).all()
    assert by_spk.speakers == sorted(set(data.utt2spk.values())) and by_spk.class_counts().tolist() == [4] * 4
    # the episodic sampler over utterance classes: each utterance twice per batch, its two crops side by side
    sampler = build_sampler("episodic", by_utt.labels, batch_size=8, utts_per_speaker=2)
    order = sampler.global_order().reshape(-1, 2)
    assert (order[:, 0] == order[:, 1]).all() and len(set(order[:, 0].reshape(-1, 4)[0])) == 4


def _nt_xent(v: np.ndarray, partner: np.ndarray, tau: float) -> float:
    """SimCLR's NT-Xent (Chen et al. 2020) in float64: item i against its partner, every other item a negative."""
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    s = u @ u.T / tau
    np.fill_diagonal(s, -np.inf)
    log_den = np.log(np.exp(s - s.max(1, keepdims=True)).sum(1)) + s.max(1)
    return float(np.mean(log_den - s[np.arange(len(v)), partner]))


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_kpositive_with_k1_over_two_crops_per_utterance_is_nt_xent(tau):
    rng = np.random.default_rng(3)
    labels = rng.permutation(np.repeat(np.arange(6), 2))  # 6 utterances x 2 crops, shuffled
    emb = rng.standard_normal((12, 5))
    partner = np.array([np.flatnonzero((labels == labels[i]) & (np.arange(12) != i))[0] for i in range(12)])
    got = kpositive_contrastive(torch.tensor(emb, dtype=torch.float32), torch.tensor(labels), 1, tau)
    assert float(got) == pytest.approx(_nt_xent(emb, partner, tau), rel=1e-5, abs=1e-6)


def test_no_classification_loss_is_zero_and_leaves_the_head_without_gradient():
    logits = torch.randn(4, 7, requires_grad=True)
    loss = build_loss("none")(logits, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
    with pytest.raises(UsageError, match="logit_adjust"):
        build_loss("none", logit_adjust=1.0)
    cfg = merge_defaults({"loss": {"name": "none"}})
    with pytest.raises(UsageError, match="encoder_loss.name"):
        check_components(cfg)
    check_components(merge_defaults({"loss": {"name": "none"}, "encoder_loss": {"name": "kpositive"}}))


def _relabelled(corpus: Path, out: Path) -> Path:
    """The corpus with every utterance given to a made-up speaker, round robin over three of them."""
    data = DataDir.load(corpus)
    utts = sorted(data.utts)
    DataDir(wav=dict(data.wav), utt2spk={u: f"other{i % 3}" for i, u in enumerate(utts)}).write(out)
    return out


@pytest.mark.slow
def test_a_self_supervised_run_reads_no_speaker_label_and_the_baseline_trains_from_it(corpus, tmp_path):
    from spkcausal.train.trainer import train

    torch.set_num_threads(1)
    a = train(tiny_config(corpus, tmp_path / "a", **_ssl_sections()))
    b = train(tiny_config(_relabelled(corpus, tmp_path / "relabelled"), tmp_path / "b", **_ssl_sections()))
    # the same crops and the same utterance classes whatever utt2spk says: the same weights, bit for bit
    sa, sb = a.net.model.state_dict(), b.net.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    utts = sorted(DataDir.load(corpus).utts)
    assert (tmp_path / "a" / "speakers.txt").read_text().split() == utts
    assert a.net.head.weight.shape[0] == len(utts)
    init = load_checkpoint(tmp_path / "a" / "checkpoints" / "epoch_0001.pt")["model"]
    assert any(not torch.equal(init[k], sa[k]) for k in sa if sa[k].is_floating_point())  # the encoder trained
    assert [h["loss"] for h in a.history if "loss" in h][-1] > 0  # the contrastive term, not the zero CE

    ckpt = tmp_path / "a" / "checkpoints" / "epoch_0002.pt"
    ft = train(tiny_config(corpus, tmp_path / "ft", train={"epochs": 1, "init_from": str(ckpt)}))
    assert ft.net.head.weight.shape[0] == 4  # speaker classes again, a new head
    cfg = yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())
    assert init_source(tmp_path / "ft", cfg["train"]["init_from"]) == tmp_path / "a"  # above checkpoints/
    assert system_name(cfg, ExpDir(tmp_path / "a").config()) == "Baseline (AAM) + self-supervised pre-training"
    assert row_label(tmp_path / "ft", "cosine", {}) == "Baseline (AAM) + self-supervised pre-training"
    assert system_name(yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())) == \
        "Self-supervised pre-training (utterance contrast)"

    from spkcausal.inference.identify import identify

    with pytest.raises(DataError, match="closed-set identification needs speaker classes") as e:
        identify(tmp_path / "no_store", corpus, corpus, exp_dir=tmp_path / "a")
    assert str(e.value).startswith(str(tmp_path / "a"))  # names the checkpoint


def test_a_run_from_a_pretrained_extractor_is_named_by_how_that_was_trained(tmp_path):
    cfg = {"head": {"name": "aam"}, "train": {"init_from": "/x/avg_model.pt"}}
    assert system_name(cfg) == system_name(cfg, {"data": {"labels": "speaker"}}) == "Baseline (AAM) + pretrained"
    assert system_name(cfg, {"data": {"labels": "utterance"}, "augment": {"rirs": "/r"}}) == \
        "Baseline (AAM) + self-supervised pre-training with noise / reverb"
    assert system_name({**cfg, "train": {**cfg["train"], "init_head": True}}) == "Baseline (AAM) + LM"
    # the source of a moved tree is found inside it; a source that is nowhere is None
    (tmp_path / "tree" / "exp" / "src").mkdir(parents=True)
    (tmp_path / "tree" / "exp" / "run").mkdir()
    old = "/old/place/exp/src/avg_model.pt"
    (tmp_path / "tree" / "exp" / "run" / "config.yaml").write_text(yaml.safe_dump({"train": {"init_from": old}}))
    (tmp_path / "tree" / "exp" / "src" / "avg_model.pt").write_bytes(b"")
    assert init_source(tmp_path / "tree" / "exp" / "run", old) == tmp_path / "tree" / "exp" / "src"
    (tmp_path / "tree" / "exp" / "src" / "avg_model.pt").unlink()
    assert not ExpDir(init_source(tmp_path / "tree" / "exp" / "run", old)).config()
    assert init_source(tmp_path / "tree" / "exp" / "run", None) is None


def test_utterance_labels_on_shards_are_refused(corpus, tmp_path):
    from spkcausal.train.trainer import train

    cfg = tiny_config(corpus, tmp_path / "exp", **_ssl_sections())
    cfg["data"]["shards"] = str(tmp_path / "shards")
    with pytest.raises(UsageError, match="data.labels: utterance needs a data dir"):
        train(cfg)


def test_demo_ssl_configs_change_only_what_they_say():
    base = merge_defaults(yaml.safe_load((CONF / "aam.yaml").read_text()))
    ssl = merge_defaults(yaml.safe_load((CONF / "encoder" / "ssl.yaml").read_text()))
    for name in ("ssp", "ssp_aug"):  # only --init_from makes them self-supervised pre-training
        assert merge_defaults(yaml.safe_load((CONF / "encoder" / f"{name}.yaml").read_text())) == base
    long = merge_defaults(yaml.safe_load((CONF / "aam48.yaml").read_text()))  # the compute control
    assert long == {**base, "train": {**base["train"], "epochs": 48}}
    assert {k for k in ssl if ssl[k] != base[k]} == {"data", "loss", "sampler", "encoder_loss", "train"}
    assert {k: v for k, v in ssl["data"].items() if base["data"][k] != v} == {"labels": "utterance"}
    assert {k: v for k, v in ssl["train"].items() if base["train"][k] != v} == {"epochs": 32}
    assert ssl["loss"]["name"] == "none" and ssl["encoder_loss"]["k"] == 1
    assert ssl["sampler"] == {**base["sampler"], "name": "episodic", "utts_per_speaker": 2}
    check_components(ssl)
