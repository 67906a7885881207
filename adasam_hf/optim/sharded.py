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

if dist.is_available():
    from torch.distributed.tensor import DTensor, Partial, Shard
else:  # a torch built without distributed support: nothing can be sharded
    DTensor = Partial = Shard = None

__all__ = ["global_norm", "is_sharded", "local"]


def is_sharded(tensor: torch.Tensor) -> bool:
    return DTensor is not None and isinstance(tensor, DTensor)


def local(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor's local shard (a plain tensor sharing its storage: writing it writes the DTensor); plain
    tensors as they are. Call under `torch.no_grad()`: outside it, the shard is an autograd view that in-place
    ops may not write."""
    return [t.to_local() if is_sharded(t) else t for t in tensors]


def global_norm(tensors: list[torch.Tensor], local_tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm over every element of `tensors` on every rank, from their `local_tensors`.

    Plain tensors count once (they are whole on each rank); the DTensors' local squared norms are summed over the
    ranks that shard them, with one all-reduce per layout (mesh and sharded mesh dims); replicated mesh dims are
    not summed over.
    """
    plain, layouts = [], {}
    for t, shard in zip(tensors, local_tensors):
        if not is_sharded(t):
            plain.append(shard)
            continue
        if any(isinstance(p, Partial) for p in t.placements):
            raise RuntimeError("a gradient is a partial sum (Partial placement): reduce it before the SAM step")
        dims = tuple(d for d, p in enumerate(t.placements) if isinstance(p, Shard))
        layouts.setdefault((t.device_mesh, dims), []).append(shard)
    if not layouts:
        return torch.nn.utils.get_total_norm(plain)  # nothing sharded: the unsharded path, bit for bit
    squares = [torch.nn.utils.get_total_norm(plain).square()] if plain else []
    for (mesh, dims), shards in layouts.items():
        square = torch.nn.utils.get_total_norm(shards).square()
        for dim in dims:  # one all-reduce for FSDP2's 1-D mesh; one per sharded dim of a 2-D one (HSDP: one)
            dist.all_reduce(square, group=mesh.get_group(dim))
        squares.append(square)
    total = squares[0]
    for square in squares[1:]:
        total = total + square.to(total.device)
    return total.sqrt()
