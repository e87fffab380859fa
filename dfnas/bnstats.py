"""The statistics of what every BatchNorm layer of a network sees.

Synthesis matches them to the layers' running statistics (the DeepInversion term, with gradient:
`BatchNormMatch`); the quality stage measures the same distance over a whole synthetic set, batch by
batch (no gradient, moments accumulated in float64: `MomentAccumulator`).
"""

from __future__ import annotations

import torch
from torch import nn


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def moment_distance(mean, var, layer: nn.Module) -> torch.Tensor:
    """``||mean - running_mean||_2 + ||var - running_var||_2`` of one layer."""
    return (torch.linalg.vector_norm(mean - layer.running_mean.to(mean.dtype), 2)
            + torch.linalg.vector_norm(var - layer.running_var.to(var.dtype), 2))


class BatchNormInputs:
    """Forward hooks that measure the channel moments of every BatchNorm layer's input, without graph.

    After each forward pass ``moments[i]`` is ``(mean, var, count)`` of layer i's input in ``dtype``
    (count: the values per channel); per-sample spatial sums stay in the input's precision, so no
    converted copy of a whole activation is made. Use as a context manager.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float64):
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
            x = inputs[0].detach()
            count = x.numel() // x.shape[1]
            dims = tuple(range(2, x.ndim))
            s1 = (x.sum(dims) if dims else x).to(self.dtype).sum(0)
            s2 = ((x * x).sum(dims) if dims else x * x).to(self.dtype).sum(0)
            mean = s1 / count
            self.moments[i] = (mean, s2 / count - mean * mean, count)

        return hook

    def distances(self) -> list[torch.Tensor]:
        """Per layer, the distance of the last forward pass's moments from the running statistics."""
        return [moment_distance(m[0], m[1], layer) for layer, m in zip(self.layers, self.moments) if m is not None]


# The CPU measures moments through per-sample sums (fast there, five operations a layer); set False
# to take the path a GPU takes (one var_mean), as the operation count of a GPU step does.
SPATIAL_SUMS_ON_CPU = True


class _ChannelMoments(torch.autograd.Function):
    """Per-channel mean and biased variance of each input over each of ``k`` equal groups of its
    batch (consecutive images: ``k`` independent batches stacked), as a ``k x 2L`` float32 matrix,
    row ``g`` = ``[mean_1, ..., mean_L, var_1, ..., var_L]`` of group g.

    Forward: one ``var_mean`` per input on a GPU, whatever ``k`` (the batch dimension is split, not
    sliced). Backward: with ``g_m`` and ``g_v`` the gradients of a channel's mean and variance over
    its ``n`` values in a group, ``dL/dx = a x + b`` with ``a = 2 g_v / n`` and
    ``b = g_m / n - a mean``: the per-channel factors of every layer and group are computed at once,
    then one ``addcmul`` per input. Autograd's own formulas would take about ten launches per layer
    instead of two, which bounds a synthesis step on a GPU.
    """

    @staticmethod
    def forward(ctx, counts, k, *xs):
        means, variances = [], []
        for x in xs:
            xf = (x if x.dtype == torch.float32 else x.float()).unflatten(0, (k, -1))  # groups x images x C x ...
            if x.device.type == "cpu" and SPATIAL_SUMS_ON_CPU and x.ndim > 2:
                # Per-sample spatial sums first: several times faster on the CPU than var_mean over
                # (N, H, W) of an NCHW tensor.
                spatial = tuple(range(3, xf.ndim))
                n = x.numel() // (k * x.shape[1])
                mean = xf.sum(spatial).sum(1) / n
                var = (xf * xf).sum(spatial).sum(1) / n - mean * mean
            else:  # one Welford kernel
                var, mean = torch.var_mean(xf, (1, *range(3, xf.ndim)), correction=0)
            means.append(mean)
            variances.append(var)
        mean_all = torch.cat(means, 1)
        ctx.k = k
        ctx.save_for_backward(counts, mean_all, *xs)
        return torch.cat([mean_all, *variances], 1)

    @staticmethod
    def backward(ctx, grad):
        counts, mean_all, *xs = ctx.saved_tensors
        k, total = ctx.k, mean_all.shape[1]
        a = grad[:, total:] * 2 / counts
        b = grad[:, :total] / counts - a * mean_all
        grads, start = [], 0
        for x in xs:
            c = x.shape[1]
            shape = (k, 1, c) + (1,) * (x.ndim - 2)
            a_l, b_l = a[:, start:start + c].reshape(shape), b[:, start:start + c].reshape(shape)
            # In float32 and rounded once: bfloat16 factors would lose 1-2% where |mean| >> std.
            grads.append(torch.addcmul(b_l, x.unflatten(0, (k, -1)), a_l).flatten(0, 1).to(x.dtype))
            start += c
        return (None, None, *grads)


def equal_runs(groups: list[slice]) -> list[tuple[int, int, int]]:
    """``(start, stop, k)``: consecutive groups of one size merged into runs of ``k`` groups."""
    runs = []
    for g in groups:
        if runs and runs[-1][1] == g.start and (runs[-1][1] - runs[-1][0]) // runs[-1][2] == g.stop - g.start:
            runs[-1] = (runs[-1][0], g.stop, runs[-1][2] + 1)
        else:
            runs.append((g.start, g.stop, 1))
    return runs


class BatchNormMatch:
    """The DeepInversion BatchNorm term of the last forward pass, with gradient:

        sum_l w_l (||mean_l - running_mean_l||_2 + ||var_l - running_var_l||_2)

    over the layers that ran (biased variance, float32 even when the network runs in bfloat16),
    ``w`` = ``first_multiplier`` for the first layer and 1 for the others. The hooks only keep
    each input; `loss` measures every layer at once (`_ChannelMoments`) and reduces the distances in
    a handful of operations whatever the depth. Use as a context manager.
    """

    def __init__(self, model: nn.Module, first_multiplier: float = 10.0):
        self.layers = batchnorm_layers(model)
        self.first_multiplier = first_multiplier
        self.inputs: list[torch.Tensor | None] = [None] * len(self.layers)
        self.handles = []
        self._layouts: dict = {}

    def __enter__(self):
        def hook(i):
            def keep(module, inputs, output):
                self.inputs[i] = inputs[0]
            return keep

        self.handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(self.layers)]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.inputs = [None] * len(self.layers)

    def _layout(self, ran: tuple[int, ...], xs: list[torch.Tensor], k: int):
        """Per set of layers, input shapes and groups (made once): the running statistics as one
        vector, each entry's segment (layer and moment), the segments' weights and the values per
        channel in a group."""
        key = (ran, tuple(tuple(x.shape) for x in xs), k)
        if key not in self._layouts:
            device = xs[0].device
            layers = [self.layers[i] for i in ran]
            running = torch.cat([m.running_mean.float() for m in layers] + [m.running_var.float() for m in layers])
            sizes = [m.running_mean.numel() for m in layers]
            segment = torch.repeat_interleave(torch.arange(2 * len(layers)), torch.tensor(sizes * 2))
            weights = torch.tensor([self.first_multiplier] + [1.0] * (len(ran) - 1)).repeat(2)
            counts = torch.cat([torch.full((c,), x.numel() // (k * c), dtype=torch.float32) for x, c in zip(xs, sizes)])
            self._layouts[key] = (running.to(device), segment.to(device), weights.to(device), counts.to(device))
        return self._layouts[key]

    def loss(self, groups: list[slice] | None = None) -> torch.Tensor:
        """The term of the last forward pass; with ``groups`` (consecutive slices covering the batch),
        the sum of each group's term, its moments over its own images (independent batches stacked
        in one pass). Groups of one size are measured together, the batch split rather than sliced."""
        ran = tuple(i for i, x in enumerate(self.inputs) if x is not None)
        if not ran:
            raise RuntimeError("no BatchNorm layer ran in the last forward pass")
        inputs = [self.inputs[i] for i in ran]
        self.inputs = [None] * len(self.layers)  # the graph keeps what backward needs; no activation outlives its step
        n = inputs[0].shape[0]
        total = None
        for start, stop, k in equal_runs(groups) if groups else [(0, n, 1)]:
            xs = inputs if (start, stop) == (0, n) else [x[start:stop] for x in inputs]
            running, segment, weights, counts = self._layout(ran, xs, k)
            diff = _ChannelMoments.apply(counts, k, *xs) - running
            squares = torch.zeros(k, weights.numel(), device=diff.device).index_add_(1, segment, diff * diff)
            # The l2 norm of each segment; its gradient is taken as 0 at 0, as linalg.vector_norm's.
            norms = squares.clamp_min(1e-30).sqrt()
            # One group: the dot product of the unstacked term, so that its images stay bit for bit.
            term = torch.dot(weights, norms[0]) if k == 1 else torch.mv(norms, weights).sum()
            total = term if total is None else total + term
        return total


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
