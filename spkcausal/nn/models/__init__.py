"""Embedding extractors built by name: every model maps (B, frames, n_mels) features to (B, embed_dim)."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ...registry import Registry
from ...schema import AtLeast1
from .ecapa import Ecapa
from .resnet import ResNetSpeaker

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a model factory to the registry under `name`."""
    return MODELS.register(name)


def list_models() -> list[str]:
    """Registered model names."""
    return MODELS.names()


def build_model(name: str, **kwargs) -> nn.Module:
    """Instantiate a registered extractor; kwargs (n_mels, embed_dim, ...) override its defaults."""
    return MODELS.build(name, **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@register_model("ecapa512")
def ecapa512(n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 192, **kw) -> nn.Module:
    """ECAPA-TDNN, C=512 (about 6.2M parameters), SpeechBrain's layout."""
    return Ecapa(n_mels, channels=kw.pop("channels", (512,) * 4 + (1536,)), embed_dim=embed_dim, **kw)


@register_model("ecapa1024")
def ecapa1024(n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 192, **kw) -> nn.Module:
    """ECAPA-TDNN, C=1024 (about 20.8M parameters), SpeechBrain's layout."""
    return Ecapa(n_mels, channels=kw.pop("channels", (1024,) * 4 + (3072,)), embed_dim=embed_dim, **kw)


@register_model("ecapa_tiny")
def ecapa_tiny(n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 32, **kw) -> nn.Module:
    """A few-channel ECAPA for CPU tests and the demo."""
    kw.setdefault("attention_channels", 16)
    kw.setdefault("se_channels", 16)
    return Ecapa(n_mels, channels=kw.pop("channels", (32,) * 4 + (96,)), embed_dim=embed_dim, **kw)


@register_model("resnet34")
def resnet34(n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 256, **kw) -> nn.Module:
    """Thin speaker ResNet34: BasicBlocks [3, 4, 6, 3], channels 32/64/128/256, 256-d (about 6.6M parameters)."""
    return ResNetSpeaker(blocks=kw.pop("blocks", (3, 4, 6, 3)), base_channels=kw.pop("base_channels", 32),
                         n_mels=n_mels, embed_dim=embed_dim, **kw)


@register_model("resnet_tiny")
def resnet_tiny(n_mels: AtLeast1 = 80, embed_dim: AtLeast1 = 32, **kw) -> nn.Module:
    """One block per stage, 8 base channels: for CPU tests and the demo."""
    return ResNetSpeaker(blocks=kw.pop("blocks", (1, 1, 1, 1)), base_channels=kw.pop("base_channels", 8),
                         n_mels=n_mels, embed_dim=embed_dim, **kw)


# what the factories' **kw reach, so that a config key none of them takes is named before torch meets it
for _factory in (ecapa512, ecapa1024, ecapa_tiny):
    _factory.forwards_to = Ecapa  # type: ignore[attr-defined]
for _factory in (resnet34, resnet_tiny):
    _factory.forwards_to = ResNetSpeaker  # type: ignore[attr-defined]

# Families in their own modules, each with a FACTORIES table of its registered names (one line per family).
from . import campplus, ecapa_glob, eres2net, redimnet, simam, wespeaker_resnet  # noqa: E402

for _family in (wespeaker_resnet, simam, eres2net, campplus, redimnet, ecapa_glob):
    for _name, _factory in _family.FACTORIES.items():
        register_model(_name)(_factory)

__all__ = ["MODELS", "Ecapa", "ResNetSpeaker", "build_model", "count_parameters", "list_models", "register_model"]
