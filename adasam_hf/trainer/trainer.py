"""`SAMTrainer`: the exact SAM / AdaSAM two-pass step inside the HuggingFace Trainer.

One optimizer step over a gradient-accumulation window of k micro-batches (on every rank):

1. first pass: the Trainer's usual forward/backward on each micro-batch; the gradients
   accumulate over the window (and, with ``sam_ascent="global"``, are all-reduced on the last
   micro-batch), so the ascent uses the gradient of the whole (global) batch;
2. `perturb()` on the last micro-batch: w <- w + e(w);
3. second pass: every micro-batch of the window replayed at w + e(w), the last one synced;
4. `restore()`, still inside `training_step`, so the weights are never left perturbed;
5. the Trainer's loop then clips, calls `optimizer.step()` (which a GradScaler may skip) and
   zeroes the gradients, as usual.

The step is therefore the big-batch SAM step on the k micro-batches together, whatever the
split into micro-batches and processes.

Cheaper steps (`sam_mode`, `sam_interval`): a step that the schedule does not pick is the
base optimizer's step on the first pass's gradient (steps 2-4 are skipped). In layer-sparse
mode, step 2 perturbs a sampled subset of layers and step 3 runs with the other layers frozen,
so their first-pass gradients stand and the second backward is shorter; the frozen layers that
run before the first sampled one are not recomputed (`layer_sparse.py`, `frozen_prefix.py`).

`SAMTrainer` is `SAMStepMixin` (the step, its logging and the layer bandit's checkpoint file) over
`NumItemsLossScalingFix` (the Trainer's loss scaling for models whose forward takes **kwargs);
each override adds one concern and calls ``super()``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from transformers import Trainer

from ..optim import SAMSchedule, SharpnessAware, create_optimizer
from .arguments import SAMTrainingArguments
from .layer_sparse import LayerSparseStep
from .loss_scaling import NumItemsLossScalingFix
from .sharding import (
    SUPPORTED_PARALLELISM, check_sharded_step, gradient_sync_off, has_dtensor_parameters, sharded_at_load,
)

__all__ = ["SAMStepMixin", "SAMStepOptions", "SAMTrainer"]


@dataclass(frozen=True)
class SAMStepOptions:
    """How the two-pass step runs: `SAMTrainingArguments`' ``sam_*`` settings, or their defaults when the Trainer
    was given plain `TrainingArguments` (and a SAM optimizer through ``optimizers=``)."""

    ascent: str = "global"
    mode: str = "full"
    layer_fraction: float = 0.25
    schedule: SAMSchedule = field(default_factory=SAMSchedule)

    @classmethod
    def from_args(cls, args) -> SAMStepOptions:
        if not isinstance(args, SAMTrainingArguments):
            return cls()
        return cls(args.sam_ascent, args.sam_mode, args.sam_layer_fraction, args.sam_schedule())


class SAMStepMixin(Trainer):
    """The SAM two-pass step for a `Trainer` (put it before the Trainer class in the bases), taken when the
    optimizer is `SAM` or `AdaSAM`; with any other optimizer the step is the Trainer's own.

    Logged with the Trainer's loss (TensorBoard, progress bar): ``sam_ascent_grad_norm``, the unscaled norm of the
    ascent gradient, and ``sam_perturbed_loss``, the loss at w + e(w).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        wants_sam = self.sam_optimizer is not None or (
            self.optimizer is None and isinstance(self.args, SAMTrainingArguments) and self.args.is_sharpness_aware
        )
        if wants_sam and (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            raise ValueError(
                f"SAMTrainer does not run {'FSDP through accelerate' if self.is_fsdp_enabled else 'DeepSpeed'}; "
                f"supported: {SUPPORTED_PARALLELISM}"
            )
        self.sam_options = SAMStepOptions.from_args(self.args)
        self.sharded = sharded_at_load(self.model)
        if wants_sam and self.sharded:
            check_sharded_step(self.model, self.sam_options)
        elif wants_sam and has_dtensor_parameters(self.model):
            raise ValueError(f"SAMTrainer does not run a model whose parameters are DTensors that transformers did "
                             f"not shard with FSDP2 at load (fully_shard by hand, tensor parallel); supported: "
                             f"{SUPPORTED_PARALLELISM}")
        self.layer_sparse = (
            LayerSparseStep(self.sam_options.layer_fraction, self.args.seed)
            if self.sam_options.mode == "layer-sparse" else None
        )
        self._window: list[dict] = []
        self._sam_stats: torch.Tensor | None = None  # running sums: ascent norm, perturbed loss
        self._sam_steps = 0

    # --- optimizer ----------------------------------------------------------------------

    def create_optimizer(self, model=None):
        """Build the optimizer named by `args.optimizer` with the Trainer's decay groups.

        Written out (not via `optimizer_cls_and_kwargs`) because the Trainer treats anything
        that is not an Optimizer class as a whole-model factory.
        """
        if self.optimizer is not None:
            return self.optimizer
        if self.layer_sparse is not None:  # bound to this optimizer's parameters at its first use
            self.layer_sparse.reset()
        if not isinstance(self.args, SAMTrainingArguments):
            return super().create_optimizer(model)
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if n in decay], "weight_decay": self.args.weight_decay},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
        ]
        self.optimizer = create_optimizer(self.args.optimizer, groups, **self.args.optimizer_hparams())
        return self.optimizer

    @property
    def sam_optimizer(self) -> SharpnessAware | None:
        """The SAM-family optimizer under accelerate's wrapper (which keeps it in `.optimizer`), or None."""
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        return inner if isinstance(inner, SharpnessAware) else None

    # --- the step -----------------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # Keep the window: its last micro-batch replays all of it at w + e(w).
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._window = batch_samples
        return batch_samples, num_items_in_batch

    def training_step(self, model, inputs, num_items_in_batch=None):
        sam = self.sam_optimizer
        # global_step counts finished optimizer steps: constant over a GA window, equal on all ranks.
        if sam is None or not self.sam_options.schedule.is_sam_step(self.state.global_step):
            return super().training_step(model, inputs, num_items_in_batch)  # the base step's gradient

        # Layer-sparse: the draw depends only on the step and the bandit's weights, which change
        # after the window, so every micro-batch of the window knows it before its first pass.
        sparse = self._bound_layer_sparse(model, sam)
        layers = sparse.draw(self.state.global_step) if sparse is not None else None
        first = not self._window or self._window[0] is inputs
        with self._ascent_sync_context(model), sparse.first_pass(layers, first) if sparse else contextlib.nullcontext():
            loss = super().training_step(model, inputs, num_items_in_batch)  # gradient at w
        if not self.accelerator.sync_gradients:
            return loss  # the ascent gradient accumulates over the window

        subset = sparse.params_of(layers) if sparse is not None else None
        norm = sam.perturb(grad_scale=self._loss_scale(), params=subset)  # w <- w + e(w)
        try:
            if subset is None:
                model.zero_grad()
                perturbed_loss = self._replay_window(model, inputs, num_items_in_batch)  # gradient at w + e(w)
            else:
                with sparse.second_pass(layers):  # only the sampled layers get a second gradient
                    # DDP would see the frozen layers as unused (an error without find_unused_parameters):
                    # the pass runs unsynced and the gradients are averaged here instead.
                    replay = sparse.replay_context(len(self._micro_batches(inputs)))
                    perturbed_loss = self._replay_window(model, inputs, num_items_in_batch, replay, sync=False)
                sparse.average_across_ranks(self.accelerator, layers, self.sam_options.ascent == "local")
        finally:
            sam.restore()  # w back, bit-exactly, before anything else can see the weights
        if sparse is not None:
            sparse.update(layers)
        self._record(norm, perturbed_loss)
        return loss

    def _bound_layer_sparse(self, model, sam) -> LayerSparseStep | None:
        """The layer-sparse machinery, bound to the optimizer's parameters (in model order), or None."""
        if self.layer_sparse is None:
            return None
        if self.layer_sparse.sampler is None:
            unwrapped = self.accelerator.unwrap_model(model)
            in_optimizer = {p for group in sam.param_groups for p in group["params"]}
            named = [(n, p) for n, p in unwrapped.named_parameters() if p in in_optimizer]
            checkpointing = self.args.gradient_checkpointing or getattr(unwrapped, "is_activation_checkpointing", False)
            self.layer_sparse.bind(named, unwrapped, checkpointing)
        return self.layer_sparse

    def _micro_batches(self, inputs) -> list[dict]:
        return self._window if self._window and self._window[-1] is inputs else [inputs]

    def _replay_window(self, model, inputs, num_items_in_batch, replay=None, sync: bool = True):
        """The second pass over every micro-batch of the window; only the last one syncs (if `sync`).
        `replay(i)` is the context of micro-batch i's forward (layer-sparse: the recorded frozen prefix)."""
        window = self._micro_batches(inputs)
        total = torch.zeros((), device=self.args.device)
        for i, micro_batch in enumerate(window):
            last = sync and i == len(window) - 1
            with contextlib.nullcontext() if last else self._no_sync(model), \
                    replay(i) if replay is not None else contextlib.nullcontext():
                total += super().training_step(model, micro_batch, num_items_in_batch)
        return total

    def _ascent_sync_context(self, model):
        # "local" ascent: keep the first pass's gradient on each rank (no all-reduce).
        if self.sam_options.ascent == "local":
            return self._no_sync(model)
        return contextlib.nullcontext()

    def _no_sync(self, model):
        """Hold back the gradient reduction of a backward: DDP's `no_sync` through accelerate, or, for a model
        FSDP2 sharded at load time (which accelerate leaves unwrapped), FSDP's own switch."""
        if self.sharded:
            return gradient_sync_off(self.model)
        return self.accelerator.no_sync(model)

    def _loss_scale(self) -> torch.Tensor | None:
        """The GradScaler's current scale as a tensor (no host sync), or None without one."""
        scaler = getattr(self.accelerator, "scaler", None)
        return getattr(scaler, "_scale", None) if scaler is not None and scaler.is_enabled() else None

    # --- checkpoints: the layer bandit's weights travel with the optimizer ------------------

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.layer_sparse is not None and self.args.should_save:
            self.layer_sparse.save(output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if self.layer_sparse is not None and checkpoint:
            self.layer_sparse.load(checkpoint)

    # --- logging ------------------------------------------------------------------------

    def _record(self, norm: torch.Tensor, perturbed_loss: torch.Tensor) -> None:
        # Tensors only: the host sync happens once per logging step, in `log`.
        stats = torch.stack([norm.detach().float().to(perturbed_loss.device), perturbed_loss.float()])
        self._sam_stats = stats if self._sam_stats is None else self._sam_stats + stats
        self._sam_steps += 1

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._sam_steps:  # a training log: add the SAM figures
            stats = self.accelerator.reduce(self._sam_stats / self._sam_steps, reduction="mean")
            logs["sam_ascent_grad_norm"], logs["sam_perturbed_loss"] = (round(v, 6) for v in stats.tolist())
            self._sam_stats, self._sam_steps = None, 0
        super().log(logs, *args, **kwargs)


class SAMTrainer(NumItemsLossScalingFix, SAMStepMixin):
    """A `Trainer` that runs the SAM two-pass step when its optimizer is `SAM` or `AdaSAM`.

    The optimizer comes from `SAMTrainingArguments` (`optimizer`, `sam_rho`, ...) or from the
    standard ``optimizers=(optimizer, scheduler)`` argument. With a non-SAM optimizer the step
    is the Trainer's own, with one fix that applies to every optimizer: `NumItemsLossScalingFix`,
    which, first in the bases, sets the loss scaling once for the whole two-pass step.
    """
