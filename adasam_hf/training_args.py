"""`SAMTrainingArguments`: `TrainingArguments` plus the optimizer choice and SAM's knobs."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .optim.factory import get_optimizer_spec, list_optimizers, validate_hparams

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

    def __post_init__(self):
        self.optimizer = get_optimizer_spec(self.optimizer).name  # raises on unknown names
        if self.sam_ascent not in SAM_ASCENTS:
            raise ValueError(f"Invalid sam_ascent: {self.sam_ascent!r} (choose from: {', '.join(SAM_ASCENTS)})")
        validate_hparams(self.optimizer, **self.optimizer_hparams())
        super().__post_init__()
        if self.is_sharpness_aware and (self.fsdp or self.deepspeed):
            raise ValueError(
                f"SAMTrainer does not support {'FSDP' if self.fsdp else 'DeepSpeed'} with optimizer "
                f"{self.optimizer!r}; supported: one device, or DDP (torchrun / accelerate launch)"
            )

    @property
    def is_sharpness_aware(self) -> bool:
        return get_optimizer_spec(self.optimizer).sharpness_aware

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
