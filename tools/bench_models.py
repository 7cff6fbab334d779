"""The extractors side by side (docs/models.md): parameters, MACs per second of audio, CPU real-time factor of
ONNX Runtime on one thread and of PyTorch on one and on all threads for 5 s of audio, the peers' published RTF
and EER, and the parity with the toolkits' own modules (max abs difference on the ../shared/parity fixtures).

    python tools/bench_models.py                          every registered full-size extractor
    python tools/bench_models.py --models resnet34,campplus --repeats 5
    python tools/bench_models.py --cost-only --parity     parameters, MACs and parity only (no timing): seconds
    python tools/bench_models.py --projection             the full-size training projection (docs/scale.md)

RTF = compute seconds / audio seconds (lower is faster), the median of `--repeats` timed runs after one warm-up,
waveform in: the Kaldi fbank is inside both timings (the exported graph's and `fbank + model` in PyTorch). Weights
are random (speed does not depend on them). MACs: spkcausal.nn.complexity (200 frames, halved). The peers' RTFs
are wespeaker's published figures, measured on their CPU, not this one: compare orders of magnitude, not digits.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

AUDIO_SECONDS = 5.0
# wespeaker README (runtime / ONNX, one CPU thread; their CPU): RTF of CAM++ and ResNet34. Issue 28.
PEER_RTF = {"campplus": "0.023 (wespeaker CAM++)", "wespeaker_resnet34": "0.061 (wespeaker ResNet34)",
            "resnet34": "0.061 (wespeaker ResNet34)"}
# Vox1-O EER % after large-margin fine-tuning and AS-norm, as the toolkits' READMEs publish them (issue 28).
PEER_EER = {"wespeaker_resnet34": "0.659 (wespeaker README)", "resnet34": "0.659 (wespeaker ResNet34, README)",
            "resnet221": "0.505 (wespeaker README)", "resnet293": "0.425 (wespeaker README)",
            "campplus": "0.659 (wespeaker README)", "simam_resnet100": "0.202 (wespeaker README)",
            "eres2netv2": "0.61; CN-Celeb 6.14 (3D-Speaker README)", "redimnet_b6": "0.37 (ReDimNet, wespeaker README)"}


# Model-only training rates on one H200 (bf16, batch 256 x 200 frames, 17,982 classes; docs/design.md section 5),
# the anchors of docs/scale.md's projection: ECAPA-512 is the one the others are scaled from.
ANCHOR_RATES = {"ecapa512": 6443.0, "ecapa1024": 3474.0, "resnet34": 1571.0}
# Training examples per epoch after the held-out split (docs/scale.md): VoxCeleb2 dev, CN-Celeb.
TRAIN_EXAMPLES = {"VoxCeleb2": 1_056_045, "CN-Celeb": 642_242}


def _recipe(name: str) -> tuple[int, float, str]:
    """(epochs, chunk seconds, config file) of the model's AAM recipe, else its family's (ReDimNet B2 for B0-B5),
    else the config defaults."""
    import yaml

    from spkcausal.nn.config import DEFAULTS

    conf = Path(__file__).resolve().parents[1] / "recipes" / "conf"
    paths = [conf / f"{name}_aam.yaml"] if (conf / f"{name}_aam.yaml").exists() else \
        sorted(conf.glob(f"{name.rsplit('_', 1)[0]}_*_aam.yaml"))
    if not paths:  # no recipe of its own or its family's: the config defaults
        return DEFAULTS["train"]["epochs"], DEFAULTS["data"]["chunk_seconds"], "defaults"
    cfg = yaml.safe_load(paths[0].read_text())
    return (int(cfg.get("train", {}).get("epochs", DEFAULTS["train"]["epochs"])),
            float(cfg.get("data", {}).get("chunk_seconds", DEFAULTS["data"]["chunk_seconds"])), paths[0].name)


def projection(names: list[str], macs: dict[str, float]) -> None:
    """Print the MAC-scaled training projection: each model's H200 rate = ECAPA-512's anchor rate x the ratio of
    ECAPA-512's MACs per second of audio to its own; hours = epochs x examples x (chunk / 2 s) / rate."""
    base = macs["ecapa512"]
    print("| model | GMACs / s of audio | x ECAPA-512 | projected 2-s examples/s per H200 (measured anchor) | "
          "recipe: epochs, chunk | VoxCeleb2, one system: 1 GPU | 8 GPUs | CN-Celeb, one system: 1 GPU | 8 GPUs |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for name in names:
        epochs, chunk, conf = _recipe(name)
        rate = ANCHOR_RATES["ecapa512"] * base / macs[name]
        anchor = f" ({ANCHOR_RATES[name]:,.0f})" if name in ANCHOR_RATES else ""
        hours = {c: epochs * n * (chunk / 2.0) / rate / 3600 for c, n in TRAIN_EXAMPLES.items()}
        print(f"| {name} | {macs[name] / 1e9:.2f} | {macs[name] / base:.2f} | {rate:,.0f}{anchor} | {epochs}, "
              f"{chunk:g} s (`{conf}`) | {hours['VoxCeleb2']:.1f} h | {hours['VoxCeleb2'] / 8:.1f} h | "
              f"{hours['CN-Celeb']:.1f} h | {hours['CN-Celeb'] / 8:.1f} h |", flush=True)


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up: lazy init, allocator, graph optimisation
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _n_mels(name: str) -> int:
    from spkcausal.inference.toolkit_io import default_n_mels

    return default_n_mels(name)


def _checkpoint(name: str, tmp: Path) -> Path:
    from spkcausal.nn.checkpoint import save_checkpoint
    from spkcausal.nn.config import merge_defaults
    from spkcausal.nn.network import build_extractor

    cfg = merge_defaults({"model": {"name": name}, "features": {"n_mels": _n_mels(name)}})
    return save_checkpoint({"config": cfg, "model": build_extractor(cfg).state_dict(), "head": None,
                            "speakers": []}, tmp / f"{name}.pt")


def bench_rtf(name: str, tmp: Path, repeats: int) -> dict[str, float]:
    """ONNX Runtime (1 thread) and PyTorch (1 thread, all threads) RTF of `name` on 5 s of audio, batch 1."""
    import numpy as np
    import torch

    from spkcausal.inference.api import load_model
    from spkcausal.inference.export import export_model

    ckpt = _checkpoint(name, tmp)
    sm = load_model(ckpt)
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal((1, int(AUDIO_SECONDS * 16000)))).astype(np.float32)
    x = torch.from_numpy(wave)
    out = {}
    for key, threads in (("torch1_rtf", 1), ("torch_rtf", os.cpu_count() or 1)):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            out[key] = _timed(lambda: sm.model(sm.fbank(x)), repeats) / AUDIO_SECONDS
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    sess = ort.InferenceSession(str(export_model(ckpt, tmp / f"{name}.onnx", "onnx")), so,
                                providers=["CPUExecutionProvider"])
    lens = np.full(1, wave.shape[1], dtype=np.int64)
    out["ort_rtf"] = _timed(lambda: sess.run(None, {"wave": wave, "lengths": lens}), repeats) / AUDIO_SECONDS
    return out


def parity() -> dict[str, tuple[str, float]]:
    """Our model name -> (fixture, max abs difference of both outputs) for every ../shared/parity fixture whose
    (toolkit, class) a family module's TOOLKIT_BUILDERS maps; fixtures without a builder are left out."""
    import torch

    from spkcausal.inference.toolkit_io import toolkit_builders
    from spkcausal.nn.importers import load_toolkit_state
    from spkcausal.nn.models import build_model

    root = Path(os.environ.get("SPKCAUSAL_PARITY_DIR", Path(__file__).resolve().parents[2] / "shared" / "parity"))
    builders, out = toolkit_builders(), {}
    for path in sorted(root.glob("*_small.pt")):
        d = torch.load(path, map_location="cpu", weights_only=True)
        toolkit = path.name.split("_")[0]
        build = builders.get((toolkit, d["ctor"]["class"]))
        if build is None:
            continue
        name, kwargs = build(d["ctor"]["args"])
        model = build_model(name, **kwargs).eval()
        load_toolkit_state(model, d["state_dict"], toolkit, path)
        with torch.no_grad():
            diff = max((model(d[i]) - d[o]).abs().max().item() for i, o in (("input", "output"),
                                                                              ("input_odd", "output_odd")))
        out[f"{toolkit}:{name}"] = (path.stem.removesuffix("_small"), diff)
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the table (markdown) for the chosen models."""
    from spkcausal.nn.complexity import complexity
    from spkcausal.nn.models import build_model, list_models

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=None, help="comma-separated names (default: every registered full-size "
                                                   "extractor, i.e. every name not ending in _tiny)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median; default 3)")
    p.add_argument("--cost-only", action="store_true", help="parameters and MACs only, no timing")
    p.add_argument("--parity", action="store_true", help="add the parity column (needs ../shared/parity)")
    p.add_argument("--projection", action="store_true", help="print the MAC-scaled full-size training projection "
                                                              "(docs/scale.md) instead; no timing")
    args = p.parse_args(argv)
    names = args.models.split(",") if args.models else [m for m in list_models() if not m.endswith("_tiny")]
    if args.projection:
        projection(names, {n: complexity(build_model(n, n_mels=_n_mels(n)), _n_mels(n))["macs_per_second"]
                           for n in dict.fromkeys(["ecapa512", *names])})
        return 0
    par = parity() if args.parity else {}
    print(f"# {os.cpu_count()} CPU threads; {AUDIO_SECONDS:g} s of audio, batch 1; RTF = compute s / audio s "
          f"(median of {args.repeats}); load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
    print(f"| model | parameters | GMACs / s of audio | ONNX Runtime RTF, 1 thread | PyTorch RTF, 1 thread | PyTorch "
          f"RTF, all {os.cpu_count()} threads | peer's published RTF (their CPU) | peer's published Vox1-O EER % | "
          "parity, max abs diff (fixture) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            model = build_model(name, n_mels=_n_mels(name))
            cost = complexity(model, _n_mels(name))
            rtf = {} if args.cost_only else bench_rtf(name, Path(tmp), args.repeats)
            pars = "; ".join(f"{fx}: {d:.1e}" for key, (fx, d) in sorted(par.items()) if key.endswith(f":{name}"))
            ort, pt1, pt = (f"{rtf[k]:.3f}" if k in rtf else "-" for k in ("ort_rtf", "torch1_rtf", "torch_rtf"))
            print(f"| {name} | {cost['parameters'] / 1e6:.2f}M | {cost['macs_per_second'] / 1e9:.2f} | {ort} | {pt1} "
                  f"| {pt} | {PEER_RTF.get(name, '-')} | {PEER_EER.get(name, '-')} | {pars or '-'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
