"""spkcausal: speaker verification on long-tailed corpora with Causal Norm training and TDE inference.

`spkcausal.load_model(path)` loads a trained model for embedding, scoring and verification (spkcausal.inference.api);
it is imported on first use so that `import spkcausal` stays light (no torch)."""

__version__ = "0.1.0"
__all__ = ["SpeakerModel", "load_model", "set_threshold"]


def __getattr__(name: str):
    if name in __all__:
        from .inference import api

        return getattr(api, name)
    raise AttributeError(f"module 'spkcausal' has no attribute {name!r}")
