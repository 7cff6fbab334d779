"""Corpus preparation: one module per corpus, each exposing `prepare_<corpus>(root, out_dir, ...)`."""
