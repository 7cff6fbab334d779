"""Every long-tail method at once under DDP (two torchrun processes, gloo): the ranks stay in step (weights and
the heads' running buffers equal across ranks) and a run resumed from its epoch-1 checkpoint ends with the
uninterrupted run's weights exactly (docs/causal.md, "Long-tail methods that reach the embedding"; the head is also
the paper's Capsule, feature_norm: capsule)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from fixtures_train import DDP_EXIT, torchrun_script, write_long_tailed_subset

from spkcausal.nn.checkpoint import load_checkpoint

SCRIPT = """
import json, sys
from pathlib import Path
import numpy as np, torch, torch.distributed as dist
from fixtures_train import tiny_config
from spkcausal.train.trainer import train
root, exp, resume = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
dist.init_process_group("gloo")
rank = dist.get_rank()
cfg = tiny_config(root / "lt", exp, sampler={"name": "progressive", "num_samples": 48},
                  head={"name": "causal_norm_aam", "num_heads": 2, "scale": 16.0, "margin": 0.2,
                        "class_margins": "ldam", "subcenters": 2, "feature_transfer": {"head_share": 0.25},
                        "feature_norm": "capsule"},
                  loss={"name": "ce", "logit_adjust": 1.0, "drw_epoch": 1},
                  margin={"start_epoch": 0, "end_epoch": 1}, train={"epochs": 2, "batch_size": 4})
res = train(cfg, resume=resume)
head = res.net.head
np.save(exp / f"w{rank}.npy", torch.cat([p.detach().flatten() for p in res.net.parameters()]).numpy())
np.save(exp / f"buf{rank}.npy", torch.cat([b.detach().double().flatten() for b in head.buffers()]).numpy())
""" + DDP_EXIT



@pytest.mark.slow
def test_every_long_tail_method_under_ddp_stays_in_step_and_resumes_exactly(tmp_path):
    write_long_tailed_subset(tmp_path)
    (tmp_path / "ddp.py").write_text(SCRIPT)

    full = tmp_path / "full"
    torchrun_script(tmp_path, full, resume=False)
    w0, w1 = np.load(full / "w0.npy"), np.load(full / "w1.npy")
    assert np.array_equal(w0, w1)  # DDP kept the ranks in step ...
    assert np.array_equal(np.load(full / "buf0.npy"), np.load(full / "buf1.npy"))  # ... and the head's buffers
    ckpt = load_checkpoint(full / "checkpoints" / "epoch_0002.pt")
    assert ckpt["world_size"] == 2 and tuple(ckpt["head"]["weight"].shape) == (4, 2, 16)
    # float32 buffer of a float64 formula: 6e-8 relative, under allclose's 1e-5
    assert np.allclose(ckpt["head"]["margin_scale"].numpy(), (1 / np.array([6, 3, 2, 1])) ** 0.25)
    log = (full / "train.log").read_text()
    assert "2 ranks" in log

    # The same run resumed from its epoch-1 checkpoint (DRW switches on and the sampler moves on in epoch 2).
    part = tmp_path / "part"
    shutil.copytree(full, part, ignore=shutil.ignore_patterns("*.npy"))
    for p in (part / "checkpoints").glob("*.pt"):
        if load_checkpoint(p)["step"] > load_checkpoint(part / "checkpoints" / "epoch_0001.pt")["step"]:
            p.unlink()
    (part / "avg_model.pt").unlink(missing_ok=True)
    torchrun_script(tmp_path, part, resume=True)
    assert np.array_equal(np.load(part / "w0.npy"), w0)
    assert np.array_equal(np.load(part / "buf0.npy"), np.load(full / "buf0.npy"))
    assert "resum" in (part / "train.log").read_text().lower()
