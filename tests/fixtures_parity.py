"""The reference outputs of other toolkits' extractors (`../shared/parity`, beside the repository; its README).

Present in CI (a copy of shared/ lies beside the clone); a user's clone has none, and the parity tests then skip
with that reason. Under CI=true a missing folder is a failure, never a skip.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PARITY_DIR = Path(os.environ.get("SPKCAUSAL_PARITY_DIR", ROOT.parent / "shared" / "parity"))
SHAPES_FILE = PARITY_DIR / "full_size_state_dict_shapes.json"


def require_parity_dir() -> Path:
    """The fixture folder; skip (a user's clone) or fail (CI) when it is absent."""
    if not SHAPES_FILE.is_file():
        msg = f"no parity fixtures at {PARITY_DIR} (they live in shared/, beside the repository, not in it)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return PARITY_DIR


def load_fixture(name: str) -> dict[str, Any]:
    """One `<name>.pt` fixture: state_dict, input(_odd), output(_odd), ctor, full_ctor, ..."""
    return torch.load(require_parity_dir() / f"{name}.pt", map_location="cpu", weights_only=True)


def full_size_shapes() -> dict[str, Any]:
    """full_size_state_dict_shapes.json: fixture name -> source, ctor, num_params, state_dict_shapes."""
    import json

    return json.loads((require_parity_dir() / "full_size_state_dict_shapes.json").read_text())
