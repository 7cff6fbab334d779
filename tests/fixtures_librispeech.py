"""A tiny LibriSpeech tree laid out as docs/design.md section 3 says, for the corpus and recipe tests.

`make_librispeech(root)` writes `<root>/LibriSpeech/<subset>/<reader>/<chapter>/<reader>-<chapter>-NNNN.flac`
plus `<reader>-<chapter>.trans.txt` and a `SPEAKERS.TXT` with `;` comment lines and a NAME containing `|`.
Traps: reader 103 and 1034 (sort order of `103-...` vs `1034-...`), reader 60's name `|CBW|Simon`, one
corrupt flac and one utterance listed in trans.txt whose flac is missing (both in train-clean-100).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000

# reader -> (sex, subset, name as in SPEAKERS.TXT)
READERS = {
    "60": ("M", "train-clean-100", "|CBW|Simon"),
    "103": ("F", "train-clean-100", "Karen Savage"),
    "1034": ("M", "train-clean-100", "Kevin O'Coin"),
    "84": ("F", "dev-clean", "Christie Nowak"),
    "174": ("M", "dev-clean", "Peter Eastman"),
    "7": ("F", "train-other-500", "Not Prepared"),  # listed only: its subset dir does not exist
}
SPEAKERS_HEADER = """\
; Some speakers have more than one chapter in the corpus; for the purposes of the corpus
; the "MINUTES" column ignores the chapter boundaries.
;
;ID  |SEX| SUBSET           |MINUTES| NAME
"""


def _tone(rng: np.random.Generator, seconds: float) -> np.ndarray:
    return (0.1 * rng.standard_normal(int(round(seconds * SR)))).astype(np.float32)


def make_librispeech(root: str | Path, chapters: int = 2, utts_per_chapter: int = 3, seed: int = 0,
                     corrupt: bool = True, missing: bool = True) -> dict:
    """Build the tree under `root/LibriSpeech`; return the root and the counts a correct prepare must find."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "LibriSpeech"
    lines = []
    expected: dict = {"root": base, "subsets": {}, "gender": {}, "durations": {}}
    for r_i, (reader, (sex, subset, name)) in enumerate(READERS.items()):
        lines.append(f"{reader:<5}| {sex} | {subset:<16} | {20 + r_i:.2f} | {name}")
        if subset == "train-other-500":
            continue
        sub = expected["subsets"].setdefault(subset, {"speakers": set(), "utts": [], "excluded": []})
        for c in range(chapters):
            chapter = str(1240 + 1000 * r_i + c)
            cdir = base / subset / reader / chapter
            cdir.mkdir(parents=True, exist_ok=True)
            trans = []
            for u in range(utts_per_chapter):
                utt = f"{reader}-{chapter}-{u:04d}"
                trans.append(f"{utt} WORDS OF UTTERANCE {u}")
                seconds = round(float(rng.uniform(0.3, 1.0)), 3)
                path = cdir / f"{utt}.flac"
                if missing and reader == "103" and c == 1 and u == 0:
                    sub["excluded"].append(utt)  # listed in trans.txt, no audio
                    continue
                if corrupt and reader == "1034" and c == 0 and u == 1:
                    path.write_bytes(b"fLaC" + bytes(range(200)))  # flac magic, garbage body
                    sub["excluded"].append(utt)
                    continue
                sf.write(str(path), _tone(rng, seconds), SR, format="FLAC", subtype="PCM_16")
                sub["utts"].append(utt)
                sub["speakers"].add(reader)
                expected["durations"][utt] = seconds
            (cdir / f"{reader}-{chapter}.trans.txt").write_text("\n".join(trans) + "\n")
        expected["gender"][reader] = sex.lower()
    (base / "SPEAKERS.TXT").write_text(SPEAKERS_HEADER + "\n".join(lines) + "\n")
    for sub in expected["subsets"].values():
        sub["utts"].sort()
    return expected
