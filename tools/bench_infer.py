"""Inference speed of `embed`: utterances/s for 4 s utterances, PyTorch eager (the API's path: Fbank + model,
equal-length batches) vs the exported TorchScript and onnxruntime graphs (waveform in, fbank inside), for the
tiny and the full ECAPA (random weights: speed does not depend on them); CUDA too when a GPU is present.

    python tools/bench_infer.py [--threads 2] [--batch 16] [--repeats 5] [--models ecapa_tiny,ecapa512]

Each figure is the median over `repeats` timed runs of `batches` batches after one warm-up; the table also
gives each backend's speed relative to eager. Machine load is printed: the figures are only as quiet as it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _timed(fn, batches: int, repeats: int) -> float:
    fn()  # warm-up (lazy init, allocator, graph optimisation)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(batches):
            fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _bench_model(name: str, tmp: Path, wave, args: argparse.Namespace) -> list[tuple]:
    """(model, device, backend, utts/s, speed relative to CPU eager) rows for one model."""
    import numpy as np
    import torch

    from spkcausal.inference.api import load_model
    from spkcausal.inference.export import export_model
    from spkcausal.nn.checkpoint import save_checkpoint
    from spkcausal.nn.config import merge_defaults
    from spkcausal.nn.network import build_network

    cfg = merge_defaults({"model": {"name": name}})
    net = build_network(cfg, 10)
    ckpt = save_checkpoint({"config": cfg, "model": net.model.state_dict(), "head": net.head.state_dict(),
                            "speakers": [str(i) for i in range(10)]}, tmp / f"{name}.pt")
    sm = load_model(ckpt)
    utts = args.batch * args.batches
    lens = np.full(len(wave), wave.shape[1], dtype=np.int64)
    x, lt = torch.from_numpy(wave), torch.from_numpy(lens)
    res = {}
    with torch.inference_mode():
        res["eager"] = _timed(lambda: sm.model(sm.fbank(x)), args.batches, args.repeats)
        ts = torch.jit.load(str(export_model(ckpt, tmp / f"{name}.ts", "torchscript")))
        res["torchscript"] = _timed(lambda: ts(x, lt), args.batches, args.repeats)
    try:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
        sess = ort.InferenceSession(str(export_model(ckpt, tmp / f"{name}.onnx", "onnx")), so,
                                    providers=["CPUExecutionProvider"])
        res["onnxruntime"] = _timed(lambda: sess.run(None, {"wave": wave, "lengths": lens}), args.batches,
                                    args.repeats)
    except ImportError:
        print("# onnxruntime not installed: pip install 'spkcausal[export]'")
    rows = [(name, "cpu", backend, utts / t, res["eager"] / t) for backend, t in res.items()]
    if torch.cuda.is_available():
        gm = load_model(ckpt, device="cuda")
        xg = x.cuda()

        def run_gpu() -> None:
            gm.model(gm.fbank(xg))
            torch.cuda.synchronize()

        with torch.inference_mode():
            t = _timed(run_gpu, args.batches, args.repeats)
        rows.append((name, torch.cuda.get_device_name(0), "eager", utts / t, res["eager"] / t))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print a table of utterances/s per model and backend."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="utterances per batch")
    ap.add_argument("--batches", type=int, default=2, help="batches per timed run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--models", default="ecapa_tiny,ecapa512")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    n = int(args.seconds * 16000)
    wave = (np.random.default_rng(0).standard_normal((args.batch, n)) * 0.1).astype(np.float32)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {args.batch} x {args.seconds:g} s utterances per batch, {args.threads} CPU threads, torch "
          f"{torch.__version__}, load average {load:.2f} on {os.cpu_count()} cores; median of {args.repeats}")
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_infer."))
    for name in args.models.split(","):
        rows += _bench_model(name, tmp, wave, args)
    print(f"{'model':<12} {'device':<24} {'backend':<12} {'utts/s':>9} {'x eager':>8}")
    for name, dev, backend, ups, ratio in rows:
        print(f"{name:<12} {dev:<24} {backend:<12} {ups:>9.1f} {ratio:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
