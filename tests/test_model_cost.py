"""model-info's cost fields: parameters, and MACs per second of audio by FlopCounterMode, checked against the
MACs of convolutions and linear layers written out by hand (integers, so exact)."""
from __future__ import annotations

import json

import torch
from torch import nn

from spkcausal.cli import main
from spkcausal.nn.checkpoint import save_checkpoint
from spkcausal.nn.complexity import FRAMES, complexity, count_macs
from spkcausal.nn.config import merge_defaults
from spkcausal.nn.network import build_extractor


class _Toy(nn.Module):
    """(B, T, F) -> conv1d (k=3, stride 2) -> ReLU -> mean over time -> linear: MACs known in closed form."""

    def __init__(self, n_mels: int):
        super().__init__()
        self.conv = nn.Conv1d(n_mels, 16, 3, stride=2)
        self.fc = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x.transpose(1, 2))).mean(-1))


def test_macs_equal_the_closed_form_of_conv_and_linear():
    n_mels, frames = 40, 200
    t_out = (frames - 3) // 2 + 1
    expect = 16 * n_mels * 3 * t_out + 16 * 8  # per output element: Cin * k MACs; linear: in * out
    assert count_macs(_Toy(n_mels), n_mels, frames) == expect
    cost = complexity(_Toy(n_mels), n_mels)
    assert cost["macs_per_second"] == expect * 100 // FRAMES  # per second of audio: half of 2 s
    assert cost["parameters"] == 16 * n_mels * 3 + 16 + 16 * 8 + 8


def test_model_info_prints_parameters_and_macs(tmp_path, capsys):
    cfg = merge_defaults({"model": {"name": "resnet_tiny"}, "features": {"n_mels": 40}})
    model = build_extractor(cfg)
    save_checkpoint({"config": cfg, "model": model.state_dict(), "head": None, "speakers": []}, tmp_path / "m.pt")
    assert main(["model-info", str(tmp_path / "m.pt")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["macs_per_second"] == count_macs(model, 40) // 2 > 0
    assert main(["model-info", str(tmp_path / "m.pt"), "--get", "parameters"]) == 0
    assert capsys.readouterr().out.strip() == str(info["parameters"])
