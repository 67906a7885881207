"""SAM-family optimizers: `AdaSAM`, `SAM` (any base optimizer), and a factory by name."""

from .adasam import AdaSAM
from .factory import (
    OptimizerSpec,
    create_optimizer,
    get_optimizer_spec,
    is_sharpness_aware,
    list_optimizers,
    register_optimizer,
)
from .layer_sampler import LayerSampler
from .sam import SAM
from .schedule import SAMSchedule
from .sharpness import SharpnessAware

__all__ = [
    "AdaSAM",
    "LayerSampler",
    "OptimizerSpec",
    "SAM",
    "SAMSchedule",
    "SharpnessAware",
    "create_optimizer",
    "get_optimizer_spec",
    "is_sharpness_aware",
    "list_optimizers",
    "register_optimizer",
]
