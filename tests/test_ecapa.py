"""Our ECAPA-TDNN (spkcausal.nn.models.ecapa) against SpeechBrain's ECAPA_TDNN with the same weights: the same keys
and shapes, the same embeddings in float32 (both run the same operations) and both close to our float64 run."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from spkcausal.nn.models import build_model
from spkcausal.nn.models.ecapa import Ecapa

sb_ecapa = pytest.importorskip("speechbrain.lobes.models.ECAPA_TDNN")

# Small but with every part: a width change (shortcut), scale-4 Res2Net, global context, several kernels.
ARCHS = [
    dict(channels=[24, 16, 16, 16, 48], attention_channels=8, se_channels=8, res2net_scale=4),
    dict(channels=[32, 32, 32, 32, 96], attention_channels=16, se_channels=16, res2net_scale=8,
         global_context=False, kernel_sizes=[3, 5, 3, 3, 1], dilations=[1, 2, 2, 4, 1]),
]


def _randomise(m: torch.nn.Module, seed: int) -> None:
    """Random weights and BatchNorm statistics far from (0, 1), so every parameter affects the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in m.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen) * 0.3)


def _pair(arch: dict, seed: int = 0) -> tuple[Ecapa, torch.nn.Module]:
    ours = Ecapa(40, embed_dim=12, **arch)
    _randomise(ours, seed)
    theirs = sb_ecapa.ECAPA_TDNN(40, lin_neurons=12, **arch)
    theirs.load_state_dict(ours.net.state_dict())  # strict: the layouts must agree key for key
    return ours.eval(), theirs.eval()


@pytest.mark.parametrize("arch", ARCHS, ids=["shortcut-gc", "no-gc"])
def test_same_keys_shapes_and_outputs_as_speechbrain(arch):
    ours, theirs = _pair(arch)
    assert {k: v.shape for k, v in ours.net.state_dict().items()} == \
        {k: v.shape for k, v in theirs.state_dict().items()}
    feats = torch.randn(3, 57, 40, generator=torch.Generator().manual_seed(1))
    frames = torch.tensor([57, 41, 23])
    rel = frames.float() / 57
    with torch.no_grad():
        got = ours(feats, frames)
        ref = theirs(feats, rel).squeeze(1)
        got_all = ours(feats)
        ref_all = theirs(feats).squeeze(1)
        ours64 = ours.double()
        exact = ours64(feats.double(), frames)
        exact_all = ours64(feats.double())
    scale = exact.abs().max().item()
    assert scale > 0.1  # not a degenerate network
    # Same operations in the same order: float32 agrees with float32 to rounding. Both against float64: the
    # embeddings are O(1) after some 20 layers of float32 (relative rounding 6e-8 per op), so 1e-5 x their scale.
    for a, b, x in ((got, ref, exact), (got_all, ref_all, exact_all)):
        assert (a - b).abs().max().item() <= 1e-5 * scale
        assert (a.double() - x).abs().max().item() <= 1e-5 * scale
        assert (b.double() - x).abs().max().item() <= 1e-5 * scale
    # The mask matters: the shorter utterances differ from their unmasked runs.
    assert (got[1:] - got_all[1:]).abs().max().item() > 1e-3


def test_training_mode_matches_speechbrain_and_checkpoint_keys_stay():
    ours, theirs = _pair(ARCHS[0], seed=5)
    ours.train()
    theirs.train()
    feats = torch.randn(4, 30, 40, generator=torch.Generator().manual_seed(2))
    frames = torch.tensor([30, 30, 22, 17])
    got = ours(feats, frames)
    ref = theirs(feats, frames.float() / 30).squeeze(1)
    assert (got - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
    got.square().sum().backward()
    ref.square().sum().backward()
    g_ours = dict(ours.net.named_parameters())
    for name, p in theirs.named_parameters():
        assert torch.allclose(g_ours[name].grad, p.grad, rtol=1e-4, atol=1e-6), name
    # Running statistics moved the same way (BatchNorm in training mode).
    s_ours = ours.net.state_dict()
    for name, t in theirs.state_dict().items():
        assert torch.allclose(s_ours[name].float(), t.float(), atol=1e-6), name


def test_registered_ecapas_keep_their_checkpoint_keys():
    # Checkpoints written when Ecapa wrapped SpeechBrain's class carry `net.<speechbrain key>`.
    for name in ("ecapa_tiny", "ecapa512"):
        m = build_model(name)
        kw = dict(channels=m.net.channels, lin_neurons=m.embed_dim)
        if name == "ecapa_tiny":
            kw.update(attention_channels=16, se_channels=16)
        ref = sb_ecapa.ECAPA_TDNN(80, **kw)
        assert [f"net.{k}" for k in ref.state_dict()] == list(m.state_dict())


def test_building_and_running_an_ecapa_imports_no_heavy_package():
    import subprocess
    import sys

    # Every verify / embed / training start builds its model: SpeechBrain's package import cost it ~3 s.
    code = ("import sys, torch\nfrom spkcausal.nn.network import build_network\n"
            "from spkcausal.nn.models import build_model\n"
            "m = build_model('ecapa_tiny').eval()\nm(torch.randn(1, 50, 80))\n"
            "heavy = [p for p in ('speechbrain', 'scipy', 'sklearn', 'matplotlib', 'onnx', 'tensorboard')\n"
            "         if p in sys.modules]\nassert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


def test_config_check_of_an_ecapa_imports_no_speechbrain_and_refuses_the_keys_it_sets():
    # The key check follows Ecapa's **kwargs to our trunk: it must not import SpeechBrain to learn them (start-up,
    # issue 29), and the trunk's input_size / lin_neurons are set from n_mels / embed_dim, so a config naming
    # them is a typo to name, not a TypeError.
    code = ("import sys\nfrom spkcausal.nn.config import merge_defaults\n"
            "from spkcausal.nn.network import check_components\n"
            "from spkcausal.utils import UsageError\n"
            "check_components(merge_defaults({'model': {'name': 'ecapa_tiny', 'res2net_scale': 4}}))\n"
            "try:\n    check_components(merge_defaults({'model': {'name': 'ecapa_tiny', 'lin_neurons': 8}}))\n"
            "except UsageError as e:\n    print(e)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'speechbrain'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].startswith("unknown config key model.lin_neurons; expected one of")
    assert out[1] == "[]"
