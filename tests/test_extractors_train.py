"""Every tiny extractor trains one epoch of a tiny corpus and, killed with SIGKILL mid-epoch, resumes to exactly
the uninterrupted run's weights, BatchNorm statistics and x_bar (Causal Norm AAM head, two heads). The issue-28
extractors are listed by name; one another branch registers skips here until it is merged, and resnet_tiny /
ecapa_tiny validate the harness on every branch."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from fixtures_models import HARNESS_MODELS, N_MELS, NEW_TINY_MODELS, require_registered
from fixtures_train import assert_same_weights, kill_after_checkpoint, make_corpus, subprocess_env, tiny_config

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
