#!/usr/bin/env python
"""Fine-tuning from a checkpoint vs training from scratch, on speakers the checkpoint never saw.

On a synthetic corpus (spkcausal.corpora.synthetic, VoxCeleb1 layout): the training speakers are split in two
halves A and B. A model is pre-trained on A (the demo's tiny ECAPA + AAM recipe); then two models train on B for
the same number of steps: one from the pre-trained extractor (`train.init_from`, a fresh head, lower lr, no
warm-up: the usual fine-tuning recipe) and one from scratch (the demo's schedule). Both are judged on the
held-out verification speakers (neither A nor B): EER and minDCF of the veri_test2 list, with a paired
speaker-level bootstrap interval of EER(fine-tuned) - EER(scratch). The difference is an effect only when its
interval excludes 0.

    python tools/bench_finetune.py [--out /tmp/spkcausal_finetune] [--epochs 6] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from spkcausal.corpora.synthetic import SynthConfig, make_synthetic_corpus
from spkcausal.corpora.voxceleb import prepare_voxceleb1
from spkcausal.data.datadir import DataDir
from spkcausal.data.embeddings import EmbeddingStore
from spkcausal.data.trialio import read_trials
from spkcausal.inference.extract import extract
from spkcausal.nn.config import load_yaml
from spkcausal.scoring.bootstrap import bootstrap_verification, paired_bootstrap_verification
from spkcausal.scoring.cosine import score_trials
from spkcausal.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def _train(base: dict, exp: Path, data: Path, **over) -> Path:
    """Train (or resume a finished) experiment; returns its dir."""
    cfg = {**base, "exp_dir": str(exp), "data": {**base["data"], "train": str(data)}}
    for section, values in over.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    train(cfg, resume=True)
    return exp


def _eer_of(exp: Path, eval_dir: Path, trials_path: Path, out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, labels, enrolment speakers) of the verification list with the experiment's last checkpoint."""
    store = EmbeddingStore.open(extract(eval_dir, out / f"emb_{exp.name}", exp_dir=exp, mode="pad",
                                        num_workers=0))
    trials = read_trials(trials_path)
    scores, keep = score_trials(trials, store)
    u2s = DataDir.load(eval_dir).utt2spk
    return scores, trials.labels[keep] == 1, np.array([u2s[e] for e in trials.enroll[keep]])


def main(argv: list[str] | None = None) -> int:
    """Build the corpus, pre-train, fine-tune vs scratch, print the comparison (and write it as JSON)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="/tmp/spkcausal_finetune")
    p.add_argument("--speakers", type=int, default=80, help="training speakers, split into halves A and B")
    p.add_argument("--pre-epochs", type=int, default=16, help="pre-training epochs on A")
    p.add_argument("--epochs", type=int, default=6, help="epochs on B, for both the fine-tuned and scratch model")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.time()
    out = Path(args.out)
    cfg = SynthConfig(num_speakers=args.speakers, num_test_speakers=30, max_utts=24, imbalance=1.0,
                      utt_seconds=(1.0, 2.0), val_per_speaker=0, test_per_speaker=0, veri_utts_per_speaker=10,
                      num_trials=3000, seed=args.seed)
    make_synthetic_corpus(out / "corpus", cfg, nj=2)
    if not (out / "data" / "vox1_test" / "wav.scp").is_file():
        prepare_voxceleb1(out / "corpus", out / "data", nj=2)
    train_dir = DataDir.load(out / "data" / "vox1_iden_train")
    spks = sorted(train_dir.spk2utt)
    half = {"A": set(spks[0::2]), "B": set(spks[1::2])}
    for name, members in half.items():
        dest = out / "data" / f"half_{name}"
        if not (dest / "wav.scp").is_file():
            train_dir.subset([u for u, s in train_dir.utt2spk.items() if s in members]).write(dest)
    base = load_yaml(ROOT / "recipes" / "mini" / "conf" / "aam.yaml")
    base["seed"] = args.seed
    quiet = {"progress": False}
    pre = _train(base, out / "exp" / "pretrained_A", out / "data" / "half_A",
                 train={**quiet, "epochs": args.pre_epochs})
    ft = _train(base, out / "exp" / "finetuned_B", out / "data" / "half_B",
                train={**quiet, "epochs": args.epochs, "init_from": str(pre)},
                optim={"lr": 0.02, "warmup_epochs": 0}, margin={"start_epoch": 0, "end_epoch": 1})
    scratch = _train(base, out / "exp" / "scratch_B", out / "data" / "half_B",
                     train={**quiet, "epochs": args.epochs})
    eval_dir, trials = out / "data" / "vox1_test", out / "data" / "trials" / "veri_test2.txt"
    res = {}
    for name, exp in (("pretrained on A (no B)", pre), ("fine-tuned on B", ft), ("scratch on B", scratch)):
        s, lab, g = _eer_of(exp, eval_dir, trials, out)
        res[name] = (s, lab, g, bootstrap_verification(s, lab, g, p_targets=(0.05,), seed=args.seed))
    s_ft, lab, g, _ = res["fine-tuned on B"]
    diff = paired_bootstrap_verification(s_ft, res["scratch on B"][0], lab, g, p_targets=(0.05,), seed=args.seed)
    print(f"{args.speakers // 2} + {args.speakers - args.speakers // 2} training speakers (A / B), "
          f"{args.epochs} epochs on B, verification on 30 unseen speakers ({len(lab)} trials); 95% speaker-level "
          "bootstrap intervals\n")
    print("| system | EER (%) | minDCF (0.05) |\n|---|---:|---:|")
    summary = {}
    for name, (_, _, _, b) in res.items():
        lo, hi = b["eer_ci"]
        print(f"| {name} | {100 * b['eer']:.2f} [{100 * lo:.2f}, {100 * hi:.2f}] | {b['min_dcf'][0.05]:.4f} |")
        summary[name] = {"eer": b["eer"], "eer_ci": b["eer_ci"], "min_dcf_0.05": b["min_dcf"][0.05]}
    lo, hi = diff["diff_ci"]
    print(f"\nEER(fine-tuned) - EER(scratch): {100 * diff['diff']:+.2f} points [{100 * lo:+.2f}, {100 * hi:+.2f}]"
          f" -> {'significant' if diff['significant'] else 'not significant'}")
    summary["diff"] = {"eer_diff": diff["diff"], "diff_ci": diff["diff_ci"], "significant": diff["significant"]}
    (out / "finetune.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\nruntime {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
