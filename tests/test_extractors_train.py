"""Every tiny extractor trains one epoch of a tiny corpus and, killed with SIGKILL mid-epoch, resumes to exactly
the uninterrupted run's weights, BatchNorm statistics and x_bar (Causal Norm AAM head, two heads). The issue-28
extractors are listed by name; one another branch registers skips here until it is merged, and resnet_tiny /
ecapa_tiny validate the harness on every branch. One of them (CAM++, neither a ResNet nor a TDNN) also trains
from shards under two-process DDP (gloo) and resumes exactly after the whole torchrun is killed."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures_models import HARNESS_MODELS, N_MELS, NEW_TINY_MODELS, require_registered
from fixtures_train import (
    assert_same_weights,
    kill_after_checkpoint,
    kill_process_tree,
    make_corpus,
    subprocess_env,
    tiny_config,
)

from spkcausal.data.shards import make_shards
from spkcausal.nn.checkpoint import find_resume_checkpoint, load_checkpoint
from spkcausal.nn.config import save_config
from spkcausal.train.trainer import train

pytestmark = pytest.mark.slow  # trains every tiny extractor and resumes it after SIGKILL (minutes)

STEPS = 5  # one epoch: 40 chunks in batches of 8; checkpoints every 3 steps, so the kill lands mid-epoch


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("xcorpus"), utts_per_spk=4)


def _config(corpus, exp, model: str) -> dict:
    return tiny_config(corpus, exp, model={"name": model}, features={"n_mels": N_MELS.get(model, 80)},
                       sampler={"num_samples": 8 * STEPS},
                       head={"name": "causal_norm_aam", "num_heads": 2, "scale": 16.0, "margin": 0.2},
                       margin={"start_epoch": 0, "end_epoch": 0.5},
                       train={"epochs": 1, "batch_size": 8, "ckpt_every_steps": 3, "keep_last": 10})


@pytest.mark.parametrize("model", HARNESS_MODELS + NEW_TINY_MODELS)
def test_tiny_extractor_trains_an_epoch_and_resumes_exactly_after_sigkill(model, corpus, tmp_path):
    require_registered(model)
    torch.set_num_threads(1)
    ref = train(_config(corpus, tmp_path / "ref", model))
    assert ref.step == STEPS

    exp, conf = tmp_path / "killed", tmp_path / "conf.yaml"
    save_config(_config(corpus, exp, model), conf)
    cmd = [sys.executable, "-m", "spkcausal", "train", "--config", str(conf), "data.num_workers=1"]
    kill_after_checkpoint(cmd, subprocess_env(), step=3)
    assert load_checkpoint(find_resume_checkpoint(exp / "checkpoints"))["step"] == 3  # mid-epoch
    out = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=subprocess_env(), timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stderr
    final, expect = exp / "checkpoints" / "epoch_0001.pt", tmp_path / "ref" / "checkpoints" / "epoch_0001.pt"
    assert load_checkpoint(final)["step"] == STEPS
    assert_same_weights(final, expect)
    assert load_checkpoint(final)["head"]["mean_feature"].abs().sum() > 0


DDP_MODEL = "campplus_tiny"


def _torchrun(conf: Path, *extra: str) -> subprocess.Popen:
    """`spkcausal train` on two gloo processes, in its own session (the whole run can be killed at once)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "spkcausal", "train", "--config", str(conf), *extra]
    return subprocess.Popen(cmd, env=subprocess_env(), start_new_session=True, text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


@pytest.mark.slow
def test_tiny_extractor_trains_on_shards_under_ddp_and_resumes_exactly_after_sigkill(corpus, tmp_path):
    require_registered(DDP_MODEL)
    make_shards(corpus, tmp_path / "sh", utts_per_shard=3, seed=0)
    confs = {}
    for tag in ("ref", "killed"):  # 48 samples / (4 per rank x 2 ranks): 6 steps, a checkpoint every 2
        cfg = tiny_config(corpus, tmp_path / tag, model={"name": DDP_MODEL}, features={"n_mels": 80},
                          data={"train": None, "shards": str(tmp_path / "sh"), "shuffle_buffer": 4},
                          sampler={"num_samples": 48},
                          head={"name": "causal_norm_aam", "num_heads": 2, "scale": 16.0, "margin": 0.2},
                          margin={"start_epoch": 0, "end_epoch": 0.5},
                          train={"epochs": 1, "batch_size": 4, "ckpt_every_steps": 2, "keep_last": 10})
        confs[tag] = save_config(cfg, tmp_path / f"{tag}.yaml")
    # The uninterrupted run and the one to kill run side by side: two cores, half the wall time of one after the other.
    ref, run = _torchrun(confs["ref"]), _torchrun(confs["killed"])
    seen = []
    for line in run.stderr:
        seen.append(line)
        if "saved checkpoint" in line and "step_00000002.pt" in line:
            kill_process_tree(run.pid)  # the agent and both workers, as a crashed node
            break
    run.wait(timeout=60)
    run.stderr.close()
    assert run.returncode == -signal.SIGKILL, "".join(seen[-30:])
    ref_err = ref.communicate(timeout=240)[1]
    assert ref.returncode == 0, ref_err[-4000:]
    assert "2 ranks" in (tmp_path / "ref" / "train.log").read_text()
    resume_from = load_checkpoint(find_resume_checkpoint(tmp_path / "killed" / "checkpoints"))
    assert resume_from["world_size"] == 2 and 2 <= resume_from["step"] < 6  # mid-epoch
    assert resume_from["sampler"]["source"] == "shards"
    again = _torchrun(confs["killed"], "--resume")
    err = again.communicate(timeout=240)[1]
    assert again.returncode == 0, err[-4000:]
    assert "resumed from" in err
    final, expect = (tmp_path / d / "checkpoints" / "epoch_0001.pt" for d in ("killed", "ref"))
    assert load_checkpoint(final)["step"] == 6
    # a resume replays the same float32 ops on the same ranks, and an all-reduce of two terms is exact: equal
    assert_same_weights(final, expect)
    assert load_checkpoint(final)["head"]["mean_feature"].abs().sum() > 0
