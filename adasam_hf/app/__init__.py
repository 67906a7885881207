"""What the two applications (`adasam_hf.glue`, `adasam_hf.lm`) share: YAML-aware argument parsing, one-line
errors with exit code 2, the checks made before a run trains, model loading, and results writing.

Imports go one way: the applications import this; this imports the library (`adasam_hf.optim`,
`adasam_hf.trainer`) and never an application.
"""
