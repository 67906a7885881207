"""Instruction-tune a causal LM with SAM / AdaSAM (full or LoRA): see README.md, or run with --help."""

import sys

from adasam_hf.lm import main

if __name__ == "__main__":
    sys.exit(main())
