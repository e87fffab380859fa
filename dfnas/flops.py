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
