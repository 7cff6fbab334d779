"""VoxCeleb1/2 preparation on fixture trees: exact counts, trial keys, exclusions, m4a decoding and resume, CLI."""
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures_voxceleb import VOX1_CORRUPT, VOX1_MISSING, VOX2_BROKEN, VOX2_ODD, make_voxceleb1, make_voxceleb2

from spkcausal.cli import main
from spkcausal.corpora.voxceleb import prepare_voxceleb1, prepare_voxceleb2, read_vox2_meta
from spkcausal.data.datadir import DataDir, read_kv
from spkcausal.data.trialio import read_trials
from spkcausal.data.validate import validate_datadir
from spkcausal.utils import DataError


def _snapshot(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in sorted(top.rglob("*"))
            if p.is_file() and p.name != "prepare.log" and "vox2_wav" not in p.parts}


def _excluded(d: Path) -> list[str]:
    return [line.split()[0] for line in (d / "excluded.txt").read_text().splitlines()]


@pytest.fixture(scope="module")
def vox1(tmp_path_factory):
    base = tmp_path_factory.mktemp("vox1")
    exp = make_voxceleb1(base / "VoxCeleb1")
    summary = prepare_voxceleb1(base / "VoxCeleb1", base / "data", nj=2)
    return base / "VoxCeleb1", base / "data", exp, summary


def test_vox1_dirs_exact_counts_and_exclusions(vox1):
    _, out, exp, summary = vox1
    assert set(summary["dirs"]) == set(exp["dirs"])
    for name, want in exp["dirs"].items():
        d = DataDir.load(out / name, need_dur=True)
        assert (len(d.speakers), len(d)) == (want["speakers"], want["utterances"]), name
        assert summary["dirs"][name]["utterances"] == want["utterances"]
        assert summary["dirs"][name]["excluded"] == len(want["excluded"])
        assert _excluded(out / name) == want["excluded"], name
        assert validate_datadir(out / name) == [], name
    assert summary["excluded"] == 2
    reasons = dict(line.split(" ", 1) for line in (out / "vox1_all" / "excluded.txt").read_text().splitlines())
    assert reasons[VOX1_MISSING].startswith("missing file")
    assert reasons[VOX1_CORRUPT].startswith("unreadable audio")


def test_vox1_keys_sessions_durations_meta(vox1):
    _, out, exp, _ = vox1
    d = DataDir.load(out / "vox1_all")
    good = sorted(k for k in exp["keys_on_disk"] if k != VOX1_CORRUPT)
    assert d.utts == good
    assert any(k.split("/")[1].startswith("-") for k in good)  # the trap is really in the fixture
    for k in good:
        spk, yt, _ = k.split("/")
        assert d.utt2spk[k] == spk and d.utt2sess[k] == yt and len(yt) == 11
        assert d.wav[k].endswith("/wav/" + k) and Path(d.wav[k]).is_absolute()
        assert d.utt2dur[k] == pytest.approx(exp["durations"][k], abs=5e-4)  # utt2dur rounded to ms: <= 0.5 ms
        assert d.utt2dur[k] == pytest.approx(sf.info(d.wav[k]).duration, abs=5e-4)  # as above
    assert d.spk2gender == exp["gender"]
    assert d.spk2nat == exp["nationality"] and d.spk2nat["id10002"] == "New_Zealand"
    test = DataDir.load(out / "vox1_test")
    assert set(test.spk2gender) == {"id10270", "id10271"}


def test_vox1_trials_exact_and_keys_in_dir(vox1):
    _, out, exp, summary = vox1
    assert set(summary["trials"]) == set(exp["trials"])  # list_test_all.txt etc. absent from the fixture
    for name, want in exp["trials"].items():
        path = out / "trials" / name
        tr = read_trials(path)
        assert list(zip(tr.enroll, tr.test)) == want["kept"], name
        assert len(tr) == want["trials"] and int((tr.labels == 1).sum()) == want["targets"]
        assert path.read_text().split("\n")[0].split()[2] in ("target", "nontarget")  # Kaldi form
        for e, t, lab in zip(tr.enroll, tr.test, tr.labels):
            assert lab == int(e.split("/")[0] == t.split("/")[0])
        info = summary["trials"][name]
        assert (info["trials"], info["dropped"]) == (want["trials"], want["dropped"]) and want["dropped"] > 0
        assert info["dir"] == ("vox1_test" if name.startswith("veri") else "vox1_all")
        assert validate_datadir(out / info["dir"], trials=[path]) == []
    # O lists hold test speakers only: the dev dir must not cover them
    assert validate_datadir(out / "vox1_dev", trials=[out / "trials" / "veri_test2.txt"], check_audio=False)


def test_vox1_identification_split(vox1):
    _, out, exp, _ = vox1
    for split in ("train", "val", "test"):
        d = DataDir.load(out / f"vox1_iden_{split}")
        want = sorted(k for k, s in exp["iden"].items() if s == split and k not in (VOX1_CORRUPT, VOX1_MISSING))
        assert d.utts == want
    assert [len(DataDir.load(out / f"vox1_iden_{s}")) for s in ("train", "val", "test")] == [11, 5, 3]


def test_vox1_rerun_is_byte_identical(vox1):
    root, out, _, _ = vox1
    before = _snapshot(out)
    assert len(before) > 40
    prepare_voxceleb1(root, out, nj=1)
    assert _snapshot(out) == before


def test_vox1_single_wav_layout_via_cli(tmp_path, capsys):
    exp = make_voxceleb1(tmp_path / "vox1", layout="single", lists_subdir="")
    assert not (tmp_path / "vox1" / "dev").exists()
    rc = main(["prepare", "voxceleb1", "--root", str(tmp_path / "vox1"), "--out", str(tmp_path / "data"), "--nj", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "vox1_iden_train" in text and "list_test_hard2.txt" in text
    for name, want in exp["dirs"].items():
        d = DataDir.load(tmp_path / "data" / name)
        assert (len(d.speakers), len(d)) == (want["speakers"], want["utterances"]), name
    assert (tmp_path / "data" / "prepare.log").read_text().count("dropped") == 4


def test_vox1_bad_side_files_name_file_and_line(tmp_path):
    root = tmp_path / "vox1"
    make_voxceleb1(root, utts_per_video=1)
    meta = root / "vox1_meta.csv"
    lines = meta.read_text().splitlines()
    lines[2] = lines[2].replace("\t", ",")  # a comma-separated row hidden in the TAB file
    meta.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        prepare_voxceleb1(root, tmp_path / "out", nj=1, compute_dur=False)
    assert e.value.path == str(meta) and e.value.line == 3 and "TAB" in e.value.message
    assert main(["prepare", "voxceleb1", "--root", str(root), "--out", str(tmp_path / "o2")]) == 2
    meta.write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    (root / "iden_split.txt").write_text("1 id10001/1zcIwhmdeo4/00001.wav\n4 id10001/1zcIwhmdeo4/00002.wav\n")
    with pytest.raises(DataError) as e:
        prepare_voxceleb1(root, tmp_path / "out", nj=1, compute_dur=False)
    assert e.value.path.endswith("iden_split.txt") and e.value.line == 2


def test_vox2_meta_parsing_strips_every_field(tmp_path):
    p = tmp_path / "vox2_meta.csv"
    p.write_text("VoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set \nid00012 ,n000012 ,m ,dev \nid00015 ,n000015 ,F ,test \n")
    assert read_vox2_meta(p) == {"id00012": ("m", "dev"), "id00015": ("f", "test")}
    p.write_text("VoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set \nid00012 ,n000012 ,x ,dev \n")
    with pytest.raises(DataError, match="gender") as e:
        read_vox2_meta(p)
    assert e.value.line == 2


def _peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * sr / len(x))


def test_vox2_conversion_and_resume(tmp_path):
    exp = make_voxceleb2(tmp_path / "vox2", with_test=True)
    out = tmp_path / "data"
    n_dev, n_test = len(exp["keys"]["dev"]), len(exp["keys"]["test"])
    s1 = prepare_voxceleb2(tmp_path / "vox2", out, nj=2)
    assert (s1["converted"], s1["skipped"], s1["failed"]) == (n_dev + n_test, 0, 0)
    assert (out / "vox2_failed.txt").read_text() == ""
    for part, n in (("dev", n_dev), ("test", n_test)):
        d = DataDir.load(out / f"vox2_{part}", need_dur=True)
        assert d.utts == sorted(exp["keys"][part]) and len(d) == n
        assert validate_datadir(out / f"vox2_{part}") == []
        assert d.spk2gender == {s: exp["gender"][s] for s in d.speakers}
        for k in d.utts:
            assert d.utt2sess[k] == k.split("/")[1]
            assert d.wav[k] == str((out / "vox2_wav" / part / "wav" / k).absolute())
            info = sf.info(d.wav[k])
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            x, sr = sf.read(d.wav[k], dtype="int16")
            assert x.dtype == np.int16 and x.ndim == 1
            # AAC adds at most a couple of 1024-sample frames of priming/padding
            assert abs(len(x) / sr - exp["durations"][k]) < 0.15, k  # the decoded stream's padding, not rounding
            assert abs(_peak_hz(x.astype(np.float64), sr) - exp["freqs"][k]) < 4, k  # a few FFT bins of the peak
    assert VOX2_ODD in exp["keys"]["dev"]  # the 44.1 kHz stereo source went through resampling + downmix
    assert any("-" in k and "_" in k.split("/")[1] for k in exp["keys"]["dev"])

    before = _snapshot(out)
    wavs = sorted((out / "vox2_wav").rglob("*.wav"))
    mtimes = {p: p.stat().st_mtime_ns for p in wavs}
    gone = wavs[1]
    gone.unlink()
    # an interrupted run leaves a truncated temp beside the final name; it must be ignored and cleaned
    stale = gone.parent / f".{gone.name}.x1y2z3.tmp.wav"
    stale.write_bytes(wavs[0].read_bytes()[:100])
    s2 = prepare_voxceleb2(tmp_path / "vox2", out, nj=1)
    assert (s2["converted"], s2["skipped"], s2["failed"]) == (1, n_dev + n_test - 1, 0)
    assert gone.exists() and not stale.exists()
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items() if p != gone)
    assert _snapshot(out) == before


def test_vox2_broken_m4a_listed_and_cli_fails(tmp_path, capsys):
    exp = make_voxceleb2(tmp_path / "vox2", broken=True)
    args = ["prepare", "voxceleb2", "--root", str(tmp_path / "vox2"), "--out", str(tmp_path / "data"),
            "--wav-dir", str(tmp_path / "wav"), "--nj", "1"]
    assert main(args) == 1
    assert "failed to convert" in capsys.readouterr().out
    failed = (tmp_path / "data" / "vox2_failed.txt").read_text().splitlines()
    assert len(failed) == 1
    key, src, reason = failed[0].split(" ", 2)
    assert key == VOX2_BROKEN and src.endswith(VOX2_BROKEN.replace(".wav", ".m4a")) and reason
    d = DataDir.load(tmp_path / "data" / "vox2_dev")
    assert d.utts == sorted(k for k in exp["keys"]["dev"] if k != VOX2_BROKEN)
    assert all(Path(p).is_relative_to(tmp_path / "wav") for p in d.wav.values())
    assert _excluded(tmp_path / "data" / "vox2_dev") == [VOX2_BROKEN]
    assert read_kv(tmp_path / "data" / "vox2_dev" / "spk2gender") == {"id00012": "m", "id00015": "f",
                                                                      "id00019": "m"}
    # a re-run retries only the failure (still failing), re-decoding nothing else
    mtimes = {p: os.stat(p).st_mtime_ns for p in d.wav.values()}
    assert main(args) == 1
    assert all(os.stat(p).st_mtime_ns == t for p, t in mtimes.items())


def test_cli_routes_cnceleb_and_librispeech_flags(tmp_path, monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("spkcausal.corpora.cnceleb")
    fake.prepare_cnceleb = lambda *a, **kw: calls.append((a, kw)) or {"cnceleb_train": {"speakers": 7}}
    monkeypatch.setitem(sys.modules, "spkcausal.corpora.cnceleb", fake)
    rc = main(["prepare", "cnceleb", "--root", "CN1", "--out", "o", "--cn2-root", "CN2", "--combine-min-sec", "5",
               "--combined-dir", "comb", "--nj", "3"])
    assert rc == 0 and calls == [(("CN1", "o"), {"cn2_root": "CN2", "combine_min_sec": 5.0, "combined_dir": "comb",
                                                 "nj": 3})]
    assert "cnceleb_train" in capsys.readouterr().out

    from fixtures_librispeech import make_librispeech

    exp = make_librispeech(tmp_path)
    subset = sorted(exp["subsets"])[0]
    rc = main(["prepare", "librispeech", "--root", str(exp["root"]), "--out", str(tmp_path / "ls"),
               "--subsets", subset, "--nj", "1"])
    assert rc == 0 and subset in capsys.readouterr().out
    assert len(DataDir.load(tmp_path / "ls" / subset)) == len(exp["subsets"][subset]["utts"])


def test_vox1_without_durations_still_excludes_missing(tmp_path):
    exp = make_voxceleb1(tmp_path / "vox1")
    s = prepare_voxceleb1(tmp_path / "vox1", tmp_path / "data", nj=1, compute_dur=False)
    test_dir = tmp_path / "data" / "vox1_test"
    assert not (test_dir / "utt2dur").exists() and "hours" not in s["dirs"]["vox1_test"]
    assert _excluded(test_dir) == [VOX1_MISSING]
    # header probing is what finds corrupt audio: without it the corrupt file stays (documented)
    assert VOX1_CORRUPT in DataDir.load(tmp_path / "data" / "vox1_dev").utt2spk
    assert s["excluded"] == 1 and len(DataDir.load(tmp_path / "data" / "vox1_all")) == len(exp["keys_on_disk"])
