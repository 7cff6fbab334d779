"""The config schema types every key of the fixed sections once, on merge: wrong values fail naming the key."""
from __future__ import annotations

import pytest

from spkcausal.nn.config import DEFAULTS, TYPES, apply_overrides, merge_defaults
from spkcausal.utils import UsageError


@pytest.mark.parametrize("override,key,expected", [
    ("train.epochs=ten", "train.epochs", "an integer >= 1"),
    ("optim.lr=abc", "optim.lr", "a number > 0"),
    ("train.batch_size=0", "train.batch_size", "an integer >= 1"),
    ("train.epochs=-1", "train.epochs", "an integer >= 1"),
    ("train.epochs=2.5", "train.epochs", "an integer >= 1"),
    ("data.pin_memory=maybe", "data.pin_memory", "true or false"),
    ("augment.prob=1.5", "augment.prob", "a number >= 0 <= 1"),
    ("train.precision=fp8", "train.precision", "one of bf16, fp16, fp32"),
    ("sampler.num_samples=[3]", "sampler.num_samples", "an integer >= 1 or null"),
    ("optim.lr=.nan", "optim.lr", "a number > 0"),
])
def test_wrong_values_fail_naming_the_key_and_the_expectation(override, key, expected):
    with pytest.raises(UsageError) as err:
        merge_defaults(apply_overrides({}, [override]))
    msg = str(err.value)
    assert msg.startswith(f"config key {key}: expected {expected}, got "), msg


def test_values_are_typed_once_on_merge():
    # numeric strings (PyYAML reads 1e-4 as a string), integral floats and paths become the schema's types
    from pathlib import Path

    cfg = merge_defaults(apply_overrides({"data": {"train": Path("/x/data")}},
                                         ["optim.lr=1e-4", "train.epochs=10.0", "optim.warmup_epochs=2",
                                          "sampler.num_samples=null"]))
    assert cfg["optim"]["lr"] == 1e-4 and isinstance(cfg["optim"]["lr"], float)
    assert cfg["train"]["epochs"] == 10 and isinstance(cfg["train"]["epochs"], int)
    assert isinstance(cfg["optim"]["warmup_epochs"], float) and cfg["data"]["train"] == "/x/data"
    assert cfg["sampler"]["num_samples"] is None
    assert merge_defaults(cfg) == cfg  # idempotent: a saved config merges to itself
    # every fixed key has a type, and every default satisfies it
    for section, spec in TYPES.items():
        if isinstance(spec, dict):
            assert set(spec) == set(DEFAULTS[section]), section


def test_cli_reports_a_mistyped_override_and_exits_2(tmp_path, capsys):
    from spkcausal.cli import main
    from spkcausal.nn.config import save_config

    conf = tmp_path / "c.yaml"
    save_config({"exp_dir": str(tmp_path / "exp")}, conf)
    assert main(["train", "--config", str(conf), "train.epochs=ten"]) == 2
    err = capsys.readouterr().err
    assert str(conf) in err and "train.epochs: expected an integer >= 1, got 'ten'" in err
    assert not (tmp_path / "exp").exists()
