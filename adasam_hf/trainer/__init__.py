"""The Trainer side of the library: `SAMTrainer`, its arguments, and the callback that stops a diverged run.

Depends on torch, transformers and accelerate only (and `adasam_hf.optim`); never on an application.
"""

from .arguments import SAMTrainingArguments
from .callbacks import StopOnNonFiniteLoss, TrainingDivergedError
from .layer_sparse import LayerSparseStep
from .loss_scaling import NumItemsLossScalingFix
from .trainer import SAMStepMixin, SAMStepOptions, SAMTrainer

__all__ = [
    "LayerSparseStep",
    "NumItemsLossScalingFix",
    "SAMStepMixin",
    "SAMStepOptions",
    "SAMTrainer",
    "SAMTrainingArguments",
    "StopOnNonFiniteLoss",
    "TrainingDivergedError",
]
