"""wespeaker ResNet34/221/293, SimAM-ResNet, ERes2Net and 3D-Speaker ERes2NetV2 against the toolkits' own outputs.

Each fixture (../shared/parity, its README) holds a small-width state dict under the toolkit's key names, two inputs
and the toolkit module's outputs; ours must load it through the importer and match within atol 1e-5 / rtol 1e-4
(the fixture's float32 vs float64 spread is at most 3.5e-7, so an independent float32 implementation lands well
inside; a wrong eps, pooling or activation clamp does not). Full-size models are built on the meta device: their
parameter counts and key tables need no memory or init time.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from fixtures_parity import full_size_shapes, load_fixture

from spkcausal.nn.importers import load_toolkit_state
from spkcausal.nn.models import build_model, eres2net, simam, wespeaker_resnet
from spkcausal.nn.models.resnet import stats_pool
from spkcausal.utils import DataError

# Loading into a meta-device model copies nothing (the shapes are what is checked); BatchNorm's own default step
# counter, which the importer leaves out, is the one CPU tensor torch then warns about.
pytestmark = pytest.mark.filterwarnings("ignore:for [^ ]*num_batches_tracked:UserWarning")

BUILDERS = {**wespeaker_resnet.TOOLKIT_BUILDERS, **simam.TOOLKIT_BUILDERS, **eres2net.TOOLKIT_BUILDERS}
FIXTURES = {  # fixture -> toolkit, our registered name
    "wespeaker_resnet34_small": ("wespeaker", "wespeaker_resnet34"),
    "wespeaker_resnet221_small": ("wespeaker", "resnet221"),
    "wespeaker_resnet293_small": ("wespeaker", "resnet293"),
    "wespeaker_simam_resnet34_small": ("wespeaker", "simam_resnet34"),
    "wespeaker_eres2net34_base_small": ("wespeaker", "eres2net34_base"),
    "3dspeaker_eres2netv2_small": ("3dspeaker", "eres2netv2"),
}
# full-size key table -> toolkit, our name, the fixture README's parameter count
FULL = {
    "wespeaker_resnet34": ("wespeaker", "wespeaker_resnet34", 6_634_336),
    "wespeaker_resnet221": ("wespeaker", "resnet221", 23_792_224),
    "wespeaker_resnet293": ("wespeaker", "resnet293", 28_626_016),
    "wespeaker_simam_resnet34": ("wespeaker", "simam_resnet34", 25_213_760),
    "wespeaker_eres2net34_base": ("wespeaker", "eres2net34_base", 9_887_808),
    "3dspeaker_eres2netv2": ("3dspeaker", "eres2netv2", 17_859_632),
}
TINY = {  # name -> parameter count at its defaults (n_mels 80, embed_dim 32)
    "wespeaker_resnet_tiny": 40_012, "resnet_bottleneck_tiny": 114_396, "simam_resnet_tiny": 50_620,
    "eres2net_tiny": 83_650, "eres2netv2_tiny": 73_478,
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def from_toolkit(toolkit: str, cls: str, args: dict, device: str = "cpu") -> tuple[str, torch.nn.Module]:
    """Our model for a toolkit class and its constructor arguments, through the family's TOOLKIT_BUILDERS."""
    name, kwargs = BUILDERS[(toolkit, cls)](args)
    with torch.device(device):
        return name, build_model(name, **kwargs)


@functools.cache
def full_size(key: str) -> tuple[str, torch.nn.Module]:
    """The full-size model of a key table entry, on the meta device, built once per test module."""
    entry = full_size_shapes()[key]
    return from_toolkit(FULL[key][0], entry["source"].rsplit(":", 1)[1], entry["ctor"], device="meta")


def meta_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(s, device="meta") for k, s in shapes.items()}


@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_fixture_outputs_match_the_toolkit(fixture):
    d = load_fixture(fixture)
    toolkit, ours = FIXTURES[fixture]
    name, model = from_toolkit(toolkit, d["ctor"]["class"], d["ctor"]["args"])
    assert name == ours and n_params(model) == d["num_params"]
    load_toolkit_state(model, d["state_dict"], toolkit, fixture)
    model.eval()
    with torch.no_grad():
        for x, want in ((d["input"], d["output"]), (d["input_odd"], d["output_odd"])):
            got = model(x.clone())
            print(f"{fixture}: {tuple(x.shape)} max abs diff {(got - want).abs().max().item():.2e}")
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("key", sorted(FULL))
def test_full_size_count_and_key_table(key):
    entry = full_size_shapes()[key]
    toolkit, ours, readme_count = FULL[key]
    name, model = full_size(key)
    assert name == ours
    assert n_params(model) == entry["num_params"] == readme_count
    with torch.device("meta"):  # our registered defaults are the toolkit's VoxCeleb configuration
        assert n_params(build_model(ours)) == readme_count
    load_toolkit_state(model, meta_state(entry["state_dict_shapes"]), toolkit, key)


def test_key_table_of_another_size_or_architecture_is_refused():
    shapes = full_size_shapes()
    _, resnet34 = full_size("wespeaker_resnet34")
    truncated = dict(shapes["wespeaker_resnet34"]["state_dict_shapes"])
    del truncated["seg_1.bias"]
    with pytest.raises(DataError, match=r"lacks 'seg_1.bias' \(256\)"):
        load_toolkit_state(resnet34, meta_state(truncated), "wespeaker")
    _, eres = full_size("wespeaker_eres2net34_base")
    with pytest.raises(DataError, match=r"key 'layer1.0.conv1.weight' has shape \(32, 32, 3, 3\)"):
        load_toolkit_state(eres, meta_state(shapes["wespeaker_resnet34"]["state_dict_shapes"]), "wespeaker")


def test_simam_resnet100_count_and_keys_follow_resnet34s():
    """No fixture for SimAM-ResNet100: it is SimAM-ResNet34 with blocks [6, 16, 24, 3] for [3, 4, 6, 3]; every
    added block keeps its stage's width (two 3x3 convs c -> c without bias, two BNs of 2c parameters)."""
    entry = full_size_shapes()["wespeaker_simam_resnet34"]
    extra = sum((n100 - n34) * (2 * 9 * c * c + 4 * c)
                for n34, n100, c in zip((3, 4, 6, 3), (6, 16, 24, 3), (64, 128, 256, 512)))
    assert entry["num_params"] + extra == 50_232_896
    name, model = from_toolkit("wespeaker", "SimAM_ResNet100_ASP", entry["ctor"], device="meta")
    assert name == "simam_resnet100" and n_params(model) == 50_232_896
    shapes = dict(entry["state_dict_shapes"])
    for stage, (n34, n100) in enumerate(zip((3, 4, 6, 3), (6, 16, 24, 3)), 1):
        proto = f"front.layer{stage}.1."
        for j in range(n34, n100):
            shapes |= {f"front.layer{stage}.{j}." + k[len(proto):]: s for k, s in entry["state_dict_shapes"].items()
                       if k.startswith(proto)}
    load_toolkit_state(model, meta_state(shapes), "wespeaker")


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_variant_trains_and_is_small(name):
    torch.manual_seed(0)
    model = build_model(name)
    assert n_params(model) == TINY[name] < 120_000
    x = torch.randn(2, 150, 80)
    emb = model(x)
    assert emb.shape == (2, 32) and model.embed_dim == 32
    emb.square().sum().backward()
    missing = [k for k, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    model.eval()
    with torch.no_grad():  # frame counts only mask the pooling: the full count is no mask, a shorter one differs
        plain, full, short = model(x), model(x, torch.tensor([150, 150])), model(x, torch.tensor([150, 60]))
    torch.testing.assert_close(full, plain, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(short[0], plain[0], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(short[1], plain[1], atol=1e-4)


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_variant_in_the_training_path(name):
    from spkcausal.nn.config import merge_defaults
    from spkcausal.nn.network import build_extractor, build_fbank

    cfg = merge_defaults({"model": {"name": name, "embed_dim": 24}})
    fbank, model = build_fbank(cfg, training=False), build_extractor(cfg).eval()
    with torch.no_grad():
        emb = model(fbank(torch.randn(2, 16000)))
    assert emb.shape == (2, 24) and torch.isfinite(emb).all()


def test_two_emb_layer_keys_and_output():
    model = build_model("wespeaker_resnet_tiny", two_emb_layer=True).eval()
    keys = set(model.state_dict())
    assert {"seg_1.weight", "seg_bn_1.running_mean", "seg_bn_1.running_var", "seg_2.weight", "seg_2.bias"} <= keys
    assert not any(k.startswith("seg_bn_1.weight") for k in keys)  # wespeaker's second-layer BN has no affine
    with torch.no_grad():
        model.seg_2.weight.zero_()
        model.seg_2.bias.fill_(0.5)
        assert torch.equal(model(torch.randn(1, 100, 80)), torch.full((1, 32), 0.5))  # seg_2's output is returned


def test_unbiased_stats_pool_against_numpy():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 9))
    lengths = np.array([9, 5, 2])
    out = stats_pool(torch.from_numpy(x), torch.from_numpy(lengths), eps=1e-8, unbiased=True).numpy()
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(out[i, :4], x[i, :, :n].mean(-1), rtol=1e-12)
        np.testing.assert_allclose(out[i, 4:], np.sqrt(x[i, :, :n].var(-1, ddof=1) + 1e-8), rtol=1e-12)
    full = stats_pool(torch.from_numpy(x), unbiased=True).numpy()
    np.testing.assert_allclose(full[:, 4:], np.sqrt(x.var(-1, ddof=1) + 1e-7), rtol=1e-12)


@pytest.mark.parametrize(("name", "eps"), [("wespeaker_resnet_tiny", 1e-7), ("resnet_bottleneck_tiny", 1e-7),
                                           ("eres2net_tiny", 1e-7), ("eres2netv2_tiny", 1e-8)])
def test_pooling_eps_is_the_toolkits(name, eps):
    """The fixtures cannot tell 1e-7 from 1e-8 (ERes2NetV2 moves by 3e-6 at most, inside atol): on a map constant
    over time, the pooled std is sqrt(eps) exactly."""
    model = build_model(name)
    std = model.pool(torch.full((1, 2, 3, 7), 0.3, dtype=torch.float64))[:, 6:]
    torch.testing.assert_close(std, torch.full_like(std, eps ** 0.5), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["eres2net_tiny", "eres2netv2_tiny"])
def test_eres2net_blocks_clip_at_20(name):
    """The toolkits' `ReLU` is Hardtanh(0, 20); random fixture weights never reach 20, so a plain ReLU would pass
    them. Inputs scaled up drive every block's output into the clip."""
    model = build_model(name).eval()
    with torch.no_grad():
        x = model._stem(1e3 * torch.randn(1, 40, 80))
        out = model.layer1[0](x)
    assert out.min() >= 0 and out.max() == 20.0
