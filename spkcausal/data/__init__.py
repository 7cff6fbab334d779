"""Data layer: audio I/O, Kaldi-style data dirs, trial and score lists, long-tail profiles and subsets, shards,
training loaders and samplers, embedding stores. Torch-free except the loaders (dataset, samplers, shardstream)."""
