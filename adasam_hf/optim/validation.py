"""Checks every optimizer here shares: hyperparameters at construction, state dicts at load time.

Each check raises `ValueError` naming the parameter, the bad value and what is allowed, so a bad value fails where
it is given rather than as a NaN many steps later, or as a `KeyError` when a checkpoint of another optimizer meets
the first step.
"""

from __future__ import annotations

import math

import torch

# Group keys that torch optimizers gained over versions and fill in `__setstate__`: an older checkpoint may lack
# them, and a newer one may hold a key this torch does not know. They say nothing about which optimizer saved it.
OPTIONAL_GROUP_KEYS = frozenset(
    {"foreach", "fused", "differentiable", "capturable", "maximize", "decoupled_weight_decay", "adaptive"}
) | {"initial_lr"}  # set by LR schedulers, which exist or not when a state dict is loaded
# Boolean keys whose saved value `load_state_dict` would silently put in place of the new optimizer's: they tell
# variants of one class apart (AdamW / AMSGrad, SAM / ASAM, AdaSAM / its adaptive form, SGD / Nesterov).
VARIANT_FLAGS = ("amsgrad", "adaptive", "nesterov")


def check_scalar(name: str, value, *, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
                 high_open: bool = False) -> None:
    """`value` must be a finite real number in the interval [low, high] (open at an end when asked)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        if high == math.inf:
            allowed = f"{'>' if low_open else '>='} {low:g}"
        else:
            allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        raise ValueError(f"Invalid {name}: {value!r} (must be {allowed}{'' if finite else ' and finite'})")


def check_rho(rho) -> None:
    check_scalar("rho", rho, low=0.0, low_open=True)


def check_adam_hparams(*, lr, betas, eps, weight_decay) -> None:
    check_scalar("lr", lr, low=0.0)
    check_scalar("eps", eps, low=0.0, low_open=True)
    if len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r} (must be a pair (beta1, beta2))")
    for i, beta in enumerate(betas):
        check_scalar(f"beta parameter at index {i}", beta, low=0.0, high=1.0, high_open=True)
    check_scalar("weight_decay", weight_decay, low=0.0)


def check_state_dict(optimizer: torch.optim.Optimizer, state_dict: dict, state_keys=()) -> None:
    """Raise ValueError if `state_dict` was not saved by an optimizer of `optimizer`'s kind.

    Its param groups must hold the same hyperparameter keys as `optimizer`'s (apart from `OPTIONAL_GROUP_KEYS`) and
    the same `VARIANT_FLAGS` values; each saved per-parameter state must hold `state_keys`.
    """
    name = type(optimizer).__name__
    if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
        raise ValueError(f"not an optimizer state dict: expected the keys 'state' and 'param_groups' ({name})")
    expected = set(optimizer.param_groups[0]) - OPTIONAL_GROUP_KEYS - {"params"} if optimizer.param_groups else set()
    problems = []
    for saved in state_dict["param_groups"]:
        keys = set(saved) - OPTIONAL_GROUP_KEYS - {"params"}
        missing, extra = sorted(expected - keys), sorted(keys - expected)
        flags = [f"{k}={saved[k]!r} (here {optimizer.param_groups[0][k]!r})" for k in VARIANT_FLAGS
                 if k in saved and k in optimizer.param_groups[0] and saved[k] != optimizer.param_groups[0][k]]
        if missing:
            problems.append(f"its param groups lack {', '.join(missing)}")
        if extra:
            problems.append(f"hold {', '.join(extra)}, which {name} does not use")
        if flags:
            problems.append(f"were saved with {', '.join(flags)}")
        if problems:
            break
    for state in state_dict["state"].values():
        missing = sorted(set(state_keys) - set(state))
        if missing and state:
            problems.append(f"its per-parameter state lacks {', '.join(missing)}")
            break
    if problems:
        raise ValueError(f"the state dict was saved by another optimizer than {name}: {'; '.join(problems)}")
