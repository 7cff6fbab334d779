"""OLTR (spkcausal.nn.heads.oltr) and Decouple-OLTR (spkcausal.inference.decoupled_oltr): the meta-embedding and the
losses against direct numpy formulas, the two-stage switch, exact resume, checkpoint averaging across the
switch, and the decoupled classifier leaving the base's extractor as it was."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_train import (
    DDP_EXIT,
    assert_same_weights,
    kill_after_checkpoint,
    make_corpus,
    tiny_config,
    torchrun_env,
)

from spkcausal.nn.heads import build_head
from spkcausal.nn.heads.oltr import centroid_loss
from spkcausal.utils import UsageError

REPO = Path(__file__).resolve().parents[1]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(1, keepdims=True)


def _np_oltr_logits(head, x: np.ndarray) -> np.ndarray:
    """Liu et al.'s meta-embedding and cosine-norm classifier, written out in numpy from the head's tensors."""
    p = {k: v.detach().double().numpy() for k, v in head.named_parameters()}
    c, x = p["centroids"], x / np.linalg.norm(x, axis=1, keepdims=True)  # the direct feature: unit length
    gamma = np.sqrt(((x[:, None, :] - c[None]) ** 2).sum(-1)).min(1, keepdims=True)  # reachability
    v_memory = _softmax(x @ p["hallucinator.weight"].T + p["hallucinator.bias"]) @ c
    e = np.tanh(x @ p["selector.weight"].T + p["selector.bias"])
    v_meta = (head.reach_scale / gamma) * (x + e * v_memory)
    n = np.linalg.norm(v_meta, axis=1, keepdims=True)
    w = p["weight"] / np.linalg.norm(p["weight"], axis=1, keepdims=True)
    return head.scale * (n / (1 + n)) * (v_meta / n) @ w.T


def _oltr_head(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_head("oltr", 6, 4, scale=16.0, margin=0.2, **kw).double()


def test_meta_embedding_logits_equal_the_formula_on_a_fixed_memory():
    head = _oltr_head(stage1_epochs=None)
    rng = np.random.default_rng(3)
    memory = rng.standard_normal((4, 6)) * 0.4
    head.init_memory(torch.from_numpy(memory))
    with torch.no_grad():  # a selector and hallucinator away from their initial values
        head.selector.weight.copy_(torch.from_numpy(rng.standard_normal((6, 6))))
        head.hallucinator.bias.copy_(torch.from_numpy(rng.standard_normal(4)))
    np.testing.assert_allclose(head.centroids.detach().numpy(), memory)  # the memory copied as is: exact
    x = rng.standard_normal((9, 6)) * 1.5
    got = head.eval()(torch.from_numpy(x)).detach().numpy()
    # float64 head (.double()) vs float64 formula
    np.testing.assert_allclose(got, _np_oltr_logits(head, x), rtol=1e-10, atol=1e-10)
    # the hallucinator starts as s * unit class directions / mean ||c||: its attention is a softmax over cosines
    wd = head.weight.detach().numpy()
    # float64 head vs float64 formula
    np.testing.assert_allclose(head.hallucinator.weight.detach().numpy(), 16.0 * wd / np.linalg.norm(
        wd, axis=1, keepdims=True) / np.linalg.norm(memory, axis=1).mean(), rtol=1e-12)


def test_centroid_loss_equals_the_formula_and_is_the_training_extra_loss():
    rng = np.random.default_rng(4)
    x, c = rng.standard_normal((7, 6)), rng.standard_normal((4, 6)) * 0.3
    y = np.array([0, 1, 2, 3, 0, 1, 1])
    d2 = ((x[:, None] - c[None]) ** 2).sum(-1)
    own = np.eye(4, dtype=bool)[y]
    want = d2[own].sum() / (2 * 7) + 0.01 * max(0.0, 10.0 - np.where(own, 0.0, d2).mean())
    got = centroid_loss(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(c), 10.0, 0.01)
    assert got.item() == pytest.approx(want, rel=1e-12)  # float64
    head = _oltr_head(stage1_epochs=None, centroid_weight=0.5)
    head.init_memory(torch.from_numpy(c))
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)  # the head's loss is on the unit-length direct features
    head.train()(torch.from_numpy(x * 7.0), torch.from_numpy(y))
    want_u = centroid_loss(torch.from_numpy(xu), torch.from_numpy(y), torch.from_numpy(c), 10.0, 0.01).item()
    assert head.extra_loss.item() == pytest.approx(0.5 * want_u, rel=1e-12)  # float64
    head.eval()(torch.from_numpy(x))
    assert head.extra_loss is None


def test_stage_one_is_aam_and_the_switch_sets_the_memory_to_the_class_means():
    head, aam = _oltr_head(stage1_epochs=2), build_head("aam", 6, 4, scale=16.0, margin=0.2).double()
    with torch.no_grad():
        aam.weight.copy_(head.weight)
    rng = np.random.default_rng(5)
    batches = [(rng.standard_normal((5, 6)), rng.integers(0, 3, 5)) for _ in range(3)]  # class 3 never seen
    head.train(), aam.train()
    head.set_epoch(0, 4)  # first epoch: plain AAM, nothing summed
    x0, y0 = (torch.from_numpy(a) for a in batches[0])
    torch.testing.assert_close(head(x0, y0), aam(x0, y0))  # float64 heads, the same AAM ops: equal
    assert head.class_count.sum() == 0
    head.set_epoch(1, 4)  # the last stage-1 epoch sums the features per class
    for x, y in batches:
        head(torch.from_numpy(x), torch.from_numpy(y))
    assert not head.memory_ready
    head.set_epoch(2, 4)
    assert head.memory_ready and int(head.stage) == 2
    xs, ys = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    xs = xs / np.linalg.norm(xs, axis=1, keepdims=True)
    means = np.stack([xs[ys == k].mean(0) for k in range(3)])
    # float64 head: the class means themselves
    np.testing.assert_allclose(head.centroids.detach().numpy()[:3], means, rtol=1e-12)
    w3 = head.weight.detach().numpy()[3]  # the unseen class: its classifier direction at the mean length
    np.testing.assert_allclose(head.centroids.detach().numpy()[3],  # float64
                               w3 / np.linalg.norm(w3) * np.linalg.norm(means, axis=1).mean(), rtol=1e-12)
    head.set_epoch(2, 4)  # set again after a resume: the memory stays
    np.testing.assert_allclose(head.centroids.detach().numpy()[:3], means, rtol=1e-12)  # float64
    assert _oltr_head(stage1_epochs=0.5).stage1_epochs == 0.5


def test_the_stage_follows_a_loaded_state_dict_also_inside_a_parent_module():
    """The forward reads the stage from a host mirror (no GPU wait per step): loading a checkpoint must set it,
    both ways, also when the head is loaded as part of a larger module (a resume loads the whole network)."""
    done = _oltr_head(stage1_epochs=1).train()
    done.set_epoch(0, 2)
    done(torch.randn(6, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2]))
    done.set_epoch(1, 2)
    assert done.memory_ready
    fresh = torch.nn.Sequential(_oltr_head(stage1_epochs=1))
    assert not fresh[0].memory_ready
    fresh.load_state_dict({f"0.{k}": v for k, v in done.state_dict().items()})
    assert fresh[0].memory_ready
    fresh[0].set_epoch(1, 2)  # after the resume: the loaded memory is kept, not set again from empty sums
    torch.testing.assert_close(fresh[0].centroids, done.centroids, rtol=0, atol=0)
    x = torch.randn(4, 6, dtype=torch.float64)
    fresh.eval(), done.eval()
    torch.testing.assert_close(fresh(x), done(x), rtol=0, atol=0)  # the same stage-2 classifier
    done.load_state_dict(_oltr_head(stage1_epochs=1).state_dict())  # and back: a stage-1 checkpoint
    assert not done.memory_ready


def test_stage_one_shares_and_bad_options_are_rejected():
    with pytest.raises(UsageError, match="leaves OLTR no stage 2"):  # issue 26: refused, no longer a warning
        _oltr_head(stage1_epochs=3).set_epoch(0, 3)
    head = _oltr_head(stage1_epochs=0.25).train()
    head.set_epoch(0, 8)  # 0.25 of 8 epochs = 2: epoch 1 of 8 is the summing one
    assert not head.accumulate
    head.set_epoch(1, 8)
    assert head.accumulate
    for bad in (0, -1, 1.5, "half", True):
        with pytest.raises(UsageError, match="stage1_epochs"):
            _oltr_head(stage1_epochs=bad)
    with pytest.raises(UsageError, match="no stage-1 features"):
        _oltr_head(stage1_epochs=1).set_epoch(1, 2)  # resumed past the switch with nothing summed


# ------------------------------------------------------------------ training through the engine


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("oltrcorpus"), utts_per_spk=5)


def _config(data: Path, exp: Path) -> dict:
    return tiny_config(data, exp, head={"name": "oltr", "scale": 16.0, "margin": 0.2, "stage1_epochs": 1,
                                        "centroid_weight": 0.1},
                       margin={"start_epoch": 0, "end_epoch": 1}, sampler={"num_samples": 40},
                       train={"epochs": 2, "batch_size": 8, "ckpt_every_steps": 3, "keep_last": 10})


@pytest.fixture(scope="module")
def oltr_run(corpus, tmp_path_factory):
    """The uninterrupted tiny OLTR run: 2 epochs of 5 steps, stage 1 = epoch 1."""
    from spkcausal.train.trainer import train

    torch.set_num_threads(1)
    exp = tmp_path_factory.mktemp("oltr") / "ref"
    res = train(_config(corpus, exp))
    assert res.step == 10 and res.net.head.memory_ready
    return exp


@pytest.mark.slow
def test_sigkill_in_the_summing_epoch_resumes_exactly(corpus, oltr_run, tmp_path):
    from spkcausal.nn.checkpoint import find_resume_checkpoint, load_checkpoint
    from spkcausal.nn.config import save_config

    exp = tmp_path / "killed"
    save_config(_config(corpus, exp), tmp_path / "conf.yaml")
    cmd = [sys.executable, "-m", "spkcausal", "train", "--config", str(tmp_path / "conf.yaml"), "data.num_workers=1"]
    kill_after_checkpoint(cmd, torchrun_env(), step=3)
    ckpt = load_checkpoint(find_resume_checkpoint(exp / "checkpoints"))
    assert ckpt["step"] == 3 and int(ckpt["head"]["stage"]) == 0 and ckpt["head"]["class_count"].sum() == 24
    out = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=torchrun_env(), timeout=180)
    assert out.returncode == 0 and "resumed from" in out.stderr, out.stderr[-3000:]
    a, b = exp / "checkpoints" / "epoch_0002.pt", oltr_run / "checkpoints" / "epoch_0002.pt"
    assert load_checkpoint(a)["step"] == load_checkpoint(b)["step"] == 10
    assert_same_weights(a, b)  # extractor and head, the memory, hallucinator, selector and class sums included
    first = load_checkpoint(oltr_run / "checkpoints" / "epoch_0001.pt")["head"]
    assert first["class_count"].sum() == 40 and (first["centroids"] == 0).all()  # every epoch-1 sample summed
    final = load_checkpoint(b)["head"]
    means = (first["class_sum"] / first["class_count"][:, None]).float()
    assert not torch.equal(final["centroids"], means)  # stage 2 moved the memory (centroid loss, cross-entropy)


def test_averaging_keeps_the_last_stage_and_the_model_identifies(corpus, oltr_run, tmp_path):
    from spkcausal.nn.assemble import assemble
    from spkcausal.nn.checkpoint import average_experiment, load_checkpoint

    avg = average_experiment(oltr_run, 2, out=tmp_path / "avg.pt")  # epochs 1 (stage 1) and 2: only 2 is kept
    assert load_checkpoint(avg)["averaged_from"] == [str(oltr_run / "checkpoints" / "epoch_0002.pt")]
    tm = assemble(avg)
    assert tm.head.memory_ready and not tm.is_causal
    x = torch.randn(5, 16)
    with torch.no_grad():
        # float32 head vs float64 formula, scale-16 logits: ~1e-6
        np.testing.assert_allclose(tm.head(x).numpy(), _np_oltr_logits(tm.head.double(), x.double().numpy()),
                                   rtol=1e-5, atol=1e-5)  # float32 head


def test_decouple_oltr_keeps_the_backbone_and_classifies_from_its_memory(corpus, oltr_run, tmp_path):
    from spkcausal.data.embeddings import EmbeddingStore
    from spkcausal.inference.decoupled import decouple
    from spkcausal.inference.extract import extract
    from spkcausal.inference.identify import identify
    from spkcausal.nn.assemble import assemble
    from spkcausal.nn.checkpoint import average_experiment, load_checkpoint
    from spkcausal.results.records import _exp_system

    average_experiment(oltr_run, 1)
    extract(corpus, oltr_run / "emb" / "data", exp_dir=oltr_run, num_workers=0, device="cpu")
    out = tmp_path / "aam_oltr"
    info = decouple(oltr_run, "oltr", out, oltr_run / "emb" / "data", corpus, epochs=20, batch_size=8, lr=0.1)
    assert info["method"] == "oltr" and info["n_train"] == 20
    base, new = load_checkpoint(oltr_run / "avg_model.pt"), load_checkpoint(out / "avg_model.pt")
    assert base["model"].keys() == new["model"].keys()
    for k, t in base["model"].items():  # the extractor, tensor by tensor
        assert torch.equal(t, new["model"][k]), k
    assert new["config"]["head"]["name"] == "oltr" and int(new["head"]["stage"]) == 2
    assert (out / "emb").resolve() == (oltr_run / "emb").resolve()
    assert _exp_system(out).startswith("Decouple-OLTR (on OLTR")
    tm = assemble(exp_dir=out)
    store = EmbeddingStore.open(oltr_run / "emb" / "data")
    with torch.no_grad():
        logits = tm.head(torch.from_numpy(np.array(store.matrix, np.float32)))
    # float32 head against its float64 formula: measured 1.5e-6 (scale-16 logits)
    np.testing.assert_allclose(logits.double().numpy(), _np_oltr_logits(tm.head.double(), np.asarray(
        store.matrix, np.float64)), rtol=1e-5, atol=1e-5)
    res = identify(oltr_run / "emb" / "data", corpus, corpus, exp_dir=out, many=4, few=2, n_boot=50,
                   predictions=tmp_path / "pred.npz")
    pred = np.load(tmp_path / "pred.npz")
    want = dict(zip(store.keys, logits.argmax(1).numpy()))
    assert res["n_utts"] == 20 and [want[u] for u in pred["utts"]] == pred["y_pred"].tolist()
    assert json.loads((out / "decoupled.json").read_text())["sampler"] == "class_balanced"


def test_decoupled_oltr_classifier_learns_a_long_tail_from_its_memory():
    from spkcausal.inference.decoupled_oltr import class_centroids, train_oltr_classifier

    rng = np.random.default_rng(0)
    counts, mu = np.array([60, 30, 15, 8, 4, 2]), rng.standard_normal((6, 16))

    def draw(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(6), n)  # speaker clusters at random lengths (the head sees only directions)
        return (mu[y] + 0.6 * rng.standard_normal((len(y), 16))) * rng.uniform(0.5, 20, (len(y), 1)), y

    x, y = draw(counts)
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)
    means = np.stack([xu[y == k].mean(0) for k in range(6)])
    np.testing.assert_allclose(class_centroids(x, y, 6), means, rtol=1e-12)  # float64 both sides
    start = train_oltr_classifier(x, y, 6, epochs=0)
    # float32 centroids of float64 means: 1 ulp
    np.testing.assert_allclose(start.centroids.detach().numpy(), means, rtol=1e-6)
    head = train_oltr_classifier(x, y, 6, epochs=30, batch_size=16, lr=0.1)
    assert head.memory_ready and not head.training
    xt, yt = draw(np.full(6, 30))
    with torch.no_grad():
        pred = head(torch.from_numpy(xt).float()).argmax(1).numpy()
    assert (pred == yt).mean() >= 0.95 and (pred[yt == 5] == 5).mean() >= 0.8  # also the 2-utterance class
    with pytest.raises(Exception, match="no training embedding"):
        class_centroids(x[y > 0], y[y > 0], 6)


DDP_SCRIPT = """
import sys
from pathlib import Path
import numpy as np, torch, torch.distributed as dist
from fixtures_train import tiny_config
from spkcausal.train.trainer import train
data, exp, resume = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
dist.init_process_group("gloo")
cfg = tiny_config(data, exp, sampler={"num_samples": 48}, margin={"start_epoch": 0, "end_epoch": 1},
                  head={"name": "oltr", "scale": 16.0, "margin": 0.2, "stage1_epochs": 1, "centroid_weight": 0.1},
                  train={"epochs": 2, "batch_size": 4})
res = train(cfg, resume=resume)
rank = dist.get_rank()
np.save(exp / f"w{rank}.npy", torch.cat([p.detach().flatten() for p in res.net.parameters()]).numpy())
np.save(exp / f"buf{rank}.npy", torch.cat([b.detach().double().flatten() for b in res.net.head.buffers()]).numpy())
""" + DDP_EXIT


@pytest.mark.slow
def test_oltr_under_ddp_sums_every_rank_stays_in_step_and_resumes_at_the_switch(corpus, tmp_path):
    import shutil

    from spkcausal.nn.checkpoint import load_checkpoint

    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    env = torchrun_env()

    def torchrun(exp: Path, resume: bool) -> None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(tmp_path / "ddp.py"), str(corpus), str(exp), "1" if resume else "0"]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-8000:]

    full = tmp_path / "full"
    torchrun(full, resume=False)
    w0 = np.load(full / "w0.npy")
    assert np.array_equal(w0, np.load(full / "w1.npy"))  # the ranks in step ...
    assert np.array_equal(np.load(full / "buf0.npy"), np.load(full / "buf1.npy"))  # ... and their class sums
    first = load_checkpoint(full / "checkpoints" / "epoch_0001.pt")
    assert first["world_size"] == 2 and first["head"]["class_count"].sum() == 48  # both ranks' batches summed
    # resumed from the epoch-1 checkpoint: the switch happens in the resumed run, with the same result
    part = tmp_path / "part"
    shutil.copytree(full, part, ignore=shutil.ignore_patterns("*.npy"))
    for p in (part / "checkpoints").glob("*.pt"):
        if load_checkpoint(p)["step"] > first["step"]:
            p.unlink()
    torchrun(part, resume=True)
    assert np.array_equal(np.load(part / "w0.npy"), w0)
    assert np.array_equal(np.load(part / "buf0.npy"), np.load(full / "buf0.npy"))


@pytest.mark.slow
def test_recipes_name_oltr_systems_and_treat_base_plus_oltr_as_decoupled():
    from spkcausal.report.results import decoupled_name, system_name

    # the recipes loop over the run plan (stages.sh plan_runs / run_fields over `spkcausal plan`)
    script = (f". {REPO / 'recipes/common/stages.sh'}; for sk in 'aam+oltr 1' 'oltr' 'aam+oltr'; do "
              "set -- $sk; plan_runs $1 \"${2:-}\"; run_fields \"${RUNS[0]}\"; echo $name $kind $parent; done")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split("\n")[:3] == ["aam_oltr_seed1 decoupled aam_seed1", "oltr train -", "aam_oltr decoupled aam"]
    assert system_name({"head": {"name": "oltr"}}) == "OLTR (AAM, then meta-embedding)"
    assert decoupled_name({"method": "oltr"}, {"head": {"name": "aam"}}) == "Decouple-OLTR (on Baseline (AAM))"
