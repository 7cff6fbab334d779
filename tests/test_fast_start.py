"""Training start without waiting (issue 29): read_kv's fast path equals the line-by-line reader it replaced, the
audio length cache is used when valid and rebuilt when a file changes, and the vectorised class-balanced shard
plan equals the loop it replaced. Each oracle is the old code, copied here."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from spkcausal.data.datadir import DataDir, read_kv, read_lines
from spkcausal.utils import DataError

# ------------------------------------------------------------------ read_kv


def _read_kv_old(path, value_type=str):
    """read_kv as it was before the fast path (commit 4ce1cc2)."""
    out = {}
    for n, line in enumerate(read_lines(path), 1):
        parts = line.strip().split(maxsplit=1)
        if not parts:
            raise DataError("empty line; expected '<key> <value>'", path, n)
        if len(parts) < 2:
            raise DataError(f"key {parts[0]!r} has no value; expected '<key> <value>'", path, n)
        key, value = parts
        if key in out:
            raise DataError(f"duplicate key {key!r}", path, n)
        if value_type is not str:
            try:
                value = value_type(value)
            except ValueError:
                raise DataError(f"value {value!r} for {key!r} is not a {value_type.__name__}", path, n) from None
            if value_type is float and not np.isfinite(value):
                raise DataError(f"value {value!r} for {key!r} is not finite", path, n)
        out[key] = value
    return out


def _outcome(fn, path, vt):
    try:
        r = fn(path, vt)
        return "ok", list(r.items())  # items in order: the order of the file is part of the result
    except DataError as e:
        return "error", str(e)


KV_CASES = {
    "plain": "a /x/a.wav\nb /x/b.wav\n",
    "spaces in value": "a sox /x/a.wav -t wav - |\nb  \t /x/b c.wav\n",
    "trailing blanks and CRLF": "a 1.5 \r\nb\t2\t\nc 3\n",
    "leading blanks, no final newline": "  a 1\nb 2",
    "trailing blank on the last line, no newline": "a 1\nb 2 ",
    "trailing tab before a newline": "a 1\t\nb 2\n",
    "trailing unit separator": "a 1\x1f\nb 2\n",
    "vertical tab inside a value": "a x\x0by\nb 2\n",
    "byte-order mark": "\ufeffa 1\nb 2\n",
    "unicode spaces": "a\u30001.0\nb\u20032.5\u3000\n",
    "blank line": "a 1\n\nb 2\n",
    "blank-only line": "a 1\n \t \nb 2\n",
    "key without value": "a 1\nb\nc 3\n",
    "duplicate": "a 1\nb 2\na 3\n",
    "not a number": "a 1\nb x\n",
    "not finite": "a 1\nb inf\n",
    "nan": "a nan\n",
    "underscored number": "a 1_000\nb 2e3\n",
    "empty file": "",
}


@pytest.mark.parametrize("name", list(KV_CASES))
@pytest.mark.parametrize("vt", [str, float])
def test_read_kv_equals_the_old_reader(tmp_path, name, vt):
    p = tmp_path / "t"
    p.write_text(KV_CASES[name], encoding="utf-8")
    assert _outcome(read_kv, p, vt) == _outcome(_read_kv_old, p, vt)


def test_datadir_load_equals_old_tables(tmp_path):
    rng = np.random.default_rng(0)
    utts = sorted(f"s{rng.integers(0, 30):02d}-u{i:04d}" for i in range(500))
    wav = {u: f"/data/{u}.wav" for u in utts}
    d = DataDir(wav=wav, utt2spk={u: u[:3] for u in utts}, utt2dur={u: float(rng.uniform(1, 9)) for u in utts},
                utt2sess={u: f"v{i % 40}" for i, u in enumerate(utts)})
    d.write(tmp_path / "d")
    got = DataDir.load(tmp_path / "d")
    for name, vt in (("wav.scp", str), ("utt2spk", str), ("utt2dur", float), ("utt2sess", str)):
        attr = {"wav.scp": "wav"}.get(name, name)
        assert list(getattr(got, attr).items()) == list(_read_kv_old(tmp_path / "d" / name, vt).items())
    # utt2spk listing an utterance that wav.scp lacks is still found when the key lists differ.
    (tmp_path / "d" / "wav.scp").write_text("".join(f"{u} {wav[u]}\n" for u in utts[1:]))
    with pytest.raises(DataError, match="1 utterances of utt2spk have no wav.scp entry"):
        DataDir.load(tmp_path / "d")


# ------------------------------------------------------------------ the probe cache


def _corpus(root, n=12):
    import soundfile as sf

    rng = np.random.default_rng(1)
    wav, utt2spk = {}, {}
    for i in range(n):
        p = root / "wav" / f"u{i:02d}.wav"
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(p), rng.standard_normal(int(rng.integers(4000, 24000))).astype(np.float32) * 0.1, 16000,
                 subtype="PCM_16")
        wav[f"s{i % 3}-u{i:02d}"], utt2spk[f"s{i % 3}-u{i:02d}"] = str(p), f"s{i % 3}"
    (root / "wav" / "bad.wav").write_bytes(b"not audio at all")
    wav["s0-bad"], utt2spk["s0-bad"] = str(root / "wav" / "bad.wav"), "s0"
    wav["s1-gone"], utt2spk["s1-gone"] = str(root / "wav" / "gone.wav"), "s1"
    sf.write(str(root / "wav" / "r8k.wav"), np.zeros(9000, np.float32), 8000)
    wav["s2-r8k"], utt2spk["s2-r8k"] = str(root / "wav" / "r8k.wav"), "s2"
    DataDir(wav=wav, utt2spk=utt2spk).write(root / "data")
    return root / "data"


def _scan_old(data, min_seconds, sample_rate):
    """scan_training_audio's result as computed before the cache (commit 4ce1cc2), serially."""
    from spkcausal.data.audio import probe_audio

    ok, skipped = {}, {}
    min_samples = int(round(min_seconds * sample_rate))
    for utt in data.utts:
        frames, _, why = probe_audio(data.wav[utt], sample_rate)
        if why:
            skipped[utt] = why
        elif frames < min_samples:
            skipped[utt] = f"too short ({frames / sample_rate:.3f} s < {min_seconds} s)"
        else:
            ok[utt] = frames
    return sorted(ok), ok, skipped


def _as_tuple(scan):
    return scan.utts, scan.num_samples, scan.skipped


def test_probe_cache_is_used_when_valid_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    import os

    import soundfile as sf

    import spkcausal.data.dataset as ds
    from spkcausal.data.lengthcache import CACHE_NAME

    d = _corpus(tmp_path)
    data = DataDir.load(d)
    ref = _scan_old(data, 0.5, 16000)
    assert ref[2] and ref[1]  # both usable and skipped files, so both kinds of entry are cached
    first = ds.scan_training_audio(data, 0.5, 16000, num_threads=2)
    assert _as_tuple(first) == ref and (d / CACHE_NAME).is_file()
    # No length limit: unusable files (0 frames) stay skipped, from the cache as from the probe.
    assert _as_tuple(ds.scan_training_audio(data, 0.0, 16000, num_threads=2)) == _scan_old(data, 0.0, 16000)

    real_probe = ds.probe_audio
    probed = []

    def must_not_read(path, sr):
        raise AssertionError(f"header read of {path} although the cache is valid")

    monkeypatch.setattr(ds, "probe_audio", must_not_read)
    assert _as_tuple(ds.scan_training_audio(DataDir.load(d), 0.5, 16000, num_threads=2)) == ref

    # One file changes (length and mtime): only it is read again, and the result follows it.
    changed = data.wav["s1-u04"]
    sf.write(changed, np.zeros(3000, np.float32), 16000, subtype="PCM_16")  # 0.19 s: now too short
    st = os.stat(changed)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a coarse-mtime file system still sees it

    def counting(path, sr):
        probed.append(path)
        return real_probe(path, sr)

    monkeypatch.setattr(ds, "probe_audio", counting)
    again = ds.scan_training_audio(DataDir.load(d), 0.5, 16000, num_threads=2)
    assert probed == [changed]
    assert _as_tuple(again) == _scan_old(DataDir.load(d), 0.5, 16000)
    assert "s1-u04" in again.skipped and "too short" in again.skipped["s1-u04"]
    # ... and the rewritten cache now serves it.
    monkeypatch.setattr(ds, "probe_audio", must_not_read)
    assert _as_tuple(ds.scan_training_audio(DataDir.load(d), 0.5, 16000, num_threads=2)) == _as_tuple(again)

    # Another expected rate changes every probe's outcome: the cache is rebuilt whole.
    probed.clear()
    monkeypatch.setattr(ds, "probe_audio", counting)
    at8k = ds.scan_training_audio(DataDir.load(d), 0.5, 8000, num_threads=2)
    assert len(probed) == len(data) and _as_tuple(at8k) == _scan_old(DataDir.load(d), 0.5, 8000)

    # A torn cache file is ignored (rebuilt), never trusted.
    (d / CACHE_NAME).write_bytes(b"PK\x03\x04 torn")
    probed.clear()
    assert _as_tuple(ds.scan_training_audio(DataDir.load(d), 0.5, 8000, num_threads=2)) == _as_tuple(at8k)
    assert len(probed) == len(data)


def test_probe_cache_follows_a_changed_file_list(tmp_path, monkeypatch):
    import spkcausal.data.dataset as ds

    d = _corpus(tmp_path)
    data = DataDir.load(d)
    ds.scan_training_audio(data, 0.5, 16000, num_threads=2)
    # A subset written to the same dir (utterances removed) and one new file: only the new one is read.
    keep = data.utts[::2]
    sub = data.subset(keep)
    extra = tmp_path / "wav" / "u00.wav"
    sub.wav["s9-new"], sub.utt2spk["s9-new"] = str(extra.with_name("new.wav")), "s9"
    extra.with_name("new.wav").write_bytes(extra.read_bytes())
    sub.write(d)
    probed = []
    real_probe = ds.probe_audio
    monkeypatch.setattr(ds, "probe_audio", lambda p, sr: probed.append(p) or real_probe(p, sr))
    got = ds.scan_training_audio(DataDir.load(d), 0.5, 16000, num_threads=2)
    assert probed == [sub.wav["s9-new"]]
    assert _as_tuple(got) == _scan_old(DataDir.load(d), 0.5, 16000)


# ------------------------------------------------------------------ the class-balanced shard plan


def _window_loop_old(w, u, k):
    """The weighted window's draws as ShardTrainStream.plan computed them before (commit 4ce1cc2)."""
    out = np.empty(len(u), dtype=np.int64)
    for e in range(len(u)):
        c = np.cumsum(w[e:e + k])
        out[e] = e + min(int(np.searchsorted(c, u[e] * c[-1], side="right")), k - 1)
    return out


def _plan_old(stream, epoch, s):
    """ShardTrainStream.plan's weighted branch before vectorisation (commit 4ce1cc2)."""
    import math

    quota = stream.stream_batches(s) * stream.batch_size
    one_pass = np.concatenate([stream._by_shard[x] for x in stream.stream_shards(epoch, s)])
    k = min(stream.buffer_size, len(one_pass))
    rng = np.random.default_rng([stream.seed, epoch, stream.rank, s, 11])
    need = k + quota
    reads = np.tile(one_pass, math.ceil(need / len(one_pass)))[:need]
    w = stream.example_weights(epoch)[reads]
    return reads[:k + quota - 1], _window_loop_old(w, rng.random(quota), k)


@pytest.mark.parametrize("scheme,buffer,streams", [("class_balanced", 64, 2), ("sqrt", 300, 3),
                                                    ("progressive", 17, 1), ("class_balanced", 5000, 2)])
def test_vectorised_shard_plan_equals_the_loop(scheme, buffer, streams):
    from fixtures_train import fake_shard_index

    from spkcausal.data.shardstream import ShardTrainStream

    rng = np.random.default_rng(7)
    counts = np.maximum(1, (400 / np.arange(1, 41) ** 1.2).astype(int))  # long tail, 40 classes
    labels = rng.permutation(np.repeat(np.arange(40), counts))
    stream = ShardTrainStream(fake_shard_index(labels, per_shard=23), 16000, 8, seed=3, name=scheme,
                              streams=streams, buffer_size=buffer, epochs=4)
    for epoch in (0, 2):
        for s in range(streams):
            reads, emits = stream.plan(epoch, s)
            old_reads, old_emits = _plan_old(stream, epoch, s)
            assert np.array_equal(reads, old_reads) and np.array_equal(emits, old_emits), (epoch, s)


def test_window_draws_equal_the_loop_on_ties_and_random_weights():
    from spkcausal.data.shardstream import window_draws

    rng = np.random.default_rng(0)
    k, n = 50, 4000
    # Integer weights sum exactly; u = j / k puts every target on a slot boundary: only the fallback decides.
    w = rng.integers(1, 4, n + k).astype(np.float64)
    u = rng.integers(0, k, n) / k
    assert np.array_equal(np.arange(n) + window_draws(w, u, k), _window_loop_old(w, u, k))
    # Weights spanning 12 orders of magnitude and a near-empty window.
    w = np.exp(rng.uniform(-14, 14, n + k))
    u = rng.random(n)
    assert np.array_equal(np.arange(n) + window_draws(w, u, k), _window_loop_old(w, u, k))
    assert np.array_equal(window_draws(w[:1], rng.random(1), 1), [0])


@pytest.mark.parametrize("user,busy,want", [(None, 1, "PASSIVE"), (None, 0, None), ("ACTIVE", 1, "ACTIVE")])
def test_cli_makes_openmp_wait_passively_on_a_busy_machine_before_torch(user, busy, want):
    """The CLI sets OMP_WAIT_POLICY=PASSIVE before any command imports torch when another task keeps a core busy
    (spin-waiting threads collapse then: docs/scale.md), leaves it unset on an idle machine (passive waiting
    is slower there), and keeps a policy the user set."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user:
        env["OMP_WAIT_POLICY"] = user
    code = (f"import os, sys\nimport spkcausal.utils as u\nu.other_runnable = lambda: {busy}\n"
            "from spkcausal.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert r.stdout.split()[-2:] == [str(want), "False"]


def test_other_runnable_reads_the_least_running_count(tmp_path):
    """/proc/loadavg's 4th field is running/total tasks, this reader included: others = the least count - 1."""
    from spkcausal.utils import other_runnable

    f = tmp_path / "loadavg"
    f.write_text("1.13 1.15 1.75 3/110 17674\n")
    assert other_runnable(samples=2, gap=0.0, loadavg=str(f)) == 2
    f.write_text("0.00 0.00 0.00 1/75 1\n")
    assert other_runnable(samples=1, loadavg=str(f)) == 0
    assert other_runnable(samples=1, loadavg=str(tmp_path / "missing")) == 0  # no /proc: assume idle
