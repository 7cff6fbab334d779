"""Extraction: batch independence, length batching, the CLI store with mean_feature, TDE against a direct formula."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fixtures_train import make_corpus, tiny_config

from spkcausal.cli import main
from spkcausal.data.datadir import DataDir
from spkcausal.data.dataset import length_batches
from spkcausal.data.embeddings import EmbeddingStore
from spkcausal.inference.extract import AudioSource, embed_utterances, extract
from spkcausal.inference.tde import tde_store
from spkcausal.nn.assemble import assemble
from spkcausal.nn.checkpoint import load_checkpoint
from spkcausal.nn.features import Fbank
from spkcausal.nn.models import build_model
from spkcausal.nn.network import resolve_checkpoint
from spkcausal.train.trainer import train
from spkcausal.utils import DataError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A briefly trained Causal Norm AAM experiment on a corpus whose speakers have equal-length pairs."""
    root = tmp_path_factory.mktemp("ex")
    data_dir = make_corpus(root, utts_per_spk=3, equal_length_pairs=True)
    cfg = tiny_config(data_dir, root / "exp", head={"name": "causal_norm_aam", "scale": 16.0, "margin": 0.1},
                      sampler={"num_samples": 32}, train={"epochs": 2, "batch_size": 8})
    train(cfg)
    return data_dir, root / "exp"


def _with_trained_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Give BatchNorm layers non-trivial running statistics so eval-mode results are not a no-op."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def _close(a: np.ndarray, b: np.ndarray, tol: float = 1e-4) -> bool:
    """Within `tol` both as scored (L2-normalised) and relative to the embedding's scale (trained ones grow large).

    1e-4 relative: two float32 runs of one model (other batch shapes) are each ~6e-7 relative off float64."""
    na, nb = a / np.linalg.norm(a), b / np.linalg.norm(b)
    return bool(np.abs(na - nb).max() < tol and np.abs(a - b).max() < tol * max(1.0, np.abs(a).max()))


@pytest.mark.parametrize("name", ["resnet_tiny", "ecapa_tiny"])
def test_alone_and_in_batch_give_the_same_embedding(trained, name):
    data_dir, exp = trained
    data = DataDir.load(data_dir)
    torch.manual_seed(0)
    if name == "resnet_tiny":  # the trained experiment's model
        model = assemble(exp_dir=exp).model
    else:  # speechbrain's ECAPA pads by reflection, so batch padding would show; exact batching must not
        model = _with_trained_bn(build_model(name, n_mels=40))
    fb = Fbank(n_mels=40)
    pairs = [("spk1-u00", "spk1-u01"), ("spk3-u00", "spk3-u01")]
    utts = [u for p in pairs for u in p] + ["spk2-u02"]
    lengths = AudioSource([data.wav[u] for u in utts], 16000).lengths
    assert lengths[0] == lengths[1] and lengths[2] == lengths[3] and lengths[0] != lengths[2]
    # All in one call: the equal-length pairs share batches (checked through length_batches).
    groups = length_batches(lengths, batch_samples=10 ** 7, mode="exact")
    assert sorted(map(sorted, groups)) == [[0, 1], [2, 3], [4]]
    together = embed_utterances(model, fb, data, utts, num_workers=0, progress=False)
    for i, u in enumerate(utts):
        alone = embed_utterances(model, fb, data, [u], num_workers=0, progress=False)
        assert _close(alone[0], together[i]), u
    # Embeddings differ between speakers (the comparison above is not trivially satisfied).
    assert not _close(together[0], together[2], tol=1e-3)


def test_pad_mode_longest_item_matches_alone(trained):
    data_dir, _ = trained
    data = DataDir.load(data_dir)
    torch.manual_seed(1)
    model = _with_trained_bn(build_model("resnet_tiny", n_mels=40))
    fb = Fbank(n_mels=40)
    utts = ["spk1-u00", "spk2-u02", "spk4-u02"]
    lengths = AudioSource([data.wav[u] for u in utts], 16000).lengths
    batched = embed_utterances(model, fb, data, utts, mode="pad", num_workers=0, progress=False)
    longest = int(np.argmax(lengths))
    alone = embed_utterances(model, fb, data, [utts[longest]], num_workers=0, progress=False)
    # The longest item is unpadded, so pad mode must reproduce it exactly.
    assert _close(alone[0], batched[longest])


def test_length_batches_cover_everything_within_budget():
    rng = np.random.default_rng(0)
    lengths = rng.choice([16000, 16000, 20000, 24000, 8000, 31000], size=200)
    for mode in ("exact", "pad"):
        batches = length_batches(lengths, batch_samples=100000, max_batch=7, mode=mode)
        flat = sorted(i for b in batches for i in b)
        assert flat == list(range(200))
        for b in batches:
            assert len(b) <= 7
            assert len(b) == 1 or len(b) * max(lengths[b]) <= 100000
            if mode == "exact":
                assert len(set(lengths[b].tolist())) == 1
    # Exact mode packs identical lengths: 16000-sample items come 6 to a batch under this budget.
    exact = length_batches(lengths, batch_samples=100000, max_batch=64, mode="exact")
    n16 = int((lengths == 16000).sum())
    assert sum(1 for b in exact if lengths[b[0]] == 16000) == -(-n16 // 6)
    with pytest.raises(ValueError, match="batching mode"):
        length_batches(lengths, 1000, mode="sorted")


def _tde_direct(x: np.ndarray, mean: np.ndarray, alpha: float, k: int) -> np.ndarray:
    """e^k = x^k/|x^k| - alpha (x^k/|x^k| . d^k) d^k with d^k = xbar^k/|xbar^k|, in float64 NumPy."""
    out = []
    for xk, mk in zip(np.split(x.astype(np.float64), k, axis=1), np.split(mean.astype(np.float64), k)):
        xn = xk / np.linalg.norm(xk, axis=1, keepdims=True)
        d = mk / np.linalg.norm(mk)
        out.append(xn - alpha * (xn @ d)[:, None] * d[None, :])
    return np.concatenate(out, axis=1)


def test_extract_cli_raw_store_mean_feature_and_tde(trained, tmp_path):
    data_dir, exp = trained
    data = DataDir.load(data_dir)
    raw = tmp_path / "raw"
    assert main(["extract", "--exp", str(exp), "--data", str(data_dir), "--out", str(raw), "--num-workers", "0"]) == 0
    store = EmbeddingStore.open(raw)
    assert store.keys == data.utts and store.dim == 16
    ckpt = load_checkpoint(resolve_checkpoint(exp_dir=exp))
    mean = np.load(raw / "mean_feature.npy")
    assert np.array_equal(mean, ckpt["head"]["mean_feature"].numpy()) and np.abs(mean).sum() > 0
    meta = json.loads((raw / "extract.json").read_text())
    assert meta["num_heads"] == 2 and meta["tde_alpha"] is None and meta["head"] == "causal_norm_aam"
    # Raw embeddings equal the model applied directly to each whole utterance.
    model = assemble(exp_dir=exp).model
    import soundfile as sf

    wave, _ = sf.read(data.wav["spk4-u02"], dtype="float32")
    with torch.no_grad():
        direct = model(Fbank(n_mels=40)(torch.from_numpy(wave)[None]))[0].numpy()
    assert _close(store.get(["spk4-u02"])[0], direct)

    # TDE during extraction and TDE applied later to the raw store both match the direct formula.
    alpha = 1.5
    tde = tmp_path / "tde"
    assert main(["extract", "--exp", str(exp), "--data", str(data_dir), "--out", str(tde), "--num-workers", "0",
                 "--tde-alpha", str(alpha)]) == 0
    expect = _tde_direct(np.asarray(store.matrix), mean, alpha, 2)
    got = np.asarray(EmbeddingStore.open(tde).matrix)
    # float32 TDE of unit chunks vs float64: worst case (d + 3) eps (1 + alpha) = 3.3e-6 (d = 8), measured 1.4e-7
    assert np.abs(got - expect).max() < 1e-5
    assert np.abs(got - np.asarray(store.matrix)).max() > 1e-3
    later = tmp_path / "tde_later"
    assert main(["extract", "--raw", str(raw), "--tde-alpha", str(alpha), "--out", str(later)]) == 0
    assert np.abs(np.asarray(EmbeddingStore.open(later).matrix) - expect).max() < 1e-5  # as above
    with pytest.raises(DataError, match="already has TDE"):
        tde_store(tde, tmp_path / "x", 1.0)

    # Re-running is a no-op; --force redoes it.
    before = (raw / "embeddings.npy").stat().st_mtime_ns
    assert main(["extract", "--exp", str(exp), "--data", str(data_dir), "--out", str(raw), "--num-workers", "0"]) == 0
    assert (raw / "embeddings.npy").stat().st_mtime_ns == before
    assert main(["extract", "--exp", str(exp), "--data", str(data_dir), "--out", str(raw), "--num-workers", "0",
                 "--force"]) == 0
    assert (raw / "embeddings.npy").stat().st_mtime_ns != before


def test_extract_prefers_averaged_model_and_names_bad_audio(trained, tmp_path):
    data_dir, exp = trained
    assert main(["average-ckpt", "--exp", str(exp), "--num", "2"]) == 0
    assert resolve_checkpoint(exp_dir=exp).name == "avg_model.pt"
    # A corrupt evaluation file is an error naming the file, not a silent gap in the store.
    data = DataDir.load(data_dir)
    bad_dir = tmp_path / "bad"
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....nonsense")
    wav = dict(data.wav, **{"spk9-broken": str(broken)})
    DataDir(wav=wav, utt2spk=dict(data.utt2spk, **{"spk9-broken": "spk9"})).write(bad_dir)
    assert main(["extract", "--exp", str(exp), "--data", str(bad_dir), "--out", str(tmp_path / "o"),
                 "--num-workers", "0"]) == 2
    with pytest.raises(DataError, match="broken.wav"):
        extract(bad_dir, tmp_path / "o", exp_dir=exp, num_workers=0)
    assert not (tmp_path / "o" / "store.json").exists()


def test_aam_checkpoint_refuses_tde(tmp_path):
    data_dir = make_corpus(tmp_path, utts_per_spk=2)
    cfg = tiny_config(data_dir, tmp_path / "exp", sampler={"num_samples": 8}, train={"epochs": 1, "batch_size": 8})
    train(cfg)
    with pytest.raises(DataError, match="Causal Norm head"):
        extract(data_dir, tmp_path / "o", exp_dir=tmp_path / "exp", tde_alpha=1.0, num_workers=0)
    out = tmp_path / "plain"
    extract(data_dir, out, exp_dir=tmp_path / "exp", num_workers=0)
    assert EmbeddingStore.open(out).dim == 16 and not (out / "mean_feature.npy").exists()


def test_extract_says_where_the_time_went(trained, tmp_path):
    import time

    data_dir, exp = trained
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    extract(data_dir, tmp_path / "emb", exp_dir=exp, num_workers=0, timing=timing)
    wall = time.perf_counter() - t0
    assert list(timing) == ["setup", "headers", "read", "fbank", "model", "write"]
    # consecutive, disjoint intervals inside the call: none negative, together no more than the call
    assert min(timing.values()) >= 0 and sum(timing.values()) <= wall
    assert "wall seconds setup" in (tmp_path / "emb.extract.log").read_text()


def test_default_workers_read_in_process_on_the_cpu_with_the_same_embeddings(trained, tmp_path):
    data_dir, exp = trained
    extract(data_dir, tmp_path / "auto", exp_dir=exp, device="cpu")  # num_workers None: 0 on the CPU
    extract(data_dir, tmp_path / "two", exp_dir=exp, device="cpu", num_workers=2)
    assert "(0 DataLoader workers)" in (tmp_path / "auto.extract.log").read_text()
    assert "(2 DataLoader workers)" in (tmp_path / "two.extract.log").read_text()
    # the reading processes change nothing but who reads: the same arrays, bit for bit
    assert np.array_equal(EmbeddingStore.open(tmp_path / "auto").matrix, EmbeddingStore.open(tmp_path / "two").matrix)


def test_rerun_redoes_work_when_the_checkpoint_file_changes(trained, tmp_path):
    import shutil

    data_dir, exp = trained
    ck = tmp_path / "model.pt"
    shutil.copy(exp / "checkpoints" / "epoch_0001.pt", ck)
    out = tmp_path / "emb"
    extract(data_dir, out, ckpt=ck, num_workers=0)
    first = np.array(EmbeddingStore.open(out).matrix)
    shutil.copy(exp / "checkpoints" / "epoch_0002.pt", ck)  # same path, new content (e.g. re-averaged)
    extract(data_dir, out, ckpt=ck, num_workers=0)
    second = np.array(EmbeddingStore.open(out).matrix)
    model = assemble(ck).model
    data = DataDir.load(data_dir)
    direct = embed_utterances(model, Fbank(n_mels=40), data, data.utts, num_workers=0, progress=False)
    assert np.array_equal(second, direct) and not np.array_equal(first, second)
