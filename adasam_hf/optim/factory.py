"""Optimizers by name: one registry, `create_optimizer`, `list_optimizers`.

Every name takes the same hyperparameter vocabulary (torch's names, plus `rho` and `adaptive`),
so a caller such as `SAMTrainer` can pass one set of values whatever the name. Each entry uses
the ones that mean something for it; the others are validated and ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .adasam import AdaSAM
from .sam import SAM
from .sharpness import SharpnessAware
from .validation import check_adam_hparams, check_rho, check_scalar

HPARAMS = ("lr", "betas", "eps", "weight_decay", "momentum", "rho", "adaptive")


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    build: Callable[..., torch.optim.Optimizer]
    uses: tuple[str, ...]  # the hyperparameters `build` takes
    description: str
    defaults: dict = field(default_factory=dict)
    sharpness_aware: bool = False


_REGISTRY: dict[str, OptimizerSpec] = {}


def register_optimizer(spec: OptimizerSpec) -> None:
    if spec.name in _REGISTRY:
        raise ValueError(f"optimizer {spec.name!r} is already registered")
    unknown = set(spec.uses) - set(HPARAMS)
    if unknown:
        raise ValueError(f"{spec.name}: unknown hyperparameters {sorted(unknown)}; known: {list(HPARAMS)}")
    _REGISTRY[spec.name] = spec


def list_optimizers() -> list[str]:
    return sorted(_REGISTRY)


def get_optimizer_spec(name: str) -> OptimizerSpec:
    key = name.lower() if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise ValueError(f"Unknown optimizer: {name!r} (choose from: {', '.join(list_optimizers())})")
    return _REGISTRY[key]


def create_optimizer(name: str, params, **hparams) -> torch.optim.Optimizer:
    """Build optimizer `name` over `params` (tensors or param groups).

    `hparams` may hold any of lr, betas, eps, weight_decay, momentum, rho, adaptive; values a
    name does not use are checked and ignored. Missing values take the entry's defaults,
    then the class's own.
    """
    spec = get_optimizer_spec(name)
    values = validate_hparams(spec.name, **hparams)
    return spec.build(params, **{k: v for k, v in values.items() if k in spec.uses})


def validate_hparams(name: str, **hparams) -> dict:
    """Check `hparams` for optimizer `name`; return them merged over the entry's defaults.

    None values mean "not given". Raises ValueError naming the bad value and the valid range.
    """
    spec = get_optimizer_spec(name)
    unknown = set(hparams) - set(HPARAMS)
    if unknown:
        raise ValueError(
            f"Unknown hyperparameter(s) {sorted(unknown)} for optimizer {spec.name!r} "
            f"(valid: {', '.join(HPARAMS)})"
        )
    values = {**spec.defaults, **{k: v for k, v in hparams.items() if v is not None}}
    check_adam_hparams(
        lr=values.get("lr", 0.0),
        betas=tuple(values.get("betas", (0.0, 0.0))),
        eps=values.get("eps", 1.0),
        weight_decay=values.get("weight_decay", 0.0),
    )
    check_scalar("momentum", values.get("momentum", 0.0), low=0.0, high=1.0, high_open=True)
    if spec.sharpness_aware and "rho" in values:
        check_rho(values["rho"])
    return values


def is_sharpness_aware(name_or_optimizer: str | torch.optim.Optimizer) -> bool:
    """Whether an optimizer (by registry name, or an instance, also under accelerate's wrapper) takes the SAM
    two-pass step."""
    if isinstance(name_or_optimizer, str):
        return get_optimizer_spec(name_or_optimizer).sharpness_aware
    inner = getattr(name_or_optimizer, "optimizer", name_or_optimizer)  # accelerate's AcceleratedOptimizer
    return isinstance(inner, SharpnessAware)


def _sam_over(base: type[torch.optim.Optimizer], **fixed) -> Callable[..., SAM]:
    return lambda params, **kw: SAM(params, base, **fixed, **kw)


_SGD = ("lr", "momentum", "weight_decay")
_ADAM = ("lr", "betas", "eps", "weight_decay")
_SAM = ("rho", "adaptive")
_MOMENTUM = {"momentum": 0.9}

for _spec in (
    OptimizerSpec("sgd", torch.optim.SGD, _SGD, "SGD with momentum (0.9 unless given)", _MOMENTUM),
    OptimizerSpec("adamw", torch.optim.AdamW, _ADAM, "AdamW (torch; fused where available)"),
    OptimizerSpec("amsgrad", lambda params, **kw: torch.optim.AdamW(params, amsgrad=True, **kw), _ADAM,
                  "the paper's AMSGrad baseline: AdamW(amsgrad=True), weight decay 0 unless given",
                  {"weight_decay": 0.0}),
    OptimizerSpec("sam", _sam_over(torch.optim.SGD), _SGD + _SAM, "SAM over SGD with momentum (0.9 unless given)",
                  _MOMENTUM, sharpness_aware=True),
    OptimizerSpec("asam", _sam_over(torch.optim.SGD), _SGD + _SAM,
                  "adaptive SAM (Kwon et al., 2021) over SGD with momentum", {**_MOMENTUM, "adaptive": True},
                  sharpness_aware=True),
    OptimizerSpec("sam-adamw", _sam_over(torch.optim.AdamW), _ADAM + _SAM, "SAM over AdamW", sharpness_aware=True),
    OptimizerSpec("adasam", AdaSAM, _ADAM + _SAM, "AdaSAM, Algorithm 1 of Sun et al. (2023)", sharpness_aware=True),
    OptimizerSpec("adasam-adaptive", AdaSAM, _ADAM + _SAM, "AdaSAM with the ASAM ascent", {"adaptive": True},
                  sharpness_aware=True),
):
    register_optimizer(_spec)
