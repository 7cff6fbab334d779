"""Synthetic-data commands: synth (a long-tailed speaker corpus) and synth-aug (augmentation banks)."""
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


def _synth_aug(args: argparse.Namespace) -> int:
    from ..corpora.augbanks import AugBankConfig, make_synthetic_aug_banks

    cfg = AugBankConfig(noise_files=args.noise, music_files=args.music, speech_files=args.speech,
                        rooms_per_size=args.rooms, rirs_per_room=args.rirs_per_room, seconds=args.seconds,
                        sample_rate=args.sample_rate, seed=args.seed)
    print(json.dumps(make_synthetic_aug_banks(args.out, cfg), indent=1))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the synth and synth-aug commands."""
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

    p = sub.add_parser("synth-aug", help="write synthetic MUSAN and RIRS_NOISES banks (augment.musan / augment.rirs)",
                       description="Coloured noise, harmonic music and babble talkers in the MUSAN layout "
                                   "(OUT/musan) and simulated room impulse responses in the RIRS_NOISES layout "
                                   "(OUT/RIRS_NOISES, RT60 per file in OUT/rirs.tsv); pass them to training as "
                                   "augment.musan=OUT/musan augment.rirs=OUT/RIRS_NOISES, or to a recipe as "
                                   "--musan / --rirs. Re-running keeps the files already written.")
    p.add_argument("--out", required=True, help="directory to create")
    p.add_argument("--noise", type=int, default=24, help=f"noise files {d}")
    p.add_argument("--music", type=int, default=12, help=f"music files {d}")
    p.add_argument("--speech", type=int, default=24, help=f"babble talker files {d}")
    p.add_argument("--rooms", type=int, default=6, help=f"rooms per size (small, medium, large) {d}")
    p.add_argument("--rirs-per-room", type=int, default=4, help=f"impulse responses per room {d}")
    p.add_argument("--seconds", type=_floats, default=(3.0, 8.0), metavar="LO,HI", help="noise/music/speech length")
    p.add_argument("--sample-rate", type=positive_int, default=16000, help=f"{d}")
    p.add_argument("--seed", type=int, default=0, help=f"{d}")
    p.set_defaults(func=_synth_aug)
