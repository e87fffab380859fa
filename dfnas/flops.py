"""Multiply-adds of a network, counted layer by layer from its actual forward pass.

Counts the multiply-accumulates of convolutions and linear layers (what papers report as FLOPs
or MACs for CNNs); element-wise layers, pooling and BatchNorm are not counted, as is customary.
`tests/` cross-check this count against torch's FlopCounterMode.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def macs_per_layer(model: nn.Module, input_shape) -> dict[nn.Module, int]:
    """Multiply-adds of every convolution and linear layer in one forward pass on one input."""
    macs: dict[nn.Module, int] = {}

    def hook(m, inputs, out):
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            per_output = (m.in_channels // m.groups) * kh * kw
        else:
            per_output = m.in_features
        macs[m] = macs.get(m, 0) + out.numel() // out.shape[0] * per_output

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return macs


def count_macs(model: nn.Module, input_shape) -> int:
    """Multiply-adds of one forward pass on one input of ``input_shape`` (C, H, W)."""
    return sum(macs_per_layer(model, input_shape).values())


def count_parameters(model: nn.Module, exclude: str | None = None) -> int:
    """Trainable parameters, leaving out those whose name contains ``exclude`` (e.g. an auxiliary head)."""
    return sum(p.numel() for name, p in model.named_parameters() if not (exclude and exclude in name))


class CostTable:
    """The cost of every choice of every searchable block, plus the fixed parts of the network.

    ``table[b, k]`` is the cost of choice ``k`` in block ``b`` (0 for choices a block does not allow,
    and for a zero operation); ``base`` the stem, head and other fixed layers. One interface for
    multiply-adds (``unit`` "macs", counted) and latency ("ms", measured on a device):
    ``cost(path)`` prices one architecture, ``expected(probs)`` a distribution over them
    (differentiable in ``probs``), ``bounds()`` the cheapest and dearest path.
    """

    def __init__(self, base: float, table: torch.Tensor, allowed=None, unit: str = "macs"):
        self.base = base
        self.table = table.to(torch.float64)
        self.n_blocks, self.n_choices = self.table.shape
        self.allowed = [tuple(a) for a in allowed] if allowed is not None else [tuple(range(self.n_choices))] * self.n_blocks
        self.unit = unit
        self._placed = {}  # (device, dtype) -> the table there: copied once, not per architecture step

    def cost(self, path):
        total = self.base + sum(self.table[b, c].item() for b, c in enumerate(path))
        return int(total) if self.unit == "macs" else total

    def expected(self, probs: torch.Tensor) -> torch.Tensor:
        """``base + sum_b sum_k probs[b, k] * table[b, k]`` for probabilities of shape (blocks, choices)."""
        key = (probs.device, probs.dtype)
        if key not in self._placed:
            self._placed[key] = self.table.to(device=probs.device, dtype=probs.dtype)
        return self.base + (probs * self._placed[key]).sum()

    def bounds(self) -> tuple:
        lo = sum(min(self.table[b, c].item() for c in ops) for b, ops in enumerate(self.allowed))
        hi = sum(max(self.table[b, c].item() for c in ops) for b, ops in enumerate(self.allowed))
        if self.unit == "macs":
            return int(self.base + lo), int(self.base + hi)
        return self.base + lo, self.base + hi


def flops_table(build, choices, n_choices: int, input_shape, allowed=None) -> CostTable:
    """Multiply-adds per (block, choice), counted on fixed networks: ``build(k)`` is the network with
    choice ``k`` in every searchable block (its ``blocks``); the fixed parts are counted once."""
    table, base = None, None
    for choice in choices:
        net = build(choice)
        per_layer = macs_per_layer(net, input_shape)
        per_block = [sum(per_layer.get(m, 0) for m in block.modules()) for block in net.blocks]
        if table is None:
            table = torch.zeros(len(per_block), n_choices, dtype=torch.float64)
            base = sum(per_layer.values()) - sum(per_block)
        table[:, choice] = torch.tensor(per_block, dtype=torch.float64)
    return CostTable(base, table, allowed, "macs")
