"""adasam_hf: SAM and AdaSAM for the HuggingFace Trainer."""

from .optim import SAM, AdaSAM, SharpnessAware, create_optimizer, list_optimizers
from .trainer import SAMTrainer
from .training_args import SAMTrainingArguments

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
