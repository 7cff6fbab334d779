"""SpeechBrain ECAPA in and out: an imported embedding_model.ckpt embeds like SpeechBrain's own pipeline
(Fbank -> sentence mean normalisation -> ECAPA_TDNN, built here with random weights: no download), and a
spkcausal ECAPA exports to a state dict that SpeechBrain's ECAPA_TDNN loads and runs identically. An imported
extractor (no head) extracts a data dir like SpeechBrain, and refuses TDE."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from spkcausal.cli import main
from spkcausal.data.datadir import DataDir
from spkcausal.data.embeddings import EmbeddingStore
from spkcausal.inference.api import load_model
from spkcausal.inference.extract import extract
from spkcausal.inference.speechbrain_io import ecapa_arch, export_speechbrain, import_speechbrain
from spkcausal.utils import DataError

ARCH = dict(channels=[16, 16, 16, 16, 48], kernel_sizes=[5, 3, 3, 3, 1], attention_channels=8, se_channels=8,
            res2net_scale=4, lin_neurons=24)


def _sb_model() -> torch.nn.Module:
    """A small SpeechBrain ECAPA with random weights and non-trivial BatchNorm statistics."""
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

    torch.manual_seed(3)
    m = ECAPA_TDNN(80, **ARCH)
    gen = torch.Generator().manual_seed(4)
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=gen) * 0.2)
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=gen) + 0.5)
    return m.eval()


def _sb_embed(m: torch.nn.Module, wave: np.ndarray) -> np.ndarray:
    """SpeechBrain's own embedding pipeline (spkrec-ecapa-voxceleb's hyperparams: 80-bin Fbank, sentence CMN)."""
    from speechbrain.lobes.features import Fbank
    from speechbrain.processing.features import InputNormalization

    x = torch.from_numpy(wave).unsqueeze(0)
    with torch.no_grad():
        feats = Fbank(n_mels=80)(x)
        feats = InputNormalization(norm_type="sentence", std_norm=False).eval()(feats, torch.ones(1))
        return m(feats, torch.ones(1)).squeeze(1)[0].numpy()


@pytest.fixture(scope="module")
def sb_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sb")
    m = _sb_model()
    torch.save(m.state_dict(), d / "embedding_model.ckpt")  # what SpeechBrain's Checkpointer writes
    rng = np.random.default_rng(0)
    waves = {}
    for n in (9000, 16000, 27100):
        t = np.arange(n) / 16000
        w = (0.3 * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 3 * t) + 0.05 * rng.standard_normal(n))
        waves[n] = w.astype(np.float32)
        sf.write(str(d / f"w{n}.wav"), waves[n], 16000, subtype="FLOAT")
    return d, m, waves


def test_architecture_is_read_from_the_state_dict(sb_dir):
    d, m, _ = sb_dir
    arch = ecapa_arch(m.state_dict())
    assert arch["n_mels"] == 80 and arch["global_context"] is True
    assert {k: arch[k] for k in ARCH} == ARCH


def test_imported_model_reproduces_speechbrain_embeddings(sb_dir, tmp_path):
    d, m, waves = sb_dir
    assert main(["import-speechbrain", str(d), "--out", str(tmp_path / "sb.pt")]) == 0
    sm = load_model(tmp_path / "sb.pt")
    assert sm.config["features"]["frontend"] == "speechbrain"
    for n, w in waves.items():
        ref = _sb_embed(m, w)
        # the same float32 network and front-end ops as SpeechBrain's (measured: equal); 1e-4 allows another op order
        assert np.abs(sm.embed(w) - ref).max() <= 1e-4, n
        assert np.abs(sm.embed(d / f"w{n}.wav") - ref).max() <= 1e-4, n  # as above
    # Not a trivially equal pair: different audio gives a different embedding.
    assert np.abs(_sb_embed(m, waves[9000]) - _sb_embed(m, waves[16000])).max() > 1e-2


def test_imported_model_extracts_a_data_dir_and_refuses_tde(sb_dir, tmp_path):
    d, m, waves = sb_dir
    ckpt = import_speechbrain(d / "embedding_model.ckpt", tmp_path / "sb.pt")
    DataDir(wav={f"u{n}": str(d / f"w{n}.wav") for n in waves}, utt2spk={f"u{n}": "s" for n in waves}).write(
        tmp_path / "data")
    out = extract(tmp_path / "data", tmp_path / "emb", ckpt=ckpt, num_workers=0)
    store = EmbeddingStore.open(out)
    for n, w in waves.items():
        assert np.abs(store.get([f"u{n}"])[0] - _sb_embed(m, w)).max() <= 1e-4, n  # as in the test above
    assert json.loads((out / "extract.json").read_text())["head"] is None
    with pytest.raises(DataError, match="Causal Norm head"):
        extract(tmp_path / "data", tmp_path / "tde", ckpt=ckpt, num_workers=0, tde_alpha=1.0)
    assert not (tmp_path / "tde").exists()


def test_export_back_loads_into_speechbrain(sb_dir, tmp_path):
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

    d, m, waves = sb_dir
    ckpt = import_speechbrain(d / "embedding_model.ckpt", tmp_path / "sb.pt")
    out = export_speechbrain(ckpt, tmp_path / "back" / "embedding_model.ckpt")
    fresh = ECAPA_TDNN(80, **ARCH)
    fresh.load_state_dict(torch.load(out, weights_only=True))  # strict: every key and shape
    fresh.eval()
    assert np.abs(_sb_embed(fresh, waves[16000]) - _sb_embed(m, waves[16000])).max() == 0.0


def test_not_a_speechbrain_checkpoint_is_a_data_error(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "embedding_model.ckpt")
    assert main(["import-speechbrain", str(tmp_path), "--out", str(tmp_path / "x.pt")]) == 2
