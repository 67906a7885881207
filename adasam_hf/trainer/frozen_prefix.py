"""Layer-sparse SAM's second forward, started at the first sampled layer.

The layers that run before the first sampled one are frozen and unperturbed in the second pass,
and so are their inputs: their outputs are the first pass's. `FrozenPrefixCache` keeps those
outputs (detached: one hidden state per layer and micro-batch) during the first pass and serves
them in the second, so that forward skips the prefix instead of recomputing it. The only
difference from recomputing is dropout: the prefix keeps the first pass's masks.

Used only when the layers are disjoint modules (no layer inside another) whose weights are not
shared with any other module, and only for a window whose every layer module ran at most once
per forward (else the first pass's record is dropped and the prefix is recomputed).
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
        self.outputs: list[dict[int, object] | None] = []  # per micro-batch: layer -> output (None: not usable)

    @staticmethod
    def usable(model: torch.nn.Module, names: list[str]) -> list[torch.nn.Module] | None:
        """The layers' modules, or None if a layer is not a module, contains another, or shares a
        weight with another module (tied embeddings: a sampled weight could then act through a
        module of the prefix)."""
        try:
            modules = [model.get_submodule(name) for name in names]
        except AttributeError:
            return None
        nested = any(a != b and b.startswith(a + ".") for a in names for b in names)
        named = list(model.named_parameters(remove_duplicate=False))
        tied = len({id(p) for _, p in named}) != len(named)
        return None if nested or tied else modules

    def can_replay(self, micro_batches: int) -> bool:
        return len(self.outputs) == micro_batches and all(o is not None for o in self.outputs)

    def reset(self) -> None:
        self.outputs = []

    @contextlib.contextmanager
    def record(self, sampled: list[int]):
        """Around a first-pass forward: keep the prefix's outputs."""
        outputs: dict[int, object] = {}
        calls = [0] * len(self.modules)
        reached = [False]
        sampled_set = set(sampled)

        def count(index):
            def hook(module, args):
                calls[index] += 1
                reached[0] = reached[0] or index in sampled_set
            return hook

        def keep(index):
            def hook(module, args, output):
                if not reached[0]:
                    outputs[index] = _detach(output)
            return hook

        handles = [m.register_forward_pre_hook(count(i)) for i, m in enumerate(self.modules)]
        handles += [m.register_forward_hook(keep(i)) for i, m in enumerate(self.modules) if i not in sampled_set]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self.outputs.append(outputs if max(calls) <= 1 else None)  # a module run twice: no replay

    @contextlib.contextmanager
    def replay(self, micro_batch: int):
        """Around the second-pass forward of that micro-batch: the prefix returns its recorded outputs."""
        patched = []
        for index, output in self.outputs[micro_batch].items():
            module = self.modules[index]
            patched.append((module, module.__dict__.get("forward")))  # an instance forward (a hook's) is kept
            module.forward = lambda *args, _output=output, **kwargs: _output
        try:
            yield
        finally:
            for module, own in patched:
                if own is None:
                    del module.forward  # back to the class's forward
                else:
                    module.forward = own
