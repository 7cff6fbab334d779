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
