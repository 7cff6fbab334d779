"""Model registry and the Registry class every kind uses; extractor shapes, sizes, batch independence, pooling."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spkcausal.nn.models import MODELS, build_model, count_parameters, list_models
from spkcausal.nn.models.resnet import stats_pool
from spkcausal.registry import Registry
from spkcausal.utils import UsageError

REPO = Path(__file__).resolve().parents[1]


def test_registry_names_and_unknown():
    assert {"ecapa512", "ecapa1024", "ecapa_tiny", "resnet34", "resnet_tiny"} <= set(list_models())
    assert list_models() == MODELS.names() == sorted(list_models())
    with pytest.raises(UsageError) as err:
        build_model("resnet35")
    assert str(err.value) == f"unknown model 'resnet35'; expected one of {', '.join(sorted(list_models()))}"


def test_registry_register_get_build_and_errors():
    reg = Registry("widget")

    @reg.register("b")
    def make_b(x, scale=1):
        return ("b", x * scale)

    reg.register("a")(dict)
    assert reg.names() == ["a", "b"] and list(reg) == ["a", "b"] and "b" in reg and "c" not in reg
    assert reg.get("b") is make_b and reg.build("b", 3, scale=2) == ("b", 6)
    with pytest.raises(ValueError, match="'b' registered twice"):
        reg.register("b")(dict)
    assert reg.get("b") is make_b  # the failed second registration replaced nothing
    for bad in ("c", None, ["a"]):  # a YAML list or null as a name is a usage error too, not a TypeError
        assert bad not in reg
        with pytest.raises(UsageError, match=r"^unknown widget .*; expected one of a, b$"):
            reg.get(bad)


@pytest.mark.slow
def test_train_with_unknown_model_name_is_one_line_and_exit_2(tmp_path):
    from fixtures_train import make_corpus, python_path, tiny_config

    from spkcausal.nn.config import save_config

    conf = tmp_path / "c.yaml"
    save_config(tiny_config(make_corpus(tmp_path, utts_per_spk=2), tmp_path / "exp"), conf)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=python_path())
    env.pop("SPKCAUSAL_DEBUG", None)
    out = subprocess.run([sys.executable, "-m", "spkcausal", "train", "--config", str(conf), "model.name=nope"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"spkcausal train: error: {conf}: unknown model 'nope'; expected one of "
                      + ", ".join(list_models())], out.stderr[-2000:]  # checked before the audio scan
    assert not (tmp_path / "exp" / "checkpoints").exists() or not any((tmp_path / "exp" / "checkpoints").iterdir())


@pytest.mark.parametrize("name,dim", [("ecapa_tiny", 32), ("resnet_tiny", 32)])
def test_tiny_shapes_and_batch_independence(name, dim):
    torch.manual_seed(0)
    model = build_model(name).eval()
    assert model.embed_dim == dim
    feats = torch.randn(5, 137, 80)
    with torch.no_grad():
        batch = model(feats)
        alone = model(feats[2:3])
    assert batch.shape == (5, dim)
    # each is <= 1.3e-7 off a float64 run of the model (measured: AVX-512/AVX2/SSE4.1 oneDNN, 1-2 threads), so
    # their difference is <= 2.6e-7; 1e-5 is 40x that
    assert torch.allclose(batch[2:3], alone, atol=1e-5)
    assert not torch.allclose(batch[0], batch[1], atol=1e-3)  # different inputs: far above any rounding


def test_tiny_models_train_and_other_feature_sizes():
    torch.manual_seed(0)
    for name in ("ecapa_tiny", "resnet_tiny"):
        model = build_model(name, n_mels=40, embed_dim=16).train()
        out = model(torch.randn(3, 50, 40))
        assert out.shape == (3, 16) and model.embed_dim == 16
        out.square().sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_full_size_parameter_counts():
    """docs/design.md section 6: ECAPA C=1024 is 20.8M, C=512 6.2M; the wespeaker-style ResNet34 is ~6.6M."""
    counts = {name: count_parameters(build_model(name)) for name in ("ecapa1024", "ecapa512", "resnet34")}
    print(counts)
    assert abs(counts["ecapa1024"] - 20.8e6) < 0.1e6
    assert abs(counts["ecapa512"] - 6.2e6) < 0.1e6
    assert abs(counts["resnet34"] - 6.6e6) < 0.1e6


def test_full_size_forward_shapes():
    with torch.no_grad():
        resnet = build_model("resnet34").eval()
        assert resnet(torch.randn(2, 64, 80)).shape == (2, 256) and resnet.embed_dim == 256
        # pooled map: 256 channels x 10 frequency rows (80 bins halved three times)
        assert resnet.pool_dim == 2560


def test_stats_pool_against_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 9)).astype(np.float32)
    lengths = np.array([9, 5, 1])
    out = stats_pool(torch.from_numpy(x), torch.from_numpy(lengths)).numpy()
    for i, n in enumerate(lengths):
        seg = x[i, :, :n].astype(np.float64)
        # float32 sums of n <= 9 values |x| < 2.4 against float64: worst case n * eps * max|x| = 2.5e-6 for the
        # mean, measured 8e-8 (and 4e-8 for the std); 1e-5 is above the worst case for both
        np.testing.assert_allclose(out[i, :4], seg.mean(-1), atol=1e-5)
        np.testing.assert_allclose(out[i, 4:], np.sqrt(seg.var(-1) + 1e-7), atol=1e-5)
    full = stats_pool(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(full[0], out[0], atol=1e-6)  # same float32 reduction, masked or not


def test_resnet_lengths_only_affect_padded_rows():
    torch.manual_seed(0)
    model = build_model("resnet_tiny").eval()
    feats = torch.randn(2, 80, 80)
    with torch.no_grad():
        plain = model(feats)
        masked = model(feats, torch.tensor([80, 40]))
    assert torch.allclose(plain[0], masked[0], atol=1e-6)  # each <= 1e-8 off float64 (measured), scale 0.04
    assert not torch.allclose(plain[1], masked[1], atol=1e-3)  # half the frames masked: a different embedding


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_names_a_config_key_typo(name):
    # A factory whose **kw reach no named class would let `model.embed_dims` through to a TypeError (issue 26).
    from spkcausal.registry import accepted_keys, check_kwargs

    keys = accepted_keys(MODELS.get(name))
    assert keys is not None and {"n_mels", "embed_dim"} <= keys
    with pytest.raises(UsageError, match=r"unknown config key model\.embed_dims; expected one of .*embed_dim"):
        check_kwargs(MODELS.get(name), {"embed_dims": 8}, "model")
