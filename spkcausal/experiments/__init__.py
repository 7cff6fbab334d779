"""Experiments as data (torch-free): the run plan (which runs a recipe makes, `plan`), each run's identity in its
experiment dir (`runs`: run.json), the scoring variants and decoupled methods (`variants`), the experiment dir's
files (`expdir`) and the paths its side files store (`paths`)."""
