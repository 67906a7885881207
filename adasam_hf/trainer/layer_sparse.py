"""Layer-sparse SAM inside the Trainer: which layers a SAM step perturbs, and the second pass over only them.

`LayerSparseStep` gathers what ``sam_mode="layer-sparse"`` needs around `SAMTrainer`'s two-pass step: the layer
bandit (`LayerSampler`) over the optimizer's parameters, the cache that lets the second forward skip the frozen
layers before the first sampled one (`FrozenPrefixCache`), freezing the other layers for the second pass, the
all-reduce of the sampled layers' gradients under DDP, and the bandit's checkpoint file. Its state is the bandit's
weights: `state_dict` / `load_state_dict`, saved beside the optimizer as ``sam_layer_sampler.pt``.
"""

from __future__ import annotations

import contextlib
import os

import torch

from ..optim.layer_sampler import LayerSampler
from .frozen_prefix import FrozenPrefixCache

__all__ = ["LAYER_SAMPLER_NAME", "LayerSparseStep"]

LAYER_SAMPLER_NAME = "sam_layer_sampler.pt"


class LayerSparseStep:
    """The layer-sparse machinery of one training run; bound to the optimizer's parameters at the first SAM step.

    Args:
        fraction: the fraction of layers perturbed per SAM step (``sam_layer_fraction``).
        seed: seeds the draws, which depend only on (seed, step): the same on every rank and after a resume.
    """

    def __init__(self, fraction: float, seed: int):
        self.fraction, self.seed = fraction, seed
        self.sampler: LayerSampler | None = None
        self.prefix: FrozenPrefixCache | None = None  # None: the second pass recomputes the prefix
        self._pending_state: dict | None = None  # a checkpoint's bandit, loaded before the sampler is built

    def reset(self) -> None:
        """Forget the model (a new optimizer was built): the next step binds again."""
        self.sampler = self.prefix = self._pending_state = None

    def bind(self, named_params: list[tuple[str, torch.Tensor]], model: torch.nn.Module, checkpointing: bool) -> None:
        """Build the bandit over `named_params` (the optimizer's, in model order) and, where `model`'s layers
        allow, the frozen-prefix cache. Checkpointed blocks (reentrant ones in particular) need inputs that
        require grad, so gradient checkpointing turns the cache off."""
        if self.sampler is not None:
            return
        self.sampler = LayerSampler(named_params, self.fraction, seed=self.seed)
        if self._pending_state is not None:
            self.sampler.load_state_dict(self._pending_state)
        modules = FrozenPrefixCache.usable(model, self.sampler.names)
        self.prefix = FrozenPrefixCache(modules) if modules is not None and not checkpointing else None

    @property
    def perturbs_everything(self) -> bool:
        return self.sampler.samples_all

    def draw(self, step: int) -> list[int]:
        return self.sampler.sample(step)

    def params_of(self, layers: list[int]) -> list[torch.Tensor] | None:
        """The parameters to perturb; None when every layer is sampled (the full step)."""
        return None if self.perturbs_everything else self.sampler.params_of(layers)

    # --- the first pass -------------------------------------------------------------------------------------

    def first_pass(self, layers: list[int], first_micro_batch: bool):
        """Around a first-pass micro-batch: record the frozen prefix's outputs for the replay."""
        if self.prefix is None or self.perturbs_everything:
            return contextlib.nullcontext()
        if first_micro_batch:
            self.prefix.reset()
        return self.prefix.record(layers)

    # --- the second pass ------------------------------------------------------------------------------------

    def replay_context(self, micro_batches: int):
        """A function of the micro-batch index giving the context of its second-pass forward: the recorded prefix
        when every micro-batch has a usable record, else none."""
        reuse = self.prefix is not None and self.prefix.can_replay(micro_batches)
        return self.prefix.replay if reuse else lambda i: contextlib.nullcontext()

    @contextlib.contextmanager
    def second_pass(self, layers: list[int]):
        """Zero the sampled layers' gradients and freeze every other layer for the second pass.

        A frozen layer gets no weight gradient (its first-pass gradient stands), and autograd stops below the
        lowest sampled layer. Setting flags is not tensor math: a Python loop.
        """
        sampled = set(layers)
        params = self.sampler.params
        frozen = [p for i in range(len(params)) if i not in sampled for p in params[i] if p.requires_grad]
        grads = [p.grad for p in self.sampler.params_of(layers) if p.grad is not None]
        if grads:
            torch._foreach_zero_(grads)
        for p in frozen:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in frozen:
                p.requires_grad_(True)
            if self.prefix is not None:
                self.prefix.reset()

    def average_across_ranks(self, accelerator, layers: list[int], local_ascent: bool) -> None:
        """Under DDP, the second pass ran unsynced (DDP would see the frozen layers as unused): average the
        sampled layers' gradients (and, with a local ascent, the frozen layers' unsynced first-pass ones) in one
        all-reduce."""
        if accelerator.num_processes == 1:
            return
        params = self.sampler.params if local_ascent else [self.sampler.params_of(layers)]
        grads = [p.grad for ps in params for p in ps if p.grad is not None]
        if grads:
            flat = accelerator.reduce(torch._utils._flatten_dense_tensors(grads), reduction="mean")
            torch._foreach_copy_(grads, torch._utils._unflatten_dense_tensors(flat, grads))

    def update(self, layers: list[int]) -> None:
        """The bandit learns from the sampled layers' second-pass gradient norms."""
        self.sampler.update(layers, self.sampler.layer_grad_norms(layers))

    # --- state ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict | None:
        """The bandit's weights (also a loaded state not used yet), or None before any."""
        return self.sampler.state_dict() if self.sampler is not None else self._pending_state

    def load_state_dict(self, state: dict) -> None:
        self._pending_state = state
        if self.sampler is not None:
            self.sampler.load_state_dict(state)

    def save(self, checkpoint_dir: str) -> None:
        state = self.state_dict()
        if state is not None:
            torch.save(state, os.path.join(checkpoint_dir, LAYER_SAMPLER_NAME))

    def load(self, checkpoint_dir: str) -> None:
        path = os.path.join(checkpoint_dir, LAYER_SAMPLER_NAME)
        if os.path.isfile(path):
            self.load_state_dict(torch.load(path, weights_only=True))
