"""The full-size rehearsal at 1/200 (tools/bench_scale.py, docs/scale.md): the corpora have the stated counts,
every stage runs, and the stage fixed for scaling (the shard stream's per-shard grouping) is unchanged."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from spkcausal.corpora.rehearsal import make_audio_pool, make_rehearsal, rehearsal_counts, unique_pairs
from spkcausal.data.shardstream import shard_members
from spkcausal.data.validate import validate_datadir

ROOT = Path(__file__).resolve().parent.parent
SCALE = 1 / 200


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    return make_audio_pool(tmp_path_factory.mktemp("pool"), files=20, seed=0)


def _table(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def test_full_counts_are_the_real_corpora():
    vox, cn = rehearsal_counts("voxceleb"), rehearsal_counts("cnceleb")
    assert (vox["train"].speakers, vox["train"].utts) == (5994, 1_092_009)
    assert (vox["eval"].speakers, vox["eval"].utts, vox["test"]) == (1251, 153_516, (40, 4874))
    assert vox["trials"] == {"veri_test2.txt": 37_611, "list_test_all2.txt": 579_818,
                             "list_test_hard2.txt": 550_894}
    assert (cn["train"].speakers, cn["train"].utts) == (2793, 659_000)
    assert cn["trials"]["trials_concat"] == 196 * 17_777 == 3_484_292 and cn["targets"] == 17_755


def test_voxceleb_rehearsal_has_the_stated_counts(pool, tmp_path):
    c = make_rehearsal(tmp_path, "voxceleb", pool, SCALE)
    assert c == rehearsal_counts("voxceleb", SCALE)
    pool_files = {str(p.resolve()) for p in pool.rglob("*.wav")}
    for name, part in (("vox2_dev", c["train"]), ("vox1_all", c["eval"])):
        u2s = dict(_table(tmp_path / name / "utt2spk"))
        assert len(u2s) == part.utts and len(set(u2s.values())) == part.speakers, name
        assert min(Counter(u2s.values()).values()) >= 8
        wav = dict(_table(tmp_path / name / "wav.scp"))
        assert set(wav.values()) <= pool_files and wav.keys() == u2s.keys()
        assert validate_datadir(tmp_path / name) == []
    u2s = dict(_table(tmp_path / "vox1_test" / "utt2spk"))
    assert (len(set(u2s.values())), len(u2s)) == c["test"]
    all_keys = dict(_table(tmp_path / "vox1_all" / "utt2spk"))
    for name, n in c["trials"].items():
        rows = _table(tmp_path / "trials" / name)
        keys = u2s if name == "veri_test2.txt" else all_keys
        assert len(rows) == n and len({(e, t) for _, e, t in rows}) == n, name
        assert sum(lab == "1" for lab, _, _ in rows) == n // 2
        assert all((keys[e] == keys[t]) == (lab == "1") for lab, e, t in rows)


def test_cnceleb_rehearsal_has_the_stated_counts(pool, tmp_path):
    c = make_rehearsal(tmp_path, "cnceleb", pool, SCALE)
    u2s = dict(_table(tmp_path / "cnceleb_train" / "utt2spk"))
    assert (len(u2s), len(set(u2s.values()))) == (c["train"].utts, c["train"].speakers)
    ev = dict(_table(tmp_path / "cnceleb_eval" / "utt2spk"))
    enroll = [k for k in ev if k.endswith("-enroll")]
    assert len(enroll) == c["enroll"] and len(ev) - len(enroll) == c["test_utts"]
    assert not set(u2s.values()) & set(ev.values())  # eval speakers never in training
    rows = _table(tmp_path / "cnceleb_eval" / "trials_concat")
    assert len(rows) == c["trials"]["trials_concat"] == c["enroll"] * c["test_utts"]
    assert sum(lab == "target" for _, _, lab in rows) == c["targets"]
    assert all((ev[e] == ev[t]) == (lab == "target") for e, t, lab in rows)
    assert validate_datadir(tmp_path / "cnceleb_eval", trials=[tmp_path / "cnceleb_eval" / "trials_concat"]) == []


def test_unique_pairs_are_distinct_and_labelled():
    spk = np.repeat(np.arange(5), [3, 4, 2, 6, 5])
    rows = unique_pairs(40, 60, spk, np.random.default_rng(1))
    assert len({(e, t) for e, t, _ in rows.tolist()}) == 100
    assert ((spk[rows[:, 0]] == spk[rows[:, 1]]) == (rows[:, 2] == 1)).all() and (rows[:, 0] != rows[:, 1]).all()
    assert rows[:, 2].sum() == 40


def test_shard_members_equals_the_per_shard_mask():
    rng = np.random.default_rng(0)
    for n, shards in ((0, 3), (1, 1), (500, 7), (2000, 40)):
        shard_of = rng.integers(0, shards, n)
        ids = np.sort(rng.choice(10 * n + 1, n, replace=False))
        got = shard_members(shard_of, ids, shards)
        want = [ids[shard_of == s] for s in range(shards)]  # the former O(N x shards) expression
        assert len(got) == shards and all(np.array_equal(g, w) for g, w in zip(got, want))


@pytest.mark.slow  # end to end: every stage of both recipes as a subprocess
def test_rehearsal_runs_every_stage_at_1_200(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    from bench_scale import cn_stages, format_table, run_rehearsal, vox_stages

    rows = run_rehearsal(tmp_path, [SCALE], quick=True, pool_files=20, echo=lambda *_: None)
    failed = [(r["stage"], r["log"]) for r in rows if r["rc"] != 0 or r["s"] is None]
    assert not failed, failed
    assert [r["stage"] for r in rows] == [s.name for s in vox_stages(True) + cn_stages()]
    resume = next(r for r in rows if r["stage"].startswith("spkcausal train"))
    assert resume["extra"]["resume_max_diff"] == 0.0 and resume["extra"]["classes"] == 30
    table = format_table(rows)
    assert "FAILED" not in table and table.count("\n| ") == len(rows)  # one line per stage under the header


def test_bounded_map_keeps_order_and_submits_lazily():
    from concurrent.futures import ThreadPoolExecutor

    from spkcausal.utils import bounded_map

    taken = []

    def items():
        for i in range(1000):
            taken.append(i)
            yield i

    with ThreadPoolExecutor(3) as pool:
        for chunk in (1, 7, 1000, 5000):
            assert list(bounded_map(pool, lambda x: x * x, range(1000), chunk)) == [i * i for i in range(1000)]
        it = bounded_map(pool, lambda x: -x, items(), chunk=16)
        assert next(it) == 0 and len(taken) == 16  # Executor.map would have submitted all 1,000 here


def test_training_prescan_unchanged_by_bounded_submission(pool, tmp_path):
    from spkcausal.data.audio import probe_audio
    from spkcausal.data.datadir import DataDir
    from spkcausal.data.dataset import scan_training_audio

    make_rehearsal(tmp_path, "cnceleb", pool, SCALE)
    data = DataDir.load(tmp_path / "cnceleb_eval")
    data.wav[data.utts[3]] = str(tmp_path / "missing.wav")
    scan = scan_training_audio(data, 3.0, 16000, num_threads=3)
    want = {u: probe_audio(data.wav[u], 16000) for u in data.utts}  # serial reference
    ok = {u: p.frames for u, p in want.items() if not p.problem and p.frames >= 48000}
    assert scan.num_samples == ok and scan.utts == sorted(ok)
    assert set(scan.skipped) == set(want) - set(ok) and data.utts[3] in scan.skipped


def test_speaker_means_in_blocks_equal_one_pass(tmp_path):
    from spkcausal.data.datadir import DataDir
    from spkcausal.data.embeddings import EmbeddingStore, speaker_means, write_store

    rng = np.random.default_rng(3)
    keys = [f"u{i:04d}" for i in range(1000)]
    spk = {k: f"s{rng.integers(0, 37):02d}" for k in keys}
    DataDir(wav={k: "/x.wav" for k in keys}, utt2spk=spk).write(tmp_path / "d")
    emb = rng.standard_normal((1000, 16)).astype(np.float32) * rng.lognormal(0, 3, (1000, 1)).astype(np.float32)
    write_store(tmp_path / "s", keys[::-1], emb)  # row order differs from utt2spk order
    store = EmbeddingStore.open(tmp_path / "s")
    spks, means = speaker_means(store, tmp_path / "d", block=7)
    # The former single pass: one np.add.at over every row in row order.
    rows = store.lookup(keys)
    names, idx = np.unique(np.array([spk[k] for k in keys]), return_inverse=True)
    ref = np.zeros((len(names), 16))
    order = np.argsort(rows)
    np.add.at(ref, idx[order], np.asarray(store.matrix[rows[order]], dtype=np.float64))
    ref /= np.bincount(idx)[:, None]
    assert spks == list(names) and np.array_equal(means, ref)
    direct = emb[[store.index(k) for k in keys if spk[k] == names[0]]].astype(np.float64).mean(0)
    assert np.allclose(means[0], direct, rtol=1e-9, atol=0)  # float64 means of the same float32 rows
