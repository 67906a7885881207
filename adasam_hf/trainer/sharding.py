"""SAMTrainer on a model FSDP2 sharded at load time: ``from_pretrained(..., distributed_config=DistributedConfig(
fsdp_size=N))``.

transformers shards such a model with `fully_shard` as it loads (each rank reads its shard), and the Trainer then
leaves it unwrapped: no DDP, no accelerate FSDP plugin, and FSDP's own switch instead of `no_sync`. The optimizers
work on the DTensor shards (`adasam_hf.optim.sharded`); the two-pass step only needs that switch for the
micro-batches whose gradients must wait. What has no test yet is refused with one line: the local ascent (each rank
would need its own unreduced gradient), layer-sparse steps, meshes other than plain FSDP (tensor, pipeline, expert
parallelism, HSDP replicas), FSDP's mixed precision and CPU offload; and FSDP through accelerate (``--fsdp``, which
accelerate ignores on the CPU) until a GPU run has tested it.
"""

from __future__ import annotations

import contextlib

import torch

from ..optim.schedule import SAM_MODES

__all__ = ["SUPPORTED_PARALLELISM", "check_sharded_step", "gradient_sync_off", "has_dtensor_parameters",
           "sharded_at_load"]

SUPPORTED_PARALLELISM = (
    "one device, DDP (torchrun / accelerate launch), or FSDP2 on a model sharded at load time "
    "(from_pretrained(..., distributed_config=DistributedConfig(fsdp_size=N)))"
)


def sharded_at_load(model: torch.nn.Module | None) -> bool:
    """Whether transformers sharded `model` with FSDP2 as it loaded it (also under a peft wrapper, which forwards the
    attributes). ``fsdp_size=1`` flags the model but shards nothing: that is a plain model."""
    from transformers.distributed.fsdp import is_fsdp_managed_module

    return bool(getattr(model, "is_distributed_loading_by_transformers", False)) and is_fsdp_managed_module(model)


def has_dtensor_parameters(model: torch.nn.Module | None) -> bool:
    from ..optim.sharded import is_sharded

    return model is not None and any(is_sharded(p) for p in model.parameters())


def check_sharded_step(model: torch.nn.Module, options) -> None:
    """Refuse, with one line, what the sharded SAM step has no test for (`options`: the trainer's SAMStepOptions).

    Raises:
        ValueError: a mesh other than plain FSDP, the local ascent, or layer-sparse steps.
    """
    config = model.config.distributed_config
    others = {name: getattr(config, name, None) or 1 for name in ("tp_size", "pp_size", "ep_size", "dp_replicate_size")}
    used = [f"{name}={size}" for name, size in others.items() if size != 1]
    used += [f"{name}=True" for name in ("fsdp_mixed_precision", "fsdp_cpu_offload") if getattr(config, name, False)]
    if used:
        raise ValueError(f"SAM on a model sharded with {', '.join(used)} is not supported (untested); shard with "
                         "fsdp_size alone (plain FSDP2, weights in their own dtype)")
    if options.ascent == "local":
        raise ValueError("Invalid sam_ascent: 'local' with FSDP2: each rank holds only its shard of the reduced "
                         "gradient, not its own full one; use 'global'")
    if options.mode == "layer-sparse":
        others = ", ".join(mode for mode in SAM_MODES if mode != "layer-sparse")
        raise ValueError(f"Invalid sam_mode: 'layer-sparse' is not supported on FSDP2-sharded models (untested); "
                         f"choose from: {others}")


@contextlib.contextmanager
def gradient_sync_off(model: torch.nn.Module):
    """FSDP2's switch (`FSDPModule.set_requires_gradient_sync`, recursive): the backwards inside keep their
    gradients unreduced until a backward outside it. Not reentrant: it turns the switch back on on leaving."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
