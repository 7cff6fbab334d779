#!/usr/bin/env python3
"""Batched extraction against `exact`: the tolerance table of docs/scale.md, and extraction speed per mode.

For a checkpoint, a data dir and its trial list, embeds every utterance with each mode (exact, pad, bucket, crop at
one or more lengths) and prints, per mode: utterances/s, speed-up over exact, the worst and the median cosine
between the mode's and exact's embedding of each utterance, the EER (cosine scoring) with each, and the difference
in EER points. Reproduce the docs' table with (the demo's outputs; the long-utterance fixture is made by
`spkcausal synth` with other seeds and lengths, see docs/scale.md):

    python tools/bench_extract_modes.py --ckpt demo/exp/aam/avg_model.pt --data demo/data/vox1_test \\
        --trials demo/data/trials/veri_test2.txt --crop-seconds 1.0,1.5
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def embed(trained, data, utts, mode: str, device: str, crop: float | None, batch_seconds: float) -> tuple:
    """(embeddings, seconds) of one extraction pass."""
    import torch

    from spkcausal.inference.extract import embed_utterances

    fbank = trained.frontend.to(torch.device(device))
    t0 = time.perf_counter()
    emb = embed_utterances(trained.model, fbank, data, utts, device, batch_seconds, mode=mode, num_workers=0,
                           progress=False, crop_seconds=crop)
    return emb, time.perf_counter() - t0


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def trial_eer(emb: np.ndarray, utts: list[str], trials) -> float:
    """EER (%) of cosine scoring on the trial list."""
    from spkcausal.scoring.metrics import compute_eer

    pos = {u: i for i, u in enumerate(utts)}
    n = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    e = np.array([pos[u] for u in trials.enroll])
    t = np.array([pos[u] for u in trials.test])
    return 100.0 * compute_eer((n[e] * n[t]).sum(1), trials.labels)


def tolerance_table(ckpt: str, data_dir: str, trials_path: str, crops: list[float], device: str = "cpu",
                    batch_seconds: float = 200.0, modes: tuple[str, ...] = ("exact", "pad", "bucket", "crop")
                    ) -> list[dict]:
    """One row per mode (crop once per crop length): speed and agreement with exact."""
    from spkcausal.data.datadir import DataDir
    from spkcausal.data.trialio import read_trials
    from spkcausal.nn.assemble import assemble

    trained = assemble(ckpt, device=device)
    data = DataDir.load(data_dir)
    utts = data.utts
    trials = read_trials(trials_path)
    lens = np.array([float(v) for v in (data.utt2dur[u] for u in utts)]) if data.utt2dur else None
    ref, t_ref = embed(trained, data, utts, "exact", device, None, batch_seconds)
    eer_ref = trial_eer(ref, utts, trials)
    rows = []
    for mode in modes:
        for crop in (crops if mode == "crop" else [None]):
            emb, secs = (ref, t_ref) if mode == "exact" else embed(trained, data, utts, mode, device, crop,
                                                                   batch_seconds)
            c = cosines(emb, ref)
            eer = trial_eer(emb, utts, trials)
            rows.append({"mode": mode if crop is None else f"crop {crop:g} s", "utts_per_s": len(utts) / secs,
                         "speedup": t_ref / secs, "worst_cos": float(c.min()), "median_cos": float(np.median(c)),
                         "eer_exact": eer_ref, "eer": eer, "d_eer": eer - eer_ref,
                         "cropped": None if crop is None or lens is None else int((lens > crop).sum())})
    return rows


def markdown(rows: list[dict]) -> str:
    """The table as GitHub markdown."""
    out = ["| mode | utts/s | vs exact | worst cosine | median cosine | 1 - worst cosine | EER % | EER diff (points) |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        crop = f" ({r['cropped']} cut)" if r.get("cropped") is not None else ""
        out.append(f"| {r['mode']}{crop} | {r['utts_per_s']:.1f} | {r['speedup']:.2f}x | {r['worst_cos']:.6f} | "
                   f"{r['median_cos']:.6f} | {1 - r['worst_cos']:.1e} | {r['eer']:.3f} | {r['d_eer']:+.3f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint or avg_model.pt")
    p.add_argument("--data", required=True, help="data dir to embed (utt2dur used to count cropped utterances)")
    p.add_argument("--trials", required=True, help="trial list over the data dir's utterances")
    p.add_argument("--crop-seconds", default="10", help="comma-separated crop lengths (default 10)")
    p.add_argument("--modes", default="exact,pad,bucket,crop", help="modes to run (exact always runs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--batch-seconds", type=float, default=200.0)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    rows = tolerance_table(args.ckpt, args.data, args.trials, [float(x) for x in args.crop_seconds.split(",")],
                           args.device, args.batch_seconds, tuple(args.modes.split(",")))
    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {args.threads} thread(s)"
    print(f"{args.data}: {dev}, load average {load:.1f} -> {os.getloadavg()[0]:.1f}; EER with exact "
          f"{rows[0]['eer_exact']:.3f}%")
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
