"""Property tests for bad input (issue 20): every reader, fed a small valid file malformed in generated ways
(truncated at every byte, bytes flipped or inserted, NaN / inf, a BOM, CRLF line ends, wrong column counts or
types), ends either in the result an independent reading of those bytes gives (the clean file's result when the
change is one the format ignores: a BOM, CRLF) or in one line naming the file (a SpkcausalError: exit 2 from the
CLI). Never another exception, never a multi-line message, never a result the bytes do not say.

The oracles are written from the format descriptions (docs/design.md section 7), not from the readers' code.
Counts of generated cases per reader are printed with `pytest -s` (module teardown)."""
from __future__ import annotations

import io
import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spkcausal.data.datadir import read_kv, read_list_kv
from spkcausal.data.embeddings import EmbeddingStore, write_store
from spkcausal.data.shards import load_shards
from spkcausal.data.trialio import read_scores, read_trials
from spkcausal.inference.api import read_threshold
from spkcausal.nn.checkpoint import load_checkpoint, save_checkpoint
from spkcausal.nn.config import load_train_config, merge_defaults
from spkcausal.scoring.calibration import CalibrationModel
from spkcausal.utils import SpkcausalError

CASES: Counter = Counter()
FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])
SLOW = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])
BOM = b"\xef\xbb\xbf"
REJECT = object()  # what an oracle returns for bytes the format does not allow


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    print("\nbad-input cases per reader: " + ", ".join(f"{k} {v}" for k, v in sorted(CASES.items())))


# ------------------------------------------------------------------ mutations


def mutations(clean: bytes, tokens: tuple[bytes, ...] = ()) -> st.SearchStrategy[bytes]:
    """Malformed variants of `clean`: truncation, a flipped / inserted / deleted byte, a token replaced by
    NaN, inf or a word, a BOM, CRLF, a line duplicated, a column dropped or added."""
    n = len(clean)
    lines = clean.split(b"\n")
    words = st.sampled_from([b"nan", b"NaN", b"inf", b"-inf", b"1e999", b"abc", b"1_000", b"", b" ", b"\t",
                             b"\x00", b"\xff", b"true", b"null", b"[]", b"{}", b'"x"', b"-1", b"0", b"1e-3",
                             *tokens])

    def replace_token(args):
        i, w = args
        toks = re.split(rb"(\s+)", clean)
        spots = [j for j, t in enumerate(toks) if t and not t.isspace()]
        toks[spots[i % len(spots)]] = w
        return b"".join(toks)

    def column(args):
        i, add = args
        ls = list(lines)
        k = i % len(ls)
        parts = ls[k].split(b" ")
        ls[k] = b" ".join(parts + [b"extra"] if add else parts[:-1])
        return b"\n".join(ls)

    return st.one_of(
        st.integers(0, n).map(lambda i: clean[:i]),
        st.tuples(st.integers(0, max(n - 1, 0)), st.integers(0, 255)).map(
            lambda a: clean[:a[0]] + bytes([a[1]]) + clean[a[0] + 1:]),
        st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=3)).map(
            lambda a: clean[:a[0]] + a[1] + clean[a[0]:]),
        st.integers(0, max(n - 1, 0)).map(lambda i: clean[:i] + clean[i + 1:]),
        st.tuples(st.integers(0, 1000), words).map(replace_token),
        st.just(BOM + clean),
        st.just(clean.replace(b"\n", b"\r\n")),
        st.integers(0, 1000).map(lambda i: b"\n".join(lines[:i % len(lines) + 1] + lines[i % len(lines):])),
        st.tuples(st.integers(0, 1000), st.booleans()).map(column),
    )


def check(reader, path: Path, oracle_value, same, name: str) -> None:
    """The property: an error is one line naming the file; a result equals the oracle's (which must accept)."""
    CASES[name] += 1
    try:
        got = reader(path)
    except SpkcausalError as e:
        msg = str(e)
        assert "\n" not in msg and str(path) in msg, msg
        assert "weights_only=False" not in msg and "file an issue" not in msg.lower(), msg
        return
    assert oracle_value is not REJECT, f"{name}: accepted bytes the format forbids, got {got!r}"
    assert same(got, oracle_value), f"{name}: {got!r} != {oracle_value!r}"


# ------------------------------------------------------------------ table oracles (design.md section 7)

_NUM = re.compile(rb"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_LABEL = {b"target": 1, b"nontarget": 0, b"1": 1, b"0": 0}


def _rows(data: bytes, allowed: tuple[int, ...]):
    """Whitespace-split non-blank lines (BOM dropped), all of one allowed width; REJECT otherwise."""
    if data.startswith(BOM):
        data = data[3:]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return REJECT
    if b"\x00" in data:  # not text
        return REJECT
    rows = [ln.split() for ln in data.split(b"\n")]
    rows = [r for r in rows if r]
    if not rows or len(rows[0]) not in allowed or any(len(r) != len(rows[0]) for r in rows):
        return REJECT
    return rows


def _no_repeat(pairs) -> bool:
    return len(set(pairs)) == len(pairs)


def oracle_scores(data: bytes):
    rows = _rows(data, (3, 4))
    if rows is REJECT:
        return REJECT
    out = []
    for r in rows:
        if not _NUM.match(r[2]) or not math.isfinite(float(r[2])):
            return REJECT
        if len(r) == 4 and r[3] not in _LABEL:
            return REJECT
        out.append((r[0].decode(), r[1].decode(), float(r[2]), _LABEL[r[3]] if len(r) == 4 else -1))
    return out if _no_repeat([(a, b) for a, b, _, _ in out]) else REJECT


def oracle_trials(data: bytes):
    rows = _rows(data, (2, 3))
    if rows is REJECT:
        return REJECT
    vox = len(rows[0]) == 3 and rows[0][0] in (b"0", b"1")
    out = []
    for r in rows:
        if len(r) == 2:
            out.append((r[0].decode(), r[1].decode(), -1))
            continue
        lab, e, t = (r[0], r[1], r[2]) if vox else (r[2], r[0], r[1])
        if lab not in _LABEL:
            return REJECT
        out.append((e.decode(), t.decode(), _LABEL[lab]))
    return out if _no_repeat([(a, b) for a, b, _ in out]) else REJECT


def _text_lines(text: str) -> list[str]:
    """Lines of a text file read in Python's text mode: \\n, \\r\\n and a lone \\r all end a line."""
    lines = re.split(r"\r\n|\r|\n", text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def oracle_kv(data: bytes, value_type=str):
    """`key value` lines (value: the rest of the line, stripped); no blank line, no repeated key."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return REJECT
    lines = _text_lines(text.removeprefix("\ufeff"))
    out = {}
    for line in lines:
        m = re.match(r"^\s*(\S+)\s+(\S.*?)\s*$", line, re.S)
        if not m or m.group(1) in out:
            return REJECT
        value = m.group(2)
        if value_type is float:
            try:
                value = float(value)
            except ValueError:
                return REJECT
            if not math.isfinite(value):
                return REJECT
        out[m.group(1)] = value
    return out


def oracle_list_kv(data: bytes):
    try:
        lines = _text_lines(data.decode("utf-8").removeprefix("\ufeff"))
    except UnicodeDecodeError:
        return REJECT
    out = {}
    for line in lines:
        parts = line.split()
        if len(parts) < 2 or parts[0] in out:
            return REJECT
        out[parts[0]] = parts[1:]
    return out


SCORES = (b"id1/a.wav id2/b.wav 0.731 target\nid1/a.wav id3/c.wav -1.25e-1 nontarget\n"
          b"id2/b.wav id3/c.wav .5 1\nid3/c.wav id1/a.wav 3 0\n")
TRIALS_KALDI = b"id1/a.wav id2/b.wav target\nid1/a.wav id3/c.wav nontarget\nid2/b.wav id3/c.wav target\n"
TRIALS_VOX = b"1 id1/a.wav id2/b.wav\n0 id1/a.wav id3/c.wav\n1 id2/b.wav id3/c.wav\n"
UTT2SPK = b"spk1-u1 spk1\nspk1-u2 spk1\nspk2-u1 spk2\n"
UTT2DUR = b"spk1-u1 1.250\nspk1-u2 0.5\nspk2-u1 12\n"
SPK2UTT = b"spk1 spk1-u1 spk1-u2\nspk2 spk2-u1\n"


def _scores_result(path):
    s = read_scores(path, keys=True)
    return [(e, t, float(v), int(lab)) for e, t, v, lab in zip(s.enroll, s.test, s.scores, s.labels)]


def _trials_result(path):
    t = read_trials(path)
    return [(e, u, int(lab)) for e, u, lab in zip(t.enroll, t.test, t.labels)]


def _eq(a, b):
    return a == b


def _write(tmp_path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@FAST
@given(data=mutations(SCORES, (b"target", b"nontarget", b"0.1")))
def test_score_file(tmp_path, data):
    check(_scores_result, _write(tmp_path, "s.score", data), oracle_scores(data), _eq, "score file")


@pytest.mark.parametrize("clean", [SCORES, TRIALS_KALDI], ids=["scores", "trials"])
def test_truncated_at_every_byte(tmp_path, clean):
    reader, oracle = (_scores_result, oracle_scores) if clean is SCORES else (_trials_result, oracle_trials)
    for i in range(len(clean) + 1):
        check(reader, _write(tmp_path, "t.txt", clean[:i]), oracle(clean[:i]), _eq,
              "score file" if clean is SCORES else "trial list")


def test_bom_and_crlf_give_the_clean_result(tmp_path):
    for clean, reader in ((SCORES, _scores_result), (TRIALS_KALDI, _trials_result), (TRIALS_VOX, _trials_result)):
        want = reader(_write(tmp_path, "c.txt", clean))
        for variant in (BOM + clean, clean.replace(b"\n", b"\r\n"), BOM + clean.replace(b"\n", b"\r\n")):
            assert reader(_write(tmp_path, "v.txt", variant)) == want
    for clean, reader in ((UTT2SPK, read_kv), (SPK2UTT, read_list_kv)):
        want = reader(_write(tmp_path, "c", clean))
        for variant in (BOM + clean, clean.replace(b"\n", b"\r\n")):
            assert reader(_write(tmp_path, "v", variant)) == want


@FAST
@given(data=st.one_of(mutations(TRIALS_KALDI, (b"target", b"1")), mutations(TRIALS_VOX, (b"0", b"target"))))
def test_trial_list(tmp_path, data):
    check(_trials_result, _write(tmp_path, "trials", data), oracle_trials(data), _eq, "trial list")


@FAST
@given(which=st.sampled_from(["utt2spk", "utt2dur", "spk2utt"]), seed=st.data())
def test_data_dir_tables(tmp_path, which, seed):
    clean = {"utt2spk": UTT2SPK, "utt2dur": UTT2DUR, "spk2utt": SPK2UTT}[which]
    data = seed.draw(mutations(clean, (b"spk1", b"1.0")))
    path = _write(tmp_path, which, data)
    if which == "spk2utt":
        check(read_list_kv, path, oracle_list_kv(data), _eq, "data-dir tables")
    else:
        vtype = float if which == "utt2dur" else str
        check(lambda p: read_kv(p, vtype), path, oracle_kv(data, vtype), _eq, "data-dir tables")


# ------------------------------------------------------------------ embedding store


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory):
    d = write_store(tmp_path_factory.mktemp("store") / "s", ["a", "b/c", "d"],
                    np.arange(12, dtype=np.float32).reshape(3, 4) / 7)
    return {name: (d / name).read_bytes() for name in ("embeddings.npy", "keys.txt", "store.json")}


def oracle_store(files: dict[str, bytes]):
    """store.json's n / dim / bytes agree with a float32 (n, dim) .npy of all-finite rows and n keys."""
    try:
        meta = json.loads(files["store.json"].decode("utf-8"))
        n, dim = int(meta["n"]), int(meta["dim"])
        if meta.get("bytes") != len(files["embeddings.npy"]):
            return REJECT
        m = np.load(io.BytesIO(files["embeddings.npy"]), allow_pickle=False)
        keys = files["keys.txt"].decode("utf-8").split("\n")
    except Exception:
        return REJECT
    if keys and keys[-1] == "":
        keys.pop()
    keys = [k.removesuffix("\r") for k in keys]  # one key a line; a key never holds whitespace or NUL
    if any(not k or re.search(r"[\s\x00]", k) for k in keys) or len(set(keys)) != len(keys):
        return REJECT
    if m.dtype != np.float32 or m.shape != (n, dim) or len(keys) != n or not np.isfinite(m).all():
        return REJECT
    return keys, m


@SLOW
@given(which=st.sampled_from(["embeddings.npy", "keys.txt", "store.json"]), draw=st.data())
def test_embedding_store(tmp_path, clean_store, which, draw):
    files = dict(clean_store)
    files[which] = draw.draw(mutations(files[which], (b"NaN", b"3", b"4.0")))
    d = tmp_path / "st"
    d.mkdir(exist_ok=True)
    for name, data in files.items():
        (d / name).write_bytes(data)

    def read(path):
        s = EmbeddingStore.open(path)
        return s.keys, np.array(s.matrix)

    def same(a, b):
        return a[0] == b[0] and a[1].dtype == b[1].dtype and np.array_equal(a[1], b[1])

    check(read, d, oracle_store(files), same, "embedding store")


# ------------------------------------------------------------------ config, threshold, calibration, manifest

CONFIG = (b"seed: 3\ndata: {train: /data/train, chunk_seconds: 2.0}\nmodel: {name: resnet_tiny}\n"
          b"optim: {lr: 0.1, final_lr: 1.0e-4}\ntrain: {epochs: 4, batch_size: 16, precision: fp32}\n")


def oracle_config(data: bytes):
    """A YAML mapping whose merge with the defaults passes the schema (types and ranges of every key)."""
    try:
        cfg = yaml.safe_load(data.decode("utf-8"))
        if cfg is None:
            cfg = {}
        if not isinstance(cfg, dict):
            return REJECT
        return merge_defaults(cfg)
    except Exception:
        return REJECT


@FAST
@given(data=mutations(CONFIG, (b"-1", b"ten", b"0", b"1e-3", b"fp32", b"{}")))
def test_config(tmp_path, data):
    check(load_train_config, _write(tmp_path, "c.yaml", data), oracle_config(data), _eq, "config")


THRESHOLD = b'{"threshold": 0.4125, "kind": "eer", "eer": 0.05, "tde_alpha": null, "mean_sub": false}\n'


def oracle_threshold(data: bytes):
    try:
        rec = json.loads(data.decode("utf-8-sig"))
        v = rec["threshold"]
    except Exception:
        return REJECT
    alpha = rec.get("tde_alpha")
    ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
          and (alpha is None or isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
               and math.isfinite(alpha))
          and isinstance(rec.get("mean_sub", False), bool) and isinstance(rec.get("kind", "eer"), str))
    return rec if ok else REJECT


@FAST
@given(data=mutations(THRESHOLD, (b"NaN", b"Infinity", b'"0.4"', b"1e400")))
def test_threshold(tmp_path, data):
    (tmp_path / "threshold.json").write_bytes(data)
    check(lambda p: read_threshold(p.parent), tmp_path / "threshold.json", oracle_threshold(data), _eq,
          "threshold")


CALIBRATION = (b'{"format": "spkcausal-calibration", "version": 1, "kind": "linear", "inputs": ["score"], '
               b'"weights": [4.5], "bias": -2.25, "p_target": 0.01, "quality": null, "dev": {}}\n')


def oracle_calibration(data: bytes):
    try:
        d = json.loads(data.decode("utf-8-sig"))
        ins, ws, b, p = d["inputs"], d["weights"], d["bias"], d["p_target"]
    except Exception:
        return REJECT
    if d.get("format") != "spkcausal-calibration" or not isinstance(ins, list) or not isinstance(ws, list):
        return REJECT
    nums = [*ws, b, p]
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in nums):
        return REJECT
    if len(ins) != len(ws) or not ins or str(ins[0]) != "score" or not 0 < p < 1:
        return REJECT
    q, dev = d.get("quality"), d.get("dev") or {}
    if q is not None and not isinstance(q, dict) or not isinstance(dev, dict):
        return REJECT
    return [str(i) for i in ins], [float(w) for w in ws], float(b), float(p)


@FAST
@given(data=mutations(CALIBRATION, (b"NaN", b'"score"', b"0", b"1", b"[]")))
def test_calibration_model(tmp_path, data):
    def read(path):
        m = CalibrationModel.load(path)
        return m.inputs, m.weights, m.bias, m.p_target

    check(read, _write(tmp_path, "cal.json", data), oracle_calibration(data), _eq, "calibration model")


@pytest.fixture(scope="module")
def clean_shards(tmp_path_factory, request):
    import soundfile as sf

    from spkcausal.data.datadir import DataDir
    from spkcausal.data.shards import make_shards

    root = tmp_path_factory.mktemp("shards")
    wav, u2s = {}, {}
    for i in range(4):
        p = root / f"u{i}.wav"
        sf.write(str(p), np.zeros(800 + i, np.int16), 16000, subtype="PCM_16")
        wav[f"u{i}"], u2s[f"u{i}"] = str(p), f"s{i % 2}"
    DataDir(wav=wav, utt2spk=u2s).write(root / "data")
    make_shards(root / "data", root / "sh", utts_per_shard=2, num_threads=1)
    return root / "sh"


@SLOW
@given(draw=st.data())
def test_shard_manifest(tmp_path, clean_shards, draw):
    import shutil

    clean = (clean_shards / "manifest.json").read_bytes()
    data = draw.draw(st.one_of(mutations(clean, (b'"../x.tar"', b'"/etc/passwd"', b"[]", b"3")),
                               st.just(clean.replace(b'"shard-000000.tar"', b'"../sh/shard-000000.tar"')),
                               st.just(clean.replace(b'"shard-000001.tar"', b'"/tmp/shard-000001.tar"'))))
    d = tmp_path / "sh"
    if not d.exists():
        shutil.copytree(clean_shards, d)
    (d / "manifest.json").write_bytes(data)
    CASES["shard manifest"] += 1
    try:
        index = load_shards(d)
    except SpkcausalError as e:
        assert "\n" not in str(e) and str(d) in str(e), str(e)
        return
    # accepted: every shard it will read is a file of this directory, listed as the index says
    assert all(p.parent == d and p.is_file() for p in index.shard_paths)
    manifest = json.loads(data.decode("utf-8"))
    assert [p.name for p in index.shard_paths] == [e["name"] for e in manifest["shards"]]
    assert index.keys == load_shards(clean_shards).keys


# ------------------------------------------------------------------ checkpoint


@pytest.fixture(scope="module")
def clean_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "c.pt"
    save_checkpoint({"model": {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, "step": 7,
                     "config": {"seed": 1}}, path)
    return path.read_bytes()


def _ckpt_same(a, b) -> bool:
    """Deep equality of two loaded states (a flipped byte may rename a key or change a tensor: both sides then
    agree on the changed state)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and \
            a.shape == b.shape and bool(torch.equal(a, b) or (a.isnan() == b.isnan()).all() and
                                        torch.equal(a.nan_to_num(), b.nan_to_num()))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_ckpt_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_ckpt_same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN equals NaN here


def oracle_ckpt(data: bytes):
    """A zip whose members pass their CRC-32 (Python's zipfile, not torch's reader) and are files, that torch's
    safe loader accepts (from memory, no file involved); REJECT otherwise."""
    import zipfile

    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        if z.testzip() is not None or any(i.external_attr & 0x10 or i.is_dir() for i in z.infolist()):
            return REJECT  # a member failing its CRC, or flagged as a directory (which torch reads as garbage)
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:
        return REJECT


@SLOW
@given(draw=st.data())
def test_checkpoint(tmp_path, clean_ckpt, draw):
    data = draw.draw(mutations(clean_ckpt))
    check(load_checkpoint, _write(tmp_path, "c.pt", data), oracle_ckpt(data), _ckpt_same, "checkpoint")


def test_checkpoint_truncated_at_every_64th_byte(tmp_path, clean_ckpt):
    for i in range(0, len(clean_ckpt), 64):
        check(load_checkpoint, _write(tmp_path, "c.pt", clean_ckpt[:i]), oracle_ckpt(clean_ckpt[:i]), _ckpt_same,
              "checkpoint")
