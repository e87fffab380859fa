"""Counting the operations a piece of PyTorch code dispatches, as a proxy for GPU kernel launches.

On a GPU, a step made of many small operations is bound by launches, not arithmetic; their number
is the same on every device, so it is measured on the CPU (benchmarks/synthesis_step.py, tests).
Views and allocations launch nothing and are not counted; everything else (forward, backward and
optimizer operations alike) is one launch.
"""

from __future__ import annotations

import collections

from torch.utils._python_dispatch import TorchDispatchMode

# Operations that allocate, read metadata or mark the profiler: no kernel.
NO_KERNEL = frozenset({
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh", "is_same_size",
    "_local_scalar_dense", "_record_function_enter_new", "_record_function_exit", "detach", "detach_",
    "set_", "resize_", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset",
})


class OpCounter(TorchDispatchMode):
    """``with OpCounter() as ops: ...`` counts, by name in ``ops.counts``, every operation that would
    launch a kernel; ``ops.total`` is their sum. Backward passes run in the calling thread on the
    CPU, so they are counted too."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name not in NO_KERNEL:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())
