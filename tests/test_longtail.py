"""Long-tail profile, plots and long-tailed subsets, cross-checked against direct numpy computations."""
from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from spkcausal.cli import main
from spkcausal.data.datadir import DataDir
from spkcausal.data.longtail import (
    format_profile,
    load_profile,
    plot_longtail,
    profile_datadir,
    shot_groups,
    write_profile,
)
from spkcausal.data.subsets import feasible_n_max, longtail_subset, target_counts
from spkcausal.utils import DataError, UsageError


def make_dir(path: Path, counts: dict[str, int], durations: bool = True, seed: int = 0) -> dict[str, float]:
    """Write utt2spk (shuffled lines) and utt2dur (another order) for the given per-speaker counts."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    utts = [(f"{s}/v{j % 3}-x_{j:05d}", s) for s, c in counts.items() for j in range(c)]
    order = rng.permutation(len(utts))
    (path / "utt2spk").write_text("".join(f"{utts[i][0]} {utts[i][1]}\n" for i in order))
    (path / "wav.scp").write_text("".join(f"{u} /nowhere/{u}.wav\n" for u, _ in sorted(utts)))
    dur = {u: float(np.round(rng.uniform(1, 10), 2)) for u, _ in utts}
    if durations:
        (path / "utt2dur").write_text("".join(f"{u} {dur[u]:.2f}\n" for u in sorted(dur, reverse=True)))
    return dur


@pytest.fixture
def known(tmp_path):
    rng = np.random.default_rng(3)
    counts = {f"spk{i:03d}": int(c) for i, c in enumerate(np.ceil(rng.pareto(1.2, 57) * 15 + 1))}
    counts.update({"b19": 19, "b20": 20, "b100": 100, "b101": 101})
    dur = make_dir(tmp_path / "data", counts)
    return tmp_path / "data", counts, dur


def gini_direct(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean()))


def top20_direct(x: np.ndarray) -> float:
    k = math.ceil(Fraction(len(x), 5))
    return float(np.sort(x)[::-1][:k].sum() / np.sum(x))


def test_profile_matches_numpy(known):
    path, counts, dur = known
    prof = profile_datadir(path)
    s = prof.summary
    x = np.array(list(counts.values()), dtype=np.float64)
    secs = {spk: 0.0 for spk in counts}
    for u, d in dur.items():
        secs[u.split("/")[0]] += d
    y = np.array([secs[spk] for spk in counts])
    assert s["speakers"] == len(counts) and s["utterances"] == int(x.sum())
    assert s["hours"] == pytest.approx(sum(dur.values()) / 3600, rel=1e-12)  # float64 sums of the same durations
    for stats, ref in ((s["utterances_per_speaker"], x), (s["seconds_per_speaker"], y)):
        # order statistics: exact
        assert stats["min"] == pytest.approx(ref.min()) and stats["max"] == pytest.approx(ref.max())
        assert stats["median"] == pytest.approx(np.percentile(ref, 50))  # float64
        assert stats["mean"] == pytest.approx(ref.mean())  # float64
        assert stats["imbalance"] == pytest.approx(ref.max() / ref.min())  # float64
        assert stats["gini"] == pytest.approx(gini_direct(ref), rel=1e-10)  # float64, two formulas for one sum
        assert stats["top20_share"] == pytest.approx(top20_direct(ref), rel=1e-12)  # float64
    # per-speaker table: order count desc then id, seconds summed per speaker
    ref_order = sorted(counts, key=lambda k: (-counts[k], k))
    assert list(prof.speakers) == ref_order
    assert list(prof.utterances) == [counts[k] for k in ref_order]
    np.testing.assert_allclose(prof.seconds, [secs[k] for k in ref_order])  # the same float64 values reordered
    for g, test in (("many", x > 100), ("medium", (x >= 20) & (x <= 100)), ("few", x < 20)):
        assert s["groups"][g]["speakers"] == int(test.sum())
        assert s["groups"][g]["utterances"] == int(x[test].sum())
        assert s["groups"][g]["hours"] == pytest.approx(y[test].sum() / 3600)  # float64
    # the in-memory DataDir path agrees with the fast file path
    other = profile_datadir(DataDir.load(path))
    assert other.summary["utterances_per_speaker"] == s["utterances_per_speaker"]
    np.testing.assert_allclose(other.seconds, prof.seconds)  # the same computation twice


def test_group_boundaries(tmp_path):
    make_dir(tmp_path / "d", {"a": 19, "b": 20, "c": 100, "d": 101}, durations=False)
    prof = profile_datadir(tmp_path / "d")
    assert dict(zip(prof.speakers, prof.groups)) == {"a": "few", "b": "medium", "c": "medium", "d": "many"}
    g = prof.summary["groups"]
    assert [g[k]["speakers"] for k in ("many", "medium", "few")] == [1, 2, 1]
    assert [g[k]["utterances"] for k in ("many", "medium", "few")] == [101, 120, 19]
    assert list(shot_groups([19, 20, 100, 101], many=19, few=20)) == ["few", "many", "many", "many"]
    custom = profile_datadir(tmp_path / "d", many=50, few=21)
    assert dict(zip(custom.speakers, custom.groups)) == {"a": "few", "b": "few", "c": "many", "d": "many"}
    assert prof.seconds is None and prof.summary["hours"] is None and prof.summary["seconds_per_speaker"] is None


def test_write_and_load_profile(known, tmp_path):
    path, counts, _ = known
    prof = profile_datadir(path)
    write_profile(prof, tmp_path / "prof")
    lines = (tmp_path / "prof" / "speakers.tsv").read_text().splitlines()
    assert lines[0] == "speaker\tutterances\tseconds\tgroup"
    rows = [ln.split("\t") for ln in lines[1:]]
    assert [r[0] for r in rows] == sorted(counts, key=lambda k: (-counts[k], k))
    assert all(int(r[1]) == counts[r[0]] for r in rows)
    assert {r[0]: r[3] for r in rows}["b101"] == "many" and {r[0]: r[3] for r in rows}["b19"] == "few"
    summary = json.loads((tmp_path / "prof" / "summary.json").read_text())
    assert summary == json.loads(json.dumps(prof.summary))
    assert sorted(p.name for p in (tmp_path / "prof").iterdir()) == ["speakers.tsv", "summary.json"]
    back = load_profile(tmp_path / "prof")
    assert list(back.speakers) == list(prof.speakers)
    assert back.summary["utterances_per_speaker"] == prof.summary["utterances_per_speaker"]
    text = format_profile(prof)
    assert "gini" in text and f"{summary['utterances']}" in text and "medium" in text


@pytest.mark.parametrize("content, line, needle", [
    ("a s1\nb s1 extra\nc s2\n", 2, "3 fields"),
    ("a s1\n\nc s2\n", 2, "empty line"),
    ("a s1\nb s1\na s2\n", 3, "duplicate key 'a'"),
    ("a s1\nb\n", 2, "1 field;"),
])
def test_malformed_utt2spk(tmp_path, content, line, needle):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "utt2spk").write_text(content)
    with pytest.raises(DataError) as e:
        profile_datadir(d)
    assert e.value.path == str(d / "utt2spk") and e.value.line == line and needle in str(e.value)


def test_malformed_utt2dur(tmp_path, capsys):
    d = tmp_path / "bad"
    make_dir(d, {"a": 3, "b": 2}, durations=False)
    utts = sorted(ln.split()[0] for ln in (d / "utt2spk").read_text().splitlines())
    (d / "utt2dur").write_text("".join(f"{u} {'x1' if i == 3 else '2.0'}\n" for i, u in enumerate(utts)))
    with pytest.raises(DataError) as e:
        profile_datadir(d)
    assert e.value.path == str(d / "utt2dur") and e.value.line == 4 and "'x1'" in str(e.value)
    (d / "utt2dur").write_text("".join(f"{u} 2.0\n" for u in utts + utts[1:2]))
    with pytest.raises(DataError, match=f"duplicate key '{utts[1]}'") as e:
        profile_datadir(d)
    assert e.value.line == len(utts) + 1
    (d / "utt2dur").write_text("".join(f"{u} 2.0\n" for u in utts[:-1]))
    with pytest.raises(DataError, match="has no entry in"):
        profile_datadir(d)
    assert main(["profile", str(d)]) == 2
    assert "utt2spk:" in capsys.readouterr().err


def test_plot_png_and_pdf(known, tmp_path):
    path, _, _ = known
    other = tmp_path / "other"
    make_dir(other, {f"s{i}": 5 + 7 * i for i in range(30)}, durations=False)
    write_profile(profile_datadir(other), other / "profile")
    fig = plot_longtail([path, other / "profile"], tmp_path / "lt.png", labels=["known", "other"])
    png = (tmp_path / "lt.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    ax_rank, ax_hist = fig.axes[:2]
    assert ax_rank.get_yscale() == "log" and ax_hist.get_xscale() == "log"
    assert "utterances" in ax_rank.get_ylabel() and "rank" in ax_rank.get_xlabel()
    assert ax_hist.get_ylabel() == "number of speakers" and ax_rank.get_title()
    assert [t.get_text() for t in ax_hist.get_legend().get_texts()] == ["known", "other"]
    assert len(ax_rank.lines) == 2 and len(ax_rank.patches) == 3  # one curve per corpus, three shaded groups
    assert main(["plot-longtail", str(other), "--out", str(tmp_path / "lt.pdf")]) == 0
    pdf = (tmp_path / "lt.pdf").read_bytes()
    assert pdf[:5] == b"%PDF-" and len(pdf) > 5_000
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp.png") or p.name.endswith(".tmp.pdf")]


def test_target_counts_formulas():
    t = target_counts(11, 500, 100.0, "exp")
    np.testing.assert_array_equal(t, np.floor(500 * 100.0 ** (-np.arange(11) / 10) + 0.5))
    assert t[0] == 500 and t[-1] == 5
    p = target_counts(50, 400, 50.0, "pareto", pareto_alpha=6.0)
    lam = 1 / (50 ** (1 / 6) - 1)
    np.testing.assert_array_equal(p, np.floor(400 * (1 + np.arange(50) / 49 / lam) ** -6 + 0.5))
    assert p[0] == 400 and p[-1] == 8 and (np.diff(p) <= 0).all()
    e = target_counts(50, 400, 50.0, "exp")
    assert p.sum() < e.sum()  # the Pareto profile puts more classes in the tail
    # 16^-(t^2) at t = 0, 1/4, 1/2, 3/4, 1 is 1, 2^-1/4, 1/2, 2^-9/4, 1/16
    assert target_counts(5, 100, 16.0, exp_power=2.0).tolist() == [100, 84, 50, 21, 6]
    with pytest.raises(UsageError, match="imbalance"):
        target_counts(5, 10, 0.5)
    with pytest.raises(UsageError, match="rounding"):
        target_counts(5, 10, 2.0, rounding="up")


def test_target_counts_rounding_of_halves():
    """longtail_subset rounds x.5 up (feasible_n_max's bound assumes it); the synthetic corpus rounds half to
    even. 10 * 4^-(0, 1/2, 1) = 10, 5, 2.5; 30 * 4^-(0, 1/2, 1) = 30, 15, 7.5."""
    assert target_counts(3, 10, 4.0).tolist() == [10, 5, 3]
    assert target_counts(3, 10, 4.0, rounding="half_even").tolist() == [10, 5, 2]
    assert target_counts(3, 30, 4.0).tolist() == target_counts(3, 30, 4.0, rounding="half_even").tolist() \
        == [30, 15, 8]  # 7.5: up and to even agree


def _mem_dir(counts: dict[str, int]) -> DataDir:
    u2s = {f"{s}-u{j:04d}": s for s, c in counts.items() for j in range(c)}
    return DataDir(wav={u: f"/x/{u}.wav" for u in u2s}, utt2spk=u2s, utt2dur={u: 2.0 for u in u2s})


@pytest.mark.parametrize("profile", ["exp", "pareto"])
def test_longtail_subset(profile):
    counts = {f"s{i:02d}": 140 + (i * 37) % 60 for i in range(30)}
    counts.update({"small": 8, "tiny": 3})  # too few for the held-out set: dropped from both
    data = _mem_dir(counts)
    train, held = longtail_subset(data, imbalance=20, profile=profile, max_per_spk=120, heldout_per_spk=8, seed=1)
    assert not set(train.utt2spk) & set(held.utt2spk)
    assert set(train.utt2spk) | set(held.utt2spk) <= set(data.utt2spk)
    assert set(held.speakers) == set(train.speakers) == {s for s in counts if counts[s] > 8}
    assert all(len(v) == 8 for v in held.spk2utt.values())
    got = sorted((len(v) for v in train.spk2utt.values()), reverse=True)
    np.testing.assert_array_equal(got, target_counts(30, 120, 20, profile))
    assert max(got) / min(got) == 20
    assert train.utt2dur and set(train.utt2dur) == set(train.utt2spk)
    again = longtail_subset(data, imbalance=20, profile=profile, max_per_spk=120, heldout_per_spk=8, seed=1)
    assert again[0].utt2spk == train.utt2spk and again[1].utt2spk == held.utt2spk
    other = longtail_subset(data, imbalance=20, profile=profile, max_per_spk=120, heldout_per_spk=8, seed=2)
    assert other[0].utt2spk != train.utt2spk


def test_longtail_subset_default_head_and_caps():
    counts = {f"s{i:02d}": 20 + 10 * i for i in range(12)}
    counts["t"] = 9  # 4 left after the held-out set: the tail, not the head, bounds n_max
    data = _mem_dir(counts)
    left = np.array(sorted((c - 5 for c in counts.values()), reverse=True))
    for profile in ("exp", "pareto"):
        # default n_max: the largest value whose every target fits, found here by brute force
        n_fit = max(n for n in range(1, 200) if (target_counts(13, n, 10, profile) <= left).all())
        n_max = min(n_fit, 10 * int(n_fit / 10 + 0.5))  # trimmed so that max/min is the requested 10
        assert n_max == feasible_n_max(left, 10, profile) and n_max < left[0]
        want = list(target_counts(13, n_max, 10, profile))
        for order in ("size", "random"):
            train, _ = longtail_subset(data, imbalance=10, profile=profile, heldout_per_spk=5, order=order, seed=4)
            got = sorted((len(v) for v in train.spk2utt.values()), reverse=True)
            assert got == want and got[0] / got[-1] == 10
    # n_max above what most speakers have: targets are capped by the remaining utterances
    train, _ = longtail_subset(data, imbalance=2, max_per_spk=1000, heldout_per_spk=5, seed=0)
    got = {s: len(v) for s, v in train.spk2utt.items()}
    assert all(n == counts[s] - 5 for s, n in got.items())  # every target (>= 500) exceeds what is left
    with pytest.raises(DataError, match="more than 500"):
        longtail_subset(data, imbalance=2, heldout_per_spk=500)


def test_cli_profile_and_subset(tmp_path, capsys):
    counts = {f"id{i:05d}": 30 + 9 * i for i in range(15)}
    make_dir(tmp_path / "data", counts)
    assert main(["profile", str(tmp_path / "data"), "--many", "120", "--few", "40"]) == 0
    out = capsys.readouterr().out
    assert "speakers 15" in out and "imbalance" in out
    summary = json.loads((tmp_path / "data" / "profile" / "summary.json").read_text())
    assert summary["many"] == 120 and summary["groups"]["few"]["speakers"] == sum(c < 40 for c in counts.values())
    rc = main(["longtail-subset", str(tmp_path / "data"), "--out-train", str(tmp_path / "tr"),
               "--out-heldout", str(tmp_path / "ho"), "--imbalance", "10", "--heldout-per-spk", "5",
               "--max-per-spk", "100", "--seed", "3"])
    assert rc == 0
    tr, ho = DataDir.load(tmp_path / "tr"), DataDir.load(tmp_path / "ho")
    got = sorted((len(v) for v in tr.spk2utt.values()), reverse=True)
    assert got[0] == 100 and got[-1] == 10 and len(ho) == 5 * 15
    assert json.loads((tmp_path / "tr" / "longtail_subset.json").read_text())["imbalance"] == 10
    assert (tmp_path / "tr" / "longtail_subset.log").exists()
