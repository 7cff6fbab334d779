"""Scoring layer (numpy only): cosine / AS-norm scoring, EER / minDCF / DET, the speaker bootstrap,
calibration and QMF."""
