"""tools/bench_models.py (docs/models.md's table): one row per model with its exact parameter count and MACs and
finite RTFs."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from spkcausal.nn.complexity import complexity
from spkcausal.nn.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def test_bench_row_has_the_models_cost_and_finite_rtfs(capsys):
    pytest.importorskip("onnxruntime")
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import bench_models
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert bench_models.main(["--models", "resnet_tiny", "--repeats", "1"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| resnet_tiny ")]
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    cost = complexity(build_model("resnet_tiny"), 80)
    assert cells[1] == f"{cost['parameters'] / 1e6:.2f}M" and cells[2] == f"{cost['macs_per_second'] / 1e9:.2f}"
    assert all(0 < float(c) < 10 for c in cells[3:6])  # ONNX Runtime, PyTorch 1 thread, all threads


def test_projection_scales_the_ecapa512_anchor_by_macs_and_reads_each_recipe(capsys):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import bench_models
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert bench_models.main(["--projection", "--models", "ecapa512,redimnet_b0,resnet_tiny"]) == 0
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")]
            for r in capsys.readouterr().out.splitlines() if r.startswith("| ") and not r.startswith("| model")
            and not r.startswith("| ---")}
    macs = {n: complexity(build_model(n, n_mels=m), m)["macs_per_second"]
            for n, m in (("ecapa512", 80), ("redimnet_b0", 72), ("resnet_tiny", 80))}
    # ECAPA-512 reproduces docs/scale.md's anchor row: 150 epochs x 1,056,045 examples / 6,443 per s = 6.83 h
    assert rows["ecapa512"][3] == "6,443 (6,443)" and rows["ecapa512"][5] == f"{150 * 1056045 / 6443 / 3600:.1f} h"
    # ReDimNet B0 has no recipe of its own: B2's (120 epochs, 2 s chunks); its rate scales by the MAC ratio
    rate = 6443 * macs["ecapa512"] / macs["redimnet_b0"]
    assert rows["redimnet_b0"][3] == f"{rate:,.0f}" and "redimnet_b2_aam.yaml" in rows["redimnet_b0"][4]
    assert rows["redimnet_b0"][7] == f"{120 * 642242 / rate / 3600:.1f} h"  # CN-Celeb, 1 GPU
    assert rows["resnet_tiny"][4] == "150, 2 s (`defaults`)"  # no recipe at all: the config defaults
