"""adasam_hf: SAM and AdaSAM for the HuggingFace Trainer.

The library is `adasam_hf.optim` (the optimizers; torch only) and `adasam_hf.trainer` (`SAMTrainer`; transformers and
accelerate). The applications, `adasam_hf.glue` and `adasam_hf.lm`, are built on it and on `adasam_hf.app`.
"""

from .optim import SAM, AdaSAM, SharpnessAware, create_optimizer, list_optimizers
from .trainer import SAMTrainer, SAMTrainingArguments

__version__ = "0.1.0"

__all__ = [
    "SAM",
    "AdaSAM",
    "SAMTrainer",
    "SAMTrainingArguments",
    "SharpnessAware",
    "create_optimizer",
    "list_optimizers",
]
