"""plan: the run plan of systems x seeds (spkcausal.experiments.plan), for the recipes and bench scripts to loop
over instead of building experiment-dir names in bash."""
from __future__ import annotations

import argparse


def _plan(args: argparse.Namespace) -> int:
    from ..experiments.plan import LINE_FIELDS, format_line, plan_json, plan_runs

    systems = [w for s in args.systems for w in s.split()]
    seeds = [int(k) for s in args.seeds for k in s.split()]
    runs = plan_runs(systems, seeds, args.conf_dir, args.exp)
    if args.kind:
        runs = [r for r in runs if r.record.kind in args.kind]
    if args.json:
        print(plan_json(runs))
    else:
        for r in runs:
            line = format_line(r)
            print(line.split(" ")[LINE_FIELDS.index(args.field)] if args.field else line)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add plan."""
    from ..experiments.plan import LINE_FIELDS

    p = sub.add_parser("plan", help="the runs (experiment dirs) of systems x seeds, one line each",
                       description="One line per run: " + " ".join(LINE_FIELDS).upper() + " (space-separated, '-' "
                                   "for none). A system is a config name (in --conf-dir), a YAML path, or BASE+lm / "
                                   "BASE+crt|tau_norm|ncm|lws|oltr / BASE+control; the run of system S with seed K "
                                   "is <exp>/S_seedK (no seeds: <exp>/S), BASE+EXT's is BASE_EXT[_seedK].")
    p.add_argument("systems", nargs="+", help="system words (a quoted space-separated list counts as several)")
    p.add_argument("--seeds", nargs="*", default=[], help="training seeds (none: each system once)")
    p.add_argument("--conf-dir", help="where config names are (<conf-dir>/<name>.yaml)")
    p.add_argument("--exp", help="experiments dir: whether a head is Causal Norm comes from a trained run's config")
    p.add_argument("--kind", nargs="+", choices=("train", "lm", "decoupled"), help="only runs of these kinds")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="the records as JSON (run.json's fields, conf, run)")
    out.add_argument("--field", choices=LINE_FIELDS, help="print only this field, one line per run")
    p.set_defaults(func=_plan)
