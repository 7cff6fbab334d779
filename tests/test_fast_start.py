"""Training start without waiting (issue 29): read_kv's fast path equals the line-by-line reader it replaced, the
audio length cache is used when valid and rebuilt when a file changes, and the vectorised class-balanced shard
plan equals the loop it replaced. Each oracle is the old code, copied here."""
from __future__ import annotations

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
