"""Report layer: the markdown, tables, tail cost, figures, headline and paper tables over the experiments'
results (spkcausal.results)."""
