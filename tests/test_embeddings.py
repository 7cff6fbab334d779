"""Embedding store: round trip, partial stores rejected, key lookup errors, Kaldi ark/scp both ways."""
from __future__ import annotations

import numpy as np
import pytest

from spkcausal.cli import main
from spkcausal.data import embeddings
from spkcausal.data.embeddings import EmbeddingStore, export_kaldi, import_kaldi, speaker_means, write_store
from spkcausal.utils import DataError


def _emb(n=12, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return [f"id1{i:04d}/yt-_{i}/{i:05d}.wav" for i in range(n)], rng.normal(size=(n, d)).astype(np.float32)


def test_roundtrip_memmap(tmp_path):
    keys, emb = _emb()
    write_store(tmp_path / "s", keys, emb.astype(np.float64))
    st = EmbeddingStore.open(tmp_path / "s")
    assert st.keys == keys and len(st) == 12 and st.dim == 8
    assert isinstance(st.matrix, np.memmap) and st.matrix.dtype == np.float32
    assert np.array_equal(st.matrix, emb)
    assert st.index(keys[3]) == 3
    assert st.lookup([keys[5], keys[0], keys[5]]).tolist() == [5, 0, 5]
    assert np.array_equal(st.get([keys[2]]), emb[[2]])
    # Rewriting in place replaces the store (a rerun is safe).
    write_store(tmp_path / "s", keys[:3], emb[:3] * 2)
    st = EmbeddingStore.open(tmp_path / "s")
    assert st.keys == keys[:3] and np.array_equal(st.matrix, emb[:3] * 2)


def test_lookup_missing_names_count_and_first(tmp_path):
    keys, emb = _emb()
    st = EmbeddingStore.open(write_store(tmp_path / "s", keys, emb))
    want = [keys[0], "nope1", "nope2", keys[1], "nope1", "nope3", "nope4", "nope5", "nope6"]
    with pytest.raises(DataError, match=r"6 keys have no embedding.*first: nope1, nope2, nope3, nope4, nope5\)"):
        st.lookup(want)
    assert st.lookup(want, allow_missing=True).tolist() == [0, -1, -1, 1, -1, -1, -1, -1, -1]
    with pytest.raises(DataError, match="'zz' has no embedding"):
        st.index("zz")


def test_partial_or_inconsistent_store_rejected(tmp_path):
    keys, emb = _emb()
    d = write_store(tmp_path / "s", keys, emb)
    (d / "store.json").unlink()
    with pytest.raises(DataError, match="incomplete"):
        EmbeddingStore.open(d)
    write_store(d, keys, emb)
    (d / "keys.txt").write_text("".join(k + "\n" for k in keys[:-1]))
    with pytest.raises(DataError, match="11 keys; store.json says 12"):
        EmbeddingStore.open(d)
    write_store(d, keys, emb)
    raw = (d / "embeddings.npy").read_bytes()
    (d / "embeddings.npy").write_bytes(raw[:-40])
    with pytest.raises(DataError, match="not the size"):
        EmbeddingStore.open(d)
    write_store(d, keys, emb)
    (d / "keys.txt").unlink()
    with pytest.raises(DataError, match="keys.txt missing"):
        EmbeddingStore.open(d)
    with pytest.raises(DataError, match="no such embedding store"):
        EmbeddingStore.open(tmp_path / "absent")


def _tree_bytes(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_crash_while_writing_keeps_the_previous_store(tmp_path, monkeypatch):
    """A failure halfway through rewriting a store (here: a crash after half an .npy) leaves the previous store
    byte-identical and readable, and no temporary directory behind (issue 20: the old writer deleted
    store.json first, so a failed re-run destroyed a valid store)."""
    keys, emb = _emb()
    d = write_store(tmp_path / "s", keys, emb, meta={"run": 1})
    before = _tree_bytes(d)

    def boom(path, arr):
        with open(path, "wb") as f:
            f.write(b"\x93NUMPY half")
        raise OSError("disk full")

    monkeypatch.setattr(embeddings.np, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        write_store(d, keys[:4], emb[:4], meta={"run": 2})
    assert _tree_bytes(d) == before
    assert EmbeddingStore.open(d).keys == keys
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # the temporary sibling is gone
    monkeypatch.undo()
    write_store(d, keys[:4], emb[:4] * 3)  # a successful rewrite replaces the whole directory
    assert sorted(p.name for p in d.iterdir()) == ["embeddings.npy", "keys.txt", "store.json"]
    np.testing.assert_array_equal(EmbeddingStore.open(d).get(keys[:4]), (emb[:4] * 3).astype(np.float32))


def test_store_with_a_nan_row_is_refused_naming_row_and_key(tmp_path):
    keys, emb = _emb()
    d = write_store(tmp_path / "s", keys, emb)
    m = np.load(d / "embeddings.npy")
    m[3, 1] = np.inf
    np.save(d / "embeddings.npy", m)  # same size: store.json still agrees
    with pytest.raises(DataError, match=r"embeddings.npy: row 3 \(key 'id10003/yt-_3/00003.wav'\) holds NaN or inf"):
        EmbeddingStore.open(d)


@pytest.mark.parametrize("keys,emb,match", [
    (["a", "a"], np.zeros((2, 3)), "duplicate key 'a'"),
    (["a", "b c"], np.zeros((2, 3)), "whitespace"),
    (["a", "b"], np.zeros((3, 3)), "shape"),
    (["a", "b"], np.array([[0.0, 1.0], [np.nan, 0.0]]), "'b' is not finite"),
])
def test_write_store_rejects_bad_input(tmp_path, keys, emb, match):
    with pytest.raises(ValueError, match=match):
        write_store(tmp_path / "s", keys, emb)
    assert not (tmp_path / "s" / "store.json").exists()


def test_kaldi_export_import_roundtrip(tmp_path):
    import kaldiio

    keys, emb = _emb(6, 5)
    st = EmbeddingStore.open(write_store(tmp_path / "s", keys, emb))
    export_kaldi(st, tmp_path / "x.ark", tmp_path / "x.scp")
    back = kaldiio.load_scp(str(tmp_path / "x.scp"))
    assert list(back) == keys
    assert all(np.array_equal(back[k], e) for k, e in zip(keys, emb))
    for src in ("x.ark", "x.scp"):
        st2 = EmbeddingStore.open(import_kaldi(tmp_path / src, tmp_path / f"from_{src}"))
        assert st2.keys == keys and np.array_equal(st2.matrix, emb)
    # wespeaker / Kaldi sometimes store 1 x D matrices; a K x D matrix is not an embedding.
    kaldiio.save_ark(str(tmp_path / "m.ark"), {"u1": emb[:1], "u2": emb[1:2]})
    assert np.array_equal(EmbeddingStore.open(import_kaldi(tmp_path / "m.ark", tmp_path / "m")).matrix, emb[:2])
    kaldiio.save_ark(str(tmp_path / "bad.ark"), {"u1": emb[:2]})
    with pytest.raises(DataError, match="matrix of shape"):
        import_kaldi(tmp_path / "bad.ark", tmp_path / "bad")
    (tmp_path / "junk.ark").write_bytes(b"u1 \x00Bxx")
    with pytest.raises(DataError, match="junk.ark"):
        import_kaldi(tmp_path / "junk.ark", tmp_path / "junk")


def test_kaldi_cli(tmp_path):
    keys, emb = _emb(4, 3)
    write_store(tmp_path / "s", keys, emb)
    assert main(["export-emb", str(tmp_path / "s"), str(tmp_path / "e.ark"), str(tmp_path / "e.scp")]) == 0
    assert main(["import-emb", str(tmp_path / "e.scp"), str(tmp_path / "t")]) == 0
    assert np.array_equal(EmbeddingStore.open(tmp_path / "t").matrix, emb)
    assert main(["import-emb", str(tmp_path / "none.scp"), str(tmp_path / "u")]) == 2


def test_speaker_means(tmp_path):
    keys, emb = _emb(10, 4)
    st = EmbeddingStore.open(write_store(tmp_path / "s", keys, emb))
    d = tmp_path / "data"
    d.mkdir()
    spk = [f"spk{i % 3}" for i in range(10)]
    extra = "zz/none.wav spk9\n"  # no embedding: skipped, not fatal
    (d / "utt2spk").write_text("".join(f"{k} {s}\n" for k, s in zip(keys, spk)) + extra)
    names, means = speaker_means(st, d)
    assert names == ["spk0", "spk1", "spk2"]
    for j, name in enumerate(names):
        sel = [i for i in range(10) if spk[i] == name]
        assert np.allclose(means[j], emb[sel].astype(np.float64).mean(axis=0))  # float64 means: 1e-5 is loose
