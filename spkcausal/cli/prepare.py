"""`spkcausal prepare {voxceleb1,voxceleb2,cnceleb,librispeech}`: corpus tree -> Kaldi-style data dirs."""
from __future__ import annotations

import argparse

from . import finite_float, positive_int


def _fmt(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _print_table(rows: dict[str, dict], indent: str) -> None:
    """Rows of scalars as aligned columns (nested or long values are left out of the table)."""
    cols: list[str] = []
    for row in rows.values():
        cols += [c for c, v in row.items() if c not in cols and not isinstance(v, (dict, list))
                 and not (isinstance(v, str) and "/" in v)]
    table = [["", *cols]] + [[name, *(_fmt(row.get(c, "")) for c in cols)] for name, row in rows.items()]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print(indent + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def print_summary(summary: dict, indent: str = "") -> None:
    """Print a prepare summary readably: scalars as `key: value`, dicts of dicts as tables."""
    for key, value in summary.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            print(f"{indent}{key}:")
            _print_table(value, indent + "  ")
        elif isinstance(value, dict):
            print(f"{indent}{key}:")
            print_summary(value, indent + "  ")
        else:
            print(f"{indent}{key}: {_fmt(value)}")


def _finish(summary: dict) -> int:
    print_summary(summary)
    failed = summary.get("failed", 0)
    if failed:
        print(f"{failed} file(s) failed to convert; see {summary.get('failures_file', 'the log')}")
        return 1
    return 0


def _voxceleb1(args: argparse.Namespace) -> int:
    from ..corpora.voxceleb import prepare_voxceleb1

    return _finish(prepare_voxceleb1(args.root, args.out, nj=args.nj, compute_dur=not args.no_dur))


def _voxceleb2(args: argparse.Namespace) -> int:
    from ..corpora.voxceleb import prepare_voxceleb2

    return _finish(prepare_voxceleb2(args.root, args.out, wav_dir=args.wav_dir, nj=args.nj,
                                     compute_dur=not args.no_dur))


def _cnceleb(args: argparse.Namespace) -> int:
    from ..corpora.cnceleb import prepare_cnceleb

    return _finish(prepare_cnceleb(args.root, args.out, cn2_root=args.cn2_root, combine_min_sec=args.combine_min_sec,
                                   combined_dir=args.combined_dir, nj=args.nj))


def _librispeech(args: argparse.Namespace) -> int:
    from ..corpora.librispeech import prepare_librispeech

    return _finish(prepare_librispeech(args.root, args.out, subsets=args.subsets, nj=args.nj))


def register(sub: argparse._SubParsersAction) -> None:
    """Add `prepare` with one subcommand per corpus."""
    p = sub.add_parser("prepare", help="corpus on disk -> Kaldi-style data dirs and trial lists")
    corpora = p.add_subparsers(dest="corpus", metavar="CORPUS")
    corpora.required = True

    def corpus(name: str, help_: str, func) -> argparse.ArgumentParser:
        c = corpora.add_parser(name, help=help_)
        c.add_argument("--root", required=True, help="corpus root directory")
        c.add_argument("--out", required=True, help="output directory for data dirs, trials and prepare.log")
        c.add_argument("--nj", type=positive_int, default=8, help="parallel jobs (default 8)")
        c.set_defaults(func=func)
        return c

    c = corpus("voxceleb1", "dev/test/all + identification split dirs, O/E/H trial lists", _voxceleb1)
    c.add_argument("--no-dur", action="store_true", help="skip utt2dur (and so the unreadable-audio check)")
    c = corpus("voxceleb2", "decode m4a to 16 kHz wav (resumable) and write vox2_dev", _voxceleb2)
    c.add_argument("--wav-dir", default=None, help="where decoded wavs go (default OUT/vox2_wav)")
    c.add_argument("--no-dur", action="store_true", help="skip utt2dur (and so the unreadable-audio check)")
    c = corpus("cnceleb", "CN-Celeb1 (+2) training dir, eval dir, Avg and Concat trials", _cnceleb)
    c.add_argument("--cn2-root", default=None, help="CN-Celeb2_flac directory, added to training")
    c.add_argument("--combine-min-sec", type=finite_float, default=None,
                   help="combine short segments within speaker and genre to at least SEC seconds")
    c.add_argument("--combined-dir", default=None, help="where combined audio goes")
    c = corpus("librispeech", "LibriSpeech subsets, speaker = reader", _librispeech)
    c.add_argument("--subsets", nargs="+", default=None, metavar="NAME", help="subsets (default: all present)")
