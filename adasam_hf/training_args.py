"""`SAMTrainingArguments`: `TrainingArguments` plus the optimizer choice and SAM's knobs."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments
from transformers.utils import logging

from .optim.factory import get_optimizer_spec, list_optimizers, validate_hparams
from .optim.schedule import SAM_MODES, SAMSchedule, check_schedule

logger = logging.get_logger(__name__)

SAM_ASCENTS = ("global", "local")


@dataclass
class SAMTrainingArguments(TrainingArguments):
    """TrainingArguments for `SAMTrainer`; parsed by `HfArgumentParser` like its parent.

    The optimizer is built from `optimizer`, `sam_rho`, `sam_adaptive` and the standard
    `learning_rate`, `adam_beta1`, `adam_beta2`, `adam_epsilon` and `weight_decay`.
    `optimizer` replaces the parent's `optim`, which is ignored.
    """

    optimizer: str = field(
        default="adasam",
        metadata={"help": "Optimizer name (adasam_hf.list_optimizers()).", "choices": list_optimizers()},
    )
    sam_rho: float = field(default=0.05, metadata={"help": "SAM ascent radius rho (> 0)."})
    sam_adaptive: bool = field(
        default=False, metadata={"help": "Use the adaptive (ASAM) ascent rho * w^2 g / || |w| g ||."}
    )
    sam_ascent: str = field(
        default="global",
        metadata={
            "help": "Under DDP: 'global' all-reduces the ascent gradient (every rank applies the same "
            "e(w)); 'local' perturbs each rank with its own gradient (m-sharpness).",
            "choices": list(SAM_ASCENTS),
        },
    )

    sam_mode: str = field(
        default="full",
        metadata={
            "help": "'full': the SAM step on every (sam_interval-th) step; 'rst': randomized switching, a SAM "
            "step with probability sam_rst_prob, else a one-pass base step; 'layer-sparse': perturb and "
            "re-differentiate only a sampled sam_layer_fraction of the layers.",
            "choices": list(SAM_MODES),
        },
    )
    sam_rst_prob: float = field(default=0.5, metadata={"help": "sam_mode='rst': probability of a SAM step."})
    sam_interval: int = field(
        default=1, metadata={"help": "A SAM step every k-th optimizer step, base steps in between (1: every step)."}
    )
    sam_layer_fraction: float = field(
        default=0.25, metadata={"help": "sam_mode='layer-sparse': fraction of the layers perturbed per SAM step."}
    )

    def __post_init__(self):
        self.optimizer = get_optimizer_spec(self.optimizer).name  # raises on unknown names
        if self.sam_ascent not in SAM_ASCENTS:
            raise ValueError(f"Invalid sam_ascent: {self.sam_ascent!r} (choose from: {', '.join(SAM_ASCENTS)})")
        validate_hparams(self.optimizer, **self.optimizer_hparams())
        check_schedule(self.sam_mode, self.sam_rst_prob, self.sam_interval)
        if not (isinstance(self.sam_layer_fraction, (int, float)) and 0.0 < self.sam_layer_fraction <= 1.0):
            raise ValueError(f"Invalid sam_layer_fraction: {self.sam_layer_fraction!r} (must be in (0, 1])")
        super().__post_init__()
        if not self.is_sharpness_aware and (self.sam_mode != "full" or self.sam_interval != 1):
            logger.warning(f"sam_mode={self.sam_mode!r} / sam_interval={self.sam_interval} have no effect with "
                           f"optimizer {self.optimizer!r}, which is not a SAM-type optimizer")
        if self.is_sharpness_aware and (self.fsdp or self.deepspeed):
            raise ValueError(
                f"SAMTrainer does not support {'FSDP' if self.fsdp else 'DeepSpeed'} with optimizer "
                f"{self.optimizer!r}; supported: one device, or DDP (torchrun / accelerate launch)"
            )

    @property
    def is_sharpness_aware(self) -> bool:
        return get_optimizer_spec(self.optimizer).sharpness_aware

    def sam_schedule(self) -> SAMSchedule:
        """Which optimizer steps take the SAM step (the others take the base step)."""
        return SAMSchedule(mode=self.sam_mode, rst_prob=self.sam_rst_prob, interval=self.sam_interval, seed=self.seed)

    def optimizer_hparams(self) -> dict:
        """The hyperparameters for `create_optimizer`, from these arguments."""
        return dict(
            lr=self.learning_rate,
            betas=(self.adam_beta1, self.adam_beta2),
            eps=self.adam_epsilon,
            weight_decay=self.weight_decay,
            rho=self.sam_rho,
            adaptive=self.sam_adaptive or None,  # None keeps a name's own default (asam: True)
        )
