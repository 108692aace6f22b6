"""Datasets, training-set statistics and the DALI pipelines that feed every later stage."""
