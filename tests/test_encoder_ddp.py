"""Semi-siamese training on episodic batches under DDP (two torchrun processes, gloo): the ranks keep equal
weights, momentum extractors and queues (the queue takes every rank's keys in rank order), and a run resumed from
a mid-epoch checkpoint ends with the uninterrupted run's state exactly, momentum extractor and queue included."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from fixtures_train import DDP_EXIT, torchrun_script, write_long_tailed_subset

from spkcausal.nn.checkpoint import load_checkpoint

SCRIPT = """
import sys
from pathlib import Path
import numpy as np, torch, torch.distributed as dist
from fixtures_train import tiny_config
from spkcausal.train.trainer import train
root, exp, resume = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
dist.init_process_group("gloo")
rank = dist.get_rank()
cfg = tiny_config(root / "lt", exp, sampler={"name": "episodic", "utts_per_speaker": 2, "num_samples": 40},
                  head={"name": "causal_norm_aam", "num_heads": 2, "scale": 16.0, "margin": 0.2},
                  encoder_loss={"name": "semi_siamese", "queue_size": 12, "weight": 0.5},
                  margin={"start_epoch": 0, "end_epoch": 1},
                  train={"epochs": 2, "batch_size": 4, "ckpt_every_steps": 3, "keep_last": 10})
res = train(cfg, resume=resume)
np.save(exp / f"w{rank}.npy", torch.cat([p.detach().flatten() for p in res.net.parameters()]).numpy())
np.save(exp / f"enc{rank}.npy", torch.cat([t.detach().double().flatten()
                                           for t in res.net.encoder_loss.state_dict().values()]).numpy())
""" + DDP_EXIT



@pytest.mark.slow
def test_semi_siamese_under_ddp_stays_in_step_and_resumes_mid_epoch_exactly(tmp_path):
    write_long_tailed_subset(tmp_path)
    (tmp_path / "ddp.py").write_text(SCRIPT)

    full = tmp_path / "full"
    torchrun_script(tmp_path, full, resume=False)
    assert np.array_equal(np.load(full / "w0.npy"), np.load(full / "w1.npy"))
    assert np.array_equal(np.load(full / "enc0.npy"), np.load(full / "enc1.npy"))  # momentum copy and queue
    final = load_checkpoint(full / "checkpoints" / "epoch_0002.pt")
    assert final["world_size"] == 2 and final["step"] == 10
    labels = final["encoder_loss"]["queue_labels"]
    assert (labels >= 0).all()  # 10 steps x 2 ranks x 4 keys filled the 12 slots

    # resumed from the mid-epoch checkpoint of step 3 (as after a SIGKILL right after it was written)
    part = tmp_path / "part"
    shutil.copytree(full, part, ignore=shutil.ignore_patterns("*.npy"))
    for p in (part / "checkpoints").glob("*.pt"):
        if load_checkpoint(p)["step"] > 3:
            p.unlink()
    (part / "avg_model.pt").unlink(missing_ok=True)
    torchrun_script(tmp_path, part, resume=True)
    assert "resumed from" in (part / "train.log").read_text()
    assert np.array_equal(np.load(part / "w0.npy"), np.load(full / "w0.npy"))
    assert np.array_equal(np.load(part / "enc0.npy"), np.load(full / "enc0.npy"))
    again = load_checkpoint(part / "checkpoints" / "epoch_0002.pt")
    for k, t in final["encoder_loss"].items():
        assert torch.equal(again["encoder_loss"][k], t), k
