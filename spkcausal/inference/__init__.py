"""Inference layer: extraction, identification, TDE and its alpha choice, decoupled classifiers (cRT, tau-norm),
the Python API (`spkcausal.load_model`), export and SpeechBrain I/O."""
