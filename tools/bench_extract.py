#!/usr/bin/env python3
"""Extraction against a peer: `spkcausal extract` and SpeechBrain's `EncoderClassifier.encode_batch` loop over
the same ECAPA weights, the same files, the same torch threads.

    python tools/bench_extract.py                      200 files of 2-8 s, ECAPA C=512, 2 threads, median of 3
    python tools/bench_extract.py --channels 1024 --utts 100 --repeats 5
    python tools/bench_extract.py --quick              a seconds-long smoke run (a small ECAPA, 6 short files)
    python tools/bench_extract.py --device cuda        both contenders on the GPU (tools/gpu_check.sh runs it)

Set-up (not timed): `--utts` 16 kHz PCM wav files of speech-like audio (spkcausal's source-filter voice model,
`--min-seconds` to `--max-seconds` long) with a data dir (wav.scp, utt2spk); an ECAPA-TDNN in SpeechBrain's
layout (spkcausal.nn.models.ecapa; random, seeded weights and BatchNorm statistics) saved as a spkcausal
checkpoint (with a random head, as training writes it) and as SpeechBrain's `embedding_model.ckpt` (its state
dict: the same tensors).

Timed, each contender once untimed on 4 files (imports, allocator) and then `--repeats` times round robin, so a
change in the machine's load hits all alike; medians:

- spkcausal: `spkcausal.inference.extract.extract`, the function behind `spkcausal extract` (in process: same
  code path as the command), from loading the data dir and checkpoint to the written embedding store; once with
  SpeechBrain's front-end (`features.frontend: speechbrain`, so the embeddings can be compared with SpeechBrain's
  directly) and once with the Kaldi fbank the recipes train with. `--modes` and `--num-workers` as `extract`.
- SpeechBrain: an `EncoderClassifier` built offline from its modules (Fbank(n_mels=80), InputNormalization(
  sentence, std_norm=False), ECAPA_TDNN: spkrec-ecapa-voxceleb's hyperparams) with the weights loaded from
  `embedding_model.ckpt`; per file `load_audio` then `encode_batch` of that one utterance (its typical use),
  the embeddings stacked and saved with np.save.

Prints utterances/s, audio seconds per second (the inverse real-time factor), the ratio to SpeechBrain (median of
the per-round ratios; also best run against best run, and CPU time) and
where the time goes (spkcausal: `extract`'s own stage clock; SpeechBrain: forward hooks on its modules), then
the agreement: per-utterance cosine between our and SpeechBrain's embeddings with the same front-end, and the
two models' outputs on identical (Kaldi fbank) features.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SR = 16000
STAGES = ("setup", "headers", "read", "fbank", "model", "write")


def make_corpus(work: Path, n: int, lo: float, hi: float, seed: int = 0) -> tuple[Path, float]:
    """`n` wavs of lo-hi seconds from 20 synthetic voices and their data dir; returns (data dir, audio seconds)."""
    import soundfile as sf

    from spkcausal.corpora.voice import session_channel, speaker_voice, stream_rng, synth_utterance, to_pcm16
    from spkcausal.data.datadir import DataDir

    rng = np.random.default_rng(seed)
    wav, utt2spk, total = {}, {}, 0.0
    (work / "wav").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        spk = i % 20
        samples = int(rng.uniform(lo, hi) * SR)
        x = synth_utterance(speaker_voice(seed, spk), session_channel(seed, spk, 0, SR),
                            stream_rng(seed, 2, spk, i), samples, SR, (10.0, 30.0))
        utt = f"spk{spk:02d}-utt{i:04d}"
        sf.write(str(work / "wav" / f"{utt}.wav"), to_pcm16(x), SR, subtype="PCM_16")
        wav[utt], utt2spk[utt] = str(work / "wav" / f"{utt}.wav"), f"spk{spk:02d}"
        total += samples / SR
    DataDir(wav=wav, utt2spk=utt2spk).write(work / "data")
    return work / "data", total


def sub_dir(data: Path, out: Path, k: int) -> Path:
    """The first `k` utterances of a data dir (the warm-up's)."""
    from spkcausal.data.datadir import DataDir

    full = DataDir.load(data)
    keep = full.utts[:k]
    DataDir(wav={u: full.wav[u] for u in keep}, utt2spk={u: full.utt2spk[u] for u in keep}).write(out)
    return out


def make_model(work: Path, channels: int, seed: int = 0) -> tuple[dict, dict[str, Path], Path]:
    """A seeded random ECAPA: (SpeechBrain ECAPA_TDNN arguments, spkcausal checkpoint per front-end, SpeechBrain
    embedding_model.ckpt)."""
    import torch

    from spkcausal.nn.checkpoint import save_checkpoint
    from spkcausal.nn.config import merge_defaults
    from spkcausal.nn.network import build_extractor, build_head_for

    arch = {"channels": [channels] * 4 + [3 * channels], "kernel_sizes": [5, 3, 3, 3, 1],
            "dilations": [1, 2, 3, 4, 1], "attention_channels": 128, "lin_neurons": 192}
    if channels < 128:  # the smoke run's small ECAPA
        arch.update(attention_channels=16, se_channels=16)
    model_cfg = {"name": "ecapa512", "embed_dim": arch["lin_neurons"],
                 **{k: v for k, v in arch.items() if k != "lin_neurons"}}
    torch.manual_seed(seed)
    ckpts = {}
    state = head = None
    for frontend in ("speechbrain", "kaldi"):
        cfg = merge_defaults({"model": model_cfg, "features": {"frontend": frontend}})
        if state is None:
            model = build_extractor(cfg)
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():  # BatchNorm statistics away from (0, 1), so that eval mode is not a no-op
                for m in model.modules():
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                        m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            state = model.state_dict()
            head = build_head_for(cfg, arch["lin_neurons"], 20).state_dict()
            sb_ckpt = work / "sb" / "embedding_model.ckpt"
            sb_ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save({k: v for k, v in model.net.state_dict().items()}, sb_ckpt)
        ckpts[frontend] = save_checkpoint({"config": cfg, "model": state, "head": head,
                                           "speakers": [f"spk{i:02d}" for i in range(20)]},
                                          work / f"ckpt_{frontend}.pt")
    return arch, ckpts, sb_ckpt


def run_ours(ckpt: Path, data: Path, out: Path, mode: str, workers: int | None, device: str,
             timing: dict | None) -> None:
    """`spkcausal extract` in process: data dir + checkpoint -> embedding store."""
    import inspect

    from spkcausal.inference.extract import extract

    kw = {"timing": timing} if "timing" in inspect.signature(extract).parameters else {}  # older checkouts (--src)
    extract(data, out, ckpt=ckpt, mode=mode, num_workers=workers, device=device, force=True, **kw)


def read_store(out: Path) -> tuple[list[str], np.ndarray]:
    """(keys, embeddings) of a written store."""
    from spkcausal.data.embeddings import EmbeddingStore

    store = EmbeddingStore.open(out)
    return store.keys, store.get(store.keys)


def _hook_timer(module, stage: str, timing: dict, device: str) -> None:
    """Charge `module`'s forward calls to `timing[stage]` (pre- and post-forward hooks; on a GPU each waits for
    the queued work first, as `extract`'s own stage clock does)."""
    start = []

    def pre(*_: object) -> None:
        _sync(device)
        start.append(time.perf_counter())

    def post(*_: object) -> None:
        _sync(device)
        timing[stage] = timing.get(stage, 0.0) + time.perf_counter() - start.pop()

    module.register_forward_pre_hook(pre)
    module.register_forward_hook(post)


def _sync(device: str) -> None:
    """Wait for the GPU's queued work, so that a clock read after it charges the work to the right stage."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def run_speechbrain(sb_ckpt: Path, arch: dict, data: Path, out: Path, device: str, timing: dict) -> None:
    """SpeechBrain's EncoderClassifier, one utterance per encode_batch call, embeddings saved with np.save."""
    import torch
    from speechbrain.inference.classifiers import EncoderClassifier
    from speechbrain.lobes.features import Fbank
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    from speechbrain.processing.features import InputNormalization

    from spkcausal.data.datadir import read_wav_scp

    t0 = time.perf_counter()
    ecapa = ECAPA_TDNN(80, **arch)
    ecapa.load_state_dict(torch.load(sb_ckpt, weights_only=True))
    clf = EncoderClassifier(modules={"compute_features": Fbank(n_mels=80),
                                     "mean_var_norm": InputNormalization(norm_type="sentence", std_norm=False),
                                     "embedding_model": ecapa}, hparams={}, run_opts={"device": device})
    _hook_timer(clf.mods.compute_features, "fbank", timing, device)
    _hook_timer(clf.mods.mean_var_norm, "fbank", timing, device)
    _hook_timer(clf.mods.embedding_model, "model", timing, device)
    wav = read_wav_scp(data / "wav.scp")
    timing["setup"] = timing.get("setup", 0.0) + time.perf_counter() - t0
    rows = []
    with torch.no_grad():
        for utt in sorted(wav):
            t = time.perf_counter()
            signal = clf.load_audio(wav[utt])
            timing["read"] = timing.get("read", 0.0) + time.perf_counter() - t
            rows.append(clf.encode_batch(signal.unsqueeze(0)).reshape(-1).cpu().numpy())
    t = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, np.stack(rows))
    timing["write"] = timing.get("write", 0.0) + time.perf_counter() - t


def same_features_check(sb_ckpt: Path, arch: dict, ckpt: Path, data: Path, device: str = "cpu", k: int = 4,
                        pairs: int = 3) -> dict:
    """Our ECAPA and SpeechBrain's ECAPA_TDNN on identical (our Kaldi fbank) features of `k` files: the largest
    difference relative to the embeddings' scale, each against a float64 run of our model, and paired timings.

    Timing pairs: per file, `pairs` times ours then theirs back to back (model on the same features; front-end on
    the same waveform: our Kaldi Fbank against SpeechBrain's Fbank + InputNormalization), so that the machine's
    load, which moves over seconds, hits both sides of a pair alike; the ratios' median and range are returned.
    On a GPU both models run there (float32 convolutions may use TF32, so the agreement is looser than on a CPU)."""
    import torch
    from speechbrain.lobes.features import Fbank as SBFbank
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    from speechbrain.processing.features import InputNormalization

    from spkcausal.data.audio import read_audio
    from spkcausal.data.datadir import read_kv
    from spkcausal.nn.assemble import assemble

    trained = assemble(ckpt, device=device)
    theirs = ECAPA_TDNN(80, **arch)
    theirs.load_state_dict(torch.load(sb_ckpt, weights_only=True))
    theirs.eval().to(device)
    sb_fbank = SBFbank(n_mels=80).to(device)
    sb_norm = InputNormalization(norm_type="sentence", std_norm=False).eval().to(device)
    ours64 = assemble(ckpt, device=device).model.double()
    ones = torch.ones(1, device=device)
    wav = read_kv(data / "wav.scp")
    worst, worst64 = 0.0, 0.0
    model_x, fbank_x = [], []

    def secs(fn: Callable[..., object], *args: object) -> float:
        _sync(device)
        t = time.perf_counter()
        fn(*args)
        _sync(device)
        return time.perf_counter() - t

    def sb_front(wave: torch.Tensor) -> torch.Tensor:
        return sb_norm(sb_fbank(wave), ones)

    with torch.no_grad():
        for utt in sorted(wav)[:k]:
            wave = torch.from_numpy(read_audio(wav[utt])[0]).unsqueeze(0).to(device)
            feats = trained.frontend(wave)
            a = trained.model(feats)
            b = theirs(feats, ones).squeeze(1)
            x = ours64(feats.double())
            scale = x.abs().max().item()
            worst = max(worst, (a - b).abs().max().item() / scale)
            worst64 = max(worst64, (a.double() - x).abs().max().item() / scale, (b.double() - x).abs().max().item()
                          / scale)
            for _ in range(pairs):
                model_x.append(secs(theirs, feats, ones) / secs(trained.model, feats))
                fbank_x.append(secs(sb_front, wave) / secs(trained.frontend, wave))
    return {"files": k, "ours_vs_speechbrain": worst, "vs_float64": worst64,
            "model_x": [statistics.median(model_x), min(model_x), max(model_x)],
            "fbank_x": [statistics.median(fbank_x), min(fbank_x), max(fbank_x)]}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children (extract's DataLoader workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(contenders: dict[str, Callable[[dict | None], None]], warm: dict[str, Callable[[dict | None], None]],
          repeats: int) -> dict[str, dict]:
    """Per contender: wall and CPU seconds of each timed run, their medians, the median seconds per stage. Each
    round runs every contender once, in an order rotated by one per round (no contender always runs first)."""
    for name, fn in warm.items():
        fn({})
        print(f"  warm-up: {name}", flush=True)
    names = list(contenders)
    runs: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    stages: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            timing: dict[str, float] = {}
            c0, t0 = _cpu_seconds(), time.perf_counter()
            contenders[name](timing)
            runs[name].append(time.perf_counter() - t0)
            cpu[name].append(_cpu_seconds() - c0)
            stages[name].append(timing)
            print(f"  round {r + 1}/{repeats}: {name}: {runs[name][-1]:.2f} s wall, {cpu[name][-1]:.2f} s CPU",
                  flush=True)
    return {n: {"runs": runs[n], "median": statistics.median(runs[n]), "cpu": cpu[n],
                "cpu_median": statistics.median(cpu[n]),
                "stages": {s: statistics.median(t.get(s, 0.0) for t in stages[n]) for s in STAGES
                           if any(s in t for t in stages[n])}} for n in names}


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def _device(device: str) -> str:
    """The device in words: the GPU's name, or CPU."""
    import torch

    return f"{device} ({torch.cuda.get_device_name(device)})" if device.startswith("cuda") else "CPU"


def ratios(results: dict[str, dict], ref: str) -> None:
    """Add each contender's speed relative to `ref` per round (ref's seconds / its seconds in the same round: both
    ran minutes apart at most, under about the same load), with their median, and the CPU-time ratio."""
    for r in results.values():
        r["x_ref_rounds"] = [a / b for a, b in zip(results[ref]["runs"], r["runs"])]
        r["x_ref"] = statistics.median(r["x_ref_rounds"])
        r["x_ref_cpu"] = results[ref]["cpu_median"] / r["cpu_median"]
        r["x_ref_best"] = min(results[ref]["runs"]) / min(r["runs"])  # the least disturbed run of each


def table(results: dict[str, dict], n: int, audio: float) -> str:
    """The markdown table: speed, ratio to SpeechBrain, median seconds per stage."""
    head = ("| system | utts/s | audio s / s | x SpeechBrain (rounds) | wall s (runs) | best s | x SpeechBrain, best | "
            "CPU s | x SpeechBrain, CPU | " + " | ".join(STAGES) + " |")
    out = [head, "|" + "---|" * (9 + len(STAGES))]
    for name, r in results.items():
        st = " | ".join(f"{r['stages'][s]:.2f}" if s in r["stages"] else "-" for s in STAGES)
        rounds = ", ".join(f"{x:.2f}" for x in r["x_ref_rounds"])
        out.append(f"| {name} | {n / r['median']:.2f} | {audio / r['median']:.1f} | {r['x_ref']:.2f}x ({rounds}) | "
                   f"{r['median']:.1f} ({', '.join(f'{t:.1f}' for t in r['runs'])}) | {min(r['runs']):.1f} | "
                   f"{r['x_ref_best']:.2f}x | {r['cpu_median']:.1f} | "
                   f"{r['x_ref_cpu']:.2f}x | {st} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utts", type=int, default=200, help="files to embed (default 200)")
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--max-seconds", type=float, default=8.0)
    p.add_argument("--channels", type=int, default=512, help="ECAPA width C: 512 or 1024 (default 512)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for both (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per contender (default 3)")
    p.add_argument("--modes", default="exact", help="comma-separated `extract --mode`s to time (default exact)")
    p.add_argument("--num-workers", default="auto", help="comma-separated DataLoader worker counts for extract, "
                                                        "auto: extract's default (none on the CPU)")
    p.add_argument("--frontends", default="speechbrain,kaldi", help="our front-ends to time")
    p.add_argument("--pair-files", type=int, default=20, help="files for the paired model / front-end timing")
    p.add_argument("--work", help="keep the files here (default: a temporary dir, removed)")
    p.add_argument("--src", help="import spkcausal from this checkout instead (a before / after comparison)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--quick", action="store_true", help="smoke run: 6 files of 1-2 s, C=32, 1 repeat")
    p.add_argument("--device", default="cpu", help="where both contenders run: cpu or cuda[:N] (default cpu)")
    args = p.parse_args(argv)
    if args.quick:
        args.utts, args.min_seconds, args.max_seconds, args.channels, args.repeats = 6, 1.0, 2.0, 32, 1
        args.pair_files = 2
    if args.src:
        sys.path.insert(0, str(Path(args.src).resolve()))
    import torch

    import spkcausal

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    torch.set_num_threads(args.threads)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_extract_"))
    try:
        return _bench(args, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
        print(f"(spkcausal from {Path(spkcausal.__file__).parent})")


def _bench(args: argparse.Namespace, work: Path) -> int:
    import torch

    t0 = time.perf_counter()
    data, audio = make_corpus(work, args.utts, args.min_seconds, args.max_seconds)
    warm_data = sub_dir(data, work / "warm", 4)
    arch, ckpts, sb_ckpt = make_model(work, args.channels)
    print(f"set-up {time.perf_counter() - t0:.1f} s: {args.utts} files, {audio:.1f} s of audio "
          f"({args.min_seconds:g}-{args.max_seconds:g} s), ECAPA C={args.channels}; {_device(args.device)}, "
          f"{_cpu()}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    up0 = _uptime()
    contenders, warm = {}, {}
    variants = [(fe, mode, None if w == "auto" else int(w)) for fe in args.frontends.split(",")
                for mode in args.modes.split(",") for w in args.num_workers.split(",")]
    for fe, mode, w in variants:
        name = f"spkcausal extract, {fe} fbank, {mode}, {'default' if w is None else w} workers"
        contenders[name] = partial(run_ours, ckpts[fe], data, work / f"out/{fe}_{mode}_{w}", mode, w, args.device)
        warm[name] = partial(run_ours, ckpts[fe], warm_data, work / "out/warm", mode, w, args.device)
    ref = "SpeechBrain EncoderClassifier, 1 utterance per call"
    contenders[ref] = partial(run_speechbrain, sb_ckpt, arch, data, work / "out/sb.npy", args.device)
    warm[ref] = partial(run_speechbrain, sb_ckpt, arch, warm_data, work / "out/warm_sb.npy", args.device)
    results = timed(contenders, warm, args.repeats)
    ratios(results, ref)
    up1 = _uptime()

    sb = np.load(work / "out/sb.npy")
    agreement = {}
    for fe, mode, w in variants:
        keys, ours = read_store(work / f"out/{fe}_{mode}_{w}")
        assert keys == sorted(keys)  # the store keeps the data dir's sorted order, as the SpeechBrain loop
        c = cosines(ours, sb)
        agreement[f"{fe} fbank, {mode}, {'default' if w is None else w} workers"] = {
            "worst_cos": float(c.min()), "median_cos": float(np.median(c)), "max_abs": float(np.abs(ours - sb).max())}
    feats = same_features_check(sb_ckpt, arch, ckpts["kaldi"], data, args.device,
                                k=max(1, min(args.utts, args.pair_files)))

    print(f"\nuptime before: {up0}\nuptime after:  {up1}")
    print(f"{args.utts} files, {audio:.1f} s of audio; {_device(args.device)}, {torch.get_num_threads()} torch "
          f"threads; ECAPA C={args.channels}; median of {args.repeats} run(s) after a warm-up\n")
    print(table(results, args.utts, audio))
    print("\nAgreement with SpeechBrain's embeddings, per utterance (the Kaldi fbank is another front-end: those "
          "differ by design):")
    for k, a in agreement.items():
        print(f"  {k}: worst cosine {a['worst_cos']:.7f}, median {a['median_cos']:.7f}, max |diff| "
              f"{a['max_abs']:.2e}")
    print(f"Same (Kaldi fbank) features into both models, {feats['files']} files: max |ours - SpeechBrain's| "
          f"{feats['ours_vs_speechbrain']:.1e} of the embedding scale; either against float64 "
          f"{feats['vs_float64']:.1e}")
    for key, what in (("model_x", "model on the same features"),
                      ("fbank_x", "front-end (our Kaldi Fbank; theirs Fbank + InputNormalization)")):
        med, lo, hi = feats[key]
        print(f"Paired timing, SpeechBrain's seconds / ours, {what}: median {med:.2f}x (range {lo:.2f}-{hi:.2f}, "
              f"{feats['files']} files x 3 back-to-back pairs)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "utts": args.utts, "audio_seconds": audio, "channels": args.channels, "threads": torch.get_num_threads(),
            "device": _device(args.device),
            "uptime": [up0, up1], "load": os.getloadavg(), "results": results, "agreement": agreement,
            "same_features": feats}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
