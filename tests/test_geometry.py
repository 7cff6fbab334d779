"""Tail geometry (scoring/geometry.py) against a direct per-speaker loop, and the CLI on stored embeddings."""
import json

import numpy as np
import pytest

from spkcausal.cli import main
from spkcausal.data.datadir import DataDir
from spkcausal.data.embeddings import write_store
from spkcausal.scoring.geometry import group_geometry, over_seeds, speaker_geometry
from spkcausal.utils import DataError


def _direct(emb, labels):
    """Loop over speakers: mean angle to the centroid, angle to the nearest other centroid."""
    spks = sorted(set(labels))
    cents = {}
    for s in spks:
        x = np.array([e / np.linalg.norm(e) for e, l in zip(emb, labels) if l == s])
        c = x.mean(0)
        cents[s] = (x, c / np.linalg.norm(c))
    out = {}
    for s in spks:
        x, c = cents[s]
        spread = np.mean([np.degrees(np.arccos(np.clip(v @ c, -1, 1))) for v in x])
        near = min(np.degrees(np.arccos(np.clip(c @ cents[t][1], -1, 1))) for t in spks if t != s)
        out[s] = (spread, near)
    return out


def test_speaker_geometry_equals_a_direct_loop():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), [2, 3, 5, 8, 4, 6])
    centres = rng.standard_normal((6, 16))
    emb = centres[labels] + rng.uniform(0.2, 1.5, (len(labels), 1)) * rng.standard_normal((len(labels), 16))
    g = speaker_geometry(emb * rng.uniform(0.5, 3, (len(labels), 1)), labels)  # norms must not matter
    ref = _direct(emb, labels.tolist())
    for i, s in enumerate(g["speakers"]):
        assert g["spread"][i] == pytest.approx(ref[s][0], abs=1e-9)  # float64 both sides
        assert g["nearest"][i] == pytest.approx(ref[s][1], abs=1e-9)  # float64 both sides
        assert g["ratio"][i] == pytest.approx(ref[s][1] / ref[s][0], rel=1e-9)  # float64 both sides
    assert g["count"].tolist() == [2, 3, 5, 8, 4, 6]


def test_group_geometry_splits_by_training_count_with_t_intervals():
    from scipy import stats

    rng = np.random.default_rng(1)
    labels = np.repeat(np.array([f"s{i}" for i in range(9)]), 4)
    emb = rng.standard_normal((len(labels), 8)) + 3 * rng.standard_normal((9, 8))[np.repeat(np.arange(9), 4)]
    counts = {f"s{i}": c for i, c in enumerate([50, 40, 35, 20, 15, 12, 5, 3, 2])}
    res = group_geometry(emb, labels, counts, many=30, few=10)
    g = speaker_geometry(emb, labels)
    few = np.array([counts[s] < 10 for s in g["speakers"]])
    v = g["spread"][few]
    h = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    assert res["few"]["speakers"] == 3 and res["many"]["speakers"] == 3 and res["medium"]["speakers"] == 3
    assert res["few"]["spread"] == pytest.approx(v.mean())  # float64 both sides
    assert res["few"]["spread_ci"] == pytest.approx([v.mean() - h, v.mean() + h])  # float64 both sides
    assert res["all"]["nearest"] == pytest.approx(g["nearest"].mean())  # float64 both sides
    with pytest.raises(DataError, match="no training count"):
        group_geometry(emb, labels, {"s0": 3}, many=30, few=10)


def test_tighter_speakers_have_a_larger_ratio():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(10), 6)
    centres = rng.standard_normal((10, 32)) * 3
    noise = np.where(labels[:, None] < 5, 0.3, 2.0) * rng.standard_normal((60, 32))
    g = speaker_geometry(centres[labels] + noise, labels)
    assert g["ratio"][:5].min() > g["ratio"][5:].max()
    assert g["spread"][:5].max() < g["spread"][5:].min()


def test_cli_writes_the_table_and_json(tmp_path, capsys):
    rng = np.random.default_rng(3)
    utts = [f"s{i}-u{j}" for i in range(4) for j in range(3)]
    spk = {u: u.split("-")[0] for u in utts}
    DataDir(wav={u: f"/x/{u}.wav" for u in utts}, utt2spk=spk).write(tmp_path / "test")
    train = [f"s{i}-t{j}" for i in range(4) for j in range([40, 20, 5, 2][i])]
    DataDir(wav={u: f"/x/{u}.wav" for u in train}, utt2spk={u: u.split("-")[0] for u in train}).write(tmp_path / "tr")
    write_store(tmp_path / "emb", utts, rng.standard_normal((len(utts), 8)).astype(np.float32))
    rc = main(["tail-geometry", "--emb", f"sys={tmp_path / 'emb'}", "--data", str(tmp_path / "test"),
               "--train-data", str(tmp_path / "tr"), "--many", "30", "--few", "10", "--out", str(tmp_path / "g.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| sys | few | 2 |" in out and "| sys | many | 1 |" in out
    rows = json.loads((tmp_path / "g.json").read_text())
    assert rows["sys"]["all"]["speakers"] == 4
    assert main(["tail-geometry", "--emb", "nope", "--data", str(tmp_path / "test"), "--train-data",
                 str(tmp_path / "tr")]) == 2


def test_over_seeds_is_the_mean_with_a_t_interval_over_seeds():
    from scipy import stats

    rng = np.random.default_rng(4)
    labels = np.repeat(np.array([f"s{i}" for i in range(6)]), 3)
    counts = {f"s{i}": c for i, c in enumerate([50, 40, 20, 15, 5, 3])}
    res = [group_geometry(rng.standard_normal((18, 8)), labels, counts, many=30, few=10) for _ in range(4)]
    agg = over_seeds(res)
    v = np.array([r["few"]["ratio"] for r in res])
    h = stats.t.ppf(0.975, 3) * v.std(ddof=1) / 2
    assert agg["few"]["ratio"] == pytest.approx(v.mean())  # float64 both sides
    assert agg["few"]["ratio_ci"] == pytest.approx([v.mean() - h, v.mean() + h])  # float64 both sides
    assert agg["few"]["seeds"] == 4 and agg["few"]["speakers"] == 2
    assert over_seeds(res[:1]) == res[0]
