"""Run under `torchrun --nproc_per_node 2`: SAM and AdaSAM on a float64 MLP sharded with FSDP2's `fully_shard`.

Usage: python -m tests.helpers.fsdp_worker OUT_DIR. Each rank trains on its half of one batch of 8 (FSDP2 averages
the gradients over the ranks: the whole batch's mean loss) and saves OUT_DIR/rank<r>.pt: for each case the full
weights after each step, the norms `perturb` returned, the collectives the optimizer ran, and the bytes it holds on
this rank; and the resume case (a torch.distributed.checkpoint save after 2 steps, loaded into a fresh model).
"""

from __future__ import annotations

import copy
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Shard, distribute_tensor

from adasam_hf import SAM, AdaSAM
from adasam_hf.optim.sharded import global_norm, local
from tests.helpers.distributed import save_rank_result

STEPS = 3
# Layer widths 7, 3, 1 split unevenly over 2 ranks: 4 + 3 rows, 2 + 1, and 1 + 0 (rank 1 holds an empty shard).
WIDTHS = (5, 7, 3, 1)
CASES = {
    "adasam": (AdaSAM, dict(lr=0.01, rho=0.05, weight_decay=0.1)),
    "adasam-adaptive": (AdaSAM, dict(lr=0.01, rho=0.5, adaptive=True)),
    "sam-sgd": (SAM, dict(base_optimizer=torch.optim.SGD, lr=0.3, momentum=0.9, rho=0.05)),
    "adasam-foreach": (AdaSAM, dict(lr=0.01, rho=0.05, fused=False, foreach=True)),
    "adasam-group-rho": (AdaSAM, dict(lr=0.01, rho=0.05)),  # the first Linear's group: rho GROUP_RHO
    "adasam-mixed": (AdaSAM, dict(lr=0.01, rho=0.05)),  # the first bias left out of FSDP: a plain, replicated tensor
}
GROUP_RHO = 0.2
SPARSE = [False, False, True, True, False, False]  # layer-sparse: only the middle Linear is perturbed


def mlp(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(WIDTHS, WIDTHS[1:])):
        layers += [torch.nn.Linear(a, b)] + ([torch.nn.Tanh()] if i < len(WIDTHS) - 2 else [])
    return torch.nn.Sequential(*layers).double()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, WIDTHS[0], generator=g, dtype=torch.float64), torch.randn(8, 1, generator=g,
                                                                                     dtype=torch.float64)


def sharded_mlp(seed: int = 0, plain_bias: bool = False) -> torch.nn.Sequential:
    model = mlp(seed)
    ignored = {model[0].bias} if plain_bias else None
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, ignored_params=ignored)
    return fully_shard(model, ignored_params=ignored)


def my_half():
    x, y = batch()
    r = dist.get_rank()
    return x[4 * r:4 * r + 4], y[4 * r:4 * r + 4]


def backward(model) -> None:
    """This rank's half; FSDP2 averages the sharded gradients, and the plain ones are averaged here (as the
    Trainer's hook does for parameters FSDP does not manage)."""
    x, y = my_half()
    torch.nn.functional.mse_loss(model(x), y).backward()
    for p in model.parameters():
        if not hasattr(p, "to_local") and p.grad is not None:
            dist.all_reduce(p.grad)  # gloo has no AVG
            p.grad /= dist.get_world_size()


@contextmanager
def counting_collectives(counts: dict):
    """Count the collectives run inside (the calls torch.distributed exposes, and DTensor's functional ones)."""
    import torch.distributed._functional_collectives as funcol

    names = ["all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast"]
    patched = [(dist, n) for n in names] + [(funcol, n) for n in ("all_reduce", "all_gather_tensor",
                                                                   "reduce_scatter_tensor")]
    originals = {(mod, n): getattr(mod, n) for mod, n in patched}

    def spy(key):
        def call(*args, **kwargs):
            counts[key[1]] = counts.get(key[1], 0) + 1
            return originals[key](*args, **kwargs)
        return call

    for key in originals:
        setattr(*key, spy(key))
    try:
        yield
    finally:
        for (mod, n), original in originals.items():
            setattr(mod, n, original)


def sam_step(model, opt, sparse: bool, collectives: dict) -> torch.Tensor:
    """The protocol by hand; layer-sparse keeps the unperturbed layers' first-pass gradients."""
    backward(model)
    params = list(model.parameters())
    chosen = [p for p, s in zip(params, SPARSE) if s] if sparse else None
    with counting_collectives(collectives), torch.no_grad():
        norm = opt.perturb(params=chosen)
    chosen_ids = {id(p) for p in chosen or ()}
    kept = {p: local([p.grad])[0].clone() for p in params if chosen is not None and id(p) not in chosen_ids}
    opt.zero_grad()
    backward(model)
    with counting_collectives(collectives), torch.no_grad():
        opt.restore()
        for p, g in kept.items():
            local([p.grad])[0].copy_(g)
        opt.step()
    opt.zero_grad()
    return norm


def held_bytes(opt) -> int:
    """Bytes the optimizer holds on this rank: state tensors (their local shards) and the saved copy of w."""
    tensors = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    tensors = [t.to_local() if hasattr(t, "to_local") else t for t in tensors] + opt.scratch_tensors()
    return sum(t.numel() * t.element_size() for t in tensors if t.dim() > 0)


def run(case: str, sparse: bool = False) -> dict:
    cls, kw = CASES[case]
    model = sharded_mlp(plain_bias=case.endswith("mixed"))
    params = list(model.parameters())
    per_group = [{"params": params[:2], "rho": GROUP_RHO}, {"params": params[2:]}]
    opt = cls(per_group if case.endswith("group-rho") else params, **kw)
    weights, norms, collectives = [], [], {}
    for _ in range(STEPS):
        norms.append(sam_step(model, opt, sparse, collectives).item())
        weights.append([full(p) for p in model.parameters()])
    local_numel = sum(t.numel() for t in local(list(model.parameters())))
    return {"weights": weights, "norms": norms, "collectives": collectives, "held_bytes": held_bytes(opt),
            "local_numel": local_numel, "state_is_sharded": all(
                type(v).__name__ == "DTensor" for s in opt.state.values() for k, v in s.items() if k != "step")}


def full(p: torch.Tensor) -> torch.Tensor:
    return (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()


def half_precision_norms() -> dict:
    """global_norm of sharded float16 / bfloat16 tensors whose squared norm is out of their range (large) or in
    its subnormals (small), against the float64 norm."""
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    out = {}
    for dtype in (torch.float16, torch.bfloat16):
        for value in (10.0, 2e-5):
            whole = torch.full((1000,), value, dtype=dtype)
            t = distribute_tensor(whole, mesh, [Shard(0)])
            out[(str(dtype), value)] = (global_norm([t], [t.to_local()]).item(), whole.double().norm().item())
    return out


def resume(out: Path, case: str) -> dict:
    """2 steps, a DCP checkpoint, a fresh model and optimizer (other initial weights) loading it, a 3rd step."""
    cls, kw = CASES[case]
    model = sharded_mlp()
    opt = cls(model.parameters(), **kw)
    for _ in range(2):
        sam_step(model, opt, False, {})
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.save(state, checkpoint_id=str(out / f"checkpoint-{case}"))
    plain = copy.deepcopy(opt.state_dict())  # the sharded state dict (DTensors), as a saved copy
    model2 = sharded_mlp(seed=123)
    opt2 = cls(model2.parameters(), **kw)
    state2 = {"model": get_model_state_dict(model2), "optim": get_optimizer_state_dict(model2, opt2)}
    dcp.load(state2, checkpoint_id=str(out / f"checkpoint-{case}"))
    set_model_state_dict(model2, state2["model"])
    set_optimizer_state_dict(model2, opt2, state2["optim"])
    model3 = sharded_mlp(seed=7)
    with torch.no_grad():
        for p3, p in zip(model3.parameters(), model.parameters()):
            p3.to_local().copy_(p.to_local())
    opt3 = cls(model3.parameters(), **kw)
    opt3.load_state_dict(plain)
    for m, o in ((model, opt), (model2, opt2), (model3, opt3)):
        sam_step(m, o, False, {})
    return {name: [p.full_tensor().clone() for p in m.parameters()] for name, m in
            (("uninterrupted", model), ("dcp", model2), ("state_dict", model3))}


def main():
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    result = {case: run(case) for case in CASES}
    result["layer-sparse"] = run("adasam", sparse=True)
    result["resume"] = {case: resume(out, case) for case in ("adasam", "sam-sgd")}
    result["half_precision_norms"] = half_precision_norms()
    result["full_numel"] = sum(p.numel() for p in mlp().parameters())
    save_rank_result(out, result)


if __name__ == "__main__":
    main()
