"""The main job: `recipes/mini/run.sh --tiny true` end to end from a clean copy of the tracked files."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures_train import python_path

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_ROWS = ("Baseline (AAM)", "De-confound (Causal Norm AAM)")


def _clean_copy(dst: Path) -> Path:
    """The repository's tracked files only (what a fresh clone holds), so stray outputs cannot help the run."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def _figures(node: object) -> list[float]:
    """Every EER figure (`eer`, `eer_ci` bounds) anywhere in a results.json."""
    out: list[float] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "eer" and v is not None:
                out.append(float(v))
            elif k == "eer_ci" and v is not None:
                out.extend(float(x) for x in v)
            else:
                out.extend(_figures(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(_figures(v))
    return out


@pytest.mark.slow
def test_tiny_demo_end_to_end_from_a_clean_copy(tmp_path):
    repo = _clean_copy(tmp_path / "repo")
    out = tmp_path / "demo"
    env = dict(os.environ, SPKCAUSAL_PYTHON=sys.executable, PYTHONPATH=python_path(repo),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    t0 = time.perf_counter()
    r = subprocess.run(["bash", str(repo / "recipes" / "mini" / "run.sh"), "--tiny", "true", "--out", str(out)],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    assert r.returncode == 0, f"demo failed after {took:.0f} s:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    assert not (repo / ".venv").exists()  # SPKCAUSAL_PYTHON was used, no venv was built
    exp = out.parent / f"{out.name}-tiny" / "exp"  # --tiny writes beside --out
    if not exp.is_dir():
        exp = out / "exp"
    report = (exp / "report.md").read_text(encoding="utf-8")
    tables = [line for line in report.splitlines() if line.startswith("|")]
    assert len([line for line in tables if set(line) <= set("|-: ")]) >= 2  # at least two table rules
    for name in SYSTEM_ROWS:
        assert any(name in line for line in tables), f"no {name!r} row in report.md"
    assert "EER" in report
    results = sorted(exp.glob("*/results.json"))
    assert {p.parent.name for p in results} >= {"aam", "cnaam"}
    for p in results:
        eers = _figures(json.loads(p.read_text(encoding="utf-8")))
        assert eers, f"{p} has no EER"
        for v in eers:  # fractions in results.json: EER in [0, 100] % means [0, 1]
            assert math.isfinite(v) and 0.0 <= 100.0 * v <= 100.0, (p, v)
    dets = list(exp.glob("det_*.png"))
    assert dets and all(d.stat().st_size > 1000 for d in dets)
    print(f"tiny demo: {took:.1f} s")
