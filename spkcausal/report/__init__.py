"""Report layer: per-experiment results stores, evidence with intervals, and the tables over experiments."""
