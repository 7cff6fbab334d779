"""Python API, `embed` / `verify` / `set-threshold` commands: one file gives the same vector through the CLI,
the API and the recipes' extraction; resampling and channel mixing; scores equal the recipe's scorer."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from fixtures_train import make_corpus, tiny_config
from scipy.signal import resample_poly

import spkcausal
from spkcausal.cli import main
from spkcausal.data.datadir import DataDir
from spkcausal.data.embeddings import EmbeddingStore
from spkcausal.data.trialio import read_scores
from spkcausal.inference.extract import extract
from spkcausal.scoring.metrics import eer_with_threshold
from spkcausal.train.trainer import train
from spkcausal.utils import DataError


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    """A briefly trained Causal Norm AAM experiment with its training-set store and a stored alpha."""
    root = tmp_path_factory.mktemp("api")
    data_dir = make_corpus(root, utts_per_spk=3)
    cfg = tiny_config(data_dir, root / "exp", head={"name": "causal_norm_aam", "scale": 16.0, "margin": 0.1},
                      sampler={"num_samples": 32}, train={"epochs": 2, "batch_size": 8})
    train(cfg)
    extract(data_dir, root / "exp" / "emb" / "data", exp_dir=root / "exp", num_workers=0, device="cpu")
    (root / "exp" / "tde_alpha.json").write_text(json.dumps({"alpha": 0.6}))
    return data_dir, root / "exp"


def _close(a: np.ndarray, b: np.ndarray, tol: float = 1e-5) -> bool:
    """Within `tol` relative to the embedding's scale (trained ones reach 1e5: float32 keeps ~7 digits)."""
    return bool(np.abs(np.asarray(a) - b).max() <= tol * max(1.0, np.abs(b).max()))


def test_import_spkcausal_stays_light():
    code = "import sys, spkcausal; assert 'torch' not in sys.modules; assert callable(spkcausal.load_model)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_one_file_same_vector_via_cli_api_and_extract(exp, tmp_path):
    data_dir, exp_dir = exp
    data = DataDir.load(data_dir)
    utt = "spk2-u01"
    recipe = EmbeddingStore.open(exp_dir / "emb" / "data").get([utt])[0]
    api = spkcausal.load_model(exp_dir).embed(data.wav[utt])
    assert main(["embed", str(exp_dir), data.wav[utt], "--out", str(tmp_path / "e"), "--device", "cpu",
                 "--num-workers", "0", "--ark"]) == 0
    cli = EmbeddingStore.open(tmp_path / "e")
    assert cli.keys == ["u01"] and (tmp_path / "e" / "xvector.scp").is_file()
    assert _close(api, recipe, 1e-6) and _close(cli.get(["u01"])[0], recipe, 1e-6)
    assert not _close(EmbeddingStore.open(exp_dir / "emb" / "data").get(["spk3-u01"])[0], recipe, 1e-3)


def test_waveforms_resampling_channels_and_short_input(exp, tmp_path):
    data_dir, exp_dir = exp
    m = spkcausal.load_model(exp_dir)
    path = DataDir.load(data_dir).wav["spk1-u00"]
    x, sr = sf.read(path, dtype="float32")
    ref = m.embed(path)
    assert _close(m.embed(x), ref)
    sf.write(str(tmp_path / "st.wav"), np.stack([x, x], axis=1), sr, subtype="FLOAT")  # stereo: averaged
    assert _close(m.embed(tmp_path / "st.wav"), ref)
    # 8 kHz input is brought to the model's 16 kHz: the same as upsampling it first (scipy, independently)
    x8 = resample_poly(x, 1, 2).astype(np.float32)
    sf.write(str(tmp_path / "x8.wav"), x8, 8000, subtype="FLOAT")
    up = resample_poly(x8, 2, 1).astype(np.float32)
    assert _close(m.embed(tmp_path / "x8.wav"), m.embed(up))
    assert _close(m.embed(x8, sample_rate=8000), m.embed(up))
    assert not _close(m.embed(up), ref, 1e-4)  # resampling is not a no-op here
    batch = m.embed([path, x, tmp_path / "x8.wav"])
    assert batch.shape == (3, ref.shape[0]) and _close(batch[0], ref) and _close(batch[1], ref)
    sf.write(str(tmp_path / "short.wav"), x[:3200], sr)
    with pytest.raises(DataError, match="short.wav.*0.200 s"):
        m.embed([path, tmp_path / "short.wav"])
    assert m.embed(tmp_path / "short.wav", short="repeat").shape == ref.shape


def test_scores_equal_the_recipe_scorer(exp, tmp_path):
    """TDE + mean subtraction: the API's score equals `spkcausal score` on TDE'd stores (the recipe's path)."""
    data_dir, exp_dir = exp
    data = DataDir.load(data_dir)
    m = spkcausal.load_model(exp_dir)
    pairs = [("spk1-u00", "spk1-u02"), ("spk1-u00", "spk4-u01")]
    trials = tmp_path / "trials"
    trials.write_text("".join(f"{a} {b} {'target' if a[:4] == b[:4] else 'nontarget'}\n" for a, b in pairs))
    emb = exp_dir / "emb"
    assert main(["extract", "--raw", str(emb / "data"), "--tde-alpha", "0.6", "--out", str(tmp_path / "tde")]) == 0
    assert main(["score", "--trials", str(trials), "--emb", str(tmp_path / "tde"), "--mean-store",
                 str(tmp_path / "tde"), "--out-dir", str(tmp_path / "s")]) == 0
    recipe = read_scores(tmp_path / "s" / "trials.score").scores
    api = [m.score(data.wav[a], data.wav[b], tde_alpha="stored", mean_sub=True) for a, b in pairs]
    # the score file keeps 6 decimals (5e-7) and the API embeds one file at a time (float32, ~1e-7 off float64)
    np.testing.assert_allclose(api, recipe, atol=2e-6)
    plain = [m.score(data.wav[a], data.wav[b]) for a, b in pairs]
    assert np.abs(np.array(plain) - recipe).max() > 1e-3  # TDE + centring changed something


def test_set_threshold_and_verify(exp, tmp_path, capsys):
    data_dir, exp_dir = exp
    data = DataDir.load(data_dir)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.normal(0.2 + 0.5 * labels, 0.2)
    dev = tmp_path / "dev.score"
    dev.write_text("".join(f"e{i} t{i} {s:.6f} {'target' if lab else 'nontarget'}\n"
                           for i, (s, lab) in enumerate(zip(scores, labels))))
    assert main(["set-threshold", str(exp_dir), "--scores", str(dev), "--mean-sub"]) == 0
    rec = json.loads((exp_dir / "threshold.json").read_text())
    # float64 on the same 6-decimal scores: the same threshold up to float64 rounding
    assert abs(rec["threshold"] - eer_with_threshold(np.round(scores, 6), labels)[1]) < 1e-9
    capsys.readouterr()
    a, b = data.wav["spk1-u00"], data.wav["spk1-u02"]
    assert main(["verify", str(exp_dir), a, b, "--device", "cpu"]) == 0
    line = capsys.readouterr().out
    score = spkcausal.load_model(exp_dir).score(a, b, mean_sub=True)
    decision = "accept" if score >= rec["threshold"] else "reject"
    assert f"score {score:.4f}  {decision}" in line and "threshold.json" in line and "mean subtraction" in line
    assert main(["verify", str(exp_dir), a, b, "--threshold", "2.0", "--device", "cpu"]) == 0
    assert "reject" in capsys.readouterr().out  # a cosine never reaches 2
    # a calibrated threshold: the raw score whose calibrated LLR is the Bayes threshold -logit(p)
    assert main(["calibrate", "--dev", str(dev), "--out", str(tmp_path / "cal.json")]) == 0
    assert main(["set-threshold", str(exp_dir), "--scores", str(dev), "--mean-sub",
                 "--calibration", str(tmp_path / "cal.json"), "--p-target", "0.05"]) == 0
    rec = json.loads((exp_dir / "threshold.json").read_text())
    cal = json.loads((tmp_path / "cal.json").read_text())
    llr_at = cal["weights"][0] * rec["threshold"] + cal["bias"]
    assert rec["kind"] == "calibrated" and abs(llr_at - np.log(0.95 / 0.05)) < 1e-9  # float64 logit, exact to ~1e-15
    capsys.readouterr()
    assert main(["verify", str(exp_dir), a, b, "--device", "cpu"]) == 0
    assert "calibrated threshold" in capsys.readouterr().out
    (exp_dir / "threshold.json").unlink()
    assert main(["verify", str(exp_dir), a, b, "--device", "cpu"]) == 2  # no stored threshold: one-line error


def test_inputs_from_files_directories_and_wav_scp(tmp_path):
    from spkcausal.inference.api import collect_inputs

    for rel in ("d/s1/a.wav", "d/s1/b.flac", "d/s2/a.wav", "d/notes.txt", "x.wav"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    scp = tmp_path / "wav.scp"
    scp.write_text(f"u1 {tmp_path / 'x.wav'}\n")
    got = collect_inputs([tmp_path / "d", scp, tmp_path / "x.wav"])
    assert [k for k, _ in got] == ["s1/a", "s1/b", "s2/a", "u1", "x"]
    with pytest.raises(DataError, match="key 'x'"):
        collect_inputs([tmp_path / "x.wav", tmp_path / "x.wav"])
    scp.write_text("u1 sox in.wav -t wav - |\n")
    with pytest.raises(DataError, match="pipe"):
        collect_inputs([scp])
