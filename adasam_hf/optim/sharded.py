"""Parameters sharded by FSDP2 (`torch.distributed.fsdp.fully_shard`): DTensors, worked on shard by shard.

Every step of SAM and AdaSAM is elementwise except the ascent norm, so each rank updates its own shard of w, of the
gradients and of the state (`local`), with no gather of full parameters; torch's foreach and fused kernels then run on
plain tensors (they have no DTensor strategy for every op, and refuse DTensors mixed with plain tensors). The norm
is the one global quantity: `global_norm` sums the shards' squared norms with one all-reduce per sharding layout
(FSDP2 has one), as Algorithm 1's ||g|| over the whole weight vector requires.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

if dist.is_available():
    from torch.distributed.tensor import DTensor, Partial, Shard
else:  # a torch built without distributed support: nothing can be sharded
    DTensor = Partial = Shard = None

__all__ = ["check_reduced", "global_norm", "is_sharded", "local"]


def is_sharded(tensor: torch.Tensor) -> bool:
    return DTensor is not None and isinstance(tensor, DTensor)


def local(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor's local shard (a plain tensor sharing its storage: writing it writes the DTensor); plain
    tensors as they are. Call under `torch.no_grad()`: outside it, the shard is an autograd view that in-place
    ops may not write."""
    return [t.to_local() if is_sharded(t) else t for t in tensors]


def check_reduced(tensors: list[torch.Tensor]) -> None:
    """Refuse partial sums (a DTensor gradient not reduced yet), before the step changes anything."""
    if any(is_sharded(t) and any(isinstance(p, Partial) for p in t.placements) for t in tensors):
        raise RuntimeError("a gradient is a partial sum (Partial placement): reduce it before the SAM step")


def global_norm(tensors: list[torch.Tensor], local_tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm over every element of `tensors` on every rank, from their `local_tensors`.

    Plain tensors count once (they are whole on each rank); the DTensors' local squared norms are summed over the
    ranks that shard them, with one all-reduce per layout (mesh and sharded mesh dims); replicated mesh dims are
    not summed over. Tested on FSDP2's 1-D meshes; a 2-D layout follows the same rule untested. Plain tensors are
    taken to be equal on every rank (the Trainer averages their gradients; a hand-written loop must too). The
    squares are accumulated in float32 at least: a float16 norm of 316 would square to inf, and a bfloat16 one
    carries 8 bits.
    """
    plain, layouts = [], {}
    for t, shard in zip(tensors, local_tensors):
        if not is_sharded(t):
            plain.append(shard)
            continue
        dims = tuple(d for d, p in enumerate(t.placements) if isinstance(p, Shard))
        layouts.setdefault((t.device_mesh, dims), []).append(shard)
    if not layouts:
        return torch.nn.utils.get_total_norm(plain)  # nothing sharded: the unsharded path, bit for bit
    squares = [_sum_of_squares(plain)] if plain else []
    for (mesh, dims), shards in layouts.items():
        square = _sum_of_squares(shards)
        if square.device.type != mesh.device_type:  # CPU-offloaded shards on a GPU mesh: NCCL reduces on the GPU
            square = square.to(mesh.device_type)
        for dim in dims:  # FSDP2 (1-D mesh): one all-reduce; a 2-D mesh: one per sharded dim
            dist.all_reduce(square, group=mesh.get_group(dim))
        squares.append(square)
    total = squares[0]
    for square in squares[1:]:
        total = total + square.to(total.device)
    return total.sqrt()


def _sum_of_squares(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Sum of the squared elements, accumulated in float32 at least (float64 stays float64): one _foreach_norm per
    device and dtype."""
    total = None
    for (_, dtype), ((ts,), _) in _group_tensors_by_device_and_dtype([tensors]).items():
        accumulate = torch.float64 if dtype == torch.float64 else torch.float32
        square = torch.stack(torch._foreach_norm(ts, 2, dtype=accumulate)).square().sum()
        total = square if total is None else total + square.to(total.device)
    return total
