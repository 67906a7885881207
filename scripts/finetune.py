"""Fine-tune a model on a GLUE task with SAM / AdaSAM: see README.md, or run with --help."""

import sys

from adasam_hf.glue import main

if __name__ == "__main__":
    sys.exit(main())
