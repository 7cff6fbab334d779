"""Trainer: overfitting, exact resume after SIGKILL, two-process torchrun (gloo), bad audio, schedules, checkpoints."""
from __future__ import annotations

import ast
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_train import (
    DDP_EXIT,
    kill_after_checkpoint,
    make_aug_banks,
    make_corpus,
    tiny_config,
    torchrun_env,
    weight_diffs,
)

from spkcausal.data.datadir import DataDir
from spkcausal.data.dataset import PositionSampler, TrainChunkDataset, train_loader
from spkcausal.data.samplers import build_sampler
from spkcausal.nn.checkpoint import (
    average_checkpoints,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    remove_partial,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_latest,
)
from spkcausal.nn.config import load_yaml, merge_defaults, save_config
from spkcausal.train.schedules import lr_at, margin_at
from spkcausal.train.trainer import train
from spkcausal.utils import UsageError

EPS32 = float(np.finfo(np.float32).eps)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), utts_per_spk=5)


def _eval_accuracy(net, data_dir: Path) -> float:
    """Margin-free identification accuracy of the head over whole training utterances."""
    from spkcausal.inference.extract import embed_utterances
    from spkcausal.nn.features import Fbank

    data = DataDir.load(data_dir)
    emb = embed_utterances(net.model, Fbank(n_mels=40), data, data.utts, num_workers=0, progress=False)
    net.head.eval()
    with torch.no_grad():
        pred = net.head(torch.from_numpy(emb)).argmax(-1).numpy()
    speakers = sorted(set(data.utt2spk.values()))
    truth = np.array([speakers.index(data.utt2spk[u]) for u in data.utts])
    return float((pred == truth).mean())


@pytest.mark.slow
def test_tiny_model_overfits_four_speakers(corpus, tmp_path):
    cfg = tiny_config(corpus, tmp_path / "exp", head={"name": "causal_norm_aam", "scale": 16.0, "margin": 0.1},
                      model={"name": "ecapa_tiny", "embed_dim": 32}, sampler={"num_samples": 64},
                      optim={"lr": 0.05, "final_lr": 0.005}, train={"epochs": 24, "batch_size": 8})
    torch.set_num_threads(1)
    res = train(cfg)
    assert res.step == 192
    accs = [h["acc"] for h in res.history]
    # Training accuracy (margin logits) starts well below 100% and reaches it within 192 steps.
    assert accs[0] < 0.8 and max(accs) == 1.0
    assert _eval_accuracy(res.net, corpus) == 1.0
    # x_bar was tracked (nonzero) and is what the last checkpoint holds.
    xbar = res.net.head.mean_feature
    assert xbar.abs().sum() > 0
    last = load_checkpoint(find_resume_checkpoint(tmp_path / "exp" / "checkpoints"))
    assert torch.equal(last["head"]["mean_feature"], xbar)
    # Merged config next to the checkpoints: file values and defaults both present.
    saved = load_yaml(tmp_path / "exp" / "config.yaml")
    assert saved == merge_defaults(cfg)
    assert saved["optim"]["momentum"] == 0.9 and saved["head"]["name"] == "causal_norm_aam"
    assert (tmp_path / "exp" / "train.log").read_text().count("epoch 24 done") == 1


def _resume_config(corpus: Path, exp: Path, musan: Path, rirs: Path) -> dict:
    return tiny_config(corpus, exp, sampler={"num_samples": 160},
                       augment={"speed_perturb": True, "musan": str(musan), "rirs": str(rirs), "prob": 0.8},
                       features={"n_mels": 40, "dither": 1.0},
                       head={"name": "causal_norm_aam", "scale": 16.0, "margin": 0.1},
                       margin={"start_epoch": 0.5, "end_epoch": 1.5},
                       train={"epochs": 2, "batch_size": 8, "ckpt_every_steps": 5, "keep_last": 10})


def _flat_state(ckpt: dict) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in ckpt["model"].items()}
    out.update({f"head.{k}": v for k, v in ckpt["head"].items()})
    return out


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(corpus, tmp_path):
    musan, rirs = make_aug_banks(tmp_path / "aug")
    # Reference: uninterrupted, in this process, no DataLoader workers.
    torch.set_num_threads(1)
    ref = train(_resume_config(corpus, tmp_path / "ref", musan, rirs))
    assert ref.step == 40  # 2 epochs x 20 steps

    # Same seed through the CLI with a DataLoader worker, killed with SIGKILL after the step-5 checkpoint.
    exp = tmp_path / "killed"
    conf = tmp_path / "conf.yaml"
    save_config(_resume_config(corpus, exp, musan, rirs), conf)
    cmd = [sys.executable, "-m", "spkcausal", "train", "--config", str(conf), "data.num_workers=1"]
    kill_after_checkpoint(cmd, torchrun_env(), step=5)
    resume_from = find_resume_checkpoint(exp / "checkpoints")
    ckpt = load_checkpoint(resume_from)
    assert resume_from.name.startswith("step_") and 0 < ckpt["step"] % 20  # mid-epoch
    assert ckpt["step"] < 40

    # --resume finishes the run; weights, BN statistics, x_bar and optimizer state match the reference.
    out = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=torchrun_env(), timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from {resume_from}" in out.stderr
    final = load_checkpoint(exp / "checkpoints" / "epoch_0002.pt")
    expect = load_checkpoint(tmp_path / "ref" / "checkpoints" / "epoch_0002.pt")
    assert final["step"] == expect["step"] == 40
    a, b = _flat_state(final), _flat_state(expect)
    assert a.keys() == b.keys()
    for k in a:  # a resumed run replays the same float32 ops on the same machine: equal (measured 0), 1e-6 spare
        assert (a[k].double() - b[k].double()).abs().max().item() < 1e-6, k
    assert final["head"]["mean_feature"].abs().sum() > 0
    mom_a = final["optimizer"]["state"]
    mom_b = expect["optimizer"]["state"]
    for k in mom_a:  # as the weights
        assert (mom_a[k]["momentum_buffer"] - mom_b[k]["momentum_buffer"]).abs().max().item() < 1e-6
    # Resuming a finished run does nothing more (re-running the stage is safe).
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (exp / "checkpoints").iterdir())
    assert train(load_yaml(exp / "config.yaml"), resume=True).step == 40
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (exp / "checkpoints").iterdir()) == before


DDP_SCRIPT = """
import sys
from pathlib import Path
import numpy as np, torch, torch.distributed as dist
from fixtures_train import tiny_config
from spkcausal.train.trainer import train
from spkcausal.utils import UsageError
from spkcausal.inference.extract import extract
root = Path(sys.argv[1])
dist.init_process_group("gloo")
rank = dist.get_rank()
cfg = tiny_config(root / "data", root / "exp", head={"name": "causal_norm_aam", "scale": 16.0, "margin": 0.1},
                  sampler={"num_samples": 64}, train={"epochs": 2, "batch_size": 4})
res = train(cfg)
np.save(root / f"xbar{rank}.npy", res.net.head.mean_feature.numpy())
np.save(root / f"w{rank}.npy", torch.cat([p.detach().flatten() for p in res.net.parameters()]).numpy())
extract(root / "data", root / "emb", exp_dir=root / "exp", num_workers=0)
""" + DDP_EXIT


@pytest.mark.slow
def test_torchrun_two_processes_gloo_train_and_extract(tmp_path):
    from spkcausal.data.embeddings import EmbeddingStore
    from spkcausal.inference.extract import embed_utterances
    from spkcausal.nn.assemble import assemble
    from spkcausal.nn.features import Fbank

    data_dir = make_corpus(tmp_path, utts_per_spk=4)
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=torchrun_env(), timeout=240)
    assert out.returncode == 0, out.stderr[-4000:]
    x0, x1 = np.load(tmp_path / "xbar0.npy"), np.load(tmp_path / "xbar1.npy")
    assert np.abs(x0).sum() > 0 and np.array_equal(x0, x1)
    assert np.array_equal(np.load(tmp_path / "w0.npy"), np.load(tmp_path / "w1.npy"))
    log = (tmp_path / "exp" / "train.log").read_text()
    # 64 samples over 2 ranks, batch 4 per rank -> 8 steps per epoch.
    assert "2 ranks, 8 steps/epoch x 2 epochs" in log
    ckpt = load_checkpoint(tmp_path / "exp" / "checkpoints" / "epoch_0002.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert np.array_equal(ckpt["head"]["mean_feature"].numpy(), x0)
    # Sharded extraction merged by rank 0 equals a single-process extraction of the same checkpoint.
    store = EmbeddingStore.open(tmp_path / "emb")
    data = DataDir.load(data_dir)
    assert store.keys == data.utts
    model = assemble(tmp_path / "exp" / "checkpoints" / "epoch_0002.pt").model
    single = embed_utterances(model, Fbank(n_mels=40), data, data.utts, num_workers=0, progress=False)
    # other batch shapes, same float32 model: each ~1e-7 off float64 (test_models), 1e-4 is far above their sum
    assert np.abs(np.asarray(store.matrix) - single).max() < 1e-4
    assert np.array_equal(np.load(tmp_path / "emb" / "mean_feature.npy"), x0)
    assert not any(p.name.startswith(".emb.parts") for p in tmp_path.iterdir())


def test_corrupt_empty_and_short_files_are_skipped_and_counted(tmp_path):
    data_dir = make_corpus(tmp_path, utts_per_spk=3, bad=True)
    cfg = tiny_config(data_dir, tmp_path / "exp", data={"min_seconds": 0.5},
                      train={"epochs": 1, "batch_size": 4, "tensorboard": True, "log_every": 1})
    res = train(cfg)
    assert list((tmp_path / "exp" / "tensorboard").glob("events.out.tfevents.*"))
    assert res.step == 3  # 12 good utterances / batch 4
    assert set(res.skipped) == {"spk1-corrupt", "spk2-empty", "spk3-short"}
    assert "empty" in res.skipped["spk2-empty"] and "too short" in res.skipped["spk3-short"]
    assert "unreadable" in res.skipped["spk1-corrupt"]
    log = (tmp_path / "exp" / "train.log").read_text()
    assert "12 usable utterances, 3 skipped" in log
    assert "spk1-corrupt" in log and "spk3-short" in log
    listed = (tmp_path / "exp" / "skipped_utts.txt").read_text().split("\n")
    assert [line.split()[0] for line in listed if line] == ["spk1-corrupt", "spk2-empty", "spk3-short"]


def test_read_failure_at_train_time_is_replaced_from_same_speaker(tmp_path):
    data_dir = make_corpus(tmp_path, utts_per_spk=3)
    data = DataDir.load(data_dir)
    ds = TrainChunkDataset(data, data.utts, 8000, seed=3)
    victim = data.utts.index("spk2-u01")
    Path(ds.paths[victim]).write_bytes(b"not audio at all")  # breaks after the (skipped) pre-scan
    wave, label, index, failures = ds[(victim, 0, 5)]
    assert failures == 1 and index != victim and wave.shape == (8000,)
    assert ds.keys[index].startswith("spk2-") and label == ds.speakers.index("spk2")
    # Deterministic: the same position gives the same replacement and the same chunk.
    again = ds[(victim, 0, 5)]
    assert again[2] == index and torch.equal(again[0], wave)
    # In a loader the batch keeps its size and reports the failure count.
    sampler = build_sampler("natural", ds.labels, seed=0)
    batches = list(train_loader(ds, sampler, batch_size=4, num_workers=0))
    assert all(b[0].shape == (4, 8000) for b in batches)
    assert sum(int(b[3]) for b in batches) == 1


def test_chunks_depend_on_position_not_on_workers(tmp_path):
    data_dir = make_corpus(tmp_path, utts_per_spk=3, seconds=(1.2, 1.6))
    data = DataDir.load(data_dir)
    ds = TrainChunkDataset(data, data.utts, 4000, seed=11)
    sampler = build_sampler("natural", ds.labels, seed=5)
    sampler.set_epoch(2)
    a = torch.cat([b[0] for b in train_loader(ds, sampler, batch_size=3, num_workers=0)])
    b = torch.cat([b[0] for b in train_loader(ds, sampler, batch_size=3, num_workers=2, prefetch_factor=1)])
    assert torch.equal(a, b)
    # Resuming at position 6 gives exactly the tail of the epoch.
    sampler.set_start(6)
    assert [t[2] for t in PositionSampler(sampler)][:1] == [6]
    c = torch.cat([b[0] for b in train_loader(ds, sampler, batch_size=3, num_workers=0)])
    assert torch.equal(c, a[6:])
    # A chunk is a contiguous span of its file.
    import soundfile as sf

    idx = sampler.global_order()[0]
    full, _ = sf.read(ds.paths[idx], dtype="float32")
    first = a[0].numpy()
    starts = [s for s in range(len(full) - 4000 + 1) if np.array_equal(full[s:s + 4000], first)]
    assert len(starts) == 1


def test_lr_schedule_matches_formula():
    spe, epochs, lr0, lr1, warm = 10, 50, 0.1, 5e-5, 2
    total = spe * epochs
    got = np.array([lr_at(s, spe, epochs, lr0, lr1, warm) for s in range(total + 1)])
    s = np.arange(total + 1)
    expect = lr0 * np.minimum(1.0, (s + 1) / (warm * spe)) * np.exp(np.log(lr1 / lr0) * s / total)
    assert np.allclose(got, expect, rtol=1e-12)  # float64 schedule both sides
    assert got[0] == pytest.approx(lr0 / 20 * 1.0)  # float64
    assert got[-1] == pytest.approx(lr1)  # ends at final_lr
    assert np.all(np.diff(got[warm * spe:]) < 0) and np.all(np.diff(got[:warm * spe]) > 0)


def test_margin_schedule():
    spe = 100
    assert margin_at(0, spe, 0.2, 20, 40) == 0.0
    assert margin_at(1999, spe, 0.2, 20, 40) == 0.0
    assert margin_at(3000, spe, 0.2, 20, 40) == pytest.approx(0.1)  # float64
    assert margin_at(4000, spe, 0.2, 20, 40) == 0.2
    assert margin_at(10 ** 6, spe, 0.2, 20, 40) == 0.2
    assert margin_at(5, spe, 0.2, 0, 0) == 0.2


def test_rng_state_roundtrip_through_weights_only(tmp_path):
    gen = torch.Generator().manual_seed(3)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(4)
    np.random.standard_normal()  # leave a cached Gaussian in NumPy's state
    save_checkpoint({"rng": rng_state(gen)}, tmp_path / "r.pt")
    draws = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist(),
             torch.rand(2, generator=gen).tolist())
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    gen.manual_seed(99)
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"], gen)
    again = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist(),
             torch.rand(2, generator=gen).tolist())
    assert draws == again


def test_resume_checkpoint_selection(tmp_path):
    ck = tmp_path / "checkpoints"
    for step in (5, 10):
        save_checkpoint({"step": step}, ck / f"step_{step:08d}.pt")
    save_checkpoint({"step": 8}, ck / "epoch_0001.pt")
    (ck / ".step_00000015.pt.abc.tmp.pt").write_bytes(b"half written")  # an interrupted save
    assert find_resume_checkpoint(ck).name == "step_00000010.pt"  # no pointer: most steps wins
    write_latest(ck, "epoch_0001.pt")
    assert find_resume_checkpoint(ck).name == "epoch_0001.pt"
    (ck / "epoch_0001.pt").write_bytes(b"corrupt")
    assert find_resume_checkpoint(ck).name == "step_00000010.pt"
    assert [p.name for p in list_checkpoints(ck)] == ["step_00000005.pt", "step_00000010.pt", "epoch_0001.pt"]
    assert [p.name for p in remove_partial(ck)] == [".step_00000015.pt.abc.tmp.pt"]
    assert sorted(p.name for p in ck.iterdir()) == ["epoch_0001.pt", "latest", "step_00000005.pt",
                                                    "step_00000010.pt"]


def test_checkpoint_average_equals_manual_mean(corpus, tmp_path):
    cfg = tiny_config(corpus, tmp_path / "exp", sampler={"num_samples": 32}, train={"epochs": 3, "batch_size": 8})
    train(cfg)
    # The run's log file is detached afterwards: a later run in this process does not write into it.
    import logging

    assert not [h for h in logging.getLogger("spkcausal").handlers
                if str(getattr(h, "baseFilename", "")).startswith(str(tmp_path))]
    assert "epoch 3 done" in (tmp_path / "exp" / "train.log").read_text()
    paths = list_checkpoints(tmp_path / "exp" / "checkpoints", "epoch")
    assert [p.name for p in paths] == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"]
    ckpts = [load_checkpoint(p) for p in paths]
    avg = average_checkpoints(paths)
    n_float = 0
    for part in ("model", "head"):
        for name, t in avg[part].items():
            stack = torch.stack([c[part][name] for c in ckpts])
            if t.is_floating_point():
                n_float += 1
                # against a float64 mean cast to float32: a float32 average is a few ulp off, allclose allows ~80
                assert torch.allclose(t, stack.double().mean(0).to(t.dtype), atol=1e-7), name
            else:
                assert torch.equal(t, stack[-1]), name
    assert n_float > 10
    # The CLI writes avg_model.pt that extraction can use (it carries the config).
    from spkcausal.cli import main

    assert main(["average-ckpt", "--exp", str(tmp_path / "exp"), "--num", "2"]) == 0
    two = load_checkpoint(tmp_path / "exp" / "avg_model.pt")
    manual = (ckpts[1]["head"]["weight"] + ckpts[2]["head"]["weight"]) / 2
    assert torch.allclose(two["head"]["weight"], manual, atol=1e-7)  # as above
    # The epochs differ, so the mean is not any one of them.
    # the last checkpoint alone differs from the average
    assert not torch.allclose(two["head"]["weight"], ckpts[2]["head"]["weight"])
    assert two["config"]["model"]["name"] == "resnet_tiny"


def test_no_torch_load_without_weights_only():
    offenders = []
    for base in ("spkcausal", "tools", "tests", "recipes"):
        for path in (REPO / base).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                    ok = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                             for k in node.keywords)
                    if not ok:
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def test_config_rejects_unknown_section_and_existing_checkpoints(corpus, tmp_path):
    with pytest.raises(ValueError, match="unknown config section"):
        merge_defaults({"trian": {}})
    cfg = tiny_config(corpus, tmp_path / "exp", sampler={"num_samples": 16}, train={"epochs": 1, "batch_size": 8})
    train(cfg)
    from spkcausal.utils import DataError

    with pytest.raises(DataError, match="--resume"):
        train(cfg)
    assert math.isclose(train(cfg, resume=True).step, 2)  # an integer step count
    # Resuming with another seed or batch size would not continue the same run: refused, naming the checkpoint.
    with pytest.raises(DataError, match="seed"):
        train({**cfg, "seed": 8}, resume=True)
    with pytest.raises(DataError, match="steps/epoch"):
        train({**cfg, "train": {**cfg["train"], "batch_size": 4}}, resume=True)


# fine-tuning overlays merged over a system config (tests/test_finetune.py checks them), not systems themselves
OVERLAYS = {"lm", "tiny_lm"}
SYSTEM_CONFIGS = sorted(p for p in (REPO / "recipes" / "conf").glob("*.yaml") if p.stem not in OVERLAYS)


@pytest.mark.parametrize("path", SYSTEM_CONFIGS, ids=lambda p: p.stem)
def test_example_configs_are_valid_and_build(path):
    from spkcausal.nn.models import list_models
    from spkcausal.nn.network import build_network, num_classes_for

    cfg = merge_defaults(load_yaml(path))
    if cfg["model"]["name"] not in list_models():  # an extractor another branch adds (docs/models.md)
        pytest.skip(f"{cfg['model']['name']} not registered on this branch")
    net = build_network(cfg, num_classes_for(4, cfg))
    head = "cnaam" if path.stem == "finetune_pretrained" else path.stem.split("_")[-1]
    assert net.head.num_classes == (12 if cfg["augment"]["speed_perturb"] else 4)
    if path.stem == "finetune_pretrained":  # no model section: train.init_from adopts the pretrained architecture
        assert "model" not in load_yaml(path)
    else:
        assert net.model.embed_dim == cfg["model"]["embed_dim"]
    if head == "cnaam" or path.stem == "tiny_cpu":
        assert hasattr(net.head, "mean_feature") and net.head.num_heads == 2
    else:
        # a configured constant
        assert not hasattr(net.head, "mean_feature") and net.head.margin == pytest.approx(cfg["head"]["margin"])


def test_config_key_typos_are_rejected(tmp_path, capsys):
    with pytest.raises(ValueError, match="'epoch'.*'train'"):
        merge_defaults({"train": {"epoch": 3}})
    from spkcausal.cli import main

    conf = tmp_path / "c.yaml"
    save_config({"exp_dir": str(tmp_path / "exp")}, conf)
    assert main(["train", "--config", str(conf), "train.epoch=3"]) == 2
    err = capsys.readouterr().err
    assert str(conf) in err and "'epoch'" in err
    assert not (tmp_path / "exp").exists()


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_training_and_extraction_match_cpu_extraction(corpus, tmp_path):
    from spkcausal.inference.extract import embed_utterances
    from spkcausal.nn.assemble import assemble
    from spkcausal.nn.features import Fbank

    cfg = tiny_config(corpus, tmp_path / "exp", head={"name": "causal_norm_aam", "scale": 16.0, "margin": 0.1},
                      sampler={"num_samples": 64}, data={"num_workers": 2},
                      train={"epochs": 2, "batch_size": 8, "device": "cuda", "precision": "bf16",
                             "ckpt_every_steps": 3})
    res = train(cfg)
    assert res.step == 16 and all(math.isfinite(h["loss"]) for h in res.history)
    assert res.net.head.mean_feature.is_cuda and res.net.head.mean_feature.abs().sum() > 0
    ckpt = tmp_path / "exp" / "checkpoints" / "epoch_0002.pt"
    assert len(load_checkpoint(ckpt)["rng"][0]["cuda"]) >= 1
    data = DataDir.load(corpus)
    model_gpu = assemble(ckpt, device="cuda").model
    model_cpu = assemble(ckpt, device="cpu").model
    a = embed_utterances(model_gpu, Fbank(n_mels=40).cuda(), data, data.utts, "cuda", num_workers=0, progress=False)
    b = embed_utterances(model_cpu, Fbank(n_mels=40), data, data.utts, "cpu", num_workers=0, progress=False)
    na = a / np.linalg.norm(a, axis=1, keepdims=True)
    nb = b / np.linalg.norm(b, axis=1, keepdims=True)
    assert np.abs(na - nb).max() < 1e-3  # GPU vs CPU unit vectors; cuDNN may use TF32 convs (unmeasured here)


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_sigkill_resume_adds_no_difference_beyond_the_gpus_own(corpus, tmp_path):
    """On a GPU, with speed perturbation, noise, reverb and dither drawn from the GPU's generator, a run killed
    mid-epoch and resumed ends where an uninterrupted one does, as far as the GPU repeats itself: cuDNN / cuBLAS
    may pick non-deterministic kernels, so the bound is what two uninterrupted runs differ by (zero when the
    kernels are deterministic: then resume must be bit-exact, as on the CPU). A resume that restored the wrong
    generator state or sampler position draws other noise or chunks and misses by orders of magnitude more."""
    musan, rirs = make_aug_banks(tmp_path / "aug")

    def cfg(exp: Path) -> dict:
        c = _resume_config(corpus, exp, musan, rirs)
        c["train"] = {**c["train"], "device": "cuda", "precision": "bf16"}
        return c

    def command(name: str) -> list[str]:  # every run the same way (a CLI process of the same environment)
        save_config(cfg(tmp_path / name), tmp_path / f"{name}.yaml")
        return [sys.executable, "-m", "spkcausal", "train", "--config", str(tmp_path / f"{name}.yaml"),
                "data.num_workers=1"]

    final = Path("checkpoints") / "epoch_0002.pt"
    for name in ("a", "b"):
        out = subprocess.run(command(name), capture_output=True, text=True, env=torchrun_env(), timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
    kill_after_checkpoint(command("killed"), torchrun_env(), step=25)  # mid-epoch 2 (20 steps an epoch)
    out = subprocess.run(command("killed") + ["--resume"], capture_output=True, text=True, env=torchrun_env(),
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stderr
    own = max(weight_diffs(tmp_path / "a" / final, tmp_path / "b" / final).values())
    resumed = max(weight_diffs(tmp_path / "killed" / final, tmp_path / "a" / final).values())
    print(f"max |weight diff|: two uninterrupted runs {own:.3g}, resumed vs uninterrupted {resumed:.3g}")
    # Floor 1e-5: a few ulps at the weights' scale (~1), which a differing reduction order can leave.
    assert resumed <= max(10 * own, 1e-5), (resumed, own)


def test_mean_feature_is_the_mu_weighted_sum_of_the_raw_embeddings_the_model_produced(corpus, tmp_path):
    # Record what the extractor itself returned at every training step (a global forward hook, so the test does
    # not depend on how the trainer assembles the network), then recompute x_bar independently in float64:
    # x_bar_T = sum_t mu^(T-1-t) * mean_batch(x_t), the no-(1 - mu) form of heads.py, from a zero start.
    from spkcausal.nn.models.resnet import ResNetSpeaker

    seen: list[tuple[torch.nn.Module, torch.Tensor]] = []

    def record(module, args, output):
        if isinstance(module, ResNetSpeaker) and module.training:
            seen.append((module, output.detach().double().clone()))

    mu = 0.8  # not the 0.9 default, so a head ignoring the configured momentum is caught
    cfg = tiny_config(corpus, tmp_path / "exp", sampler={"num_samples": 32}, train={"epochs": 2, "batch_size": 8},
                      head={"name": "causal_norm_aam", "scale": 16.0, "margin": 0.1, "momentum": mu},
                      margin={"start_epoch": 0, "end_epoch": 1})
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        res = train(cfg)
    finally:
        handle.remove()
    assert res.step == 8 and len(seen) == 8
    assert all(m is res.net.model for m, _ in seen)
    steps = [x for _, x in seen]
    assert all(x.shape == (8, 16) for x in steps)

    def xbar(xs, m):
        return sum(m ** (len(xs) - 1 - t) * x.mean(0) for t, x in enumerate(xs))

    want = xbar(steps, mu)
    got = res.net.head.mean_feature.double()
    # float32 batch means (8 rows) and T updates of 2 roundings each: |error| <= (8 + 2T) eps sum_t mu^t |x_t|
    bound = (8 + 2 * len(steps)) * EPS32 * xbar([x.abs() for x in steps], mu)
    assert ((got - want).abs() <= bound).all()
    # What the comparison rules out: normalised features, another mu, or a (1 - mu) factor are all far off.
    for other in (xbar([x / x.norm(dim=1, keepdim=True) for x in steps], mu), xbar(steps, 0.9),
                  (1 - mu) * want):
        assert (other - want).abs().max() > 1e-2 * want.abs().max()
    # And it is what the last checkpoint holds.
    last = load_checkpoint(find_resume_checkpoint(tmp_path / "exp" / "checkpoints"))
    assert torch.equal(last["head"]["mean_feature"], res.net.head.mean_feature)


def test_auto_momentum_follows_the_papers_rule_every_epoch(corpus, tmp_path):
    # head.momentum: auto sets mu = 1 - 0.1 * min(50 * lr, 1) at every epoch start from that epoch's first lr
    # (the official code's rule); x_bar must then be the recursion with each step's epoch mu, recomputed here.
    from spkcausal.nn.models.resnet import ResNetSpeaker

    seen: list[torch.Tensor] = []

    def record(module, args, output):
        if isinstance(module, ResNetSpeaker) and module.training:
            seen.append(output.detach().double().clone())

    epochs, spe, lr0, lr1 = 4, 4, 0.05, 0.001  # lr crosses 0.02, so mu is 0.9 first and then rises
    cfg = tiny_config(corpus, tmp_path / "exp", sampler={"num_samples": 32},
                      train={"epochs": epochs, "batch_size": 8},
                      optim={"lr": lr0, "final_lr": lr1, "warmup_epochs": 0},
                      head={"name": "causal_norm_aam", "scale": 16.0, "margin": 0.1, "momentum": "auto"},
                      margin={"start_epoch": 0, "end_epoch": 1})
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        res = train(cfg)
    finally:
        handle.remove()
    assert res.step == epochs * spe and len(seen) == epochs * spe
    total = epochs * spe
    want_mu = []
    for e in range(epochs):
        lr = lr0 * (lr1 / lr0) ** (e * spe / total)  # the lr of the epoch's first step (no warm-up)
        want_mu.append(1 - 0.1 * min(50 * lr, 1))
    got_mu = [h["x_bar_momentum"] for h in res.history]
    assert got_mu == pytest.approx(want_mu, abs=1e-12)  # float64 schedule both sides
    assert want_mu[0] == pytest.approx(0.9) and want_mu[-1] > 0.95  # the schedule really moved
    xbar = torch.zeros_like(seen[0][0])
    for t, x in enumerate(seen):
        xbar = want_mu[t // spe] * xbar + x.mean(0)
    got = res.net.head.mean_feature.double()
    absum = torch.zeros_like(xbar)
    for t, x in enumerate(seen):
        absum = want_mu[t // spe] * absum + x.abs().mean(0)
    # as above: (8 + 2T) eps times the same recursion on |x|
    assert ((got - xbar).abs() <= (8 + 2 * len(seen)) * EPS32 * absum).all()
    fixed = torch.zeros_like(xbar)
    for x in seen:
        fixed = 0.9 * fixed + x.mean(0)
    assert (fixed - xbar).abs().max() > 1e-2 * xbar.abs().max()  # a fixed 0.9 would be caught


def test_head_momentum_must_be_a_number_or_auto():
    from spkcausal.nn.heads import build_head

    with pytest.raises(UsageError, match="momentum"):
        build_head("causal_norm", 8, 3, momentum="fast")
