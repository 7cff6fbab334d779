"""`spkcausal import-checkpoint`: a full-size toolkit state dict (random values, laid out as the toolkit saves it,
keys and shapes from the parity fixtures' table) becomes an experiment dir whose embeddings survive export to
ONNX within 1e-4; a checkpoint of another architecture, a truncated file, a pickle and a missing key each give
one line and exit 2."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from fixtures_parity import full_size_shapes

from spkcausal.cli import main
from spkcausal.data.shards import sha256_file
from spkcausal.inference.api import load_model
from spkcausal.inference.export import export_model
from spkcausal.nn.checkpoint import load_checkpoint
from spkcausal.nn.models import build_model, list_models

# parity fixture -> (toolkit, our registered model, --model-args). The model names are the interface table's
# (docs/models.md); a name another branch registers skips here until it is merged.
IMPORT_TABLE = {
    "wespeaker_resnet34": ("wespeaker", "wespeaker_resnet34", {}),
    "wespeaker_resnet221": ("wespeaker", "resnet221", {}),
    "wespeaker_resnet293": ("wespeaker", "resnet293", {}),
    "wespeaker_campplus": ("wespeaker", "campplus", {}),
    "wespeaker_eres2net34_base": ("wespeaker", "eres2net34_base", {}),
    "wespeaker_redimnet_b2": ("wespeaker", "redimnet_b2", {}),
    "wespeaker_simam_resnet34": ("wespeaker", "simam_resnet34", {}),
    "wespeaker_ecapa_tdnn_glob_c512": ("wespeaker", "ecapa_glob_c512", {}),
    "3dspeaker_campplus": ("3dspeaker", "campplus", {}),
    "3dspeaker_eres2netv2": ("3dspeaker", "eres2netv2", {}),
}


def random_state(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of these shapes that keep a deep network's activations finite: fan-in-scaled weights,
    BatchNorm-like 1-d weights and running variances in [0.5, 1.5], small biases and means."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(100, dtype=torch.int64)
        elif key.endswith("running_var") or (len(shape) == 1 and key.endswith("weight")):
            out[key] = torch.rand(shape, generator=gen) + 0.5
        elif len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            out[key] = torch.randn(shape, generator=gen) / fan_in ** 0.5
        else:
            out[key] = torch.randn(shape, generator=gen) * 0.1
    return out


def save_as_toolkit(state: dict[str, torch.Tensor], toolkit: str, root) -> str:
    """The file a toolkit's trainer writes: wespeaker's avg_model.pt with the margin classifier (`projection.*`),
    3D-Speaker's Checkpointer dir CKPT-EPOCH-N-00/embedding_model.ckpt; the path import-checkpoint is given."""
    root.mkdir(parents=True, exist_ok=True)
    if toolkit == "wespeaker":
        path = root / "avg_model.pt"
        torch.save({**state, "projection.weight": torch.randn(7, 16)}, path)  # dropped: not extractor state
        return str(path)
    ckpt_dir = root / "CKPT-EPOCH-70-00"
    ckpt_dir.mkdir(parents=True)
    torch.save(state, ckpt_dir / "embedding_model.ckpt")
    return str(ckpt_dir)


def _waves(seconds: float, batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    return np.stack([0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + 0.05 * rng.standard_normal(n)
                     for _ in range(batch)]).astype(np.float32)


def _import_roundtrip(toolkit: str, name: str, state: dict, args: dict, tmp_path) -> None:
    """import-checkpoint -> embed -> export ONNX (and torch.export) -> embed again, within 1e-4."""
    src = save_as_toolkit(state, toolkit, tmp_path / "src")
    argv = ["import-checkpoint", "--from", toolkit, src, "--model", name, "--out", str(tmp_path / "exp")]
    assert main(argv + (["--model-args", *(f"{k}={v}" for k, v in args.items())] if args else [])) == 0
    ckpt = load_checkpoint(tmp_path / "exp" / "avg_model.pt")
    origin = ckpt["imported_from"]
    assert origin["toolkit"] == toolkit and origin["model"] == name
    assert origin["sha256"] == sha256_file(origin["path"])
    assert yaml.safe_load((tmp_path / "exp" / "config.yaml").read_text())["model"]["name"] == name
    # Every parameter came from the file (not the constructor's init): compare one tensor exactly.
    key = next(k for k in ckpt["model"] if k in state)
    assert torch.equal(ckpt["model"][key], state[key])

    sm = load_model(tmp_path / "exp")
    w = _waves(1.0, 2, seed=3)
    ref = sm.embed(list(w), progress=False)
    assert np.isfinite(ref).all() and ref.std() > 0
    # Embeddings of random full-size weights reach magnitudes of 1e1-1e2: the bound is relative to their scale
    # (float32 rounding of the graph's reordered sums is ~1e-6 relative).
    scale = max(1.0, float(np.abs(ref).max()))
    ort = pytest.importorskip("onnxruntime")
    onnx_path = export_model(tmp_path / "exp", tmp_path / "m.onnx", "onnx", with_features=True)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"wave": w, "lengths": np.full(2, w.shape[1], dtype=np.int64)})[0]
    assert np.abs(got - ref).max() <= 1e-4 * scale


@pytest.mark.slow
@pytest.mark.parametrize("fixture", sorted(IMPORT_TABLE))
def test_full_size_toolkit_checkpoint_imports_and_roundtrips_through_onnx(fixture, tmp_path):
    toolkit, name, args = IMPORT_TABLE[fixture]
    shapes = full_size_shapes()[fixture]["state_dict_shapes"]
    if name not in list_models():
        pytest.skip(f"{name} not registered on this branch")
    torch.set_num_threads(1)
    _import_roundtrip(toolkit, name, random_state(shapes), args, tmp_path)


def test_own_resnet34_keys_import_as_wespeaker_layout(tmp_path):
    """The machinery on a model every branch has: our resnet34's own keys in wespeaker's file layout, and a
    192-d variant whose width import-checkpoint reads from the shapes (no --model-args)."""
    torch.set_num_threads(1)
    shapes = {k: list(v.shape) for k, v in build_model("resnet34", embed_dim=192).state_dict().items()}
    _import_roundtrip("wespeaker", "resnet34", random_state(shapes), {}, tmp_path)
    assert load_checkpoint(tmp_path / "exp" / "avg_model.pt")["config"]["model"]["embed_dim"] == 192


def _one_line_exit_2(argv: list[str], capsys, *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "weights_only=False" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_wrong_architecture_truncated_and_pickled_checkpoints_give_one_line(tmp_path, capsys):
    tiny = build_model("resnet_tiny", embed_dim=16).state_dict()
    src = tmp_path / "tiny.pt"
    torch.save(tiny, src)
    out = ["--out", str(tmp_path / "exp")]
    # Another architecture: the first key ECAPA does not have, with its shape.
    first = next(iter(tiny))
    _one_line_exit_2(["import-checkpoint", "--from", "wespeaker", str(src), "--model", "ecapa_tiny", *out],
                     capsys, f"unexpected wespeaker key {first!r}", str(tuple(tiny[first].shape)).replace(",)", ")"))
    # A state dict missing a key (a truncated export): the first missing key and its shape.
    cut = dict(tiny)
    gone = list(cut)[-1]
    del cut[gone]
    torch.save(cut, tmp_path / "cut.pt")
    _one_line_exit_2(["import-checkpoint", "--from", "3dspeaker", str(tmp_path / "cut.pt"), "--model",
                      "resnet_tiny", "--model-args", "embed_dim=16", *out], capsys, f"lacks {gone!r}")
    # A file cut short on disk.
    data = src.read_bytes()
    (tmp_path / "short.pt").write_bytes(data[: len(data) // 2])
    _one_line_exit_2(["import-checkpoint", "--from", "wespeaker", str(tmp_path / "short.pt"), "--model",
                      "resnet_tiny", *out], capsys, "short.pt", "truncated")
    # A file that needs unpickling beyond tensors: refused without torch's weights_only advice.
    torch.save({"model": tiny, "opt": np.arange(3)}, tmp_path / "np.pt")
    _one_line_exit_2(["import-checkpoint", "--from", "wespeaker", str(tmp_path / "np.pt"), "--model",
                      "resnet_tiny", *out], capsys, "np.pt", "refused")
    # A factory argument the model does not take.
    _one_line_exit_2(["import-checkpoint", "--from", "wespeaker", str(src), "--model", "resnet_tiny",
                      "--model-args", "widthx=3", *out], capsys, "--model-args", "widthx")
    # No experiment dir is left by any of them.
    assert not (tmp_path / "exp").exists()
