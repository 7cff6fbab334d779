"""tools/bench_extract.py --quick end to end: `spkcausal extract` and SpeechBrain's EncoderClassifier loop embed
the same files with the same weights to the same vectors, and the table has every contender with its stage split
(no timing asserted: the machine is shared)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench_extract():
    pytest.importorskip("speechbrain")
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import bench_extract
    finally:
        sys.path.remove(str(ROOT / "tools"))
    return bench_extract


def test_quick_bench_embeds_like_speechbrain(tmp_path, capsys):
    bench_extract = _bench_extract()
    out = tmp_path / "bench.json"
    assert bench_extract.main(["--quick", "--threads", "1", "--num-workers", "0", "--frontends", "speechbrain",
                               "--work", str(tmp_path / "w"), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    same = res["agreement"]["speechbrain fbank, exact, 0 workers"]
    # Same front-end module, same float32 network ops, one utterance per call on both sides: the vectors differ by
    # float32 rounding only (~1e-7 relative per op, ~20 layers: under 1e-5 relative, cosine within 1e-5 of 1).
    assert same["worst_cos"] > 1 - 1e-5
    # Both models on identical features, against each other and against our float64 run (as tests/test_ecapa.py).
    assert res["same_features"]["ours_vs_speechbrain"] <= 1e-5 and res["same_features"]["vs_float64"] <= 1e-5
    assert all(np.isfinite(res["same_features"][k]).all() and min(res["same_features"][k]) > 0
               for k in ("model_x", "fbank_x"))  # the paired timings ran (their values are not asserted)
    sb = np.load(tmp_path / "w" / "out" / "sb.npy")
    assert sb.shape == (6, 192)
    unit = sb / np.linalg.norm(sb, axis=1, keepdims=True)
    assert (unit @ unit.T)[np.triu_indices(6, 1)].max() < 0.999  # not one vector for every file
    ours, theirs = res["results"]
    assert ours.startswith("spkcausal extract") and theirs.startswith("SpeechBrain")
    assert set(res["results"][ours]["stages"]) == {"setup", "headers", "read", "fbank", "model", "write"}
    assert set(res["results"][theirs]["stages"]) == {"setup", "read", "fbank", "model", "write"}
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| spkcausal") or
            r.startswith("| SpeechBrain")]
    assert len(rows) == 2 and rows[-1].split("|")[4].strip().startswith("1.00x")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quick_bench_on_cuda_embeds_like_speechbrain_on_cuda(tmp_path):
    bench_extract = _bench_extract()
    out = tmp_path / "bench.json"
    assert bench_extract.main(["--quick", "--device", "cuda", "--num-workers", "0", "--frontends", "speechbrain",
                               "--work", str(tmp_path / "w"), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["device"].startswith("cuda (")
    # Same modules on the same GPU; cuDNN may pick TF32 or other algorithms per call shape, so a looser bound than
    # the CPU's 1e-5 (TF32 keeps 10 mantissa bits: ~1e-3 relative per op at worst).
    assert res["agreement"]["speechbrain fbank, exact, 0 workers"]["worst_cos"] > 1 - 1e-3
    assert res["same_features"]["vs_float64"] < 1e-2


def test_cuda_device_without_a_gpu_is_refused_in_one_line(capsys, monkeypatch):
    bench_extract = _bench_extract()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        bench_extract.main(["--quick", "--device", "cuda"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--device cuda: torch" in err and "sees no CUDA device" in err
