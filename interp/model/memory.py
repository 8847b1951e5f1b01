"""Live tensor bytes, counted op by op: the memory an accelerator's allocator would hold for the
same computation, measured on any device, the meta device included.

`LiveBytes` is a dispatch mode: every tensor an operation returns (autograd's backward operations
too) adds its storage's bytes once, and the storage's release subtracts them; `peak` is the
largest sum seen. Tensors that exist before (weights, buffers) are added with `track`. On the meta
device nothing is allocated, so a 7B model's step is measured in seconds without its memory: the
plan's peaks (`interp.pipelines.memory_plan`) are this count on meta tensors, and a test checks the
count on the CPU against the same computation on meta. What it leaves out is the allocator's own
slack (caching, fragmentation, CUDA's context of a few hundred MB), which the plan adds as a margin.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary


class LiveBytes(TorchDispatchMode):
    """`with LiveBytes() as mem: ...`, then `mem.peak` and `mem.current` in bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def track(self, *tensors: torch.Tensor) -> "LiveBytes":
        """Count tensors that exist already (a model's weights, an optimizer's state)."""
        for t in tensors:
            self._add(t)
        return self

    def track_module(self, module: torch.nn.Module) -> "LiveBytes":
        """Count a module's parameters and buffers (and gradients it already holds)."""
        for p in module.parameters():
            self._add(p)
            if p.grad is not None:
                self._add(p.grad)
        for b in module.buffers():
            self._add(b)
        return self

    def _add(self, t) -> None:
        if not isinstance(t, torch.Tensor):
            return
        try:
            storage = t.untyped_storage()
        except (NotImplementedError, RuntimeError):  # sparse or otherwise storage-less
            return
        if storage in self._seen:
            return
        nbytes = storage.nbytes()
        self._seen[storage] = nbytes
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, nbytes)

    def _free(self, nbytes: int) -> None:
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            self._add(t)
        return out
