"""Neural-network layer: fbank front-ends, augmentation, extractors, heads, losses, network assembly,
checkpoints, the config schema and device / DDP helpers."""
