"""spkcausal: speaker verification on long-tailed corpora with Causal Norm training and TDE inference."""

__version__ = "0.1.0"
