"""Layer-sparse SAM: perturb, and run the second backward through, a sampled subset of layers.

After SL-SAM (arXiv 2602.09395): a SAM step only pays for the layers it perturbs if the
other layers are frozen during the second pass (no weight gradients, and no backward at all
below the lowest sampled layer). Layers with large sharpness signal should be picked more
often; which ones those are changes during training, so the choice is a bandit:

- arms: the model's layers (transformer blocks; embeddings, pooler, head on their own);
- play: draw m = ceil(fraction * L) layers without replacement from
  p = (1 - gamma) * softmax(log_w) + gamma / L;
- reward: each sampled layer's gradient norm at w + e(w), divided by a running scale
  s <- max(discount * s, largest sampled norm), so it lies in [0, 1] and compares layers
  across steps (dividing by this step's largest norm alone would make every reward 1 when
  m = 1, and the bandit blind). Seen only for the sampled layers, it is importance-weighted
  by the inclusion probability pi = min(1, m p) (EXP3, Auer et al. 2002);
- update: log_w <- discount * log_w + (gamma / L) * reward / pi. The discount keeps the
  weights following recent norms rather than the whole history.

Draws come from a generator seeded by (seed, step): identical on every DDP rank (whose
rewards are identical after the all-reduce), and the weights are checkpointed by SAMTrainer.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable

import torch

# "encoder.layer.3.", "model.layers.3.", "transformer.h.3.", "blocks.3.": one arm per block.
_BLOCK = re.compile(r"^(.*?\b(?:layer|layers|h|block|blocks)\.\d+)\.")


def layer_name(param_name: str) -> str:
    """The arm a parameter belongs to: its numbered block, else its module two levels deep."""
    match = _BLOCK.match(param_name)
    if match:
        return match.group(1)
    parts = param_name.split(".")[:-1]  # drop "weight" / "bias"
    return ".".join(parts[:2]) if parts else param_name


def check_layer_fraction(fraction: float) -> None:
    """Raise ValueError unless 0 < `fraction` <= 1 (``sam_layer_fraction``)."""
    if isinstance(fraction, bool) or not (isinstance(fraction, (int, float)) and 0.0 < fraction <= 1.0):
        raise ValueError(f"Invalid sam_layer_fraction: {fraction!r} (must be in (0, 1])")


class LayerSampler:
    """EXP3 over layers; `sample(step)` gives the layers to perturb at an optimizer step."""

    def __init__(self, named_params: Iterable[tuple[str, torch.Tensor]], fraction: float, seed: int = 0,
                 gamma: float = 0.1, discount: float = 0.99):
        check_layer_fraction(fraction)
        layers: dict[str, list[torch.Tensor]] = {}
        for name, p in named_params:
            layers.setdefault(layer_name(name), []).append(p)
        if not layers:
            raise ValueError("LayerSampler needs at least one parameter")
        self.names = list(layers)
        self.params = list(layers.values())
        self.num_sampled = math.ceil(fraction * len(self.names))
        self.seed, self.gamma, self.discount = seed, gamma, discount
        self.log_weights = torch.zeros(len(self.names), dtype=torch.float64)
        self.reward_scale = torch.zeros((), dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def samples_all(self) -> bool:
        return self.num_sampled == len(self.names)

    def probabilities(self) -> torch.Tensor:
        uniform = torch.full_like(self.log_weights, 1.0 / len(self))
        return (1 - self.gamma) * torch.softmax(self.log_weights, 0) + self.gamma * uniform

    def sample(self, step: int) -> list[int]:
        """The sampled layer indices, in model order."""
        if self.samples_all:
            return list(range(len(self)))
        generator = torch.Generator().manual_seed(random.Random(f"{self.seed}:{step}:layers").getrandbits(63))
        picks = torch.multinomial(self.probabilities(), self.num_sampled, replacement=False, generator=generator)
        return sorted(picks.tolist())

    def params_of(self, layers: list[int]) -> list[torch.Tensor]:
        return [p for i in layers for p in self.params[i]]

    @torch.no_grad()
    def layer_grad_norms(self, layers: list[int]) -> torch.Tensor:
        """The L2 norm of each listed layer's gradient: one foreach norm, then a segment sum."""
        params = [(i, p) for i in layers for p in self.params[i] if p.grad is not None]
        if not params:
            return torch.zeros(len(layers), dtype=torch.float64)
        norms = torch._foreach_norm([p.grad for _, p in params])
        squares = torch.stack([n.to(params[0][1].grad.device, torch.float64) for n in norms]) ** 2
        segment = torch.tensor([layers.index(i) for i, _ in params], device=squares.device)
        totals = torch.zeros(len(layers), dtype=torch.float64, device=squares.device).index_add_(0, segment, squares)
        return totals.sqrt().cpu()

    def update(self, layers: list[int], norms: torch.Tensor) -> None:
        """EXP3 step with the sampled layers' gradient norms as rewards."""
        norms = norms.to(torch.float64)
        if not torch.isfinite(norms).all() or norms.max() <= 0:
            return  # a skipped (overflowed or zero-gradient) step teaches nothing
        index = torch.tensor(layers)
        inclusion = (self.num_sampled * self.probabilities()[index]).clamp(max=1.0)
        self.reward_scale = torch.maximum(self.discount * self.reward_scale, norms.max())
        self.log_weights.mul_(self.discount)
        self.log_weights[index] += (self.gamma / len(self)) * (norms / self.reward_scale) / inclusion

    def state_dict(self) -> dict:
        return {"names": list(self.names), "log_weights": self.log_weights.clone(),
                "reward_scale": self.reward_scale.clone()}

    def load_state_dict(self, state: dict) -> None:
        if list(state["names"]) != self.names:
            raise ValueError("LayerSampler state is for a different set of layers")
        self.log_weights = state["log_weights"].clone().to(torch.float64)
        # Checkpoints written before the running scale existed restart it from zero.
        self.reward_scale = torch.as_tensor(state.get("reward_scale", 0.0), dtype=torch.float64).clone()
