"""What a stage works on (StageContext: experiments dir, run plan, data dirs, lists, options) and the stage
markers the recipes share with bash (recipes/common/stages.sh): `E/.done/<stage>`, written last, atomically; a
stage whose marker exists is skipped with a log line naming the marker to remove."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..experiments.plan import PlannedRun, plan_runs
from ..experiments.runs import RunRecord
from ..utils import UsageError, write_text_atomic

__all__ = ["StageContext", "log", "is_done", "mark_done", "skip_msg", "join", "base", "scoped_logs", "has_tde"]


def log(msg: str) -> None:
    """A recipe log line, as stages.sh's `log` writes it: `[HH:MM:SS] msg` (UTC) on stderr."""
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] {msg}", file=sys.stderr, flush=True)


def join(*parts: str) -> str:
    """Paths joined as bash joins them ("$e/emb/$name"): side files that store a path as given store the same
    text as the bash stages did."""
    return "/".join(parts)


def base(path: str) -> str:
    """`basename PATH` (a trailing slash ignored)."""
    return os.path.basename(path.rstrip("/")) or path


def _done_file(exp_dir: str, stage: str) -> str:
    return join(exp_dir, ".done", stage)


def is_done(exp_dir: str, stage: str) -> bool:
    """Whether the stage's marker exists."""
    return os.path.isfile(_done_file(exp_dir, stage))


def mark_done(exp_dir: str, stage: str) -> None:
    """Write the stage's marker (the UTC time), atomically, after every output of the stage."""
    write_text_atomic(_done_file(exp_dir, stage), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")


def skip_msg(stage: str, what: str, exp_dir: str) -> None:
    """The log line of a stage skipped because its marker exists."""
    log(f"stage {stage} ({what}): done before, skipping (remove {_done_file(exp_dir, stage)} to redo)")


@contextlib.contextmanager
def scoped_logs() -> Iterator[None]:
    """Log files a step opens (score.log, tde_alpha.log, identify.log) are closed after it: in one process, a
    handler left open would copy every later step's lines into an earlier step's log."""
    logger = logging.getLogger("spkcausal")
    before = list(logger.handlers)
    try:
        yield
    finally:
        for h in [h for h in logger.handlers if h not in before]:
            logger.removeHandler(h)
            h.close()


@dataclass(frozen=True)
class StageContext:
    """A stage's inputs: the runs of `systems` x `seeds` under `exp`, the training dir (`control_dir` for the
    protocol's control runs) and the other data dirs, trial lists and options of stages 5-7 ("" / empty: not
    given; each stage checks what it needs)."""

    exp: str
    systems: list[str]
    seeds: list[int]
    train_dir: str
    control_dir: str = ""
    eval_dir: str = ""
    val_dir: str = ""
    test_dir: str = ""
    trials: list[str] = field(default_factory=list)
    enroll_map: str = ""  # the eval lists' `enroll utt ...` table (CN-Celeb's Avg enrolment)
    asnorm_top: str = "300"  # a count, a share of the cohort, or `dev` (chosen on the first dev list)
    seen_trials: str = ""
    seen_dir: str = ""
    many: int | None = None
    few: int | None = None
    dev_trials: list[str] = field(default_factory=list)
    dev_dirs: list[str] = field(default_factory=list)  # the dir of each dev list's keys
    alphas: list[float] | None = None  # TDE's grid (None: the library's)
    alpha_on: str = "iden_val"

    def runs(self, with_exp: bool = False) -> list[PlannedRun]:
        """The plan's runs (with_exp: a head's causality read from the trained run's config under exp)."""
        return plan_runs(self.systems, self.seeds, None, self.exp if with_exp else None)

    def exp_dir(self, rec: RunRecord) -> str:
        """The run's experiment dir, `<exp>/<name>`."""
        return join(self.exp, rec.name)

    def train_of(self, rec: RunRecord) -> str:
        """The dir the run trained on: the control dir for a control run, else the training dir."""
        if not rec.control:
            return self.train_dir
        if not self.control_dir:
            raise UsageError(f"run {rec.name} is the protocol's balanced control: give --control_dir")
        return self.control_dir

    def store(self, rec: RunRecord, data_dir: str) -> str:
        """The run's raw embedding store of a data dir (stage 4): `<exp>/<name>/emb/<basename dir>`."""
        return join(self.exp_dir(rec), "emb", base(data_dir))


def has_tde(rec: RunRecord) -> bool:
    """Whether the run's head is Causal Norm (the plan's answer; unknown stops the stage)."""
    if rec.causal is None:
        raise UsageError(f"{rec.name}: is its head Causal Norm? the plan says 'unknown'")
    return rec.causal
