"""The two-pass protocol that SAM and AdaSAM share: ascend to w + e(w), come back, update.

Sharpness-Aware Minimization (Foret et al., 2021, arXiv 2010.01412) takes the gradient at
w + e(w), e(w) = rho * g / ||g||, and applies it at w. The adaptive form (ASAM, Kwon et al.,
2021, arXiv 2102.11600) rescales the ascent by |w|: e(w) = rho * w^2 g / || |w| g ||.

Protocol (hand-written loops and `SAMTrainer` drive it the same way)::

    loss_fn(model, batch).backward()      # 1. gradient at w
    opt.perturb()                         # 2. w <- w + e(w)
    opt.zero_grad()
    loss_fn(model, batch).backward()      # 3. gradient at w + e(w)
    opt.restore()                         # 4. w back, bit-exactly
    opt.step()                            # 5. base update from the gradients now present

or, in one call, ``opt.step(closure)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer
from torch.utils._foreach_utils import (
    _get_fused_kernels_supported_devices,
    _group_tensors_by_device_and_dtype,
)

from .sharded import check_reduced, global_norm, local
from .validation import check_rho, check_state_dict


class SharpnessAware(Optimizer):
    """Base class holding `perturb`, `restore` and the closure form of `step`.

    Subclasses implement `_base_step()`: the update from the gradients at w + e(w).
    Every param group carries `rho` and `adaptive`.
    """

    def __init__(self, params, defaults: dict):
        check_rho(defaults["rho"])
        super().__init__(params, defaults)
        # Copies of w taken by `perturb`, reused every step (allocating a parameter-sized set
        # each step costs more than the copy itself). Kept out of `self.state` on purpose:
        # they are scratch, not optimizer state, and must not bloat checkpoints.
        self._saved: dict[torch.Tensor, torch.Tensor] = {}
        self._perturbed: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("_saved", {})
        self.__dict__.setdefault("_perturbed", None)

    def scratch_tensors(self) -> list[torch.Tensor]:
        """The tensors held between steps outside `state` (the reused copies of w), for memory accounting."""
        return list(self._saved.values())

    def add_param_group(self, param_group: dict) -> None:
        if "rho" in param_group:
            check_rho(param_group["rho"])
        super().add_param_group(param_group)

    # Per-parameter state keys a state dict of this optimizer holds (checked by `load_state_dict`).
    state_keys: tuple[str, ...] = ()

    def load_state_dict(self, state_dict: dict) -> None:
        """Load like any optimizer, after checking that `state_dict` is this kind of optimizer's.

        Raises:
            ValueError: It was saved by another optimizer (it lacks `rho`, holds another optimizer's
                hyperparameters or state, ...); the message names what differs.
        """
        check_state_dict(self, state_dict, self.state_keys)
        super().load_state_dict(state_dict)

    # --- the protocol -------------------------------------------------------------------

    @torch.no_grad()
    def perturb(self, grad_scale: torch.Tensor | None = None,
                params: Iterable[torch.Tensor] | None = None) -> torch.Tensor:
        """Move w to w + e(w) with the gradients now present; return the ascent gradient norm.

        The norm is global: one L2 norm over every parameter of every group, because e(w) is
        defined on the whole weight vector. Zero or non-finite norm (an fp16 overflow, say)
        leaves the weights untouched, decided on the device without a host sync.

        With `adaptive`, the gradients are overwritten by w^2 g (scratch, to avoid temporaries);
        the protocol zeroes them before the second backward anyway.

        Args:
            grad_scale: the loss scale the gradients carry (a GradScaler's scale), if any.
                e(w) is scale-invariant; only the returned norm is divided by it.
            params: perturb only these (layer-sparse SAM): e(w) is the ascent of radius rho in
                their subspace, so the norm spans them alone. Default: every parameter.
        """
        if self._perturbed is not None:
            raise RuntimeError("perturb() called twice without restore() in between")
        only = None if params is None else set(params)
        groups = []  # (group, params with a gradient, their gradients)
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None and (only is None or p in only)]
            gs = [p.grad for p in ps]
            if any(g.is_sparse for g in gs):
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            groups.append((group, ps, gs))
        check_reduced([g for _, _, gs in groups for g in gs])  # before anything changes
        # FSDP2's DTensors: every elementwise op below works on this rank's shards (sharded.py).
        sharded = [(group, local(ps), local(gs)) for group, ps, gs in groups]
        params = [p for _, ps, _ in sharded for p in ps]
        saved = [self._saved_buffer(p, shard) for p, shard in zip((p for _, ps, _ in groups for p in ps), params)]
        self._perturbed = (params, saved)
        if not params:
            return torch.zeros(())
        torch._foreach_copy_(saved, params)

        # ASAM: the norm is taken of |w| * g and the step is along w^2 * g. Both are built in
        # the gradient buffers in place (no temporaries): g <- w g, then g <- w^2 g.
        for group, ps, gs in sharded:
            if group["adaptive"] and ps:
                torch._foreach_mul_(gs, ps)
        # One _foreach_norm per device/dtype, one reduction; sharded: one all-reduce of the squared norms.
        norm = global_norm([g for _, _, gs in groups for g in gs], [g for _, _, gs in sharded for g in gs])
        for group, ps, gs in sharded:
            if group["adaptive"] and ps:
                torch._foreach_mul_(gs, ps)
        skip = (~torch.isfinite(norm) | (norm == 0)).float()
        for group, ps, gs in sharded:
            if ps:
                _ascend(ps, gs, scale=group["rho"] / norm, skip=skip)
        return norm if grad_scale is None else norm / grad_scale.to(norm.device)

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the w saved by `perturb`, bit-exactly.

        Copying back (rather than subtracting e(w)) is exact in any precision; (w + e) - e is not.
        A no-op when nothing is perturbed.
        """
        if self._perturbed is None:
            return
        params, saved = self._perturbed
        if params:
            torch._foreach_copy_(params, saved)
        self._perturbed = None

    @property
    def is_perturbed(self) -> bool:
        return self._perturbed is not None

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """Without a closure: the base update from the gradients present (protocol step 5).

        With a closure: the whole two-pass step. The closure must zero the gradients, compute
        the loss, call backward and return the loss; it runs at w, then at w + e(w).
        Returns the loss at w.
        """
        if closure is None and self._perturbed is not None:
            raise RuntimeError("step() while perturbed: call restore() first")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            self.perturb()
            try:
                with torch.enable_grad():
                    closure()
            finally:
                self.restore()
        self._base_step()
        return loss

    def _base_step(self) -> None:
        raise NotImplementedError

    # --- helpers ----------------------------------------------------------------------

    def _saved_buffer(self, p: torch.Tensor, shard: torch.Tensor) -> torch.Tensor:
        """The reused copy of parameter `p`'s `shard` (p itself when p is not sharded): 1/N of p per rank."""
        buf = self._saved.get(p)
        if buf is None or buf.shape != shard.shape or buf.dtype != shard.dtype or buf.device != shard.device:
            buf = self._saved[p] = torch.empty_like(shard, memory_format=torch.preserve_format)
        return buf


def _ascend(
    params: list[torch.Tensor], directions: list[torch.Tensor], scale: torch.Tensor, skip: torch.Tensor
) -> None:
    """w <- w + scale * d, unless `skip` is 1.

    This is an SGD step with lr = -scale, so torch's fused SGD kernel does it in one pass with
    no temporaries, and its `found_inf` flag skips it on the device: a zero or non-finite norm
    leaves w untouched without a host sync.
    """
    grouped = _group_tensors_by_device_and_dtype([params, directions])
    for (device, dtype), ((ps, ds), _) in grouped.items():
        if _fused_sgd_is_exact(device, dtype):
            torch._fused_sgd_(
                ps, ds, [],
                weight_decay=0.0, momentum=0.0, lr=-scale.to(device), dampening=0.0,
                nesterov=False, maximize=False, is_first_step=False, found_inf=skip.to(device),
            )
        elif not skip.item():  # one host sync where the fused kernel is not used (free on CPU)
            torch._foreach_add_(ps, ds, alpha=scale.item())  # a scalar alpha: no parameter-sized temporary


def _fused_sgd_is_exact(device: torch.device, dtype: torch.dtype) -> bool:
    """torch 2.13's CPU fused SGD leaves bf16/fp16 tensors unchanged in every full SIMD block
    (pytorch/pytorch#191763): on CPU it is used for float32/float64 only."""
    if device.type not in _get_fused_kernels_supported_devices():
        return False
    return device.type != "cpu" or dtype in (torch.float32, torch.float64)
