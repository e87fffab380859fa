"""Multiply-adds of a network, counted layer by layer from its actual forward pass.

Counts the multiply-accumulates of convolutions and linear layers (what papers report as FLOPs
or MACs for CNNs); element-wise layers, pooling and BatchNorm are not counted, as is customary.
`tests/` cross-check this count against torch's FlopCounterMode.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def count_macs(model: nn.Module, input_shape, batch: int = 1) -> int:
    """Multiply-adds of one forward pass on ``batch`` inputs of ``input_shape`` (C, H, W), per input."""
    total = 0

    def conv_hook(m: nn.Conv2d, inputs, out):
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, inputs, out):
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(batch, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total // batch


def count_parameters(model: nn.Module, exclude: str | None = None) -> int:
    """Trainable parameters, leaving out those whose name contains ``exclude`` (e.g. an auxiliary head)."""
    return sum(p.numel() for name, p in model.named_parameters() if not (exclude and exclude in name))
