"""torch.export (.pt2) / ONNX / TorchScript export: the exported embedder equals the PyTorch path
(api.SpeakerModel / pad-mode extraction) within 1e-4, for ECAPA and ResNet, several lengths and batch sizes, TDE
and mean subtraction folded in, and batches of unequal lengths (which equal the PyTorch pad-mode batch)."""
from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch
from fixtures_models import N_MELS, NEW_TINY_MODELS, require_registered

from spkcausal.inference.api import load_model
from spkcausal.inference.export import TraceableFbank, export_model
from spkcausal.inference.extract import AudioSource, embed_source
from spkcausal.nn.checkpoint import save_checkpoint
from spkcausal.nn.config import merge_defaults
from spkcausal.nn.features import Fbank
from spkcausal.nn.network import build_network

LENGTHS = (9600, 20800, 32000)  # 0.6, 1.3, 2.0 s


def _checkpoint(path, model: str, n_mels: int = 40) -> str:
    """An untrained Causal Norm AAM checkpoint with non-trivial BatchNorm statistics and x_bar."""
    cfg = merge_defaults({"model": {"name": model}, "features": {"n_mels": n_mels},
                          "head": {"name": "causal_norm_aam", "num_heads": 2}})
    torch.manual_seed(0)
    net = build_network(cfg, 5)
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    net.head.mean_feature.copy_(torch.randn(net.head.mean_feature.shape, generator=gen))
    save_checkpoint({"config": cfg, "model": net.model.state_dict(), "head": net.head.state_dict(),
                     "speakers": [f"s{i}" for i in range(5)]}, path)
    return str(path)


def _waves(n: int, batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return np.stack([(0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + 0.05 * rng.standard_normal(n))
                     for _ in range(batch)]).astype(np.float32)


def test_traceable_fbank_matches_fbank():
    fb = Fbank(n_mels=40)
    x = torch.from_numpy(_waves(20800, 2, 0))
    feats, frames = TraceableFbank(fb)(x, torch.tensor([20800, 20800]))
    assert int(frames[0]) == fb.num_frames(20800) == feats.shape[1]
    # log-mel of near-silent bins is where the float32 FFT itself rounds most; 1e-3 there (test_features' float64
    # bound for speech-like input, which both meet), far less overall (measured 1.8e-5 max)
    ref = fb(x)
    assert (feats - ref).abs().max() < 1e-3 and (feats - ref).abs().mean() < 1e-5


def _runner(path, fmt):
    if fmt == "pt2":
        prog = torch.export.load(str(path)).module()
        return lambda w, n: prog(torch.from_numpy(w), torch.from_numpy(n)).detach().numpy()
    if fmt == "torchscript":
        mod = torch.jit.load(str(path))
        return lambda w, n: mod(torch.from_numpy(w), torch.from_numpy(n)).detach().numpy()
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return lambda w, n: sess.run(None, {names[0]: w, names[1]: n})[0]


@pytest.mark.parametrize("model", ["ecapa_tiny", "resnet_tiny"])
# pt2: torch.export's tracing costs most of this test's time (a minute for ECAPA on a loaded core): slow lane
@pytest.mark.parametrize("fmt", [pytest.param("pt2", marks=pytest.mark.slow), "torchscript", "onnx"])
def test_exported_embedder_matches_pytorch(tmp_path, model, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    ckpt = _checkpoint(tmp_path / "m.pt", model)
    sm = load_model(ckpt)
    # ONNX and torch.export carry TDE and centring (a given mean) folded in; TorchScript the raw embedding.
    folded = fmt != "torchscript"
    alpha, mean = (0.7, np.linspace(-0.1, 0.1, sm.model.embed_dim).astype(np.float32)) if folded else (None, None)
    sm = load_model(ckpt, mean=mean)
    with pytest.warns(FutureWarning, match="deprecated") if fmt == "torchscript" else nullcontext():
        # TorchScript is opt-in since torch 2.14 deprecates it, and its warning reaches the user unsilenced
        out = export_model(ckpt, tmp_path / f"m.{fmt}", fmt, with_features=True, tde_alpha=alpha,
                           mean_sub=mean is not None, mean=mean)
    run = _runner(out, fmt)
    for n in LENGTHS:
        for batch in (1, 3):
            w = _waves(n, batch, seed=n + batch)
            ref = sm.embed(list(w), tde_alpha=alpha, mean_sub=mean is not None, progress=False)
            got = run(w, np.full(batch, n, dtype=np.int64))
            # TorchScript / ONNX Runtime vs eager: each float32 run ~1e-7 off float64 (test_models); measured 1.2e-6
            assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-4, (n, batch)
    # Unequal lengths in one batch: zero-padded and masked like `extract --mode pad`.
    w = _waves(LENGTHS[-1], 3, seed=9)
    lens = np.array([LENGTHS[2], LENGTHS[0], LENGTHS[1]], dtype=np.int64)
    src = AudioSource([w[i, :lens[i]] for i in range(3)], 16000)
    raw = embed_source(sm.model, sm.fbank, src, mode="pad", num_workers=0, progress=False)
    ref = sm.transform(raw, alpha, mean is not None)
    got = run(w * (np.arange(w.shape[1])[None, :] < lens[:, None]), lens)
    assert np.abs(got - ref).max() <= 1e-4  # as above
    # The longest item of a padded batch is unaffected by padding: it equals its embedding alone.
    assert np.abs(got[0] - sm.embed(w[0], tde_alpha=alpha, mean_sub=mean is not None)).max() <= 1e-4  # as above


def test_fbank_input_export(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.pt", "resnet_tiny")
    sm = load_model(ckpt)
    out = export_model(ckpt, tmp_path / "f.pt2", with_features=False)  # torch.export is the default
    mod = torch.export.load(str(out)).module()
    w = torch.from_numpy(_waves(20800, 2, 5))
    feats = sm.fbank(w)
    got = mod(feats, torch.full((2,), feats.shape[1])).detach().numpy()
    assert np.abs(got - sm.embed(list(w.numpy()))).max() <= 1e-4  # as above


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet_tiny"] + NEW_TINY_MODELS)
def test_every_tiny_extractor_exports_to_pt2_and_onnx_with_tde_folded(tmp_path, model):
    """Every extractor (resnet_tiny checks the harness): the torch.export program and the ONNX graph, TDE folded
    in, equal `embed` within 1e-4 at two lengths, batch 2."""
    require_registered(model)
    ort = pytest.importorskip("onnxruntime")
    ckpt = _checkpoint(tmp_path / "m.pt", model, N_MELS.get(model, 80))
    sm = load_model(ckpt)
    prog = torch.export.load(str(export_model(ckpt, tmp_path / "m.pt2", tde_alpha=0.7))).module()
    sess = ort.InferenceSession(str(export_model(ckpt, tmp_path / "m.onnx", "onnx", tde_alpha=0.7)),
                                providers=["CPUExecutionProvider"])
    for n in (LENGTHS[0], LENGTHS[2]):
        w, lens = _waves(n, 2, seed=n), np.full(2, n, dtype=np.int64)
        ref = sm.embed(list(w), tde_alpha=0.7, progress=False)
        got_pt2 = prog(torch.from_numpy(w), torch.from_numpy(lens)).detach().numpy()
        got_onnx = sess.run(None, {"wave": w, "lengths": lens})[0]
        assert np.abs(got_pt2 - ref).max() <= 1e-4 and np.abs(got_onnx - ref).max() <= 1e-4, n
