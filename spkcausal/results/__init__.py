"""Results apart from rendering: the per-experiment results store (`<exp>/results.json`, results.store), the
paths it stores (experiments.paths), the figures with their uncertainty (results.evidence) and the result rows of
the experiments (results.records). Scoring and identification write through this package; spkcausal.report
renders what it reads. Torch-free."""
