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
run before the first sampled one are not recomputed (`frozen_prefix.py`).
"""

from __future__ import annotations

import contextlib
import os

import torch
from transformers import Trainer

from .frozen_prefix import FrozenPrefixCache
from .optim.factory import create_optimizer
from .optim.layer_sampler import LayerSampler
from .optim.schedule import SAMSchedule
from .optim.sharpness import SharpnessAware
from .training_args import SAMTrainingArguments


LAYER_SAMPLER_NAME = "sam_layer_sampler.pt"


class SAMTrainer(Trainer):
    """A `Trainer` that runs the SAM two-pass step when its optimizer is `SAM` or `AdaSAM`.

    The optimizer comes from `SAMTrainingArguments` (`optimizer`, `sam_rho`, ...) or from the
    standard ``optimizers=(optimizer, scheduler)`` argument. With a non-SAM optimizer the step
    is the Trainer's own, with one fix that applies to every optimizer: see
    `_normalize_num_items`.

    Logged with the Trainer's loss (TensorBoard, progress bar): ``sam_ascent_grad_norm``, the
    unscaled norm of the ascent gradient, and ``sam_perturbed_loss``, the loss at w + e(w).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        wants_sam = self.sam_optimizer is not None or (
            self.optimizer is None and getattr(self.args, "is_sharpness_aware", False)
        )
        if wants_sam and (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            raise ValueError(
                "SAMTrainer supports one device or DDP (torchrun / accelerate launch); "
                f"{'FSDP' if self.is_fsdp_enabled else 'DeepSpeed'} is not supported"
            )
        self._window: list[dict] = []
        self._loss_uses_num_items: bool | None = None
        self._sam_stats: torch.Tensor | None = None  # running sums: ascent norm, perturbed loss
        self._sam_steps = 0
        self._layer_sampler: LayerSampler | None = None  # built at the first layer-sparse step
        self._layer_sampler_state: dict | None = None  # loaded from a checkpoint before that
        self._prefix_cache: FrozenPrefixCache | None = None  # the second pass skips the frozen prefix

    # --- optimizer ----------------------------------------------------------------------

    def create_optimizer(self, model=None):
        """Build the optimizer named by `args.optimizer` with the Trainer's decay groups.

        Written out (not via `optimizer_cls_and_kwargs`) because the Trainer treats anything
        that is not an Optimizer class as a whole-model factory.
        """
        if self.optimizer is not None:
            return self.optimizer
        # Built for this optimizer's parameters at its first use; a checkpoint's bandit is loaded after this.
        self._layer_sampler = self._prefix_cache = self._layer_sampler_state = None
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
        """The SAM-family optimizer under accelerate's wrapper, or None."""
        inner = _unwrap(self.optimizer)
        return inner if isinstance(inner, SharpnessAware) else None

    # --- the step -----------------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # Keep the window: its last micro-batch replays all of it at w + e(w).
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._window = batch_samples
        return batch_samples, num_items_in_batch

    @property
    def sam_schedule(self) -> SAMSchedule:
        schedule = getattr(self.args, "sam_schedule", None)
        return schedule() if schedule is not None else SAMSchedule()

    def training_step(self, model, inputs, num_items_in_batch=None):
        num_items_in_batch = self._normalize_num_items(model, inputs, num_items_in_batch)
        sam = self.sam_optimizer
        # global_step counts finished optimizer steps: constant over a GA window, equal on all ranks.
        if sam is None or not self.sam_schedule.is_sam_step(self.state.global_step):
            return super().training_step(model, inputs, num_items_in_batch)  # the base step's gradient

        # Layer-sparse: the draw depends only on the step and the bandit's weights, which change
        # after the window, so every micro-batch of the window knows it before its first pass.
        sampler = self._sampler(model, sam)
        layers = sampler.sample(self.state.global_step) if sampler is not None else None
        prefix = self._prefix_cache if sampler is not None and not sampler.samples_all else None
        if prefix is not None and (not self._window or self._window[0] is inputs):
            prefix.reset()  # the window's first micro-batch
        with self._ascent_sync_context(model), prefix.record(layers) if prefix else contextlib.nullcontext():
            loss = super().training_step(model, inputs, num_items_in_batch)  # gradient at w
        if not self.accelerator.sync_gradients:
            return loss  # the ascent gradient accumulates over the window

        subset = None if sampler is None or sampler.samples_all else sampler.params_of(layers)
        norm = sam.perturb(grad_scale=self._loss_scale(), params=subset)  # w <- w + e(w)
        try:
            if subset is None:
                model.zero_grad()
                perturbed_loss = self._replay_window(model, inputs, num_items_in_batch)  # gradient at w + e(w)
            else:
                with _frozen_except(sampler, layers):  # only the sampled layers get a second gradient
                    # DDP would see the frozen layers as unused (an error without find_unused_parameters):
                    # the pass runs unsynced and the gradients are averaged here instead.
                    perturbed_loss = self._replay_window(model, inputs, num_items_in_batch, prefix, sync=False)
                self._average_across_ranks(sampler, layers)
        finally:
            sam.restore()  # w back, bit-exactly, before anything else can see the weights
            if prefix is not None:
                prefix.reset()
        if sampler is not None:
            sampler.update(layers, sampler.layer_grad_norms(layers))
        self._record(norm, perturbed_loss)
        return loss

    def _sampler(self, model, sam) -> LayerSampler | None:
        """The layer bandit of sam_mode='layer-sparse' over the optimizer's parameters, or None."""
        if getattr(self.args, "sam_mode", "full") != "layer-sparse":
            return None
        if self._layer_sampler is None:
            in_optimizer = {p for group in sam.param_groups for p in group["params"]}
            named = [(n, p) for n, p in self.accelerator.unwrap_model(model).named_parameters() if p in in_optimizer]
            self._layer_sampler = LayerSampler(named, self.args.sam_layer_fraction, seed=self.args.seed)
            if self._layer_sampler_state is not None:
                self._layer_sampler.load_state_dict(self._layer_sampler_state)
            unwrapped = self.accelerator.unwrap_model(model)
            modules = FrozenPrefixCache.usable(unwrapped, self._layer_sampler.names)
            # Checkpointed blocks (reentrant ones in particular) need inputs that require grad.
            checkpointing = self.args.gradient_checkpointing or getattr(unwrapped, "is_activation_checkpointing", False)
            self._prefix_cache = FrozenPrefixCache(modules) if modules is not None and not checkpointing else None
        return self._layer_sampler

    def _replay_window(self, model, inputs, num_items_in_batch, prefix: FrozenPrefixCache | None = None,
                       sync: bool = True):
        """The second pass over every micro-batch of the window; only the last one syncs (if `sync`).

        With a `prefix` cache holding a valid record per micro-batch, the frozen layers before
        the first sampled one are not recomputed.
        """
        window = self._window if self._window and self._window[-1] is inputs else [inputs]
        reuse = prefix is not None and prefix.can_replay(len(window))
        total = torch.zeros((), device=self.args.device)
        for i, micro_batch in enumerate(window):
            last = sync and i == len(window) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(model), \
                    prefix.replay(i) if reuse else contextlib.nullcontext():
                total += super().training_step(model, micro_batch, num_items_in_batch)
        return total

    def _average_across_ranks(self, sampler: LayerSampler, layers: list[int]) -> None:
        """Layer-sparse under DDP: average the sampled layers' second-pass gradients (and, with a
        local ascent, the frozen layers' unsynced first-pass ones) in one all-reduce."""
        if self.accelerator.num_processes == 1:
            return
        local = getattr(self.args, "sam_ascent", "global") == "local"
        params = sampler.params if local else [sampler.params_of(layers)]
        grads = [p.grad for ps in params for p in ps if p.grad is not None]
        if grads:
            flat = self.accelerator.reduce(torch._utils._flatten_dense_tensors(grads), reduction="mean")
            torch._foreach_copy_(grads, torch._utils._unflatten_dense_tensors(flat, grads))

    def _ascent_sync_context(self, model):
        # "local" ascent: keep the first pass's gradient on each rank (no all-reduce).
        if getattr(self.args, "sam_ascent", "global") == "local":
            return self.accelerator.no_sync(model)
        return contextlib.nullcontext()

    def _loss_scale(self) -> torch.Tensor | None:
        """The GradScaler's current scale as a tensor (no host sync), or None without one."""
        scaler = getattr(self.accelerator, "scaler", None)
        return getattr(scaler, "_scale", None) if scaler is not None and scaler.is_enabled() else None

    # --- checkpoints: the layer bandit's weights travel with the optimizer ------------------

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        state = self._layer_sampler.state_dict() if self._layer_sampler is not None else self._layer_sampler_state
        if state is not None and self.args.should_save:  # also a loaded state not used yet (no SAM step since)
            torch.save(state, os.path.join(output_dir, LAYER_SAMPLER_NAME))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        path = os.path.join(checkpoint, LAYER_SAMPLER_NAME) if checkpoint else None
        if path and os.path.isfile(path):
            self._layer_sampler_state = torch.load(path, weights_only=True)
            if self._layer_sampler is not None:
                self._layer_sampler.load_state_dict(self._layer_sampler_state)

    # --- loss scaling -------------------------------------------------------------------

    def _normalize_num_items(self, model, inputs, num_items_in_batch):
        """Fix the Trainer's loss scaling for models whose forward takes **kwargs but ignores
        `num_items_in_batch` (BERT and most classifiers).

        The Trainer infers "the model normalizes its loss by num_items_in_batch" from the
        forward signature. When that is wrong, it neither divides the loss by the accumulation
        steps nor leaves out its x num_processes factor, and the gradient is k x world too
        large. The question is a property of the model's loss, so it is asked once, of the loss
        itself: two no-grad forwards with different counts. If the loss ignores the count, the
        Trainer is told the model takes no loss kwargs, and scales as for a per-batch mean.
        """
        if num_items_in_batch is None or not self.model_accepts_loss_kwargs or self.compute_loss_func is not None:
            return num_items_in_batch
        if self._loss_uses_num_items is None:
            self._loss_uses_num_items = self._probe_loss_uses_num_items(model, inputs)
        if self._loss_uses_num_items:
            return num_items_in_batch
        self.model_accepts_loss_kwargs = False
        return None

    @torch.no_grad()
    def _probe_loss_uses_num_items(self, model, inputs) -> bool:
        model = self.accelerator.unwrap_model(model)
        was_training = model.training
        model.eval()  # no dropout: the two losses differ only through the count
        try:
            prepared = self._prepare_inputs(inputs)
            losses = []
            for count in (1, 2):
                n = torch.tensor(count, device=self.args.device)
                with self.compute_loss_context_manager():
                    losses.append(self.compute_loss(model, dict(prepared), num_items_in_batch=n).detach())
        finally:
            model.train(was_training)
        return not torch.equal(losses[0], losses[1])

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


@contextlib.contextmanager
def _frozen_except(sampler: LayerSampler, layers: list[int]):
    """Zero the sampled layers' gradients and freeze every other layer for the second pass.

    A frozen layer gets no weight gradient (its first-pass gradient stands), and autograd
    stops below the lowest sampled layer. Setting flags is not tensor math: a Python loop.
    """
    sampled = set(layers)
    frozen = [p for i in range(len(sampler)) if i not in sampled for p in sampler.params[i] if p.requires_grad]
    grads = [p.grad for p in sampler.params_of(layers) if p.grad is not None]
    if grads:
        torch._foreach_zero_(grads)
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _unwrap(optimizer):
    """accelerate's AcceleratedOptimizer keeps the user's optimizer in `.optimizer`."""
    return getattr(optimizer, "optimizer", optimizer)
