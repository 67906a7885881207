"""Evaluate a causal LM on lm-eval benchmarks (offline: the packaged tasks): see README.md, or run with --help."""

import sys

from adasam_hf.lm.evaluation import main

if __name__ == "__main__":
    sys.exit(main())
