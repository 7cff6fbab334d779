"""Issue 20: nothing lost, nothing silently wrong. The four wrong cases (each failed before its fix), a full disk
(injected ENOSPC) during embed / score / train / make-shards / export leaving the previous output byte-identical
with one line and exit 2, and the user mistakes that used to be internal errors or several lines."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fixtures_faults import full_disk, tree_bytes
from fixtures_train import make_corpus, tiny_config

from spkcausal.cli import main
from spkcausal.data.datadir import DataDir
from spkcausal.data.embeddings import EmbeddingStore, write_store
from spkcausal.data.trialio import read_scores
from spkcausal.inference.extract import extract
from spkcausal.nn.config import save_config
from spkcausal.train.trainer import train
from spkcausal.utils import SpkcausalError


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    """A one-epoch tiny experiment, its training-set store and a 3-trial list."""
    root = tmp_path_factory.mktemp("robust")
    data_dir = make_corpus(root, utts_per_spk=3)
    cfg = tiny_config(data_dir, root / "exp", sampler={"num_samples": 16}, train={"epochs": 1, "batch_size": 8})
    train(cfg)
    extract(data_dir, root / "exp" / "emb" / "data", exp_dir=root / "exp", num_workers=0, device="cpu")
    trials = root / "trials"
    trials.write_text("spk1-u00 spk1-u01 target\nspk1-u00 spk2-u01 nontarget\nspk2-u00 spk2-u01 target\n")
    return root, data_dir, root / "exp", trials


def _one_line_error(capsys, rc: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if ln.strip() and " INFO " not in ln and " WARNING " not in ln
             and "it/s]" not in ln]  # log lines and progress bars are not the error
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err and "internal error" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------ the four wrong cases


def test_store_with_a_nan_row_is_not_scored(exp, tmp_path, capsys):
    root, _, exp_dir, trials = exp
    store = EmbeddingStore.open(exp_dir / "emb" / "data")
    m = np.array(store.matrix)
    m[store.index("spk1-u00"), 0] = np.nan
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("keys.txt", "store.json"):
        (bad / name).write_bytes((exp_dir / "emb" / "data" / name).read_bytes())
    np.save(bad / "embeddings.npy", m)  # same shape and size: only the NaN is wrong
    rc = main(["score", "--trials", str(trials), "--emb", str(bad), "--out-dir", str(tmp_path / "s")])
    _one_line_error(capsys, rc, "embeddings.npy", "'spk1-u00'", "NaN")
    assert not (tmp_path / "s" / "trials.score").exists()


@pytest.mark.parametrize("how", ["file", "option", "inf"])
def test_nan_threshold_is_refused_not_a_silent_reject(exp, tmp_path, capsys, how):
    root, data_dir, exp_dir, _ = exp
    wav = DataDir.load(data_dir).wav["spk1-u00"]
    argv = ["verify", str(exp_dir), wav, wav, "--device", "cpu"]
    thr = exp_dir / "threshold.json"
    try:
        if how == "option":
            with pytest.raises(SystemExit) as e:  # argparse's exit, before any model is loaded
                main(argv + ["--threshold", "nan"])
            rc = e.value.code
        else:
            thr.write_text('{"threshold": %s, "kind": "eer", "tde_alpha": null, "mean_sub": false}'
                           % ("NaN" if how == "file" else "Infinity"))
            rc = main(argv)
        _one_line_error(capsys, rc, "threshold.json" if how != "option" else "--threshold", "finite")
    finally:
        thr.unlink(missing_ok=True)
    assert main(argv + ["--threshold", "0.5"]) == 0  # a file verified against itself is accepted
    assert "accept" in capsys.readouterr().out


def test_negative_epochs_is_a_config_error_not_a_silent_no_op(exp, tmp_path, capsys):
    root, data_dir, _, _ = exp
    cfg = save_config(tiny_config(data_dir, tmp_path / "neg"), tmp_path / "c.yaml")
    for bad, want in (("train.epochs=-1", "train.epochs"), ("train.epochs=ten", "train.epochs"),
                      ("optim.lr=abc", "optim.lr"), ("train.batch_size=0", "train.batch_size"),
                      ("model.embed_dim=abc", "model.embed_dim"), ("features.n_mels=0", "features.n_mels")):
        rc = main(["train", "--config", str(cfg), bad])
        _one_line_error(capsys, rc, want)
    assert not (tmp_path / "neg" / "checkpoints").exists()


def test_builder_kwargs_admit_none_only_where_the_annotation_does():
    """check_kwargs judges a value by the parameter's annotation; None passes only a parameter typed `... | None`
    (OLTR's stage1_epochs), and a wrong kind is still refused with the key named."""
    from spkcausal.registry import check_kwargs
    from spkcausal.utils import UsageError

    def builder(stage1_epochs: float | int | None = 0.5, scale: float = 30.0) -> None:
        """A builder with one optional parameter."""

    check_kwargs(builder, {"stage1_epochs": None, "scale": 16}, "head")
    with pytest.raises(UsageError, match="head.scale"):
        check_kwargs(builder, {"scale": None}, "head")
    with pytest.raises(UsageError, match="head.stage1_epochs"):
        check_kwargs(builder, {"stage1_epochs": "half"}, "head")


Seconds = float | None  # a type alias: the annotation's text ("Seconds") names neither None nor float


def test_builder_kwargs_follow_the_evaluated_annotation_not_its_text():
    """An alias that admits None lets None through; its float half still refuses a word, naming the key."""
    from spkcausal.registry import check_kwargs
    from spkcausal.utils import UsageError

    def builder(limit: Seconds = 2.0) -> None:
        """A builder whose parameter is typed by an alias."""

    check_kwargs(builder, {"limit": None}, "head")
    with pytest.raises(UsageError, match=r"config key head.limit: expected a number or null, got 'two'"):
        check_kwargs(builder, {"limit": "two"}, "head")


def test_embed_rerun_on_a_full_disk_keeps_the_complete_store(exp, tmp_path, capsys):
    """The old writer deleted store.json and rewrote extract.json before the new embeddings: a valid store
    was destroyed. Every budget below fails at another byte of the new store."""
    root, data_dir, exp_dir, _ = exp
    wavs = [DataDir.load(data_dir).wav[u] for u in ("spk1-u00", "spk2-u01")]
    out = tmp_path / "e"
    argv = ["embed", str(exp_dir), *wavs, "--out", str(out), "--device", "cpu", "--num-workers", "0", "--ark"]
    assert main(argv) == 0
    before = tree_bytes(out)
    total = sum(len(b) for b in before.values())
    capsys.readouterr()
    for budget in (0, total // 4, total // 2, 3 * total // 4):
        with full_disk(tmp_path, budget) as disk:
            rc = main(argv)
        assert disk.hit, budget
        _one_line_error(capsys, rc, "no space left on device writing", str(out))
        assert tree_bytes(out) == before
        assert EmbeddingStore.open(out).keys == ["u00", "u01"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]  # no temporary sibling left behind


# ------------------------------------------------------------------ a full disk, command by command


def test_score_on_a_full_disk_keeps_the_previous_scores(exp, tmp_path, capsys):
    root, _, exp_dir, trials = exp
    out = tmp_path / "s"
    other = tmp_path / "other"
    other.write_text("spk3-u00 spk3-u01 target\nspk3-u00 spk4-u01 nontarget\n")
    argv = ["score", "--trials", str(trials), str(other), "--emb", str(exp_dir / "emb" / "data"),
            "--out-dir", str(out)]
    assert main(argv) == 0
    (out / "notes.txt").write_text("kept")  # a file of the user's in the score dir survives a rewrite
    before = {k: v for k, v in tree_bytes(out).items() if k != "score.log"}
    capsys.readouterr()
    for budget in (0, 60, 150):
        with full_disk(tmp_path, budget) as disk:
            rc = main(argv)
        assert disk.hit, budget
        _one_line_error(capsys, rc, "no space left on device writing", str(out))
        assert {k: v for k, v in tree_bytes(out).items() if k != "score.log"} == before
    assert main(argv) == 0 and (out / "notes.txt").read_text() == "kept"
    assert len(read_scores(out / "trials.score")) == 3


def test_train_on_a_full_disk_keeps_the_last_checkpoint(exp, tmp_path, capsys):
    root, data_dir, _, _ = exp
    exp_dir = tmp_path / "x"
    cfg = tiny_config(data_dir, exp_dir, sampler={"num_samples": 16}, train={"epochs": 1, "batch_size": 8})
    conf = save_config(cfg, tmp_path / "c.yaml")
    assert main(["train", "--config", str(conf)]) == 0
    ckpts = exp_dir / "checkpoints"
    before = tree_bytes(ckpts)
    capsys.readouterr()
    with full_disk(ckpts, 5000) as disk:  # config.yaml (outside) is written; the epoch-2 checkpoint is not
        rc = main(["train", "--config", str(conf), "--resume", "train.epochs=2"])
    assert disk.hit
    line = _one_line_error(capsys, rc, "no space left on device writing", "epoch_0002.pt")
    assert "torch" not in line.lower()
    assert tree_bytes(ckpts) == before
    assert main(["train", "--config", str(conf), "--resume", "train.epochs=2"]) == 0  # a re-run resumes fine
    assert (ckpts / "epoch_0002.pt").is_file() and (ckpts / "latest").read_text().strip() == "epoch_0002.pt"


def test_make_shards_on_a_full_disk_keeps_the_previous_set(exp, tmp_path, capsys):
    root, data_dir, _, _ = exp
    out = tmp_path / "sh"
    assert main(["make-shards", str(data_dir), "--out", str(out), "--utts-per-shard", "4", "--nj", "1"]) == 0
    before = tree_bytes(out)
    capsys.readouterr()
    # another seed plans another set: the old writer deleted the stale shards before writing new ones
    argv = ["make-shards", str(data_dir), "--out", str(out), "--utts-per-shard", "4", "--nj", "1", "--seed", "5"]
    with full_disk(tmp_path, 40000) as disk:
        rc = main(argv)
    assert disk.hit
    _one_line_error(capsys, rc, "no space left on device writing", str(out))
    assert tree_bytes(out) == before
    assert main(argv) == 0  # resumes in the kept .sh.partial sibling, then replaces the set whole
    assert json.loads((out / "manifest.json").read_text())["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sh"]


def test_export_on_a_full_disk_keeps_the_previous_model(exp, tmp_path, capsys):
    root, _, exp_dir, _ = exp
    out = tmp_path / "m.pt"
    argv = ["export", str(exp_dir), "--format", "torchscript", "--out", str(out)]
    assert main(argv) == 0
    before = out.read_bytes()
    capsys.readouterr()
    for budget in (0, 5000):
        with full_disk(tmp_path, budget) as disk:
            rc = main(argv)
        assert disk.hit
        _one_line_error(capsys, rc, "no space left on device writing", str(out))
        assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    x = torch.randn(1, 200, 40)
    assert torch.jit.load(str(out))(x, torch.tensor([200])).shape[0] == 1


# ------------------------------------------------------------------ user mistakes: one line, exit 2


def test_unwritable_outputs_are_refused_before_work(exp, tmp_path, capsys):
    root, data_dir, exp_dir, trials = exp
    wav = DataDir.load(data_dir).wav["spk1-u00"]
    emb = str(exp_dir / "emb" / "data")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (str(blocker / "sub"), "/proc/spkcausal-test"):
        for argv in (["score", "--trials", str(trials), "--emb", emb, "--out-dir", out],
                     ["export", str(exp_dir), "--format", "torchscript", "--out", out + "/m.pt"],
                     ["embed", str(exp_dir), wav, "--out", out, "--device", "cpu", "--num-workers", "0"],
                     ["make-trials", str(data_dir), "--out", out + "/t.txt", "--num-trials", "4"]):
            _one_line_error(capsys, main(argv), "cannot write")


def test_bad_option_values_are_one_line(exp, capsys):
    root, data_dir, exp_dir, _ = exp
    wav = DataDir.load(data_dir).wav["spk1-u00"]
    for argv in (["verify", str(exp_dir), wav, wav, "--tde-alpha", "abc"],
                 ["export", str(exp_dir), "--format", "torchscript", "--out", "x.pt", "--tde", "abc"],
                 ["verify", str(exp_dir), wav, wav, "--threshold", "inf"],
                 ["embed", str(exp_dir), wav, "--out", "x", "--num-workers", "-1"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "error: argument" in err, err


def test_store_mismatches_name_both_stores(exp, tmp_path, capsys):
    root, _, exp_dir, trials = exp
    emb = str(exp_dir / "emb" / "data")
    other = write_store(tmp_path / "d8", ["a", "b"], np.ones((2, 8), np.float32))
    for flag in ("--mean-store", "--cohort"):
        rc = main(["score", "--trials", str(trials), "--emb", emb, flag, str(other), "--out-dir", str(tmp_path / "s")])
        _one_line_error(capsys, rc, str(other), "8-dim", emb)
    rc = main(["eer", str(tmp_path)])
    _one_line_error(capsys, rc, str(tmp_path))
    missing = tmp_path / "missing.txt"
    missing.write_text("x y target\n")
    rc = main(["score", "--trials", str(missing), "--emb", emb, "--out-dir", str(tmp_path / "s"), "--allow-missing"])
    _one_line_error(capsys, rc, "missing.txt", "nothing to score")


# ------------------------------------------------------------------ the directory helper itself


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path, monkeypatch, exchange):
    from spkcausal import utils

    if not exchange:  # systems without renameat2 RENAME_EXCHANGE take the two-rename path
        monkeypatch.setattr(utils, "_exchange", lambda a, b: False)
    out = tmp_path / "d"
    with utils.atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), utils.atomic_dir(out) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("killed halfway")
    assert tree_bytes(out) == {"a": b"1"}
    with utils.atomic_dir(out, carry=True) as tmp:  # carried files are links: replacing one keeps the old
        assert (tmp / "a").read_text() == "1"
        utils.write_text_atomic(tmp / "b", "3")
    assert tree_bytes(out) == {"a": b"1", "b": b"3"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    # a kill between the two renames leaves only .d.old: the next use puts it back first
    out.rename(tmp_path / ".d.old")
    with pytest.raises(RuntimeError), utils.atomic_dir(out):
        raise RuntimeError("fails again")
    assert tree_bytes(out) == {"a": b"1", "b": b"3"}
    with pytest.raises(SpkcausalError, match="is not a directory"):
        (tmp_path / "f").write_text("x")
        with utils.atomic_dir(tmp_path / "f"):
            pass


def test_refused_checkpoints_are_one_line_saying_what_the_file_is(tmp_path):
    import pickle

    from spkcausal.nn.checkpoint import load_checkpoint

    pickle.dump({"a": 1}, open(tmp_path / "pickle.pt", "wb"))
    (tmp_path / "text.pt").write_text("hello\n")
    torch.save({"w": np.zeros(3)}, tmp_path / "numpy.pt")
    with pytest.warns(FutureWarning):
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "script.pt"))
    for name, what in (("pickle.pt", "plain pickle"), ("text.pt", "not a torch checkpoint"),
                       ("numpy.pt", "objects other than tensors"), ("script.pt", "TorchScript model")):
        with pytest.raises(SpkcausalError) as e:
            load_checkpoint(tmp_path / name)
        msg = str(e.value)
        assert "\n" not in msg and name in msg and what in msg and "weights_only" not in msg, msg


def test_silently_accepted_inputs_are_refused(exp, tmp_path, capsys):
    root, _, exp_dir, _ = exp
    s = tmp_path / "u.score"
    s.write_text("a b 0.5 target\nc d 1_000 nontarget\n")
    _one_line_error(capsys, main(["eer", str(s)]), f"{s}:2:", "'1_000'")
    # a results.json row with no figures: report used to exit 0 with no table
    e = tmp_path / "e"
    e.mkdir()
    (e / "results.json").write_text(json.dumps({"format": "spkcausal-results", "version": 1, "exp": str(e),
                                                "rows": {"cosine": {"label": "x"}}}))
    _one_line_error(capsys, main(["report", str(e)]), "results.json", "'cosine' has no figures")
    # a trial list and a wav.scp with a byte-order mark read as without it
    t = tmp_path / "bom_trials"
    t.write_bytes(b"\xef\xbb\xbf" + b"spk1-u00 spk1-u01 target\n")
    assert main(["score", "--trials", str(t), "--emb", str(exp_dir / "emb" / "data"), "--out-dir",
                 str(tmp_path / "s")]) == 0
    assert read_scores(tmp_path / "s" / "bom_trials.score", keys=True).enroll.tolist() == ["spk1-u00"]
