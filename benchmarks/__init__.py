"""Benchmarks of the optimizers and the GLUE sweep, run as modules from the repo root: ``python -m benchmarks.X``."""
