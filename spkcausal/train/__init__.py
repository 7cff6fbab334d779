"""Training layer: the trainer (exact resume, DDP), the per-step pipeline and the lr / margin / momentum schedules."""
