"""Methods that act on the encoder (docs/causal.md, "Methods that act on the encoder"): the angular prototypical and
k-positive contrastive losses against direct float64 computations, the episodic P x K sampler (files and shards),
the semi-siamese momentum extractor and queue, tail-aware augmentation, and exact SIGKILL resume of each."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_train import kill_after_checkpoint, make_aug_banks, make_corpus, subprocess_env, tiny_config

from spkcausal.data.datadir import DataDir
from spkcausal.data.samplers import EpisodicSampler, build_sampler
from spkcausal.nn.checkpoint import find_resume_checkpoint, load_checkpoint
from spkcausal.nn.config import merge_defaults, save_config
from spkcausal.nn.encoder_losses import (
    SemiSiamese,
    angular_prototypical,
    build_encoder_loss,
    cyclic_partners,
    kpositive_contrastive,
)
from spkcausal.nn.network import build_network
from spkcausal.train.trainer import train
from spkcausal.utils import UsageError

REPO = Path(__file__).resolve().parents[1]


def _batch(p: int, k: int, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """P speakers x K items in a shuffled order, float64 embeddings."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(rng.choice(50, size=p, replace=False), k))
    return rng.standard_normal((p * k, d)), labels


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _groups_np(labels: np.ndarray) -> list[np.ndarray]:
    """Positions of each label, labels in order of first appearance (written independently of label_groups)."""
    _, first = np.unique(labels, return_index=True)
    return [np.flatnonzero(labels == labels[i]) for i in sorted(first)]


# ---------------------------------------------------------------- the loss formulas


def test_angular_prototypical_loss_equals_a_direct_numpy_computation():
    emb, labels = _batch(5, 3)
    labels[labels == labels[0]] = labels[0]
    w, b = 7.5, -3.0
    groups = _groups_np(labels)
    q = _unit(np.stack([emb[g[0]] for g in groups]))
    c = _unit(np.stack([emb[g[1:]].mean(0) for g in groups]))
    z = w * q @ c.T + b
    want = np.mean([np.log(np.exp(z[i]).sum()) - z[i, i] for i in range(len(groups))])
    got = angular_prototypical(torch.from_numpy(emb), torch.from_numpy(labels), torch.tensor(w, dtype=torch.float64),
                               torch.tensor(b, dtype=torch.float64))
    assert got.item() == pytest.approx(want, rel=1e-12)  # float64 on both sides
    # the learnable scale and bias start at the paper's 10 and -5 and receive gradients
    module = build_encoder_loss({"name": "prototypical", "weight": 0.5}, torch.nn.Linear(2, 2))
    assert (module.w.item(), module.b.item()) == (10.0, -5.0)
    out = module(torch.from_numpy(emb).float().requires_grad_(), torch.from_numpy(labels), None, None)
    out.backward()
    assert module.w.grad is not None and module.b.grad is not None and out.item() == pytest.approx(
        0.5 * module.last.item())


@pytest.mark.parametrize("k", [1, 2])
def test_kpositive_loss_uses_exactly_k_positives_and_equals_numpy(k):
    emb, labels = _batch(4, 4, seed=k)
    labels = np.concatenate([labels, [999, 998]])  # two speakers with one item: no positive, negatives only
    emb = np.concatenate([emb, np.random.default_rng(9).standard_normal((2, emb.shape[1]))])
    tau = 0.2
    anchors, partners = cyclic_partners(torch.from_numpy(labels), k)
    anchors, partners = anchors.numpy(), partners.numpy()
    assert len(anchors) == 16 and partners.shape == (16, k)
    for a, ps in zip(anchors, partners):  # k distinct same-speaker items, never the anchor
        assert len(set(ps)) == k and a not in ps and (labels[ps] == labels[a]).all()
    v = _unit(emb)
    s = v @ v.T / tau
    losses = []
    for g in _groups_np(labels):
        for j, a in enumerate(g):
            if len(g) <= k:
                continue
            pos = [g[(j + t) % len(g)] for t in range(1, k + 1)]
            den = [x for x in range(len(labels)) if labels[x] != labels[a] or x in pos]
            lse = np.log(np.exp(s[a, den]).sum())
            losses.append(-np.mean([s[a, p] - lse for p in pos]))
    got = kpositive_contrastive(torch.from_numpy(emb), torch.from_numpy(labels), k, tau)
    assert got.item() == pytest.approx(np.mean(losses), rel=1e-12)


class _Tiny(torch.nn.Module):
    """A stand-in extractor: a linear map with a BatchNorm (a floating and an integer buffer)."""

    embed_dim = 4

    def __init__(self):
        super().__init__()
        self.lin, self.bn = torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)

    def forward(self, x):
        return self.bn(self.lin(x))


def test_semi_siamese_momentum_extractor_follows_the_ema_and_the_queue_keeps_the_last_n_in_order():
    torch.manual_seed(0)
    online = _Tiny()
    sst = build_encoder_loss({"name": "semi_siamese", "queue_size": 5, "momentum": 0.9}, online)
    assert isinstance(sst, SemiSiamese) and not any(p.requires_grad for p in sst.momentum_encoder.parameters())
    keys_seen, labels_seen = [], []
    sst.momentum_encoder.register_forward_hook(lambda m, i, o: keys_seen.append(o.detach().double()))
    prev = None
    for step in range(4):
        with torch.no_grad():  # the optimiser's move of the online extractor
            for p in online.parameters():
                p.add_(torch.randn_like(p))
            online.bn.running_mean.add_(1.0)
        theta = {n: t.detach().double().clone() for n, t in online.state_dict().items()}
        feats, labels = torch.randn(3, 3), torch.tensor([step, step, 10 + step])
        labels_seen.append(labels)
        sst.prepare(online)  # SpeakerNet's order: the momentum update, then the online forward
        emb = online(feats)
        loss = sst(emb, labels, feats, online)
        xi = sst.momentum_encoder.state_dict()
        for n, t in xi.items():
            want = theta[n] if prev is None or not t.is_floating_point() else 0.9 * prev[n] + 0.1 * theta[n]
            # float32 EMA of O(1) values: within a few ulps of the float64 formula
            assert torch.allclose(t.double(), want, rtol=0, atol=1e-6), (step, n)
        prev = {n: t.double().clone() for n, t in xi.items()}
        assert sst.momentum_encoder.training is False and torch.isfinite(loss)
    q, ql = sst.queue_contents()
    want = torch.nn.functional.normalize(torch.cat(keys_seen), dim=1)[-5:]
    assert torch.allclose(q.double(), want, atol=1e-6) and ql.tolist() == torch.cat(labels_seen)[-5:].tolist()

    # the loss of the last step, directly: positive = the partner's momentum key (a lone item: its own),
    # negatives = queue entries before the enqueue that are not of the anchor's speaker
    k = torch.nn.functional.normalize(keys_seen[-1], dim=1).numpy()
    qe = _unit(emb.detach().double().numpy())
    old_keys = torch.nn.functional.normalize(torch.cat(keys_seen[:-1]), dim=1).numpy()[-5:]
    old_labels = torch.cat(labels_seen[:-1])[-5:].numpy()
    partner = [1, 0, 2]
    lab = labels_seen[-1].numpy()
    total = 0.0
    for i in range(3):
        z = [32.0 * (qe[i] @ k[partner[i]] - 0.35)] + [32.0 * (qe[i] @ old_keys[j]) for j in range(5)
                                                        if old_labels[j] != lab[i]]
        z = np.array(z)
        total += np.log(np.exp(z - z.max()).sum()) + z.max() - z[0]
    assert sst.last.item() == pytest.approx(total / 3, rel=1e-5)  # float32 loss of O(10) logits


def test_encoder_loss_options_are_checked():
    with pytest.raises(UsageError, match="queue"):
        build_encoder_loss({"name": "semi_siamese", "queue": 5}, _Tiny())
    with pytest.raises(UsageError, match="encoder_loss.k"):
        build_encoder_loss({"name": "kpositive", "k": 0}, _Tiny())
    with pytest.raises(UsageError, match="group_prob"):
        merge_defaults({"augment": {"group_prob": [0.1, 2.0, 0.5]}})
    assert build_encoder_loss({"name": "none"}, _Tiny()) is None


def test_train_cli_names_a_bad_encoder_loss_key_before_reading_data(tmp_path, capsys):
    from spkcausal.cli import main

    conf = tmp_path / "c.yaml"
    for override, want in (("encoder_loss.weigth=1", "weigth"), ("encoder_loss.name=triplet", "triplet"),
                           ("encoder_loss.k=abc", "encoder_loss.k")):
        save_config(tiny_config(tmp_path / "no_such_dir", tmp_path / "exp", encoder_loss={"name": "kpositive"}),
                    conf)
        assert main(["train", "--config", str(conf), override]) == 2
        err = capsys.readouterr().err
        assert want in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------- episodic batches


def test_episodic_batches_hold_p_distinct_speakers_with_k_items_and_use_every_speaker():
    counts = [10, 5, 3, 1, 1, 7, 2]  # two 1-utterance speakers
    labels = np.repeat(np.arange(len(counts)), counts)[np.random.default_rng(0).permutation(sum(counts))]
    p, k = 2, 3
    s = build_sampler("episodic", labels, seed=3, num_samples=120, batch_size=p * k, utts_per_speaker=k)
    assert isinstance(s, EpisodicSampler) and s.epoch_length == 120
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = np.array(list(s)).reshape(-1, p * k)
        assert len(batches) == 20
        for b in batches:
            groups = [b[i * k:(i + 1) * k] for i in range(p)]
            spk = [labels[g] for g in groups]
            assert all((x == x[0]).all() for x in spk) and len({x[0] for x in spk}) == p
            for g in groups:  # distinct utterances whenever the speaker has K; all of them otherwise
                n = counts[labels[g[0]]]
                assert len(set(g)) == min(n, k)
        rounds = -(-len(counts) // p)  # every speaker within each round of ceil(C / P) batches
        for r in range(len(batches) // rounds):
            assert set(labels[batches[r * rounds:(r + 1) * rounds]].ravel()) == set(range(len(counts)))
    # two ranks split the global batches whole; a mid-epoch start is the suffix
    ranks = [build_sampler("episodic", labels, seed=3, num_samples=120, num_replicas=2, rank=r, batch_size=6,
                           utts_per_speaker=3) for r in (0, 1)]
    full = ranks[0].global_order().reshape(-1, 6)
    assert np.array_equal(np.array(list(ranks[1])).reshape(-1, 6), full[1::2])
    ranks[0].set_start(12)
    assert np.array_equal(np.array(list(ranks[0])), full[0::2].ravel()[12:])
    with pytest.raises(UsageError, match="divide"):
        build_sampler("episodic", labels, batch_size=7, utts_per_speaker=3)
    with pytest.raises(UsageError, match="speakers"):
        build_sampler("episodic", labels, batch_size=24, utts_per_speaker=3)


def test_frequency_drawn_episodes_draw_speakers_by_their_counts():
    """episodic_natural: P distinct speakers x K items per batch, speakers drawn by frequency. P = 1 is natural
    sampling's class frequency n_c / N (chi-square, where the uniform deal is refused); P = 2 matches the
    inclusion probability of two successive draws without replacement, pi_i = w_i + sum_j w_j w_i / (1 - w_j)."""
    from scipy.stats import chisquare

    counts = np.array([40, 20, 10, 5, 3, 1, 1])
    w = counts / counts.sum()
    labels = np.repeat(np.arange(len(counts)), counts)
    k, n_batches = 3, 4000
    one = build_sampler("episodic_natural", labels, seed=5, num_samples=k * n_batches, batch_size=k,
                        utts_per_speaker=k)
    drawn = labels[np.array(list(one)).reshape(-1, k)]
    assert (drawn == drawn[:, :1]).all()
    seen = np.bincount(drawn[:, 0], minlength=len(counts))
    assert chisquare(seen, w * n_batches).pvalue > 1e-3
    uniform = build_sampler("episodic", labels, seed=5, num_samples=k * n_batches, batch_size=k, utts_per_speaker=k)
    deal = np.bincount(labels[np.array(list(uniform))[::k]], minlength=len(counts))
    assert chisquare(deal, w * n_batches).pvalue < 1e-6  # the test tells the two schemes apart

    two = build_sampler("episodic_natural", labels, seed=6, num_samples=2 * k * n_batches, batch_size=2 * k,
                        utts_per_speaker=k)
    batches = labels[np.array(list(two)).reshape(-1, 2, k)]
    assert (batches == batches[:, :, :1]).all() and (batches[:, 0, 0] != batches[:, 1, 0]).all()
    pi = w + w * sum(w[j] / (1 - w[j]) for j in range(len(w))) - w ** 2 / (1 - w)
    assert np.isclose(pi.sum(), 2.0)
    inclusion = np.bincount(batches[:, :, 0].ravel(), minlength=len(counts))
    z = (inclusion - pi * n_batches) / np.sqrt(n_batches * pi * (1 - pi))
    assert np.abs(z).max() < 4, z
    # the 1-utterance speakers come as their one utterance plus repeats (own crops), never dropped
    assert inclusion[5] > 0 and inclusion[6] > 0


def test_frequency_drawn_episodes_resume_shard_by_rank_and_refuse_the_uniform_state():
    labels = np.repeat(np.arange(6), [9, 6, 4, 2, 1, 1])
    ranks = [build_sampler("episodic_natural", labels, seed=2, num_samples=96, num_replicas=2, rank=r,
                           batch_size=4, utts_per_speaker=2) for r in (0, 1)]
    full = ranks[0].global_order().reshape(-1, 4)
    assert np.array_equal(np.array(list(ranks[1])).reshape(-1, 4), full[1::2])
    state = dict(ranks[0].state_dict(), start=8)
    again = build_sampler("episodic_natural", labels, seed=2, num_samples=96, num_replicas=2, rank=0, batch_size=4,
                          utts_per_speaker=2)
    again.load_state_dict(state)
    assert np.array_equal(np.array(list(again)), full[0::2].ravel()[8:])
    uniform = build_sampler("episodic", labels, seed=2, num_samples=96, batch_size=4, utts_per_speaker=2)
    with pytest.raises(ValueError, match="name='episodic_natural'"):
        uniform.load_state_dict(state)


@pytest.mark.parametrize("name", ["natural", "class_balanced"])
def test_views_repeat_each_draw_in_a_row_shard_whole_groups_and_resume(name):
    labels = np.repeat(np.arange(6), [9, 6, 4, 2, 1, 1])
    one = build_sampler(name, labels, seed=3, num_samples=40, batch_size=4)
    two = build_sampler(name, labels, seed=3, num_samples=40, batch_size=4, views=2)
    assert two.epoch_length == one.epoch_length == 40
    groups = np.array(list(two)).reshape(-1, 2)
    assert (groups[:, 0] == groups[:, 1]).all()  # every batch of 4 holds two whole pairs
    if name == "natural":  # a permutation's first 20: distinct utterances
        assert len(set(groups[:, 0])) == 20
    ranks = [build_sampler(name, labels, seed=3, num_samples=40, num_replicas=2, rank=r, batch_size=4, views=2)
             for r in (0, 1)]
    full = ranks[0].global_order().reshape(-1, 2)
    for r in (0, 1):
        assert np.array_equal(np.array(list(ranks[r])).reshape(-1, 2), full[r::2])
    again = build_sampler(name, labels, seed=3, num_samples=40, num_replicas=2, rank=1, batch_size=4, views=2)
    again.load_state_dict(dict(ranks[1].state_dict(), start=8))
    assert np.array_equal(np.array(list(again)), full[1::2].ravel()[8:])
    with pytest.raises(ValueError, match="2 views per draw, this run has 1"):
        one.load_state_dict(two.state_dict())
    with pytest.raises(ValueError, match="1 views per draw, this run has 2"):
        two.load_state_dict(one.state_dict())
    with pytest.raises(UsageError, match="sampler.views=4 does not divide train.batch_size=6"):
        build_sampler(name, labels, batch_size=6, views=4)
    with pytest.raises(ValueError, match="deals episodes"):
        build_sampler("episodic_natural", labels, batch_size=4, views=2)
    with pytest.raises(ValueError, match="views must be at least 1, got 0"):
        build_sampler(name, labels, batch_size=4, views=0)


def test_views_of_one_utterance_are_different_crops(tmp_path):
    from spkcausal.data.dataset import PositionSampler, TrainChunkDataset

    data = DataDir.load(make_corpus(tmp_path, utts_per_spk=3))
    utts = sorted(data.utt2spk)
    ds = TrainChunkDataset(data, utts, chunk_samples=4000, seed=5)
    items = list(PositionSampler(build_sampler("natural", ds.labels, seed=1, batch_size=4, views=2)))
    waves = [ds[item] for item in items[:8]]
    for a, b in zip(waves[0::2], waves[1::2]):
        assert a[2] == b[2] and a[1] == b[1]  # one utterance, one label
        assert not torch.equal(a[0], b[0])  # two offsets into it


def test_views_on_shards_are_refused(tmp_path):
    cfg = tiny_config(tmp_path / "data", tmp_path / "exp", sampler={"name": "natural", "views": 2})
    cfg["data"]["shards"] = str(tmp_path / "shards")
    with pytest.raises(UsageError, match="sampler.views needs a data dir"):
        train(cfg)


@pytest.fixture(scope="module")
def lt_corpus(tmp_path_factory):
    """The tiny corpus cut to a long tail: 6, 3, 2 and 1 utterances."""
    root = tmp_path_factory.mktemp("enc_corpus")
    src = DataDir.load(make_corpus(root, utts_per_spk=6))
    keep = {"spk1": 6, "spk2": 3, "spk3": 2, "spk4": 1}
    utts = [u for u in src.utts if int(u.split("-u")[1]) < keep[src.utt2spk[u]]]
    DataDir(wav={u: src.wav[u] for u in utts}, utt2spk={u: src.utt2spk[u] for u in utts}).write(root / "lt")
    return root / "lt"


def test_episodic_shard_batches_hold_p_distinct_speakers_with_k_items(lt_corpus, tmp_path):
    from spkcausal.data.shards import load_shards, make_shards
    from spkcausal.data.shardstream import ShardTrainStream

    make_shards(lt_corpus, tmp_path / "sh", utts_per_shard=3, seed=1)
    stream = ShardTrainStream(load_shards(tmp_path / "sh"), 8000, 6, seed=2, name="episodic", num_samples=60,
                              buffer_size=12, utts_per_speaker=2)
    for epoch in range(2):
        reads, emits = stream.plan(epoch, 0)
        lab = stream.labels[reads[emits]].reshape(-1, 3, 2)
        assert len(lab) == 10 and (lab[:, :, 0] == lab[:, :, 1]).all()
        assert all(len(set(b[:, 0])) == 3 for b in lab)
        # the window of batch j starts at read j * B: nothing is emitted before it was read
        assert all((emits.reshape(-1, 6)[j] >= 6 * j).all() for j in range(10))
    assert set(lab[:, :, 0].ravel()) == {0, 1, 2, 3}  # the 1-utterance speaker too


def test_frequency_drawn_shard_episodes_favour_the_speakers_with_more_examples(lt_corpus, tmp_path):
    """On shards episodic_natural draws the P speakers of a batch by their examples in its window: the
    6-utterance speaker fills more episode slots than under the uniform deal, with the same batch shape."""
    from spkcausal.data.shards import load_shards, make_shards
    from spkcausal.data.shardstream import ShardTrainStream

    make_shards(lt_corpus, tmp_path / "sh", utts_per_shard=3, seed=1)
    slots = {}
    for name in ("episodic", "episodic_natural"):
        stream = ShardTrainStream(load_shards(tmp_path / "sh"), 8000, 4, seed=2, name=name, num_samples=400,
                                  buffer_size=12, utts_per_speaker=2)
        lab = np.concatenate([stream.labels[r[e]] for r, e in (stream.plan(ep, 0) for ep in range(5))])
        lab = lab.reshape(-1, 2, 2)
        assert (lab[:, :, 0] == lab[:, :, 1]).all() and (lab[:, 0, 0] != lab[:, 1, 0]).all()
        slots[name] = np.bincount(lab[:, :, 0].ravel(), minlength=4) / lab[:, :, 0].size
    heavy = int(np.argmax(np.bincount(stream.labels[stream.labels >= 0])))
    assert slots["episodic_natural"][heavy] > slots["episodic"][heavy] + 0.05, slots


# ---------------------------------------------------------------- tail-aware augmentation


def test_tail_aware_tables_follow_the_shot_groups():
    from spkcausal.nn.augment import draw_speed_by_row
    from spkcausal.train.steps import tail_tables

    cfg = merge_defaults({"augment": {"speed_perturb": True, "rirs": "x", "group_prob": [0.1, 0.5, 0.9],
                                      "group_speed": [0.0, 0.5, 1.0]}})
    t = tail_tables(cfg, np.array([150, 50, 5, 101, 19]), torch.device("cpu"))
    assert t["prob"].tolist() == pytest.approx([0.1, 0.5, 0.9, 0.1, 0.9])
    assert t["speed"].tolist() == [0.0, 0.5, 1.0, 0.0, 1.0]
    gen = torch.Generator().manual_seed(0)
    k = draw_speed_by_row(t["speed"][torch.tensor([0, 3, 2, 4] * 50)], gen).view(50, 4)
    assert (k[:, :2] == 0).all() and (k[:, 2:] >= 1).all() and set(k[:, 2:].unique().tolist()) == {1, 2}
    demo = merge_defaults({"augment": {"speed_perturb": True, "group_speed": [0.0, 0.5, 1.0], "group_many": 30,
                                       "group_few": 10}})
    assert tail_tables(demo, np.array([31, 30, 10, 9]), torch.device("cpu"))["speed"].tolist() == [0, .5, .5, 1]
    with pytest.raises(UsageError, match="speed_perturb"):
        tail_tables(merge_defaults({"augment": {"group_speed": [0, 0, 1]}}), np.array([1]), torch.device("cpu"))


def test_kept_speakers_see_the_same_chunks_and_keep_their_labels():
    """speed_new_speakers: false changes the labels only: the same generator gives the same perturbed features,
    each row keeps its speaker, and the head has one class per speaker instead of three."""
    from spkcausal.nn.augment import speed_input_samples
    from spkcausal.nn.network import num_classes_for
    from spkcausal.train.steps import build_feature_pipeline, device_batch, tail_tables

    chunk, speakers = 4000, 4
    waves = torch.randn(32, speed_input_samples(chunk), generator=torch.Generator().manual_seed(3))
    labels = torch.arange(32) % speakers
    out = {}
    for new in (True, False):
        cfg = merge_defaults({"augment": {"speed_perturb": True, "speed_new_speakers": new,
                                          "group_speed": [0.0, 0.5, 1.0], "group_many": 30, "group_few": 10}})
        tail = tail_tables(cfg, np.array([40, 20, 5, 5]), torch.device("cpu"))
        fbank, augmenter = build_feature_pipeline(cfg, torch.device("cpu"))
        out[new] = device_batch(waves, labels, cfg, chunk, speakers, fbank, augmenter,
                                torch.Generator().manual_seed(0), tail)
        assert num_classes_for(speakers, cfg) == (3 * speakers if new else speakers)
    assert torch.equal(out[True][0], out[False][0])
    assert torch.equal(out[False][1], labels)
    copy = out[True][1] // speakers
    assert torch.equal(out[True][1] % speakers, labels)
    assert (copy[labels == 0] == 0).all() and (copy[labels >= 2] >= 1).all()  # Many never, Few always perturbed
    assert not torch.equal(out[True][0][labels >= 2], fbank(waves[labels >= 2, :chunk]))


def test_a_run_keeping_the_speakers_trains_one_class_per_speaker(lt_corpus, tmp_path):
    torch.set_num_threads(1)
    aug = {"speed_perturb": True, "speed_new_speakers": False, "group_speed": [0.0, 0.5, 1.0]}
    t = train(tiny_config(lt_corpus, tmp_path / "exp", augment=aug, train={"epochs": 1}))
    speakers = sorted(set(DataDir.load(lt_corpus).utt2spk.values()))
    assert t.net.head.weight.shape[0] == len(speakers) == 4
    assert (tmp_path / "exp" / "speakers.txt").read_text().split() == speakers
    saved = load_checkpoint(tmp_path / "exp" / "checkpoints" / "epoch_0001.pt")
    assert saved["config"]["augment"]["speed_new_speakers"] is False


@pytest.mark.parametrize("name", ["episodic", "prototypical", "semi_siamese", "kpositive", "speed", "tail_speed",
                                  "speed_keep", "tail_speed_keep", "noise", "tail_noise",
                                  "episodic_natural", "kpositive_natural", "kpositive_views"])
def test_demo_encoder_configs_change_only_their_sections(name):
    import yaml

    conf = REPO / "recipes" / "mini" / "conf"
    base = merge_defaults(yaml.safe_load((conf / "aam.yaml").read_text()))
    cfg = merge_defaults(yaml.safe_load((conf / "encoder" / f"{name}.yaml").read_text()))
    changed = {k for k in cfg if cfg[k] != base[k]}
    augments = "speed" in name or "noise" in name
    # noise.yaml is aam.yaml's augment section (prob 0.6) made live by the banks the demo passes (--musan / --rirs)
    assert changed == (set() if name == "noise" else {"augment"} if augments else {"sampler"}
                       if name.startswith("episodic") else {"sampler", "encoder_loss"})
    assert cfg["sampler"]["name"] == ("episodic_natural" if name.endswith("natural") else
                                      base["sampler"]["name"] if augments or name.endswith("views") else "episodic")
    assert cfg["sampler"]["views"] == (2 if name.endswith("views") else 1)
    net = build_network(cfg, 20, class_counts=np.arange(1, 21))
    assert (net.encoder_loss is None) == (name in ("episodic", "episodic_natural") or augments)
    labels = np.repeat(np.arange(20), np.arange(1, 21))  # the tiny demo's 20 speakers fit 16 per batch
    sampler = build_sampler(cfg["sampler"]["name"], labels, batch_size=cfg["train"]["batch_size"],
                            utts_per_speaker=cfg["sampler"]["utts_per_speaker"], views=cfg["sampler"]["views"])
    assert sampler.epoch_length % 64 == 0 or not cfg["sampler"]["name"].startswith("episodic")


# ---------------------------------------------------------------- exact resume of each method


def _enc_config(data_dir: Path, exp: Path, method: str, sampler: str = "episodic", views: int = 1,
                **sections) -> dict:
    enc = {"prototypical": {"name": "prototypical", "weight": 0.5},
           "semi_siamese": {"name": "semi_siamese", "queue_size": 20, "weight": 0.5},
           "kpositive": {"name": "kpositive", "k": 1, "weight": 0.5},
           "tail_aug": {"name": "none"}}[method]
    head = {"name": "causal_norm_aam", "num_heads": 2} if method == "semi_siamese" else {"name": "aam"}
    return tiny_config(data_dir, exp, sampler={"name": sampler, "utts_per_speaker": 2, "num_samples": 40,
                                               "views": views},
                       encoder_loss=enc, head={**head, "scale": 16.0, "margin": 0.2},
                       margin={"start_epoch": 0, "end_epoch": 1.5},
                       train={"epochs": 2, "batch_size": 8, "ckpt_every_steps": 3, "keep_last": 10}, **sections)


def _assert_same_everything(a_path: Path, b_path: Path) -> None:
    a, b = load_checkpoint(a_path), load_checkpoint(b_path)
    assert a["step"] == b["step"] == 10
    for part in ("model", "head", "encoder_loss"):
        if b[part] is None:
            assert a[part] is None
            continue
        assert a[part].keys() == b[part].keys(), part
        for k in b[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["prototypical", "semi_siamese", "kpositive", "tail_aug", "shards",
                                    "kpositive_natural", "shards_natural", "kpositive_views"])
def test_sigkill_mid_epoch_resume_is_exact(method, lt_corpus, tmp_path):
    sections: dict = {"sampler": "episodic_natural"} if method.endswith("_natural") else {}
    if method.endswith("_views"):  # natural sampling, two crops of each drawn utterance in a batch
        sections.update(sampler="natural", views=2)
    method = method.removesuffix("_natural").removesuffix("_views")
    if method == "tail_aug":
        musan, rirs = make_aug_banks(tmp_path)
        sections["augment"] = {"musan": str(musan), "rirs": str(rirs), "speed_perturb": True,
                               "group_prob": [0.2, 0.5, 1.0], "group_speed": [0.1, 0.5, 0.9]}
    name = method
    if method == "shards":
        from spkcausal.data.shards import make_shards

        make_shards(lt_corpus, tmp_path / "sh", utts_per_shard=3, seed=1)
        sections["data"] = {"train": None, "shards": str(tmp_path / "sh"), "shuffle_buffer": 6}
        name = "prototypical"
    torch.set_num_threads(1)
    ref = train(_enc_config(lt_corpus, tmp_path / "ref", name, **sections))
    assert ref.step == 10
    if name == "semi_siamese":
        q, ql = ref.net.encoder_loss.queue_contents()
        assert len(q) == 20 and int(ref.net.encoder_loss.ready) == 1
    exp, conf = tmp_path / "killed", tmp_path / "conf.yaml"
    save_config(_enc_config(lt_corpus, exp, name, **sections), conf)
    cmd = [sys.executable, "-m", "spkcausal", "train", "--config", str(conf), "data.num_workers=1"]
    kill_after_checkpoint(cmd, subprocess_env(), step=3)
    assert load_checkpoint(find_resume_checkpoint(exp / "checkpoints"))["step"] == 3  # mid-epoch
    out = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=subprocess_env(), timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stderr
    _assert_same_everything(exp / "checkpoints" / "epoch_0002.pt", tmp_path / "ref" / "checkpoints" /
                            "epoch_0002.pt")


def test_the_loss_math_stays_float32_under_bf16_autocast():
    emb, labels = _batch(4, 3, seed=5)
    x, y = torch.from_numpy(emb).float(), torch.from_numpy(labels)
    w, b = torch.tensor(10.0), torch.tensor(-5.0)
    plain = (kpositive_contrastive(x, y, 2, 0.1), angular_prototypical(x, y, w, b))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = (kpositive_contrastive(x, y, 2, 0.1), angular_prototypical(x, y, w, b))
    for p, a in zip(plain, auto):  # bf16 matmuls would be off by ~1e-2 here
        assert a.dtype == torch.float32 and a.item() == pytest.approx(p.item(), rel=1e-6)
