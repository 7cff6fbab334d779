"""Synthetic-corpus command: synth."""
from __future__ import annotations

import argparse
import json

from . import finite_float, positive_int


def _floats(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(",")
    try:
        return float(lo), float(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH numbers, got {text!r}") from None


def _ints(text: str) -> tuple[int, int]:
    lo, hi = _floats(text)
    if lo != int(lo) or hi != int(hi):
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH integers, got {text!r}")
    return int(lo), int(hi)


def _synth(args: argparse.Namespace) -> int:
    from ..corpora.synthetic import SynthConfig, make_synthetic_corpus

    cfg = SynthConfig(
        num_speakers=args.speakers, num_test_speakers=args.test_speakers, max_utts=args.max_utts,
        imbalance=args.imbalance, profile=args.profile, exponent=args.exponent, utt_seconds=args.utt_seconds,
        sessions=args.sessions, val_per_speaker=args.val_per_speaker, test_per_speaker=args.test_per_speaker,
        veri_utts_per_speaker=args.veri_utts, num_trials=args.trials, snr_db=args.snr, sample_rate=args.sample_rate,
        seed=args.seed,
    )
    cfg.validate()
    summary = make_synthetic_corpus(args.out, cfg, nj=args.nj)
    print(json.dumps(summary, indent=1))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the synth command."""
    d = "(default: %(default)s)"
    p = sub.add_parser("synth", help="write a synthetic long-tailed speaker corpus in the VoxCeleb1 layout",
                       description="Source-filter speech of synthetic speakers: wav/idNNNNN/<session>/NNNNN.wav, "
                                   "vox1_meta.csv, iden_split.txt (long-tailed training + balanced val/test), "
                                   "veri_test2.txt (held-out speakers). Re-running finishes an interrupted run.")
    p.add_argument("--out", required=True, help="corpus root to create")
    p.add_argument("--speakers", type=int, default=200, help=f"training speakers {d}")
    p.add_argument("--test-speakers", type=int, default=40, help=f"held-out verification speakers {d}")
    p.add_argument("--max-utts", type=int, default=120, help=f"training utterances of the head speaker {d}")
    p.add_argument("--imbalance", type=finite_float, default=40.0, help=f"max / min training utterances {d}")
    p.add_argument("--profile", choices=["exp", "pareto"], default="exp", help=f"long-tail profile {d}")
    p.add_argument("--exponent", type=finite_float, default=1.0, help=f"profile exponent {d}")
    p.add_argument("--utt-seconds", type=_floats, default=(1.0, 2.5), metavar="LO,HI", help="utterance length range")
    p.add_argument("--sessions", type=_ints, default=(3, 6), metavar="LO,HI", help="sessions per speaker")
    p.add_argument("--val-per-speaker", type=int, default=3, help=f"held-out val utterances per speaker {d}")
    p.add_argument("--test-per-speaker", type=int, default=5, help=f"held-out test utterances per speaker {d}")
    p.add_argument("--veri-utts", type=int, default=12, help=f"utterances per verification speaker {d}")
    p.add_argument("--trials", type=int, default=4000, help=f"verification trials (half target) {d}")
    p.add_argument("--snr", type=_floats, default=(5.0, 35.0), metavar="LO,HI", help="additive-noise SNR range (dB)")
    p.add_argument("--sample-rate", type=positive_int, default=16000, help=f"{d}")
    p.add_argument("--seed", type=int, default=0, help=f"{d}")
    p.add_argument("--nj", type=positive_int, default=2, help=f"worker processes {d}")
    p.set_defaults(func=_synth)
