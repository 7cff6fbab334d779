"""Tar shards: contents and layout, resumable writing, rank / worker split, buffer re-sampling, exact resume."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_train import (
    assert_same_weights,
    fake_shard_index,
    kill_after_checkpoint,
    make_corpus,
    subprocess_env,
    tiny_config,
)

from spkcausal.data.datadir import DataDir
from spkcausal.data.samplers import class_probabilities
from spkcausal.data.shards import load_shards, make_shards, shard_key, utt_from_key, verify_shards
from spkcausal.data.shardstream import ShardTrainStream, shard_loader
from spkcausal.nn.checkpoint import find_resume_checkpoint, load_checkpoint
from spkcausal.nn.config import save_config
from spkcausal.train.trainer import train
from spkcausal.utils import DataError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The tiny corpus with utterance ids in VoxCeleb style (slashes and dots), plus one flac and bad files."""
    import soundfile as sf

    root = tmp_path_factory.mktemp("shcorpus")
    src = DataDir.load(make_corpus(root, utts_per_spk=5, bad=True))
    wav, utt2spk = {}, {}
    for utt in src.utts:
        new = f"{src.utt2spk[utt]}/sess.{utt.split('-', 1)[1]}/0001.wav"
        wav[new], utt2spk[new] = src.wav[utt], src.utt2spk[utt]
    x, sr = sf.read(wav["spk2/sess.u03/0001.wav"], dtype="int16")
    flac = root / "u03.flac"
    sf.write(str(flac), x, sr, format="FLAC")
    wav["spk2/sess.u03/0001.wav"] = str(flac)
    data_dir = root / "data_vox"
    DataDir(wav=wav, utt2spk=utt2spk).write(data_dir)
    return data_dir


def test_every_utterance_once_with_identical_bytes_and_resumable(corpus, tmp_path):
    out = tmp_path / "shards"
    make_shards(corpus, out, utts_per_shard=4, seed=3)
    data = DataDir.load(corpus)
    manifest = json.loads((out / "manifest.json").read_text())
    # Read back with plain tarfile, grouping members by webdataset's rule: the key is the name up to the first dot.
    seen: dict[str, dict[str, bytes]] = defaultdict(dict)
    order = []
    for entry in manifest["shards"]:
        path = out / entry["name"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        with tarfile.open(path) as tar:
            names = tar.getnames()
            assert len(names) == 2 * entry["count"]
            for name in names:
                key, ext = name.split(".", 1)
                assert key not in seen or ext not in seen[key]
                seen[key][ext] = tar.extractfile(name).read()
                order.append(key)
    bad = ["spk1/sess.corrupt/0001.wav", "spk2/sess.empty/0001.wav"]
    good = [u for u in data.utts if u not in bad]
    assert sorted(manifest["skipped"]) == bad
    assert sorted(utt_from_key(k) for k in seen) == sorted(good)  # each readable utterance exactly once
    for key, members in seen.items():
        utt = utt_from_key(key)
        assert "." not in key and "/" not in key
        (ext,) = set(members) - {"json"}
        assert members[ext] == Path(data.wav[utt]).read_bytes()  # the stored bytes, not re-encoded
        assert ext == ("flac" if data.wav[utt].endswith(".flac") else "wav")
        meta = json.loads(members["json"])
        assert meta["utt"] == utt and meta["spk"] == data.utt2spk[utt]
        import soundfile as sf

        assert meta["num_samples"] == sf.info(data.wav[utt]).frames
        assert meta["duration"] == pytest.approx(meta["num_samples"] / 16000)  # float64 division, as the writer
    # Shuffled at creation (not in sorted order), reproducibly from the seed.
    keys_in_order = list(dict.fromkeys(order))
    assert keys_in_order != sorted(keys_in_order)
    assert manifest["speakers"] == ["spk1", "spk2", "spk3", "spk4"] and manifest["seed"] == 3
    index = load_shards(out)
    assert index.keys == keys_in_order and sum(e["count"] for e in manifest["shards"]) == len(good)
    # Resume: a lost shard and a corrupted shard are rewritten byte-identically; intact ones are left alone.
    names = [e["name"] for e in manifest["shards"]]
    (out / names[0]).unlink()
    with open(out / names[1], "r+b") as f:
        f.seek(700)
        f.write(b"XX")
    kept = {n: (out / n).stat().st_mtime_ns for n in names[2:]}
    (out / "manifest.json").unlink()
    make_shards(corpus, out, utts_per_shard=4, seed=3)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert {n: (out / n).stat().st_mtime_ns for n in names[2:]} == kept
    assert verify_shards(out) == []
    # Another seed is another shuffle.
    make_shards(corpus, tmp_path / "other", utts_per_shard=4, seed=4)
    assert load_shards(tmp_path / "other").keys != index.keys


def test_shard_keys_are_reversible():
    for utt in ["id10270/98E6-ATX0-H/00001.wav", "a b%c", "ü.x", "plain-id_1"]:
        key = shard_key(utt)
        assert utt_from_key(key) == utt and "." not in key and "/" not in key and " " not in key
    assert shard_key("plain-id_1") == "plain-id_1"


def test_ranks_and_streams_never_share_an_example_and_natural_reads_each_once():
    rng = np.random.default_rng(0)
    index = fake_shard_index(rng.integers(0, 7, 400), per_shard=10)
    for epoch in (0, 1):
        owner: dict[int, tuple[int, int]] = {}
        emitted = []
        for rank in range(2):
            st = ShardTrainStream(index, 100, batch_size=5, seed=1, rank=rank, world=2, streams=2, buffer_size=16)
            for s in range(2):
                reads, emits = st.plan(epoch, s)
                ex = reads[emits]
                assert len(ex) == st.stream_batches(s) * 5
                for e in set(ex.tolist()):
                    assert owner.setdefault(e, (rank, s)) == (rank, s)  # no other rank / stream has it
                shard_of = set(index.shard[ex].tolist())
                assert shard_of <= set(st.stream_shards(epoch, s).tolist())
                emitted += ex.tolist()
        # 400 examples, 2 ranks x 200, 40 batches of 5 per rank: every example exactly once (no cycling needed).
        assert sorted(emitted) == list(range(400))
    # Shard order differs between epochs (the first level of the shuffle).
    st = ShardTrainStream(index, 100, batch_size=5, seed=1, rank=0, world=2, streams=2, buffer_size=16)
    assert st.stream_shards(0, 0).tolist() != st.stream_shards(1, 0).tolist()
    with pytest.raises(ValueError, match="shards"):
        ShardTrainStream(fake_shard_index(np.zeros(30, int), 10), 100, 5, world=2, streams=2)


@pytest.mark.parametrize("name", ["class_balanced", "sqrt"])
def test_buffer_weights_give_the_schemes_class_frequencies(name):
    labels = np.repeat(np.arange(6), [400, 200, 100, 50, 25, 10])
    labels = labels[np.random.default_rng(1).permutation(len(labels))]
    index = fake_shard_index(labels, per_shard=50)
    counts = np.bincount(labels)
    got = np.zeros(6)
    nat = np.zeros(6)
    for epoch in range(6):
        for rank in range(2):
            st = ShardTrainStream(index, 100, batch_size=8, seed=5, rank=rank, world=2, name=name, buffer_size=256)
            reads, emits = st.plan(epoch, 0)
            got += np.bincount(st.labels[reads[emits]], minlength=6)
            st = ShardTrainStream(index, 100, batch_size=8, seed=5, rank=rank, world=2, buffer_size=256)
            reads, emits = st.plan(epoch, 0)
            nat += np.bincount(st.labels[reads[emits]], minlength=6)
    want = class_probabilities(counts, name)
    freq = got / got.sum()
    # Within 20% of the target for every class, while natural order keeps the data's (very different) frequencies.
    assert np.all(np.abs(freq - want) < 0.2 * want), (freq, want)
    assert np.abs(nat / nat.sum() - counts / counts.sum()).max() < 0.02
    assert np.abs(counts / counts.sum() - want).max() > 0.1


def test_loader_is_worker_independent_and_workers_split_streams(corpus, tmp_path):
    out = tmp_path / "sh"
    make_shards(corpus, out, utts_per_shard=2, seed=0)
    index = load_shards(out)
    runs = {}
    for workers in (0, 2):
        st = ShardTrainStream(index, 4000, batch_size=3, seed=2, streams=2, buffer_size=3, num_samples=18)
        st.set_epoch(1)
        runs[workers] = list(shard_loader(st, num_workers=workers, prefetch_factor=1))
    assert len(runs[0]) == 6
    for a, b in zip(runs[0], runs[2]):
        assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    # With 2 workers, batch k came from worker k % 2 = stream k % 2; streams read disjoint shards.
    per_worker = [set(), set()]
    for k, batch in enumerate(runs[2]):
        per_worker[k % 2] |= {int(index.shard[i]) for i in batch[2]}
    assert per_worker[0].isdisjoint(per_worker[1])
    # Labels follow the speakers of the examples returned.
    st = ShardTrainStream(index, 4000, batch_size=3, seed=2, streams=2, buffer_size=3, num_samples=18)
    for waves, labels, ids, _ in runs[0]:
        assert waves.shape == (3, 4000)
        assert [st.speakers[c] for c in labels.tolist()] == [index.spks[i] for i in ids.tolist()]
    # Resuming at batch 4 of the epoch yields exactly the tail.
    st.set_epoch(1)
    st.set_start(12)
    tail = list(shard_loader(st, num_workers=0))
    assert len(tail) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(tail, runs[0][4:]))


def _shard_config(shards: Path, exp: Path) -> dict:
    return tiny_config(Path("unused"), exp, sampler={"num_samples": 96},
                       data={"train": None, "shards": str(shards), "shuffle_buffer": 3},
                       features={"n_mels": 40, "dither": 1.0}, augment={"speed_perturb": True},
                       head={"name": "causal_norm_aam", "scale": 16.0, "margin": 0.1},
                       margin={"start_epoch": 0.5, "end_epoch": 1.5},
                       train={"epochs": 2, "batch_size": 8, "ckpt_every_steps": 5, "keep_last": 10})


@pytest.mark.slow
def test_sharded_run_killed_mid_epoch_resumes_to_identical_weights(corpus, tmp_path):
    shards = tmp_path / "sh"
    make_shards(corpus, shards, utts_per_shard=3, seed=1)
    torch.set_num_threads(1)
    ref = train(_shard_config(shards, tmp_path / "ref"))
    assert ref.step == 24  # 96 samples / 8 per batch x 2 epochs
    exp = tmp_path / "killed"
    conf = tmp_path / "conf.yaml"
    save_config(_shard_config(shards, exp), conf)
    # One DataLoader worker (one stream, like the in-process reference); SIGKILL after the step-5 checkpoint.
    cmd = [sys.executable, "-m", "spkcausal", "train", "--config", str(conf), "data.num_workers=1"]
    kill_after_checkpoint(cmd, subprocess_env(), step=5)
    ckpt = load_checkpoint(find_resume_checkpoint(exp / "checkpoints"))
    assert 0 < ckpt["step"] % 12 and ckpt["step"] < 24  # mid-epoch
    assert ckpt["sampler"]["source"] == "shards" and ckpt["sampler"]["streams"] == 1
    out = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stderr
    # a resume replays the same float32 ops: equal (measured 0); 1e-6 spare
    assert_same_weights(exp / "checkpoints" / "epoch_0002.pt", tmp_path / "ref" / "checkpoints" / "epoch_0002.pt",
                        atol=1e-6)
    # A resume that would change the order (another stream count) is refused, naming the checkpoint.
    other = _shard_config(shards, exp)
    other["data"]["num_workers"], other["train"]["epochs"] = 2, 3
    with pytest.raises(DataError, match="streams=1.*streams=2") as err:
        train(other, resume=True)
    assert "epoch_0002.pt" in str(err.value)
