"""Layer-sparse SAM's second forward, started at the first sampled layer.

The layers that run before the first sampled one are frozen and unperturbed in the second pass,
and so are their inputs: their outputs are the first pass's. `FrozenPrefixCache` keeps those
outputs (detached: one hidden state per layer and micro-batch) during the first pass and serves
them in the second, so that forward skips the prefix instead of recomputing it. The only
difference from recomputing is dropout: the prefix keeps the first pass's masks.

Used only when the layers are disjoint modules (no layer inside another).
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._pytree import tree_map


def _detach(output):
    return tree_map(lambda x: x.detach() if isinstance(x, torch.Tensor) else x, output)


class FrozenPrefixCache:
    """Records, per micro-batch, the outputs of the unsampled layers called before any sampled one."""

    def __init__(self, modules: list[torch.nn.Module]):
        self.modules = modules
        self.outputs: list[dict[int, list]] = []  # per micro-batch of the window: layer -> outputs, call order

    @staticmethod
    def usable(model: torch.nn.Module, names: list[str]) -> list[torch.nn.Module] | None:
        """The layers' modules, or None if a layer is not a module or contains another layer."""
        try:
            modules = [model.get_submodule(name) for name in names]
        except AttributeError:
            return None
        nested = any(a != b and b.startswith(a + ".") for a in names for b in names)
        return None if nested else modules

    def reset(self) -> None:
        self.outputs = []

    @contextlib.contextmanager
    def record(self, sampled: list[int]):
        """Around a first-pass forward: keep the prefix's outputs."""
        outputs: dict[int, list] = {}
        reached = [False]
        sampled_set = set(sampled)

        def mark(module, args):
            reached[0] = True

        def keep(index):
            def hook(module, args, output):
                if not reached[0]:
                    outputs.setdefault(index, []).append(_detach(output))
            return hook

        handles = [m.register_forward_pre_hook(mark) if i in sampled_set else m.register_forward_hook(keep(i))
                   for i, m in enumerate(self.modules)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self.outputs.append(outputs)

    @contextlib.contextmanager
    def replay(self, micro_batch: int):
        """Around the second-pass forward of that micro-batch: the prefix returns its recorded outputs."""
        patched = []
        for index, outputs in self.outputs[micro_batch].items():
            module, served = self.modules[index], iter(outputs)
            module.forward = lambda *args, _served=served, **kwargs: next(_served)
            patched.append(module)
        try:
            yield
        finally:
            for module in patched:
                del module.forward  # back to the class's forward
