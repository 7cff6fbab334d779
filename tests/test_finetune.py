"""train.init_from: the extractor starts from the source's weights with a fresh head for the new speakers, the
source's architecture / front-end are adopted, init_from is recorded, and a resumed fine-tune restores its own
checkpoint (init_from is not read again). Speakers: two disjoint halves of a synthetic corpus."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from fixtures_train import tiny_config

from spkcausal.corpora.synthetic import SynthConfig, make_synthetic_corpus
from spkcausal.data.datadir import DataDir
from spkcausal.nn.checkpoint import load_checkpoint
from spkcausal.train.trainer import train

pytestmark = pytest.mark.slow  # every test trains a pre-training and a fine-tuning run

SYNTH = dict(num_speakers=6, num_test_speakers=2, max_utts=4, imbalance=1.0, utt_seconds=(0.6, 0.8),
             sessions=(2, 2), val_per_speaker=0, test_per_speaker=0, veri_utts_per_speaker=2, num_trials=2, seed=3)


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    """Two data dirs over disjoint halves of the synthetic training speakers."""
    root = tmp_path_factory.mktemp("ft")
    make_synthetic_corpus(root / "corpus", SynthConfig(**SYNTH), nj=1)
    by_spk: dict[str, list[Path]] = {}
    for w in sorted((root / "corpus").rglob("*.wav")):
        by_spk.setdefault(w.relative_to(root / "corpus").parts[-3], []).append(w)
    spks = sorted(s for s, ws in by_spk.items() if len(ws) >= 4)[:6]
    dirs = []
    for name, part in (("a", spks[:3]), ("b", spks[3:])):
        wav = {f"{s}-{i}": str(w) for s in part for i, w in enumerate(by_spk[s])}
        DataDir(wav=wav, utt2spk={u: u.split("-")[0] for u in wav}).write(root / name)
        dirs.append(root / name)
    return root, dirs


def _cfg(data: Path, exp: Path, lr: float = 0.1, **train_kw) -> dict:
    return tiny_config(data, exp, model={"name": "resnet_tiny", "embed_dim": 16}, sampler={"num_samples": 16},
                       optim={"lr": lr, "final_lr": lr / 10, "warmup_epochs": 0, "weight_decay": 1e-4},
                       train={"epochs": 2, "batch_size": 8, **train_kw})


def _params(state: dict, net) -> dict:
    names = {n for n, _ in net.named_parameters()}
    return {k: v for k, v in state.items() if k in names}


def test_init_from_loads_extractor_fresh_head_and_resumes_its_own_checkpoint(halves):
    root, (a, b) = halves
    # The source: another architecture width than the fine-tune config asks for, and another speaker set.
    pre = train(_cfg(a, root / "pre") | {"model": {"name": "resnet_tiny", "embed_dim": 24}})
    src = load_checkpoint(root / "pre" / "checkpoints" / "epoch_0002.pt")
    # lr 1e-12: every parameter stays where it started (to 1e-9), so the run shows what it started from.
    ft = train(_cfg(b, root / "ft", lr=1e-12, init_from=str(root / "pre"), epochs=1))
    assert ft.net.model.embed_dim == 24  # the source's architecture, not the config's 16
    for k, v in _params(src["model"], pre.net.model).items():
        # lr 1e-12 times gradients < 1e2 is below half a float32 ulp of these weights: unchanged, 1e-9 spare
        assert torch.allclose(ft.net.model.state_dict()[k], v, rtol=0, atol=1e-9), k
    scratch = train(_cfg(b, root / "scratch", lr=1e-12, epochs=1) | {"model": {"name": "resnet_tiny",
                                                                                 "embed_dim": 24}})
    # two independent initialisations: far apart
    assert not torch.allclose(scratch.net.model.embedding.weight, ft.net.model.embedding.weight, atol=1e-3)
    assert ft.net.head.weight.shape[0] == 3 and not torch.equal(ft.net.head.weight, pre.net.head.weight)
    saved = yaml.safe_load((root / "ft" / "config.yaml").read_text())
    assert saved["train"]["init_from"] == str(root / "pre") and saved["model"]["embed_dim"] == 24

    # Resume: a fine-tune whose last checkpoint is lost continues from epoch 1's; init_from is gone by then.
    full = train(_cfg(b, root / "ft_full", init_from=str(root / "pre")))
    shutil.copytree(root / "ft_full", root / "ft_cut")
    (root / "ft_cut" / "checkpoints" / "epoch_0002.pt").unlink()
    for f in (root / "pre" / "checkpoints").glob("*.pt"):
        f.rename(f.with_suffix(".moved"))
    resumed = train(_cfg(b, root / "ft_cut", init_from=str(root / "pre")), resume=True)
    assert resumed.step == full.step
    for k, v in full.net.model.state_dict().items():
        assert torch.equal(v, resumed.net.model.state_dict()[k]), k


def test_large_margin_fine_tuning_keeps_the_head_and_resumes_exactly(halves):
    # LM fine-tuning (train.init_head): the same speakers, the source's head and x_bar carried on with a larger
    # margin and longer chunks; a run resumed from its mid-run checkpoint ends with the uninterrupted weights.
    root, (a, _) = halves
    head = {"name": "causal_norm_aam", "scale": 16.0, "margin": 0.1}
    train(_cfg(a, root / "lm_src") | {"head": head})
    src = load_checkpoint(root / "lm_src" / "checkpoints" / "epoch_0002.pt")
    lm = _cfg(a, root / "lm", lr=0.01, init_from=str(root / "lm_src"), init_head=True) | {
        "head": {**head, "margin": 0.3}, "margin": {"start_epoch": 0, "end_epoch": 0}}
    lm["data"] = {**lm["data"], "chunk_seconds": 0.6}
    full = train(lm)
    assert full.net.head.margin == pytest.approx(0.3)  # a configured constant
    # x_bar kept tracking from the source's value: not reset (a reset run would differ from this recursion)
    assert not torch.equal(full.net.head.mean_feature, src["head"]["mean_feature"])
    saved = yaml.safe_load((root / "lm" / "config.yaml").read_text())
    assert saved["train"]["init_head"] is True and saved["train"]["init_from"] == str(root / "lm_src")
    # a run that stopped after epoch 1 (its epoch-1 checkpoint, nothing later) continues to the same end
    ckpt_dir = root / "lm_resumed" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    shutil.copy(root / "lm" / "checkpoints" / "epoch_0001.pt", ckpt_dir / "epoch_0001.pt")
    resumed = train(dict(lm, exp_dir=str(root / "lm_resumed")), resume=True)
    assert (ckpt_dir / "epoch_0002.pt").is_file()
    for k, v in full.net.state_dict().items():
        # a resume replays the same float32 ops: equal (measured 0), 1e-6 spare
        assert torch.allclose(resumed.net.state_dict()[k], v, rtol=0, atol=1e-6), k
    # the head started from the source's weights, not from a fresh initialisation
    fresh = train(_cfg(a, root / "lm_fresh", lr=1e-12, init_from=str(root / "lm_src"), init_head=True, epochs=1)
                  | {"head": head})
    assert torch.allclose(fresh.net.head.weight, src["head"]["weight"], atol=1e-8)  # lr 1e-12, as above


def test_init_head_refuses_other_speakers(halves):
    root, (a, b) = halves
    train(_cfg(a, root / "src_a"))
    from spkcausal.utils import DataError

    with pytest.raises(DataError, match="other speakers"):
        train(_cfg(b, root / "lm_b", init_from=str(root / "src_a"), init_head=True))


def test_lm_overlays_merge_over_each_system_config(tmp_path):
    """Both LM overlays (corpus and demo) load over every system config of their recipe: each key they set wins,
    every other key is the system's, so an AAM and a Causal Norm AAM system fine-tune on the same path."""
    from spkcausal.nn.config import load_train_config

    root = Path(__file__).resolve().parents[1]
    for conf_dir, systems in ((root / "recipes/conf", ["ecapa512_aam", "ecapa512_cnaam", "resnet34_cnaam"]),
                              (root / "recipes/mini/conf", ["aam", "cnaam"])):
        overlay = yaml.safe_load((conf_dir / "lm.yaml").read_text())
        for name in systems:
            base = load_train_config(conf_dir / f"{name}.yaml")
            cfg = load_train_config([conf_dir / f"{name}.yaml", conf_dir / "lm.yaml"], ["train.init_head=true"])
            for section, values in overlay.items():
                for key, value in values.items():
                    assert cfg[section][key] == value, (conf_dir, name, section, key)
            assert cfg["head"]["name"] == base["head"]["name"] and cfg["model"] == base["model"]
            assert cfg["head"]["margin"] == 0.5 > base["head"]["margin"]
            assert cfg["data"]["chunk_seconds"] >= 2 * base["data"]["chunk_seconds"]
            assert not cfg["augment"]["speed_perturb"] and cfg["train"]["init_head"] is True
    with pytest.raises(Exception, match="lm.yaml"):  # a typo in the overlay names the file
        bad = tmp_path / "lm.yaml"
        bad.write_text("train: {epoch: 3}\n")
        load_train_config([root / "recipes/mini/conf/aam.yaml", bad])


@pytest.mark.parametrize("head", ["causal_norm_aam", "aam"])
def test_imported_toolkit_extractor_fine_tunes_with_a_new_head(halves, head):
    """An extractor imported from a wespeaker-layout file (import-checkpoint) starts a fine-tune with a new head of
    either kind: its weights are the file's, the front-end the toolkit's (Hamming window), x_bar is tracked."""
    from spkcausal.cli import main
    from spkcausal.nn.models import build_model

    root, (_, b) = halves
    torch.manual_seed(5)
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in build_model("resnet_tiny", embed_dim=20).state_dict().items()}
    torch.save({**state, "projection.weight": torch.randn(9, 20)}, root / f"wespeaker_{head}.pt")
    exp = root / f"imported_{head}"
    assert main(["import-checkpoint", "--from", "wespeaker", str(root / f"wespeaker_{head}.pt"),
                 "--model", "resnet_tiny", "--out", str(exp)]) == 0
    extra = {"num_heads": 2} if head == "causal_norm_aam" else {}
    cfg = _cfg(b, root / f"ft_{head}", lr=1e-12, init_from=str(exp), epochs=1)
    ft = train(cfg | {"head": {"name": head, "scale": 16.0, "margin": 0.2, **extra}})
    assert type(ft.net.head).__name__ == {"causal_norm_aam": "CausalNormAAMHead", "aam": "AAMHead"}[head]
    assert ft.net.head.weight.shape == (3, 20)  # the new speakers, the imported width
    saved = yaml.safe_load((root / f"ft_{head}" / "config.yaml").read_text())
    assert saved["features"]["window"] == "hamming" and saved["model"]["name"] == "resnet_tiny"
    for k, v in state.items():  # lr 1e-12: the extractor is where the file put it
        if v.is_floating_point() and "running" not in k:
            assert torch.allclose(ft.net.model.state_dict()[k], v, rtol=0, atol=1e-9), k
    if head == "causal_norm_aam":
        assert ft.net.head.mean_feature.abs().sum() > 0


def test_finetune_pretrained_config_runs_from_an_imported_extractor(halves):
    """recipes/conf/finetune_pretrained.yaml (wespeaker #321: margin 0.2 from the start, lr 5e-5, 10 epochs) with
    init_from an import: it trains (cut to one tiny epoch here) with the import's architecture, the full margin
    from the first step and the constant small lr."""
    from spkcausal.cli import main
    from spkcausal.nn.config import load_train_config
    from spkcausal.nn.models import build_model

    root, (_, b) = halves
    torch.save(build_model("resnet_tiny", embed_dim=12).state_dict(), root / "wespeaker_ft.pt")
    assert main(["import-checkpoint", "--from", "wespeaker", str(root / "wespeaker_ft.pt"), "--model", "resnet_tiny",
                 "--out", str(root / "imported_ft")]) == 0
    conf = Path(__file__).resolve().parents[1] / "recipes" / "conf" / "finetune_pretrained.yaml"
    cfg = load_train_config(conf, [f"exp_dir={root / 'ft_conf'}", f"data.train={b}",
                                   f"train.init_from={root}/imported_ft",
                                   "train.epochs=1", "train.batch_size=8", "train.device=cpu", "train.precision=fp32",
                                   "data.num_workers=0", "data.chunk_seconds=0.5", "sampler.num_samples=16",
                                   "train.tensorboard=false", "train.progress=false"])
    assert (cfg["head"]["margin"], cfg["optim"]["lr"], cfg["optim"]["final_lr"]) == (0.2, 5e-5, 5e-5)
    assert load_train_config(conf)["train"]["epochs"] == 10 and cfg["margin"]["end_epoch"] == 0
    ft = train(cfg)
    assert ft.net.model.embed_dim == 12 and ft.net.head.margin == pytest.approx(0.2)
