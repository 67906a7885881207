"""`SAMTrainingArguments`: `TrainingArguments` plus the optimizer choice and SAM's knobs."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments
from transformers.utils import logging

from ..optim.factory import get_optimizer_spec, is_sharpness_aware, list_optimizers, validate_hparams
from ..optim.layer_sampler import check_layer_fraction
from ..optim.schedule import SAM_MODES, SAMSchedule, check_schedule
from .sharding import SUPPORTED_PARALLELISM

logger = logging.get_logger(__name__)

SAM_ASCENTS = ("global", "local")

# What the Trainer needs of these numbers and does not check itself: left unchecked, a zero or negative value
# trains 0 steps "successfully", crashes mid-run, or silently means something else (save_total_limit 0: no limit).
_AT_LEAST_ONE = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")
_AT_LEAST_ONE_OR_NONE = ("eval_accumulation_steps", "save_total_limit", "torch_empty_cache_steps",
                         "dataloader_prefetch_factor")
_POSITIVE = ("num_train_epochs", "logging_steps", "save_steps", "eval_steps", "ddp_timeout")  # None: unset
_NON_NEGATIVE = ("warmup_steps", "max_grad_norm", "dataloader_num_workers", "eval_delay")
_SEEDS = ("seed", "data_seed")


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

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Let scripts/finetune.py and finetune_lm.py write into an --output_dir that holds a "
                  "previous run's results or checkpoints (without it, they refuse rather than overwrite)."},
    )

    def __post_init__(self):
        self.optimizer = get_optimizer_spec(self.optimizer).name  # raises on unknown names
        if self.sam_ascent not in SAM_ASCENTS:
            raise ValueError(f"Invalid sam_ascent: {self.sam_ascent!r} (choose from: {', '.join(SAM_ASCENTS)})")
        self._check_numbers()
        validate_hparams(self.optimizer, **self.optimizer_hparams())
        check_schedule(self.sam_mode, self.sam_rst_prob, self.sam_interval)
        check_layer_fraction(self.sam_layer_fraction)
        self._check_setup_before_devices()
        super().__post_init__()
        self._check_setup_after_devices()
        if not self.is_sharpness_aware and (self.sam_mode != "full" or self.sam_interval != 1):
            logger.warning(f"sam_mode={self.sam_mode!r} / sam_interval={self.sam_interval} have no effect with "
                           f"optimizer {self.optimizer!r}, which is not a SAM-type optimizer")

    def _check_numbers(self) -> None:
        """Every number a run uses is finite and in its range (see the tables above)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"Invalid {f.name}: {value!r} (must be a finite number)")
        for name in (*_AT_LEAST_ONE, *_AT_LEAST_ONE_OR_NONE):
            value = getattr(self, name, None)
            if not (value is None and name in _AT_LEAST_ONE_OR_NONE) and (
                    isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"Invalid {name}: {value!r} (must be an integer >= 1)")
        for name, low_open in [*((n, True) for n in _POSITIVE), *((n, False) for n in _NON_NEGATIVE)]:
            value = getattr(self, name, None)
            if value is not None and not (value > 0 if low_open else value >= 0):
                raise ValueError(f"Invalid {name}: {value!r} (must be {'> 0' if low_open else '>= 0'})")
        if self.max_steps != -1 and self.max_steps < 1:
            raise ValueError(f"Invalid max_steps: {self.max_steps!r} (must be >= 1, or -1 to train num_train_epochs)")
        for name in _SEEDS:
            value = getattr(self, name, None)
            if value is not None and not 0 <= value < 2**32:
                raise ValueError(f"Invalid {name}: {value!r} (must be in [0, 2**32 - 1])")
        if not 0 <= self.label_smoothing_factor < 1:
            raise ValueError(f"Invalid label_smoothing_factor: {self.label_smoothing_factor!r} (must be in [0, 1))")

    def _check_setup_before_devices(self) -> None:
        """Flags that cannot apply to this run or machine, refused before the Trainer's own setup acts on them
        (it would import a missing DeepSpeed, or quietly ignore the flag)."""
        default_optim = next(f.default for f in dataclasses.fields(TrainingArguments) if f.name == "optim")
        if str(getattr(self.optim, "value", self.optim)) != default_optim:
            raise ValueError(
                f"Invalid optim: {self.optim!r}: SAMTrainer builds its optimizer from --optimizer, not --optim "
                f"(choose from: {', '.join(list_optimizers())})"
            )
        if (self.fsdp or self.deepspeed) and self.is_sharpness_aware:
            raise ValueError(
                f"SAMTrainer does not run {'--fsdp (FSDP through accelerate)' if self.fsdp else 'DeepSpeed'} with "
                f"optimizer {self.optimizer!r}; supported: {SUPPORTED_PARALLELISM}"
            )
        if self.deepspeed and importlib.util.find_spec("deepspeed") is None:
            raise ValueError(f"Invalid deepspeed: {self.deepspeed!r}: the deepspeed package is not installed")
        gpu = torch.cuda.is_available() and not self.use_cpu
        if self.fsdp and not gpu:
            raise ValueError(f"Invalid fsdp: {self.fsdp!r}: FSDP needs GPUs (on CPU, accelerate ignores it)")
        if self.ddp_backend == "nccl" and not gpu:
            raise ValueError("Invalid ddp_backend: 'nccl' needs GPUs (on CPU, use gloo: the default)")
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size > 1 and not self.use_cpu and not torch.cuda.is_available():
            raise ValueError(
                f"Invalid use_cpu: False with {world_size} processes and no GPU: each process would train alone; "
                "pass --use_cpu (true) to train them together over gloo"
            )
        from transformers.integrations.integration_utils import (
            INTEGRATION_TO_CALLBACK,
            get_available_reporting_integrations,
        )

        wanted = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to or [])
        available = get_available_reporting_integrations()
        for name in wanted:
            if name not in ("all", "none") and name not in available:
                known = name in INTEGRATION_TO_CALLBACK
                raise ValueError(
                    f"Invalid report_to: {name!r} "
                    f"{'is not installed' if known else 'is not an integration'} (available here: "
                    f"{', '.join(['none', 'all', *available])})"
                )

    def _check_setup_after_devices(self) -> None:
        for flag in ("fp16", "fp16_full_eval"):
            if getattr(self, flag) and self.device.type == "cpu":
                raise ValueError(
                    f"Invalid {flag}: True on the CPU, where the Trainer would silently run float32 (fp16 needs a "
                    "GPU; on the CPU, use --bf16)"
                )

    @property
    def is_sharpness_aware(self) -> bool:
        return is_sharpness_aware(self.optimizer)

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
