"""CAM++ (wespeaker and 3D-Speaker), ReDimNet and wespeaker's ECAPA GLOB against the toolkits' own outputs.

Fixtures: ../shared/parity (its README): small-width state dicts with randomised BatchNorm statistics, two inputs
and what the toolkit's module computed from them. Tolerance atol 1e-5 / rtol 1e-4: the README measures the
float32 noise floor (the same module run in float64) at <= 3.5e-7, and an independent float32 implementation sums
in another order; a real difference (an eps, a biased variance, a skipped BatchNorm) shows as >= 1e-4.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_parity import full_size_shapes, load_fixture

from spkcausal.nn.config import merge_defaults
from spkcausal.nn.importers import load_toolkit_state
from spkcausal.nn.models import build_model, campplus, ecapa_glob, redimnet
from spkcausal.nn.models.pooling_stats import AttentiveStats, temporal_stats
from spkcausal.nn.network import build_extractor, build_fbank, check_components

BUILDERS = {**campplus.TOOLKIT_BUILDERS, **redimnet.TOOLKIT_BUILDERS, **ecapa_glob.TOOLKIT_BUILDERS}
TOOLKIT = {"wespeaker": "wespeaker", "3dspeaker": "3dspeaker", "3D-Speaker": "3dspeaker"}
FIXTURES = ["wespeaker_campplus_small", "3dspeaker_campplus_small", "wespeaker_redimnet_b2_small",
            "wespeaker_ecapa_tdnn_glob_c512_small"]
# full-size table entry -> the registered name its toolkit class maps to
FULL_SIZE = {"wespeaker_campplus": "campplus", "3dspeaker_campplus": "campplus",
             "wespeaker_redimnet_b2": "redimnet_b2", "wespeaker_ecapa_tdnn_glob_c512": "ecapa_glob_c512"}
TINY = ["campplus_tiny", "redimnet_tiny", "ecapa_glob_tiny"]


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> None:
    # torch.testing.assert_close's criterion, without its first-call import of the distributed tensor modules (~3 s)
    assert a.shape == b.shape, (a.shape, b.shape)
    excess = ((a - b).abs() - (atol + rtol * b.abs())).max()
    assert excess <= 0, f"max abs diff {(a - b).abs().max():.3e} beyond atol {atol} + rtol {rtol} * |ref|"


def _small_model(fixture: dict, toolkit: str, **override) -> torch.nn.Module:
    name, kwargs = BUILDERS[(toolkit, fixture["ctor"]["class"])](fixture["ctor"]["args"])
    model = build_model(name, **{**kwargs, **override})
    load_toolkit_state(model, fixture["state_dict"], toolkit, source=fixture["source"])
    return model.eval()


def _max_diffs(model: torch.nn.Module, fixture: dict) -> list[float]:
    with torch.no_grad():
        return [float((model(fixture[i]) - fixture[o]).abs().max()) for i, o in
                (("input", "output"), ("input_odd", "output_odd"))]


@pytest.mark.parametrize("name", FIXTURES)
def test_small_fixture_matches_toolkit_output(name):
    fixture = load_fixture(name)
    model = _small_model(fixture, name.split("_")[0])
    assert sum(p.numel() for p in model.parameters()) == fixture["num_params"]
    diff, diff_odd = _max_diffs(model, fixture)
    print(f"{name}: max abs diff output {diff:.2e}, output_odd {diff_odd:.2e}")
    with torch.no_grad():
        for inp, out in (("input", "output"), ("input_odd", "output_odd")):
            _close(model(fixture[inp]), fixture[out], atol=1e-5, rtol=1e-4)


def test_campplus_std_eps_switch_is_the_toolkits_difference():
    """The two CAM++ fixtures share their weights; each matches only under its own toolkit's pooling eps."""
    wespeaker, speakerlab = load_fixture("wespeaker_campplus_small"), load_fixture("3dspeaker_campplus_small")
    assert torch.equal(wespeaker["input"], speakerlab["input"])
    wrong_for_3d = max(_max_diffs(_small_model(speakerlab, "3dspeaker", std_eps=1e-7), speakerlab))
    wrong_for_we = max(_max_diffs(_small_model(wespeaker, "wespeaker", std_eps=0.0), wespeaker))
    print(f"wrong switch: 3D-Speaker fixture off by {wrong_for_3d:.2e}, wespeaker fixture by {wrong_for_we:.2e}")
    assert wrong_for_3d > 1e-4 and wrong_for_we > 1e-4  # the README: outputs differ by up to 5.6e-4


@pytest.mark.parametrize("entry", list(FULL_SIZE))
def test_full_size_count_and_key_table(entry):
    table = full_size_shapes()[entry]
    toolkit = TOOLKIT[table["source"].split()[0]]
    cls = table["source"].rsplit(":", 1)[1]
    name, kwargs = BUILDERS[(toolkit, cls)](table["ctor"])
    assert name == FULL_SIZE[entry]
    model = build_model(name, **kwargs)
    assert sum(p.numel() for p in model.parameters()) == table["num_params"]
    zeros = {k: torch.zeros(shape) for k, shape in table["state_dict_shapes"].items()}
    load_toolkit_state(model, zeros, toolkit)  # every key consumed, every parameter and buffer filled
    assert all(not p.any() for p in model.parameters())


def test_full_size_defaults_are_the_voxceleb_configs():
    """The registered defaults alone give the README's models (no toolkit arguments needed)."""
    assert sum(p.numel() for p in build_model("campplus").parameters()) == 7_176_224
    assert sum(p.numel() for p in build_model("redimnet_b2").parameters()) == 4_888_241  # 72 mel bins
    assert sum(p.numel() for p in build_model("ecapa_glob_c512").parameters()) == 6_190_720
    # B0 (wespeaker's ReDimNetB0 defaults to 60 bins): its own comment and the paper give 1.0M
    assert sum(p.numel() for p in build_model("redimnet_b0", n_mels=60).parameters()) == 1_001_851


@pytest.mark.parametrize("name", TINY)
def test_tiny_variant_trains_and_is_small(name):
    torch.manual_seed(0)
    model = build_model(name, n_mels=72).train()
    count = sum(p.numel() for p in model.parameters())
    assert count < 150_000, count
    out = model(torch.randn(3, 61, 72))
    assert out.shape == (3, model.embed_dim) == (3, 32)
    out.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name,n_mels,extra", [("campplus_tiny", 80, {"std_eps": 0.0}),
                                               ("redimnet_tiny", 72, {}), ("ecapa_glob_tiny", 80, {})])
def test_builds_from_a_config_and_runs_on_the_frontend(name, n_mels, extra):
    cfg = merge_defaults({"model": {"name": name, "embed_dim": 16, **extra}, "features": {"n_mels": n_mels}})
    check_components(cfg)
    model, fbank = build_extractor(cfg).eval(), build_fbank(cfg, training=False)
    wave = torch.randn(2, cfg["data"]["sample_rate"])
    with torch.no_grad():
        feats = fbank(wave)
        emb = model(feats)
        assert feats.shape[-1] == n_mels and emb.shape == (2, 16) and torch.isfinite(emb).all()
        full = torch.full((2,), feats.shape[1])
        _close(model(feats, full), emb, atol=1e-6, rtol=1e-5)  # full lengths: no mask


def test_pooling_against_float64_numpy_with_lengths():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 9))
    lengths = np.array([9, 5, 2])
    for eps in (1e-7, 0.0):
        out = temporal_stats(torch.from_numpy(x).float(), torch.from_numpy(lengths), eps).double().numpy()
        for i, n in enumerate(lengths):  # Bessel-corrected, as both toolkits' torch.var / torch.std
            np.testing.assert_allclose(out[i, :4], x[i, :, :n].mean(-1), atol=1e-6)
            np.testing.assert_allclose(out[i, 4:], np.sqrt(x[i, :, :n].var(-1, ddof=1) + eps), atol=1e-6)
    torch.manual_seed(0)
    pool = AttentiveStats(4, bottleneck=3).eval()
    xt = torch.from_numpy(x).float()
    masked = pool(xt, torch.from_numpy(lengths))
    for i, n in enumerate(lengths):  # masked frames weigh nothing, in the attention and in its global context
        _close(masked[i], pool(xt[i:i + 1, :, :n])[0], atol=1e-6, rtol=1e-5)


def test_onnx_export_keeps_time_and_lengths_dynamic():
    """The project's exporter (TorchScript-based torch.onnx, dynamic batch and time): a graph traced at 100
    frames gives, at 133 frames with three lengths, what eager PyTorch gives (float32 kernels differ: 1e-5)."""
    import io
    import warnings

    ort = pytest.importorskip("onnxruntime")
    for name, n_mels in (("campplus_tiny", 80), ("redimnet_tiny", 72), ("ecapa_glob_tiny", 80)):
        torch.manual_seed(0)
        model, buf = build_model(name, n_mels=n_mels).eval(), io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
            torch.onnx.export(model, (torch.randn(2, 100, n_mels), torch.tensor([100, 70])), buf, dynamo=False,
                              input_names=["feats", "lengths"], output_names=["emb"], opset_version=17,
                              dynamic_axes={"feats": {0: "b", 1: "t"}, "lengths": {0: "b"}, "emb": {0: "b"}})
        feats, lengths = torch.randn(3, 133, n_mels), torch.tensor([133, 120, 101])
        got = ort.InferenceSession(buf.getvalue()).run(None, {"feats": feats.numpy(), "lengths": lengths.numpy()})
        with torch.no_grad():
            _close(torch.from_numpy(got[0]), model(feats, lengths), atol=1e-5, rtol=1e-4)
