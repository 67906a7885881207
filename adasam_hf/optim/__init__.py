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
from .sam import SAM
from .sharpness import SharpnessAware

__all__ = [
    "AdaSAM",
    "OptimizerSpec",
    "SAM",
    "SharpnessAware",
    "create_optimizer",
    "get_optimizer_spec",
    "is_sharpness_aware",
    "list_optimizers",
    "register_optimizer",
]
