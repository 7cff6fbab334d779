#!/usr/bin/env python
"""The full-size rehearsal: every CPU stage of the VoxCeleb and CN-Celeb recipes at the real counts.

Builds data dirs at the real counts (`spkcausal.corpora.rehearsal`: VoxCeleb2 dev 5,994 speakers / 1,092,009
utterances, VoxCeleb1 O / E / H lists of 37,611 / 579,818 / 550,894 trials; CN-Celeb 2,793 speakers / 659k
utterances, 3,484,292 eval trials) over a pool of a few hundred synthetic wavs, and runs each stage in its own
subprocess (`spkcausal <command>` through cli.main, or a library call), at each --scales size. Per stage: wall
time of the work (imports excluded: they are done before the clock starts), peak RSS of the process
(ru_maxrss from wait4: imports included) and, between two sizes, the growth exponent
b = log(t_big / t_small) / log(n_big / n_small) in the stage's main input n. Between 1/10 and full size,
N log N gives b = 1.08 for n ~ 1e5..1e6; the table flags b > 1.2 (and peaks over 16 GiB).

Stages that do not grow with the corpus run on a fixed sample (extraction throughput, make-shards) or at the
corpus's class count (training steps: the full 5,994-class head, 17,982 with speed perturbation): their `n`
is marked `fixed` and they get no exponent. The embeddings are synthetic (speaker centre + noise), so the
stages downstream of extraction see stores of the real shapes.

    python tools/bench_scale.py --work /tmp/scale                     # 1/10 then full size
    python tools/bench_scale.py --work /tmp/scale --scales 0.005 --quick   # the CI size (tests/test_rehearsal.py)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's package, also in the stage subprocesses (PYTHONPATH below)
GiB = 2**30


@dataclass
class Stage:
    """One row of the table: a CLI command or a library call (`inner`), its main input and its size."""

    name: str
    corpus: str
    argv: Callable[[Path, Path, dict], list[str]]
    size: Callable[[dict], int | None]  # main input count; None = fixed-size sample (no exponent)
    what: str
    torch: bool = False
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------ counts of the inputs


def heldout_counts(c: dict) -> dict:
    """Held-out split sizes (2 val + 4 test per speaker: the recipes' defaults)."""
    spk = c["train"].speakers
    return {"val": 2 * spk, "test": 4 * spk, "train": c["train"].utts - 6 * spk}


def seen_trials(c: dict) -> int:
    """The seen-speaker lists' size: the recipes' 40,000 at full size, scaled with the corpus."""
    return max(40, int(round(40_000 * c["scale"])))


# ------------------------------------------------------------------ the stage list


def _cli(*args: str) -> list[str]:
    return ["cli", *args]


def vox_stages(quick: bool) -> list[Stage]:
    """The VoxCeleb recipe's CPU stages, in run order (later ones read what earlier ones wrote): the data
    stages and the training loader here, the rest in vox_eval_stages."""
    t = lambda d, name: str(d / "trials" / name)  # noqa: E731
    E, H, O = "list_test_all2.txt", "list_test_hard2.txt", "veri_test2.txt"
    n_tr = lambda c: c["train"].utts  # noqa: E731
    st = [
        Stage("generate data dirs", "vox", lambda d, w, c: ["inner", "generate", "voxceleb"], n_tr, "utts"),
        Stage("validate-data vox2_dev", "vox", lambda d, w, c: _cli("validate-data", str(d / "vox2_dev")), n_tr,
              "utts"),
        Stage("validate-data vox1 + O/E/H", "vox", lambda d, w, c: _cli(
            "validate-data", str(d / "vox1_all"), "--trials", t(d, O), t(d, E), t(d, H)),
            lambda c: sum(c["trials"].values()), "trials"),
        Stage("heldout-split", "vox", lambda d, w, c: _cli(
            "heldout-split", str(d / "vox2_dev"), "--out-train", str(w / "train"), "--out-val", str(w / "iden_val"),
            "--out-test", str(w / "iden_test"), "--val-per-spk", "2", "--test-per-spk", "4"), n_tr, "utts"),
        Stage("profile", "vox", lambda d, w, c: _cli("profile", str(w / "train"), "--out", str(w / "profile")),
              n_tr, "utts"),
        Stage("plot-longtail", "vox", lambda d, w, c: _cli(
            "plot-longtail", str(w / "profile"), str(d / "vox2_dev"), "--labels", "train", "vox2_dev", "--out",
            str(w / "longtail.png")), n_tr, "utts"),
        Stage("longtail-subset + control", "vox", lambda d, w, c: _cli(
            "longtail-subset", str(d / "vox2_dev"), "--out-train", str(w / "lt_train"), "--out-heldout",
            str(w / "lt_heldout"), "--imbalance", "20", "--control", str(w / "lt_control")), n_tr, "utts"),
        Stage("make-trials seen_test", "vox", lambda d, w, c: _cli(
            "make-trials", str(w / "iden_test"), "--out", str(w / "trials/seen_test"), "--num-trials",
            str(seen_trials(c)), "--fit", "--by-group", str(w / "train"), "100", "20"), seen_trials, "trials"),
        Stage("make-trials seen_dev", "vox", lambda d, w, c: _cli(
            "make-trials", str(w / "iden_val"), "--out", str(w / "trials/seen_dev"), "--num-trials",
            str(seen_trials(c)), "--fit"), seen_trials, "trials"),
        Stage("epoch plan, files (natural + class_balanced)", "vox", lambda d, w, c: ["inner", "plan_files"], n_tr,
              "utts", torch=True),
        Stage("DataDir.load (training dir)", "vox", lambda d, w, c: ["inner", "load_dir"], n_tr, "utts"),
        Stage("training pre-scan (audio headers)", "vox", lambda d, w, c: ["inner", "prescan"], n_tr, "utts"),
        Stage("training pre-scan, restart (probe cache)", "vox", lambda d, w, c: ["inner", "prescan"], n_tr,
              "utts"),
        Stage("loader: first batch + throughput", "vox", lambda d, w, c: ["inner", "loader"], n_tr, "utts",
              torch=True),
        Stage("make-shards (sample of 1,000)", "vox", lambda d, w, c: ["inner", "shards_sample"], lambda c: None,
              "utts"),
        Stage("epoch plan, shards (natural)", "vox", lambda d, w, c: ["inner", "plan_shards", "natural"], n_tr,
              "utts", torch=True),
        Stage("epoch plan, shards (class_balanced)", "vox",
              lambda d, w, c: ["inner", "plan_shards", "class_balanced"], n_tr, "utts", torch=True),
    ]
    models = ("ecapa_tiny",) if quick else ("ecapa512", "resnet34")
    for m in models:
        for speed in (True,) if quick else (False, True):
            st.append(Stage(f"train steps {m} {'x3 classes (speed)' if speed else ''}".strip(), "vox",
                            lambda d, w, c, m=m, s=speed: ["inner", "steps", m, str(int(s))],
                            lambda c: None, "classes", torch=True))
    return st + vox_eval_stages()


def vox_eval_stages() -> list[Stage]:
    """From training on: train + resume, extraction, stores, scoring, back-ends, identification, report."""
    t = lambda d, name: str(d / "trials" / name)  # noqa: E731
    E, H = "list_test_all2.txt", "list_test_hard2.txt"
    n_tr = lambda c: c["train"].utts  # noqa: E731
    n_eh = lambda c: c["trials"][E] + c["trials"][H]  # noqa: E731
    cohort = lambda w: ["--mean-store", str(w / "emb/train"), "--cohort", str(w / "emb/train"),  # noqa: E731
                        "--cohort-data", str(w / "train")]
    return [
        Stage("spkcausal train (+ exact resume)", "vox", lambda d, w, c: ["inner", "train"], n_tr, "utts",
              torch=True),
        Stage("extract (bucket, sample of 200)", "vox", lambda d, w, c: ["inner", "extract"], lambda c: None,
              "utts", torch=True),
        Stage("embedding stores: write", "vox", lambda d, w, c: ["inner", "stores"],
              lambda c: c["train"].utts + c["eval"].utts, "rows"),
        Stage("embedding store: load + speaker means", "vox", lambda d, w, c: ["inner", "load_store"], n_tr, "rows"),
        Stage("score E + H cosine", "vox", lambda d, w, c: _cli(
            "score", "--trials", t(d, E), t(d, H), "--emb", str(w / "emb/vox1_all"), "--out-dir",
            str(w / "scores/cosine")), n_eh, "trials"),
        Stage("score E + H mean_sub", "vox", lambda d, w, c: _cli(
            "score", "--trials", t(d, E), t(d, H), "--emb", str(w / "emb/vox1_all"), "--mean-store",
            str(w / "emb/train"), "--out-dir", str(w / "scores/mean_sub")), n_eh, "trials"),
        Stage("score E + H AS-norm (top 300)", "vox", lambda d, w, c: _cli(
            "score", "--trials", t(d, E), t(d, H), "--emb", str(w / "emb/vox1_all"), *cohort(w),
            "--asnorm-top", "300", "--out-dir", str(w / "scores/asnorm")), n_eh, "trials"),
        Stage("asnorm-top on seen_dev", "vox", lambda d, w, c: _cli(
            "asnorm-top", "--trials", str(w / "trials/seen_dev"), "--emb", str(w / "emb/iden_all"), *cohort(w),
            "--out", str(w / "backend/asnorm_top.json")), seen_trials, "trials"),
        Stage("score seen_test + seen_dev AS-norm", "vox", lambda d, w, c: _cli(
            "score", "--trials", str(w / "trials/seen_test"), str(w / "trials/seen_dev"), "--emb",
            str(w / "emb/iden_all"), *cohort(w), "--out-dir", str(w / "scores/seen")), seen_trials, "trials"),
        Stage("eer + speaker bootstrap x1000 on E", "vox", lambda d, w, c: _cli(
            "eer", str(w / f"scores/asnorm/{E}.score"), "--ci", "0.95", "--utt2spk", str(d / "vox1_all/utt2spk"),
            "--bootstrap", "1000"), lambda c: c["trials"][E], "trials"),
        Stage("calibrate: train on seen_dev, apply to E", "vox", lambda d, w, c: ["inner", "calibrate"],
              lambda c: c["trials"][E], "trials"),
        Stage("qmf: train on seen_dev", "vox", lambda d, w, c: _cli(
            "qmf", "--dev", str(w / "scores/seen/seen_dev.score"), "--emb", str(w / "emb/iden_all"), *cohort(w),
            "--utt2dur", str(w / "iden_val"), "--out", str(w / "backend/qmf.json")), seen_trials, "trials"),
        Stage("qmf: apply to E", "vox", lambda d, w, c: _cli(
            "qmf", "--model", str(w / "backend/qmf.json"), "--apply", str(w / f"scores/asnorm/{E}.score"), "--emb",
            str(w / "emb/vox1_all"), *cohort(w), "--utt2dur", str(d / "vox1_all"), "--out",
            str(w / "scores/asnorm_qmf.score")), lambda c: c["trials"][E], "trials"),
        Stage("identify (all classes, bootstrap x1000)", "vox", lambda d, w, c: _cli(
            "identify", "--exp", str(w / "exp/sys"), "--emb", str(w / "emb/iden_all"), "--data", str(w / "iden_test"),
            "--train-data", str(w / "train"), "--bootstrap", "1000", "--record", str(w / "exp/sys")),
            lambda c: heldout_counts(c)["test"], "utts", torch=True),
        Stage("record-scores E + H + seen", "vox", lambda d, w, c: ["inner", "record"], n_eh, "trials"),
        Stage("report", "vox", lambda d, w, c: _cli("report", str(w / "exp/sys"), "--out", str(w / "report")),
              n_eh, "trials"),
    ]


def cn_stages() -> list[Stage]:
    """The CN-Celeb recipe's stages whose cost differs from VoxCeleb's: its tables and the 3.48M-trial list."""
    n_tr = lambda c: c["train"].utts  # noqa: E731
    n_t = lambda c: c["trials"]["trials_concat"]  # noqa: E731
    ev = lambda d: str(d / "cnceleb_eval/trials_concat")  # noqa: E731
    return [
        Stage("generate data dirs", "cn", lambda d, w, c: ["inner", "generate", "cnceleb"], n_t, "trials"),
        Stage("validate-data train", "cn", lambda d, w, c: _cli("validate-data", str(d / "cnceleb_train")), n_tr,
              "utts"),
        Stage("validate-data eval + trials", "cn", lambda d, w, c: _cli(
            "validate-data", str(d / "cnceleb_eval"), "--trials", ev(d)), n_t, "trials"),
        Stage("profile", "cn", lambda d, w, c: _cli("profile", str(d / "cnceleb_train"), "--out",
                                                     str(w / "profile")), n_tr, "utts"),
        Stage("embedding stores: write", "cn", lambda d, w, c: ["inner", "stores_cn"], n_tr, "rows"),
        Stage("score AS-norm (top 300)", "cn", lambda d, w, c: _cli(
            "score", "--trials", ev(d), "--emb", str(w / "emb/eval"), "--mean-store", str(w / "emb/train"),
            "--cohort", str(w / "emb/train"), "--cohort-data", str(d / "cnceleb_train"), "--asnorm-top", "300",
            "--out-dir", str(w / "scores")), n_t, "trials"),
        Stage("eer + speaker bootstrap x1000", "cn", lambda d, w, c: _cli(
            "eer", str(w / "scores/trials_concat.score"), "--ci", "0.95", "--utt2spk",
            str(d / "cnceleb_eval/utt2spk"), "--bootstrap", "1000"), n_t, "trials"),
    ]


# ------------------------------------------------------------------ library calls run in the stage's subprocess


def _counts(a: argparse.Namespace, corpus: str = "voxceleb") -> dict:
    from spkcausal.corpora.rehearsal import rehearsal_counts

    return {**rehearsal_counts(corpus, a.scale), "scale": a.scale}


def inner_generate(a: argparse.Namespace, corpus: str) -> dict:
    """The rehearsal's data dirs (the pool is made before the clock starts, see main)."""
    from spkcausal.corpora.rehearsal import make_rehearsal

    make_rehearsal(a.data, corpus, a.pool, a.scale, seed=0)
    return {}


def _train_labels(a: argparse.Namespace):  # noqa: ANN202
    from spkcausal.data.datadir import DataDir

    data = DataDir.load(a.work / "train")
    spk = data.speakers
    index = {s: i for i, s in enumerate(spk)}
    return data, [index[data.utt2spk[u]] for u in data.utts]


def inner_plan_files(a: argparse.Namespace) -> dict:
    """One epoch of sampler indices over the whole training set, natural and class-balanced."""
    from spkcausal.data.samplers import build_sampler

    t = time.perf_counter()
    _, labels = _train_labels(a)
    read = time.perf_counter() - t
    out = {"read_s": round(read, 2)}
    for name in ("natural", "class_balanced"):
        t = time.perf_counter()
        n = sum(1 for _ in build_sampler(name, labels, seed=0))
        out[f"{name}_s"] = round(time.perf_counter() - t, 2)
        out["epoch"] = n
    return out


def inner_prescan(a: argparse.Namespace) -> dict:
    """The trainer's pre-scan: a header probe of every training utterance (8 threads)."""
    from spkcausal.data.datadir import DataDir
    from spkcausal.data.dataset import scan_training_audio

    scan = scan_training_audio(DataDir.load(a.work / "train"), 0.5, 16000, 8)
    return {"usable": len(scan.utts)}


def inner_load_dir(a: argparse.Namespace) -> dict:
    """DataDir.load of the training dir (wav.scp, utt2spk, utt2dur, utt2sess, spk2gender): CPU and wall seconds."""
    from spkcausal.data.datadir import DataDir

    c = time.process_time()
    n = len(DataDir.load(a.work / "train"))
    return {"utts": n, "cpu_s": round(time.process_time() - c, 2)}


def inner_loader(a: argparse.Namespace) -> dict:
    """TrainChunkDataset over the whole set, 2 workers, batch 128 of 2 s: first batch, then 20 batches."""
    from spkcausal.data.dataset import TrainChunkDataset, train_loader
    from spkcausal.data.samplers import build_sampler

    t0 = time.perf_counter()
    data, _ = _train_labels(a)
    ds = TrainChunkDataset(data, data.utts, 32000, seed=0)
    sampler = build_sampler("natural", ds.labels, seed=0)
    it = iter(train_loader(ds, sampler, 128, num_workers=2, pin_memory=False, prefetch_factor=2))
    next(it)
    first = time.perf_counter() - t0
    t = time.perf_counter()
    nb = 5 if a.quick else 20
    for _ in range(nb):
        next(it)
    rate = nb * 128 / (time.perf_counter() - t)
    return {"first_batch_s": round(first, 2), "examples_per_s": round(rate, 1)}


def _sample_dir(a: argparse.Namespace, n: int, name: str) -> Path:
    """A data dir of n training utterances spread over the set (for the fixed-size samples)."""
    data, _ = _train_labels(a)
    out = a.work / name
    utts = data.utts
    data.subset(utts[:: max(1, len(utts) // n)][:n]).write(out)
    return out


def inner_shards_sample(a: argparse.Namespace) -> dict:
    """make-shards over a fixed sample of 1,000 utterances (the audio bytes are what costs)."""
    from spkcausal.data.shards import make_shards

    src = _sample_dir(a, 1000, "shard_sample")
    t = time.perf_counter()
    make_shards(src, a.work / "shards_sample", utts_per_shard=100, seed=0, num_threads=2)
    return {"utts_per_s": round(1000 / (time.perf_counter() - t), 1)}


def full_index(a: argparse.Namespace):  # noqa: ANN202
    """A ShardIndex of the whole training set in shards of 1,000 (metadata only: planning opens no tar)."""
    import numpy as np

    from spkcausal.data.datadir import DataDir
    from spkcausal.data.shards import ShardIndex, shard_key

    data = DataDir.load(a.work / "train")
    rng = np.random.default_rng(0)
    ordered = data.utts
    utts = [ordered[i] for i in rng.permutation(len(ordered))]
    per = max(10, min(1000, len(utts) // 64))  # 1,000 as in docs/scale.md; smaller only for tiny sizes
    n_sh = math.ceil(len(utts) / per)
    return ShardIndex(root=a.work, manifest={}, shard_paths=[a.work / f"s{i}.tar" for i in range(n_sh)],
                      shard=np.arange(len(utts)) // per, keys=[shard_key(u) for u in utts], utts=utts,
                      spks=[data.utt2spk[u] for u in utts],
                      num_samples=np.array([int(data.utt2dur[u] * 16000) for u in utts]),
                      sample_rate=np.full(len(utts), 16000), exts=["wav"] * len(utts))


def inner_plan_shards(a: argparse.Namespace, scheme: str) -> dict:
    """The shard stream's epoch plan over the full index: 8 streams (8 workers), buffer 1,000, batch 128."""
    from spkcausal.data.shardstream import ShardTrainStream

    t = time.perf_counter()
    index = full_index(a)
    t_index = time.perf_counter() - t
    t = time.perf_counter()
    stream = ShardTrainStream(index, 32000, 128, seed=0, name=scheme, streams=8, buffer_size=1000)
    t_init = time.perf_counter() - t
    t, c = time.perf_counter(), time.process_time()
    emitted = sum(len(stream.plan(0, s)[1]) for s in range(stream.streams))
    return {"index_s": round(t_index, 2), "init_s": round(t_init, 2), "plan_s": round(time.perf_counter() - t, 2),
            "plan_cpu_s": round(time.process_time() - c, 2), "emitted": emitted}


def inner_steps(a: argparse.Namespace, model_name: str, speed: str) -> dict:
    """Training steps on random features with the corpus's head (x3 classes with speed perturbation):
    median step time, and the save time and size of a checkpoint with the optimizer state."""
    import statistics

    import torch

    from spkcausal.nn.checkpoint import save_checkpoint
    from spkcausal.nn.heads import build_head
    from spkcausal.nn.losses import build_loss
    from spkcausal.nn.models import build_model
    from spkcausal.nn.network import SpeakerNet
    from spkcausal.train.steps import train_step

    torch.manual_seed(0)
    classes = _counts(a)["train"].speakers * (3 if speed == "1" else 1)
    bs, steps = (4, 1) if a.quick else (32, 2)
    model = build_model(model_name, n_mels=80)
    net = SpeakerNet(model, build_head("aam", model.embed_dim, classes)).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    feats, labels = torch.randn(bs, 200, 80), torch.randint(0, classes, (bs,))
    times = []
    for _ in range(steps + 1):  # the first is warm-up
        t = time.perf_counter()
        train_step(net, build_loss("ce"), opt, scaler, feats, labels)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    path = save_checkpoint({"model": net.model.state_dict(), "head": net.head.state_dict(),
                            "optimizer": opt.state_dict()}, a.work / f"ckpt_{model_name}_{speed}.pt")
    save_s = time.perf_counter() - t
    return {"classes": classes, "batch": bs, "step_s": round(statistics.median(times[1:]), 3),
            "samples_per_s": round(bs / statistics.median(times[1:]), 2), "ckpt_MiB": round(path.stat().st_size
                                                                                          / 2**20, 1),
            "save_s": round(save_s, 2)}


def _train_cfg(a: argparse.Namespace, exp: Path) -> list[str]:
    conf = ROOT / "recipes/conf" / ("tiny_cpu.yaml" if a.quick else "ecapa512_aam.yaml")
    bs = 4 if a.quick else 16
    return ["train", "--config", str(conf), f"exp_dir={exp}", f"data.train={a.work / 'train'}",
            "data.num_workers=2", "data.pin_memory=false", f"sampler.num_samples={2 * bs}", "train.epochs=2",
            f"train.batch_size={bs}", "train.progress=false", "train.tensorboard=false", "train.device=cpu",
            "train.precision=fp32", "train.keep_epochs=2", "train.log_every=1", "augment.speed_perturb=false"]


def inner_train(a: argparse.Namespace) -> dict:
    """`spkcausal train` on the whole training set (pre-scan, full head), 2 epochs of 2 steps; then a copy
    resumed from its epoch-1 checkpoint must end with the same weights."""
    import shutil

    import torch

    from spkcausal.cli import main
    from spkcausal.nn.checkpoint import load_checkpoint

    exp = a.work / "exp/sys"
    shutil.rmtree(exp, ignore_errors=True)
    t = time.perf_counter()
    assert main(_train_cfg(a, exp)) == 0
    train_s = time.perf_counter() - t
    res = a.work / "exp/resume"
    shutil.rmtree(res, ignore_errors=True)
    shutil.copytree(exp, res)
    (res / "checkpoints/epoch_0002.pt").unlink()
    (res / "checkpoints/latest").write_text("epoch_0001.pt\n")
    t = time.perf_counter()
    assert main(["train", "--config", str(res / "config.yaml"), "--exp-dir", str(res), "--resume"]) == 0
    resume_s = time.perf_counter() - t
    x, y = (load_checkpoint(p / "checkpoints/epoch_0002.pt") for p in (exp, res))
    diff = max((x[k][n].double() - y[k][n].double()).abs().max().item() for k in ("model", "head") for n in x[k])
    if diff > 1e-6 or not torch.equal(x["head"]["weight"], y["head"]["weight"]):
        raise SystemExit(f"resume is not exact: max difference {diff}")
    size = (exp / "checkpoints/epoch_0002.pt").stat().st_size / 2**20
    return {"train_s": round(train_s, 1), "resume_s": round(resume_s, 1), "resume_max_diff": diff,
            "ckpt_MiB": round(size, 1), "classes": int(x["head"]["weight"].shape[0])}


def inner_extract(a: argparse.Namespace) -> dict:
    """`spkcausal extract --mode bucket` on a fixed sample of 200 utterances (1 thread, 1 worker)."""
    import torch

    from spkcausal.cli import main

    torch.set_num_threads(1)
    src = _sample_dir(a, 200, "extract_sample")
    t = time.perf_counter()
    assert main(["extract", "--exp", str(a.work / "exp/sys"), "--data", str(src), "--out",
                 str(a.work / "emb/extract_sample"), "--mode", "bucket", "--num-workers", "1", "--device", "cpu",
                 "--force"]) == 0
    rate = 200 / (time.perf_counter() - t)
    return {"utts_per_s": round(rate, 1), "projected_1.2M_h": round(1.2e6 / rate / 3600, 1)}


def write_fake_store(out: Path, data_dirs: list[Path], dim: int, seed: int) -> int:
    """A store of every utterance of `data_dirs`: a unit speaker centre + noise (so scores separate speakers)."""
    import numpy as np

    from spkcausal.data.datadir import read_kv
    from spkcausal.data.embeddings import write_store

    u2s: dict[str, str] = {}
    for d in data_dirs:
        u2s.update(read_kv(d / "utt2spk"))
    keys = sorted(u2s)
    spk = sorted(set(u2s.values()))
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(spk), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    idx = {s: i for i, s in enumerate(spk)}
    lab = np.array([idx[u2s[k]] for k in keys])
    emb = np.empty((len(keys), dim), dtype=np.float32)
    for s in range(0, len(keys), 100_000):  # blocks: the noise of 1.2M rows at once would double the peak
        e = min(s + 100_000, len(keys))
        emb[s:e] = centres[lab[s:e]] + 0.09 * rng.standard_normal((e - s, dim), dtype=np.float32)
    write_store(out, keys, emb)
    return len(keys)


def inner_stores(a: argparse.Namespace) -> dict:
    """Stores of the training set, the held-out splits (one store) and VoxCeleb1 (1.25M x 192 in all; the
    quick model's 32 dims with --quick, so that identify can run its head on them)."""
    dim = 32 if a.quick else 192
    n = write_fake_store(a.work / "emb/train", [a.work / "train"], dim, 0)
    n += write_fake_store(a.work / "emb/iden_all", [a.work / "iden_val", a.work / "iden_test"], dim, 0)
    n += write_fake_store(a.work / "emb/vox1_all", [a.data / "vox1_all"], dim, 1)
    return {"rows": n}


def inner_stores_cn(a: argparse.Namespace) -> dict:
    """CN-Celeb's training (cohort) and eval stores."""
    n = write_fake_store(a.work / "emb/train", [a.data / "cnceleb_train"], 192, 0)
    n += write_fake_store(a.work / "emb/eval", [a.data / "cnceleb_eval"], 192, 1)
    return {"rows": n}


def inner_load_store(a: argparse.Namespace) -> dict:
    """Open the training store, read every row once, and compute its speaker means (AS-norm's cohort)."""
    from spkcausal.data.embeddings import EmbeddingStore, speaker_means

    t = time.perf_counter()
    store = EmbeddingStore.open(a.work / "emb/train")
    total = float(store.matrix.sum(dtype="float64"))
    open_s = time.perf_counter() - t
    spk, _ = speaker_means(store, a.work / "train")
    return {"open_read_s": round(open_s, 2), "speakers": len(spk), "checksum": round(total, 1)}


def inner_calibrate(a: argparse.Namespace) -> dict:
    """`spkcausal calibrate` trained on the 40k seen_dev scores and applied to the E list's AS-norm scores."""
    from spkcausal.cli import main

    w = a.work
    assert main(["calibrate", "--dev", str(w / "scores/seen/seen_dev.score"), "--out",
                 str(w / "backend/cal.json")]) == 0
    assert main(["calibrate", "--model", str(w / "backend/cal.json"), "--apply",
                 str(w / "scores/asnorm/list_test_all2.txt.score"), "--out", str(w / "scores/asnorm_cal.score")]) == 0
    return {}


def inner_record(a: argparse.Namespace) -> dict:
    """`spkcausal record-scores` of the E and H score files (speaker bootstrap x1000 each) and the seen list."""
    from spkcausal.cli import main

    w, u2s = a.work, str(a.data / "vox1_all/utt2spk")
    for v in ("cosine", "mean_sub", "asnorm"):
        assert main(["record-scores", "--exp", str(w / "exp/sys"), "--utt2spk", u2s,
                     f"{v}=" + str(w / f"scores/{v}/list_test_all2.txt.score")]) == 0
    assert main(["record-scores", "--exp", str(w / "exp/sys"), "--seen", "--train-data", str(w / "train"),
                 "--many", "100", "--few", "20",
                 "--utt2spk", str(w / "iden_test/utt2spk"), "asnorm=" + str(w / "scores/seen/seen_test.score")]) == 0
    return {}


INNER = {"generate": inner_generate, "plan_files": inner_plan_files, "prescan": inner_prescan,
         "load_dir": inner_load_dir,
         "loader": inner_loader, "shards_sample": inner_shards_sample, "plan_shards": inner_plan_shards,
         "steps": inner_steps, "train": inner_train, "extract": inner_extract, "stores": inner_stores,
         "stores_cn": inner_stores_cn, "load_store": inner_load_store, "calibrate": inner_calibrate,
         "record": inner_record}


# ------------------------------------------------------------------ running a stage in its own process


def _preimport(torch_needed: bool) -> None:
    """What every stage imports anyway, loaded before the clock starts (a constant, not a cost of size)."""
    import numpy  # noqa: F401

    import spkcausal.cli  # noqa: F401
    import spkcausal.data.datadir  # noqa: F401
    import spkcausal.scoring.cosine  # noqa: F401
    import spkcausal.scoring.metrics  # noqa: F401
    if torch_needed:
        import torch  # noqa: F401

        import spkcausal.nn.network  # noqa: F401
        import spkcausal.train.trainer  # noqa: F401


def inner_main(spec: dict) -> None:
    """Run one stage in this process and print {"s": seconds, ...} as the last stdout line."""
    a = argparse.Namespace(data=Path(spec["data"]), work=Path(spec["work"]), scale=spec["scale"],
                           pool=Path(spec["pool"]), quick=spec["quick"])
    _preimport(spec["torch"])
    real_stdout = os.dup(1)
    with open(spec["log"], "a") as log:  # the commands' own printing goes to the stage's log
        os.dup2(log.fileno(), 1)
        t = time.perf_counter()
        if spec["argv"][0] == "cli":
            from spkcausal.cli import main

            rc = main(spec["argv"][1:])
            extra = {} if rc == 0 else {"rc": rc}
        else:
            extra = INNER[spec["argv"][1]](a, *spec["argv"][2:])
        sys.stdout.flush()
        seconds = time.perf_counter() - t
    os.dup2(real_stdout, 1)
    print(json.dumps({"s": seconds, **extra}))
    sys.exit(extra.get("rc", 0))


def run_stage(stage: Stage, data: Path, work: Path, pool: Path, scale: float, quick: bool) -> dict:
    """Run `stage` in a subprocess; its time, peak RSS (wait4) and what it reported."""
    counts = {**_counts(argparse.Namespace(scale=scale), "voxceleb" if stage.corpus == "vox" else "cnceleb"),
              "scale": scale}
    log = work / "logs" / (stage.corpus + "_" + "".join(ch if ch.isalnum() else "_" for ch in stage.name) + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    spec = {"data": str(data), "work": str(work), "scale": scale, "pool": str(pool), "quick": quick,
            "torch": stage.torch, "log": str(log), "argv": stage.argv(data, work, counts)}
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t = time.perf_counter()
    with open(log, "a") as err:
        p = subprocess.Popen([sys.executable, __file__, "--inner", json.dumps(spec)], stdout=subprocess.PIPE,
                             stderr=err, env=env, text=True)
        out = p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    lines = out.strip().splitlines()
    rep = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return {"corpus": stage.corpus, "stage": stage.name, "scale": scale, "n": stage.size(counts),
            "what": stage.what, "s": rep.pop("s", None), "wall_s": round(wall, 2), "rss_MiB": ru.ru_maxrss / 1024,
            "rc": p.returncode, "log": str(log), "extra": rep}


def run_rehearsal(work: Path, scales: list[float], quick: bool = False, corpora: tuple[str, ...] = ("vox", "cn"),
                  pool_files: int = 300, only: list[str] | None = None, echo: Callable = print) -> list[dict]:
    """Every stage at every scale (smallest first); returns the measured rows."""
    pool = work / "pool"
    if not (pool / "synth_config.json").is_file() or not list(pool.rglob("*.wav")):
        # In a child: a big parent would set every later child's ru_maxrss floor (it counts from the fork).
        code = f"from spkcausal.corpora.rehearsal import make_audio_pool; make_audio_pool({str(pool)!r}, {pool_files})"
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)
    rows = []
    for scale in sorted(scales):
        for corpus in corpora:
            stages = vox_stages(quick) if corpus == "vox" else cn_stages()
            tag = f"{corpus}_{scale:g}"
            for st in stages:
                if only and not any(o in st.name for o in only) and st.name != "generate data dirs":
                    continue
                row = run_stage(st, work / f"data_{tag}", work / f"work_{tag}", pool, scale, quick)
                row["load"] = os.getloadavg()[0]
                rows.append(row)
                echo(f"[{tag}] {st.name}: {row['s'] if row['s'] is None else round(row['s'], 2)} s, "
                     f"{row['rss_MiB']:.0f} MiB, rc {row['rc']} {json.dumps(row['extra'])}")
                if row["rc"] != 0:
                    echo(f"    failed: see {row['log']}")
    return rows


# ------------------------------------------------------------------ the table


def growth(rows: list[dict]) -> dict[tuple[str, str], float]:
    """Growth exponent per (corpus, stage) between its two largest sizes: log(t1/t0) / log(n1/n0)."""
    by: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by.setdefault((r["corpus"], r["stage"]), []).append(r)
    out = {}
    for key, rs in by.items():
        rs = sorted((r for r in rs if r["s"] and r["n"]), key=lambda r: r["n"])
        if len(rs) >= 2 and rs[-1]["n"] > rs[-2]["n"]:
            out[key] = math.log(rs[-1]["s"] / rs[-2]["s"]) / math.log(rs[-1]["n"] / rs[-2]["n"])
    return out


def _fmt_n(n: int | None) -> str:
    return "fixed" if n is None else f"{n:,}"


def format_table(rows: list[dict], flag_b: float = 1.2) -> str:
    """The stage table: per stage and scale n, seconds and peak MiB; the exponent; flags; the extras."""
    scales = sorted({r["scale"] for r in rows})
    b = growth(rows)
    head = ["corpus", "stage", "input"] + [f"{h} @{s:g}" for s in scales for h in ("n", "s", "MiB")] + ["b", "flag"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = list(dict.fromkeys((r["corpus"], r["stage"]) for r in rows))
    notes = []
    for key in keys:
        cells = [key[0], key[1], next(r["what"] for r in rows if (r["corpus"], r["stage"]) == key)]
        flag = []
        for s in scales:
            r = next((r for r in rows if (r["corpus"], r["stage"]) == key and r["scale"] == s), None)
            if r is None:
                cells += ["", "", ""]
                continue
            sec = "FAILED" if r["rc"] != 0 or r["s"] is None else f"{r['s']:.2f}"
            cells += [_fmt_n(r["n"]), sec, f"{r['rss_MiB']:,.0f}"]
            if r["rss_MiB"] > 16 * 1024:
                flag.append("> 16 GiB")
            if r["rc"] != 0:
                flag.append("failed")
        e = b.get(key)
        if e is not None and e > flag_b:
            flag.append(f"b > {flag_b}")
        cells += ["" if e is None else f"{e:.2f}", ", ".join(flag)]
        lines.append("| " + " | ".join(cells) + " |")
        big = max((r for r in rows if (r["corpus"], r["stage"]) == key), key=lambda r: r["scale"])
        if big["extra"]:
            notes.append(f"- {key[0]} / {key[1]} @{big['scale']:g}: " + ", ".join(
                f"{k} {v}" for k, v in big["extra"].items()))
    return "\n".join(lines + [""] + notes) + "\n"


def bench_grouping(sizes: tuple[int, ...] = (109_201, 1_092_009), per_shard: int = 1000, runs: int = 3) -> str:
    """The shard stream's per-shard grouping, before (a mask per shard) and after (one stable sort): medians."""
    import statistics

    import numpy as np

    from spkcausal.data.shardstream import shard_members

    lines = []
    for n in sizes:
        shards = math.ceil(n / per_shard)
        shard_of = np.random.default_rng(0).permutation(np.arange(n) // per_shard)
        ids = np.arange(n)
        old, new = [], []
        for _ in range(runs):
            t = time.perf_counter()
            ref = [ids[shard_of == s] for s in range(shards)]
            old.append(time.perf_counter() - t)
            t = time.perf_counter()
            got = shard_members(shard_of, ids, shards)
            new.append(time.perf_counter() - t)
        assert all(np.array_equal(a, b) for a, b in zip(ref, got))
        mo, mn = statistics.median(old), statistics.median(new)
        lines.append(f"n {n:,} ({shards:,} shards): mask per shard {mo:.3f} s, stable sort {mn:.3f} s "
                     f"(medians of {runs}; {mo / mn:.0f}x)")
    return "\n".join(lines)


def bench_start(n: int = 1_092_009, speakers: int = 5994, runs: int = 3, work: Path | None = None) -> str:
    """A training start's CPU work at VoxCeleb2's size without audio: DataDir.load of an n-line data dir
    (wav.scp, utt2spk, utt2dur, utt2sess, synthesised here) and one epoch's class-balanced shard plan (8
    streams, buffer 1,000, batch 128, shards of 1,000); medians of `runs` for the load, one plan."""
    import statistics
    import tempfile

    import numpy as np

    from spkcausal.data.datadir import DataDir
    from spkcausal.data.shards import ShardIndex
    from spkcausal.data.shardstream import ShardTrainStream

    rng = np.random.default_rng(0)
    counts = np.maximum(8, rng.lognormal(0, 0.6, speakers))
    spk = np.sort(rng.choice(speakers, n, p=counts / counts.sum()))
    utts = [f"id{s:05d}-{i:07d}" for i, s in enumerate(spk.tolist())]
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        d = Path(tmp)
        tables = {"wav.scp": lambda i, u: f"/corpora/vox2/dev/wav/{u[:7]}/{i:07d}.wav",
                  "utt2spk": lambda i, u: u[:7], "utt2dur": lambda i, u: f"{4 + (i % 1600) / 100:.3f}",
                  "utt2sess": lambda i, u: f"v{i // 9:06d}"}
        for name, value in tables.items():
            (d / name).write_text("".join(f"{u} {value(i, u)}\n" for i, u in enumerate(utts)))
        wall, cpu = [], []
        for _ in range(runs):
            t, c = time.perf_counter(), time.process_time()
            data = DataDir.load(d)
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    order = rng.permutation(n)
    per = 1000
    index = ShardIndex(root=Path("/nonexistent"), manifest={}, shard_paths=[Path(f"/x/{i}") for i in
                                                                            range(math.ceil(n / per))],
                       shard=np.arange(n) // per, keys=[utts[i] for i in order], utts=[utts[i] for i in order],
                       spks=[data.utt2spk[utts[i]] for i in order], num_samples=np.full(n, 64000),
                       sample_rate=np.full(n, 16000), exts=["wav"] * n)
    stream = ShardTrainStream(index, 32000, 128, seed=0, name="class_balanced", streams=8, buffer_size=1000)
    t, c = time.perf_counter(), time.process_time()
    emitted = sum(len(stream.plan(0, s)[1]) for s in range(stream.streams))
    plan_wall, plan_cpu = time.perf_counter() - t, time.process_time() - c
    return (f"n {n:,} utterances, {len(data.speakers):,} speakers\n"
            f"DataDir.load: median {statistics.median(wall):.2f} s wall ({min(wall):.2f}-{max(wall):.2f}), "
            f"{statistics.median(cpu):.2f} s CPU, {runs} runs\n"
            f"class-balanced shard plan, one epoch ({emitted:,} draws, 8 streams, buffer 1,000): {plan_wall:.2f} s "
            f"wall, {plan_cpu:.2f} s CPU")


def main() -> None:
    if len(sys.argv) == 2 and sys.argv[1] == "--grouping":
        print(bench_grouping())
        return
    if len(sys.argv) >= 2 and sys.argv[1] == "--start":
        up = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()  # noqa: E731
        print(f"spkcausal from {ROOT}; uptime before: {up()}")
        print(bench_start(*(int(x) for x in sys.argv[2:3])))
        print(f"uptime after: {up()}")
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--inner":
        inner_main(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="working dir (data dirs, stores, logs, the table)")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.1, 1.0])
    ap.add_argument("--corpora", nargs="+", default=["vox", "cn"], choices=["vox", "cn"])
    ap.add_argument("--only", nargs="+", help="run only the stages whose name contains one of these")
    ap.add_argument("--quick", action="store_true", help="tiny model and few steps (CI)")
    ap.add_argument("--out", type=Path, help="table file (default WORK/scale_table.md)")
    ap.add_argument("--with-rows", type=Path, nargs="*", default=[],
                    help="rows of earlier runs (their scale_rows.json) to put in the same table")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    t = time.perf_counter()
    rows = run_rehearsal(args.work, args.scales, args.quick, tuple(args.corpora), only=args.only)
    load1 = os.getloadavg()
    rows = [r for f in args.with_rows for r in json.loads(f.read_text())] + rows
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    scales = sorted({r["scale"] for r in rows})
    head = (f"Rehearsal at scales {', '.join(f'{s:g}' for s in scales)} ({os.cpu_count()} CPUs): "
            f"{time.perf_counter() - t:.0f} s in all; load average (1 min) {load0[0]:.2f} at the start, "
            f"{load1[0]:.2f} at the end, per stage {min(r['load'] for r in rows):.2f}-"
            f"{max(r['load'] for r in rows):.2f}; `uptime` at the end: {up}\n"
            "s = the stage's work (imports excluded), MiB = peak RSS of its process (imports included), "
            "b = growth exponent between the two sizes\n\n")
    text = head + format_table(rows)
    out = args.out or args.work / "scale_table.md"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    tag = "_".join(f"{s:g}" for s in sorted(args.scales))
    (args.work / f"scale_rows_{tag}.json").write_text(json.dumps(rows, indent=1))
    print(text)
    sys.exit(1 if any(r["rc"] != 0 for r in rows) else 0)


if __name__ == "__main__":
    main()
