"""The statistics of what every BatchNorm layer of a network sees.

Synthesis matches them to the layers' running statistics (the DeepInversion term, with gradient);
the quality stage measures the same distance over a whole synthetic set, batch by batch (no
gradient, moments accumulated in float64).
"""

from __future__ import annotations

import torch
from torch import nn


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def channel_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of ``x`` (N x C x ... ) over all other dimensions."""
    # Per-sample spatial means first, then over the batch: twice as fast on the CPU as var_mean
    # over (N, H, W) of an NCHW tensor, forward and backward.
    if x.ndim > 2:
        spatial = tuple(range(2, x.ndim))
        mean = x.mean(spatial).mean(0)
        var = (x * x).mean(spatial).mean(0) - mean * mean
    else:  # BatchNorm1d on N x C
        mean = x.mean(0)
        var = (x * x).mean(0) - mean * mean
    return mean, var


def moment_distance(mean, var, layer: nn.Module) -> torch.Tensor:
    """``||mean - running_mean||_2 + ||var - running_var||_2`` of one layer."""
    return (torch.linalg.vector_norm(mean - layer.running_mean.to(mean.dtype), 2)
            + torch.linalg.vector_norm(var - layer.running_var.to(var.dtype), 2))


class BatchNormInputs:
    """Forward hooks that record the channel moments of every BatchNorm layer's input.

    After each forward pass ``moments[i]`` is ``(mean, var, count)`` of layer i's input (count: the
    values per channel). With ``dtype`` the moments are measured without graph and returned in that
    precision (the per-sample sums stay in the input's); without it they keep their graph
    (optimizing). Use as a context manager.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype | None = None):
        self.layers = batchnorm_layers(model)
        self.dtype = dtype
        self.moments: list[tuple | None] = [None] * len(self.layers)
        self.handles = []

    def __enter__(self):
        self.handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _hook(self, i):
        def hook(module, inputs, output):
            x = inputs[0]
            count = x.numel() // x.shape[1]
            if self.dtype is None:
                self.moments[i] = (*channel_moments(x), count)
                return
            # Measuring: per-sample spatial sums in the input's precision, the rest in ``dtype``;
            # never a converted copy of the whole activation.
            x = x.detach()
            dims = tuple(range(2, x.ndim))
            s1 = (x.sum(dims) if dims else x).to(self.dtype).sum(0)
            s2 = ((x * x).sum(dims) if dims else x * x).to(self.dtype).sum(0)
            mean = s1 / count
            self.moments[i] = (mean, s2 / count - mean * mean, count)

        return hook

    def distances(self) -> list[torch.Tensor]:
        """Per layer, the distance of the last forward pass's moments from the running statistics."""
        return [moment_distance(m[0], m[1], layer) for layer, m in zip(self.layers, self.moments) if m is not None]


class MomentAccumulator:
    """Channel moments of every BatchNorm input over many batches (as if they were one), float64."""

    def __init__(self, model: nn.Module):
        self.inputs = BatchNormInputs(model, torch.float64)
        self.sums: list[list | None] = [None] * len(self.inputs.layers)

    def __enter__(self):
        self.inputs.__enter__()
        return self

    def __exit__(self, *exc):
        self.inputs.__exit__(*exc)

    def add(self) -> None:
        """Fold in the moments of the forward pass just made (of the layers it ran: an auxiliary head
        may not run in eval mode)."""
        for i, moments in enumerate(self.inputs.moments):
            if moments is None:
                continue
            mean, var, count = moments
            s = [count * mean, count * (var + mean * mean), count]
            self.sums[i] = s if self.sums[i] is None else [a + b for a, b in zip(self.sums[i], s)]
        self.inputs.moments = [None] * len(self.inputs.layers)  # folded in once

    def mean_distance(self) -> float:
        """The distance from the running statistics, averaged over the layers that saw an input
        (nan if none did)."""
        d = []
        for layer, sums in zip(self.inputs.layers, self.sums):
            if sums is None:
                continue
            s1, s2, n = sums
            mean = s1 / n
            d.append(moment_distance(mean, s2 / n - mean * mean, layer).item())
        return sum(d) / len(d) if d else float("nan")
