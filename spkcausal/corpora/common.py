"""Shared corpus-preparation steps: parallel header probing, exclusion of bad audio, writing the dir."""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from ..data.audio import probe_audio
from ..data.datadir import DataDir
from ..utils import PathLike, atomic_write, bounded_map

log = logging.getLogger("spkcausal.prepare")


def probe_durations(wav: dict[str, str], nj: int = 8, desc: str = "utt2dur") -> tuple[dict[str, float], dict[str, str]]:
    """Durations (s) from audio headers in parallel threads, plus {utt: reason} for unreadable ones."""
    utts = sorted(wav)
    dur: dict[str, float] = {}
    bad: dict[str, str] = {}
    with ThreadPoolExecutor(max(1, nj)) as pool:
        results = bounded_map(pool, probe_audio, (wav[u] for u in utts))
        for utt, probe in tqdm(zip(utts, results), total=len(utts), desc=desc, mininterval=2, leave=False):
            if probe.problem:
                bad[utt] = probe.problem
            else:
                dur[utt] = probe.frames / probe.sample_rate
    return dur, bad


def finalize(data: DataDir, out_dir: PathLike, nj: int = 8, compute_dur: bool = True,
             extra_bad: dict[str, str] | None = None) -> dict:
    """Probe audio, drop (and list in `excluded.txt`) what cannot be read, write the dir; return a summary."""
    out_dir = Path(out_dir)
    bad = dict(extra_bad or {})
    if compute_dur:
        dur, probe_bad = probe_durations(data.wav, nj=nj, desc=f"utt2dur {out_dir.name}")
        bad.update(probe_bad)
        data.utt2dur = dur
    if bad:
        data = data.subset(u for u in data.utt2spk if u not in bad)
    data.write(out_dir)
    with atomic_write(out_dir / "excluded.txt") as f:
        for utt in sorted(bad):
            f.write(f"{utt} {bad[utt]}\n")
    summary = {"dir": str(out_dir), "speakers": len(data.speakers), "utterances": len(data),
               "excluded": len(bad)}
    if compute_dur:
        summary["hours"] = round(sum(data.utt2dur.values()) / 3600, 4)
    if bad:
        first = ", ".join(f"{u} ({bad[u]})" for u in sorted(bad)[:3])
        log.warning("%s: excluded %d utterance(s) with unreadable or missing audio, e.g. %s; full list in %s",
                    out_dir, len(bad), first, out_dir / "excluded.txt")
    with atomic_write(out_dir / "summary.json") as f:
        json.dump(summary, f, indent=1)
    return summary
