"""Trial-list commands: make-trials."""
from __future__ import annotations

import argparse

from . import finite_float


def _make_trials(args: argparse.Namespace) -> int:
    import numpy as np

    from ..data.datadir import DataDir
    from ..data.trialio import write_trials
    from ..data.trials import make_trials
    from ..utils import check_writable

    check_writable(args.out)
    data = DataDir.load(args.data_dir)
    trials = make_trials(data, args.num_trials, args.seed, target_ratio=args.target_ratio,
                         cross_session=not args.same_session_ok, fit=args.fit)
    halves = None
    if args.session_split:  # split before writing anything: a dir without utt2sess leaves no list behind
        from ..data.sessions import session_split

        halves = session_split(trials, data, DataDir.load(args.session_split))
    write_trials(args.out, trials, fmt=args.format)
    n_tgt = int(np.sum(trials.labels == 1))
    print(f"{args.out}: {len(trials)} trials ({n_tgt} target, {len(trials) - n_tgt} non-target) "
          f"from {len(data.speakers)} speakers, seed {args.seed}")
    if args.by_group:
        print(group_counts_text(trials, data, args.by_group[0], int(args.by_group[1]), int(args.by_group[2])))
    if halves is not None:
        _write_session_halves(args, halves, data)
    return 0


def _write_session_halves(args: argparse.Namespace, halves, data) -> None:
    """--session-split: the two halves as their own lists, with their counts."""
    import numpy as np

    from ..data.sessions import HALVES, half_paths
    from ..data.trialio import write_trials

    for half, name, path in zip(halves, HALVES, half_paths(args.out)):
        write_trials(path, half, fmt=args.format)
        n_tgt = int(np.sum(half.labels == 1))
        print(f"{path}: {len(half)} trials ({n_tgt} target, {len(half) - n_tgt} non-target) whose test utterance is "
              f"{'from a session' if name == HALVES[0] else 'from no session'} of its speaker in {args.session_split}")
        if args.by_group:
            print(group_counts_text(half, data, args.by_group[0], int(args.by_group[1]), int(args.by_group[2])))


def register(sub: argparse._SubParsersAction) -> None:
    """Add the trial-list commands."""
    p = sub.add_parser("make-trials", help="write a seeded, balanced trial list for a data dir",
                       description="Sample a reproducible trial list: balanced target / non-target, no duplicates, "
                                   "target pairs from different sessions (utt2sess) when the dir has them.")
    p.add_argument("data_dir", help="data dir (wav.scp, utt2spk, optional utt2sess)")
    p.add_argument("--out", required=True, help="trial list to write")
    p.add_argument("--num-trials", type=int, required=True, help="total number of trials")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same list; default 0)")
    p.add_argument("--target-ratio", type=finite_float, default=0.5, help="share of target trials (default 0.5)")
    p.add_argument("--format", choices=("kaldi", "voxceleb"), default="kaldi",
                   help="kaldi: 'enroll test target|nontarget'; voxceleb: '1|0 enroll test' (default kaldi)")
    p.add_argument("--same-session-ok", action="store_true",
                   help="allow target pairs from the same session even when the dir has utt2sess")
    p.add_argument("--fit", action="store_true",
                   help="lower --num-trials when the dir has fewer target pairs (all of them, non-targets in ratio)")
    p.add_argument("--by-group", nargs=3, metavar=("TRAIN_DIR", "MANY", "FEW"),
                   help="also print the trial counts per shot group of the enrolment speaker (training counts)")
    p.add_argument("--session-split", metavar="TRAIN_DIR",
                   help="also write OUT.train_session and OUT.new_session: the trials whose test utterance's session "
                        "(utt2sess) occurs, or not, in that speaker's training data in TRAIN_DIR (seen-speaker lists)")
    p.set_defaults(func=_make_trials)


def group_counts_text(trials, data, train_dir: str, many: int, few: int) -> str:
    """Targets / non-targets / enrolment speakers per shot group of the enrolment speaker, one line each."""
    from collections import Counter

    import numpy as np

    from ..data.datadir import read_kv
    from ..data.longtail import shot_groups
    from ..scoring.metrics import GROUPS

    counts = Counter(read_kv(f"{train_dir}/utt2spk").values())
    spk = np.array([data.utt2spk[e] for e in trials.enroll.tolist()], dtype=object)
    grp = shot_groups(np.array([counts.get(s, 0) for s in spk]), many, few)
    lines = []
    for g in GROUPS:
        sel = grp == g
        n_t = int(np.sum(trials.labels[sel] == 1))
        lines.append(f"  {g}: {n_t} target, {int(sel.sum()) - n_t} non-target, {len(set(spk[sel]))} enrolment "
                     "speakers")
    return "\n".join(lines)
