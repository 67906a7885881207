"""SAM: Sharpness-Aware Minimization over any torch optimizer.

Foret, Kleiner, Mobahi, Neyshabur. "Sharpness-Aware Minimization for Efficiently Improving
Generalization", ICLR 2021. https://arxiv.org/abs/2010.01412. The wrapper shape (a base optimizer
built on SAM's own param groups) follows davda54/sam.
"""

from __future__ import annotations

import torch

from .sharpness import SharpnessAware
from .validation import check_rho, check_state_dict


class SAM(SharpnessAware):
    """SAM's ascent and return around the update of `base_optimizer`.

    The base optimizer is built on this optimizer's param groups and shares them (the same
    dicts, the same list), so an LR scheduler attached to the SAM object drives the base, and
    `state` is the base optimizer's state.

    Args:
        params: parameters or param groups; a group may set its own `rho` / `adaptive`.
        base_optimizer: a torch optimizer class, e.g. `torch.optim.SGD` (default) or `AdamW`.
        rho: the ascent radius, > 0.
        adaptive: the ASAM ascent e = rho * w^2 g / || |w| g || (Kwon et al., 2021).
        **base_kwargs: passed to `base_optimizer` (lr, momentum, weight_decay, ...).
    """

    def __init__(
        self,
        params,
        base_optimizer: type[torch.optim.Optimizer] = torch.optim.SGD,
        rho: float = 0.05,
        adaptive: bool = False,
        **base_kwargs,
    ):
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise ValueError(
                f"Invalid base_optimizer: {base_optimizer!r} (must be a torch.optim.Optimizer class)"
            )
        if issubclass(base_optimizer, SharpnessAware):
            raise ValueError(f"Invalid base_optimizer: {base_optimizer.__name__} is already a SAM optimizer")
        super().__init__(params, dict(rho=rho, adaptive=adaptive))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self._link_base()
        self.defaults.update(self.base_optimizer.defaults)

    def _link_base(self) -> None:
        # Share, never copy: one list of group dicts and one state dict for both objects.
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state

    def add_param_group(self, param_group: dict) -> None:
        if "base_optimizer" not in self.__dict__:  # while SharpnessAware.__init__ builds groups
            return super().add_param_group(param_group)
        param_group.setdefault("rho", self.defaults["rho"])
        param_group.setdefault("adaptive", self.defaults["adaptive"])
        check_rho(param_group["rho"])
        self.base_optimizer.add_param_group(param_group)

    def state_dict(self) -> dict:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        """Load the base optimizer's state, after checking that it is this SAM's (see `SharpnessAware`)."""
        check_state_dict(self, state_dict)
        # The base optimizer knows how to load its own state (dtype casts, `step` tensors);
        # loading replaces its group list and state dict, so link them again.
        self.base_optimizer.load_state_dict(state_dict)
        self._link_base()

    @torch.no_grad()
    def _base_step(self) -> None:
        self.base_optimizer.step()

    def __repr__(self) -> str:
        return f"SAM({self.base_optimizer!r})"
