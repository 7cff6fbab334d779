"""Tiny VoxCeleb1 / VoxCeleb2 trees laid out as docs/design.md section 3 says, with the traps it names.

`make_voxceleb1` / `make_voxceleb2` build a tree under `root` and return what a correct preparation must
produce (keys, counts, durations, genders, trial counts), computed here from the fixture's own structures.
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000
# YouTube ids are 11 characters and may contain (and start with) '-' and '_'.
VOX1_SPEAKERS = {
    "id10001": ("m", "USA", "dev", "A.J._Buckley", ["1zcIwhmdeo4", "0_laIeN-Q44"]),
    "id10002": ("f", "New Zealand", "dev", "Aaron_Tveit", ["-_aB3cD-eF_", "xY_z9-AbCdE"]),
    "id10003": ("m", "USA", "dev", "Aaron_Yoo", ["Kc_8-LmN0pQ", "aB-cD_eF-gH"]),
    "id10270": ("f", "UK", "test", "Eartha_Kitt", ["5r0dWxy17C8", "x6uYqmx31kE"]),
    "id10271": ("m", "New Zealand", "test", "Ed_Sheeran", ["1gtz-CUIygI", "_9aBc-DeF_g"]),
}
VOX1_CORRUPT = "id10002/xY_z9-AbCdE/00002.wav"  # on disk, not a wav
VOX1_MISSING = "id10271/_9aBc-DeF_g/00099.wav"  # in iden_split and the lists, not on disk
VOX1_META_HEADER = "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"

VOX2_SPEAKERS = {
    "id00012": ("m", "dev", ["21Uxsk56VDQ", "2DLq_Kkc1r8"]),
    "id00015": ("f", "dev", ["0fijmz4vTVU", "-wK_3e-lNlo"]),
    "id00019": ("m", "dev", ["X_2-a0bC_dE", "q-W_e9rT-yU"]),
    "id00020": ("f", "test", ["7zXy-_AbCdE", "LmN_oP-qRsT"]),
}
VOX2_BROKEN = "id00015/-wK_3e-lNlo/00001.wav"  # its .m4a holds garbage when broken=True
VOX2_ODD = "id00012/21Uxsk56VDQ/00001.wav"  # encoded at 44.1 kHz stereo: decoding must resample and downmix


def _duration(i: int) -> float:
    return 0.5 + 0.25 * (i % 4)


def _signal(i: int, n: int, sr: int, freq: float) -> np.ndarray:
    rng = np.random.default_rng(i)
    t = np.arange(n) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(n)).astype(np.float32)


def _pairs(keys: list[str], every: int) -> list[tuple[str, str]]:
    return [p for i, p in enumerate(combinations(keys, 2)) if i % every == 0]


def _write_list(path: Path, pairs: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{int(a.split('/')[0] == b.split('/')[0])} {a} {b}\n" for a, b in pairs))


def make_voxceleb1(root, layout: str = "split", utts_per_video: int = 2, lists_subdir: str = "meta",
                   corrupt: bool = True, missing: bool = True) -> dict:
    """Build a VoxCeleb1 tree (`split`: dev/wav + test/wav; `single`: wav/) and return the expected results.

    vox1_meta.csv and iden_split.txt go in root, the verification lists in root/<lists_subdir>."""
    root = Path(root)
    keys: list[str] = []
    durs: dict[str, float] = {}
    for spk, (_, _, part, _, vids) in VOX1_SPEAKERS.items():
        for vid in vids:
            for u in range(1, utts_per_video + 1):
                key = f"{spk}/{vid}/{u:05d}.wav"
                top = root / part / "wav" if layout == "split" else root / "wav"
                f = top / key
                f.parent.mkdir(parents=True, exist_ok=True)
                i = len(keys)
                keys.append(key)
                if corrupt and key == VOX1_CORRUPT:
                    f.write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really a wav file")
                    continue
                n = int(_duration(i) * SR)
                sf.write(f, _signal(i, n, SR, 200 + 20 * i), SR, subtype="PCM_16")
                durs[key] = n / SR
    listed = sorted(keys + ([VOX1_MISSING] if missing else []))
    bad = {VOX1_MISSING} if missing else set()
    if corrupt and VOX1_CORRUPT in keys:
        bad.add(VOX1_CORRUPT)

    (root / "vox1_meta.csv").write_text(VOX1_META_HEADER + "\n" + "".join(
        f"{spk}\t{name}\t{g}\t{nat}\t{part}\n" for spk, (g, nat, part, name, _) in VOX1_SPEAKERS.items()))

    # identification split: per speaker the last listed utterance is test (3), the one before val (2)
    iden: dict[str, str] = {}
    for spk in VOX1_SPEAKERS:
        mine = [k for k in listed if k.startswith(spk + "/")]
        for j, k in enumerate(mine):
            iden[k] = "test" if j == len(mine) - 1 else "val" if j == len(mine) - 2 else "train"
    code = {"train": 1, "val": 2, "test": 3}
    (root / "iden_split.txt").write_text("".join(f"{code[iden[k]]} {k}\n" for k in listed))

    test_keys = [k for k in listed if VOX1_SPEAKERS[k.split("/")[0]][2] == "test"]
    spk_of = {k: k.split("/")[0] for k in listed}
    same_gn = [(a, b) for a, b in combinations(listed, 2)
               if VOX1_SPEAKERS[spk_of[a]][:2] == VOX1_SPEAKERS[spk_of[b]][:2]]
    lists = {
        "veri_test.txt": _pairs(test_keys, 1),
        "veri_test2.txt": _pairs(test_keys, 2),
        "list_test_all2.txt": _pairs(listed, 3),
        "list_test_hard2.txt": same_gn,
    }
    for name, pairs in lists.items():
        _write_list(root / lists_subdir / name, pairs)

    def part_keys(part: str | None) -> list[str]:
        return [k for k in listed if part is None or VOX1_SPEAKERS[spk_of[k]][2] == part]

    def counts(ks: list[str]) -> dict:
        good = [k for k in ks if k not in bad]
        return {"speakers": len({spk_of[k] for k in good}), "utterances": len(good),
                "excluded": sorted(k for k in ks if k in bad)}

    dirs = {"vox1_dev": counts(part_keys("dev")), "vox1_test": counts(part_keys("test")),
            "vox1_all": counts(part_keys(None))}
    for split in ("train", "val", "test"):
        dirs[f"vox1_iden_{split}"] = counts([k for k in listed if iden[k] == split])
    trials = {}
    for name, pairs in lists.items():
        kept = [(a, b) for a, b in pairs if a not in bad and b not in bad]
        trials[name] = {"total": len(pairs), "trials": len(kept), "dropped": len(pairs) - len(kept),
                        "targets": sum(spk_of[a] == spk_of[b] for a, b in kept), "kept": kept}
    return {"dirs": dirs, "trials": trials, "durations": durs, "keys_on_disk": keys, "iden": iden,
            "gender": {s: v[0] for s, v in VOX1_SPEAKERS.items()},
            "nationality": {s: v[1].replace(" ", "_") for s, v in VOX1_SPEAKERS.items()}}


def encode_m4a(path, x: np.ndarray, sr: int, channels: int = 1) -> None:
    """Write float samples as AAC in an MP4 (.m4a) container with PyAV."""
    import av

    layout = "mono" if channels == 1 else "stereo"
    pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
    pcm = np.repeat(pcm[:, None], channels, axis=1).reshape(1, -1)  # packed s16: interleaved channels
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=sr)
        s.layout = layout
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout=layout)
        frame.sample_rate = sr
        for pkt in s.encode(frame):
            c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)


def make_voxceleb2(root, utts_per_video: int = 1, with_test: bool = False, broken: bool = False,
                   odd_file: bool = True) -> dict:
    """Build a VoxCeleb2 tree (`dev/aac`, optionally `test/aac`) of real m4a files; return the expectations."""
    root = Path(root)
    out: dict = {"keys": {}, "durations": {}, "freqs": {}, "bad": [VOX2_BROKEN] if broken else []}
    i = 0
    for spk, (_, part, vids) in VOX2_SPEAKERS.items():
        if part == "test" and not with_test:
            continue
        for vid in vids:
            for u in range(1, utts_per_video + 1):
                key = f"{spk}/{vid}/{u:05d}.wav"
                f = root / part / "aac" / key.replace(".wav", ".m4a")
                out["keys"].setdefault(part, []).append(key)
                if broken and key == VOX2_BROKEN:
                    f.parent.mkdir(parents=True, exist_ok=True)
                    f.write_bytes(b"\x00\x00\x00\x18ftypM4A garbage, not an mp4" * 4)
                    i += 1
                    continue
                sr, ch = (44100, 2) if odd_file and key == VOX2_ODD else (SR, 1)
                dur = _duration(i)
                freq = 300.0 + 50 * i
                encode_m4a(f, _signal(i, int(dur * sr), sr, freq), sr, ch)
                out["durations"][key], out["freqs"][key] = dur, freq
                i += 1
    # vox2_meta.csv lists every speaker of the release (also ones absent here), fields padded with spaces
    (root / "vox2_meta.csv").write_text("VoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set \n" + "".join(
        f"{spk} ,n0{spk[2:]} ,{g} ,{part} \n" for spk, (g, part, _) in VOX2_SPEAKERS.items()))
    out["gender"] = {s: v[0] for s, v in VOX2_SPEAKERS.items()}
    return out
