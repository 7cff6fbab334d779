"""One annotation-driven check (spkcausal.schema.coerce) for the config sections and the builders' arguments: every
value of an annotated type is admitted, every value of another kind is refused in one line naming `section.key`."""
from __future__ import annotations

import math
import typing
from typing import Annotated, Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spkcausal.nn.config import DEFAULTS, TYPES, merge_defaults
from spkcausal.registry import Registry
from spkcausal.schema import AtLeast1, Length, Range, coerce
from spkcausal.utils import UsageError

# The schema as it was a parallel dict before the section dataclasses (captured once from nn/config.py at
# 4e5c9e3, with augment.speed_new_speakers added since): the dataclasses must give exactly these values, of these
# Python types, in this order (config.yaml lists keys in DEFAULTS' order).
OLD_DEFAULTS: dict[str, Any] = {
    "exp_dir": None,
    "seed": 42,
    "data": {"train": None, "labels": "speaker", "sample_rate": 16000, "chunk_seconds": 2.0, "min_seconds": 0.5,
             "num_workers": 4, "prefetch_factor": 4, "pin_memory": True, "scan_threads": 8, "shards": None,
             "shuffle_buffer": 1000, "shard_streams": None},
    "features": {"frontend": "kaldi", "n_mels": 80, "dither": 0.0},
    "augment": {"speed_perturb": False, "speed_new_speakers": True, "musan": None, "rirs": None, "prob": 0.6,
                "musan_max_seconds": 10.0, "rir_max_seconds": 2.0, "group_prob": None, "group_speed": None,
                "group_many": 100, "group_few": 20},
    "model": {"name": "ecapa512"},
    "head": {"name": "aam"},
    "loss": {"name": "ce"},
    "encoder_loss": {"name": "none"},
    "sampler": {"name": "natural", "num_samples": None, "utts_per_speaker": 2, "views": 1},
    "optim": {"lr": 0.1, "final_lr": 5.0e-5, "warmup_epochs": 6, "momentum": 0.9, "nesterov": True,
              "weight_decay": 1.0e-4, "grad_clip": 0.0},
    "margin": {"start_epoch": 20, "end_epoch": 40},
    "train": {"epochs": 150, "batch_size": 128, "precision": "bf16", "device": "auto", "ckpt_every_steps": 1000,
              "keep_last": 3, "keep_epochs": 0, "log_every": 50, "tensorboard": True, "progress": True,
              "init_from": None, "init_head": False, "dist_timeout": 1800},
}


def _same(a: Any, b: Any, where: str = "") -> None:
    """Equal values of the same Python type, mappings with their keys in the same order."""
    assert type(a) is type(b), (where, a, b)
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    else:
        assert a == b, (where, a, b)


def test_section_dataclasses_give_the_old_defaults_and_type_them_unchanged():
    _same(DEFAULTS, OLD_DEFAULTS)
    merged = merge_defaults({})  # the defaults satisfy their own annotations (6 warm-up epochs become 6.0, as before)
    assert merged == OLD_DEFAULTS and merge_defaults(merged) == merged


# ------------------------------------------------------------------ every typed key, by its annotation

def _typed_keys() -> list[tuple[str, Any]]:
    out = []
    for name, spec in TYPES.items():
        out += [(f"{name}.{k}", h) for k, h in spec.items()] if isinstance(spec, dict) else [(name, spec)]
    return out


KEYS = _typed_keys()



def _parts(hint: Any) -> tuple[Any, list[Any]]:
    """(base type, metadata) of a possibly Annotated hint."""
    if typing.get_origin(hint) is Annotated:
        base, *meta = typing.get_args(hint)
        return base, meta
    return hint, []


def _members(hint: Any) -> tuple[list[Any], bool]:
    """The non-None members of a hint and whether it admits None."""
    if typing.get_origin(hint) in (typing.Union, __import__("types").UnionType):
        args = typing.get_args(hint)
        return [a for a in args if a is not type(None)], type(None) in args
    return [hint], False


def _bounds(meta: list[Any]) -> Range:
    return next((m for m in meta if isinstance(m, Range)), Range())


def _admitted(hint: Any) -> st.SearchStrategy:
    """Values of the annotated type, built from the annotation independently of coerce."""
    members, optional = _members(hint)
    parts = [_admitted_member(m) for m in members]
    return st.one_of(*parts, *([st.none()] if optional else []))


def _admitted_member(hint: Any) -> st.SearchStrategy:
    base, meta = _parts(hint)
    r = _bounds(meta)
    if typing.get_origin(base) is Literal:
        return st.sampled_from(typing.get_args(base))
    if base is bool:
        return st.booleans()
    if base is int:
        lo = None if r.minimum is None else int(r.minimum) + (1 if r.gt else 0)
        return st.integers(min_value=lo, max_value=None if r.maximum is None else int(r.maximum))
    if base is float:
        return st.floats(min_value=r.minimum, max_value=r.maximum, exclude_min=r.gt and r.minimum is not None,
                         allow_nan=False, allow_infinity=False)
    if base is str:
        return st.text(max_size=20)
    if typing.get_origin(base) is list:
        n = next(m.n for m in meta if isinstance(m, Length))
        return st.lists(st.floats(min_value=r.minimum, max_value=r.maximum), min_size=n, max_size=n)
    raise AssertionError(f"no strategy for {hint!r}")  # a new kind of key: teach the test


def _refused(hint: Any) -> st.SearchStrategy:
    """Values of another kind than every member of the annotation (or out of its bounds)."""
    members, optional = _members(hint)
    bases = [_parts(m)[0] for m in members]
    words = st.text(min_size=1, max_size=8).filter(lambda s: _not_a_number(s) and s not in _choices(bases))
    pool = [st.dictionaries(st.text(max_size=3), st.integers(), min_size=1, max_size=2)]
    if not any(typing.get_origin(b) is list for b in bases):
        pool.append(st.lists(st.integers(), min_size=1, max_size=2))
    if bool not in bases:  # a Literal may hold false (head.class_margins)
        pool.append(st.booleans().filter(lambda b: not any(type(b) is type(c) and b == c for c in _choices(bases))))
    if str not in bases:
        pool.append(words)
    if not optional:
        pool.append(st.none())
    if not ({int, float, str} & set(bases)):
        pool.append(st.integers())
    for m in members:  # out of range
        base, meta = _parts(m)
        r = _bounds(meta)
        if base in (int, float) and r.minimum is not None:
            below = r.minimum if r.gt else r.minimum - 1
            pool.append(st.integers(max_value=int(math.floor(below))) if base is int
                        else st.floats(max_value=r.minimum, exclude_max=not r.gt, allow_nan=False,
                                       allow_infinity=False))
    return st.one_of(*pool)


def _not_a_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return True
    return False


def _choices(bases: list[Any]) -> set[Any]:
    return {c for b in bases if typing.get_origin(b) is Literal for c in typing.get_args(b)}


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_every_typed_key_admits_every_value_of_its_annotation(data):
    key, hint = data.draw(st.sampled_from(KEYS))
    value = data.draw(_admitted(hint))
    out = coerce(value, hint, key)
    assert out == value and (type(out) is type(value) or isinstance(value, int) and type(out) is float), (key, value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # PyYAML's '1e-4': a string of the number
        assert coerce(repr(value), hint, key) == value


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_every_typed_key_refuses_another_kind_naming_section_and_key(data):
    key, hint = data.draw(st.sampled_from(KEYS))
    value = data.draw(_refused(hint))
    section, _, sub = key.partition(".")
    with pytest.raises(UsageError) as err:
        merge_defaults({section: {sub: value}} if sub else {section: value})
    msg = str(err.value)
    assert msg.startswith(f"config key {key}: expected ") and msg.endswith(f", got {value!r}"), msg
    assert "\n" not in msg


def _simple(hint: Any) -> bool:
    """Whether the strategies below can draw values of `hint` (scalars, Literal, a list of floats, unions of them)."""
    members, _ = _members(hint)
    for m in members:
        base, _ = _parts(m)
        if not (base in (int, float, bool, str) or typing.get_origin(base) in (Literal, list)):
            return False
    return True


def _builder_keys() -> list[tuple[str, Any, Any]]:
    """(section.key, annotation, builder) of every annotated builder argument a config section can set."""
    from spkcausal.nn.encoder_losses import ENCODER_LOSSES
    from spkcausal.nn.heads import HEADS
    from spkcausal.nn.losses import LOSSES
    from spkcausal.registry import builder_hints

    out = []
    for section, registry, fixed in (("head", HEADS, {"embed_dim", "num_classes"}), ("loss", LOSSES, set()),
                                     ("encoder_loss", ENCODER_LOSSES, set())):
        for name in registry.names():
            entry = registry.get(name)
            out += [(f"{section}.{k}", h, entry) for k, h in builder_hints(entry).items()
                    if k not in fixed and _simple(h)]
    return out


BUILDER_KEYS = _builder_keys()


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_every_annotated_builder_argument_admits_its_type_and_refuses_another_kind(data):
    from spkcausal.registry import check_kwargs

    key, hint, entry = data.draw(st.sampled_from(BUILDER_KEYS))
    section, _, sub = key.partition(".")
    value = data.draw(_admitted(hint))
    out = check_kwargs(entry, {sub: value}, section)[sub]
    assert out == value and (type(out) is type(value) or isinstance(value, int) and type(out) is float), (key, value)
    wrong = data.draw(_refused(hint))
    with pytest.raises(UsageError) as err:
        check_kwargs(entry, {sub: wrong}, section)
    assert str(err.value).startswith(f"config key {key}: expected ") and str(err.value).endswith(f", got {wrong!r}")


def test_the_builder_keys_drawn_cover_the_options_that_had_their_own_checks():
    keys = {k for k, _, _ in BUILDER_KEYS}
    assert {"head.subcenters", "head.class_margins", "head.feature_norm", "head.num_heads", "head.momentum",
            "head.reach_scale", "encoder_loss.k", "encoder_loss.queue_size", "encoder_loss.temperature",
            "loss.drw_epoch", "loss.logit_adjust"} <= keys


# ------------------------------------------------------------------ builders: the same check, by their annotations

WIDGETS: Registry[Any] = Registry("widget")


class _Part:
    """What a factory's **kw reach (its forwards_to)."""

    def __init__(self, depth: AtLeast1 = 2, act: Literal["relu", "prelu"] = "relu", rates: list[float] | None = None):
        self.depth, self.act, self.rates = depth, act, rates


@WIDGETS.register("w")
def _widget(size: AtLeast1 = 4, gain: float = 1.0, note: str | None = None, **kw: Any) -> dict[str, Any]:
    """A factory with annotated arguments and forwarded ones."""
    part = _Part(**kw)
    return {"size": size, "gain": gain, "note": note, "depth": part.depth, "act": part.act, "rates": part.rates}


_widget.forwards_to = _Part  # type: ignore[attr-defined]


def test_a_builder_coerces_by_its_annotations_and_follows_forwards_to():
    got = WIDGETS.build("w", size="8", gain=2, depth=3.0, rates=["1e-4", 0.5])
    assert got == {"size": 8, "gain": 2.0, "note": None, "depth": 3, "act": "relu", "rates": [1e-4, 0.5]}
    assert type(got["size"]) is int and type(got["gain"]) is float and type(got["depth"]) is int


@pytest.mark.parametrize("kwargs,message", [
    ({"size": 0}, "config key widget.size: expected an integer >= 1, got 0"),
    ({"size": True}, "config key widget.size: expected an integer >= 1, got True"),
    ({"gain": "loud"}, "config key widget.gain: expected a number, got 'loud'"),
    ({"note": 3}, "config key widget.note: expected a string or null, got 3"),
    ({"depth": 2.5}, "config key widget.depth: expected an integer >= 1, got 2.5"),  # forwarded: still judged
    ({"act": "tanh"}, "config key widget.act: expected one of relu, prelu, got 'tanh'"),
    ({"rates": [0.1, "x"]}, "config key widget.rates: expected a list of numbers or null, got [0.1, 'x']"),
    ({"sizes": 3}, "unknown config key widget.sizes; expected one of act, depth, gain, note, rates, size"),
])
def test_a_builder_refuses_a_wrong_kind_in_one_line_naming_the_key(kwargs, message):
    with pytest.raises(UsageError) as err:
        WIDGETS.build("w", **kwargs)
    assert str(err.value) == message


def test_head_keys_take_the_one_check_with_the_scale_alias():
    from spkcausal.nn.heads import build_head

    head = build_head("causal_norm", 8, 3, scale="20", num_heads=2.0, momentum="auto")
    assert head.tau == 20.0 and head.num_heads == 2 and head.momentum_auto
    for kwargs, message in (
            ({"subcenters": 0}, "config key head.subcenters: expected an integer >= 1, got 0"),
            ({"class_margins": "ldan"}, "config key head.class_margins: expected one of ldam, none, false or null, "
                                        "got 'ldan'"),
            ({"feature_transfer": {"strength": 2.0}},
             "config key head.feature_transfer.strength: expected a number >= 0 <= 1, got 2.0"),
            ({"subcentres": 3}, "unknown config key head.subcentres; expected one of class_margins, easy_margin, "
                                 "feature_transfer, margin, scale, subcenters")):
        with pytest.raises(UsageError) as err:
            build_head("aam", 8, 4, **kwargs)
        assert str(err.value) == message
    with pytest.raises(UsageError, match=r"^config key head.feature_norm: expected one of l2, capsule, got 'sq'$"):
        build_head("causal_norm_aam", 8, 4, feature_norm="sq")


def test_loss_options_are_refused_by_the_config_check_before_any_data_is_read():
    # logit_adjust / drw_epoch were typed Any: a wrong value reached the trainer's build_loss, after the audio scan
    from spkcausal.nn.network import check_components

    for loss, message in (({"logit_adjust": "strong"}, "config key loss.logit_adjust: expected a number or null"),
                          ({"drw_epoch": 1.5}, "config key loss.drw_epoch: expected an integer >= 0 or null")):
        with pytest.raises(UsageError) as err:
            check_components(merge_defaults({"model": {"name": "resnet_tiny"}, "loss": {"name": "ce", **loss}}))
        assert str(err.value).startswith(message)


def test_the_schedule_check_reads_drw_epoch_as_the_loss_takes_it():
    # a quoted epoch slipped past the numeric comparison and never applied; the loss's annotation makes it 5
    from spkcausal.nn.network import check_schedule

    with pytest.raises(UsageError, match=r"^config key loss.drw_epoch: 5 is at or past the last epoch"):
        check_schedule(merge_defaults({"loss": {"name": "ce", "drw_epoch": "5"}, "train": {"epochs": 3}}))
