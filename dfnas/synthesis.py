"""Image synthesis from a frozen teacher: the objective, the regional update and one batch's optimization.

Images ``x`` live in the teacher's normalized input space, start from N(0, 1) and are optimized with
Adam. Each step takes a view ``v = R(x)`` (the regional update) and minimizes

    L = a_main * CE(f(v), t)                                                  # class targets t
      + a_bn * sum_l w_l (||mu_l(v) - mu_l^BN||_2 + ||var_l(v) - var_l^BN||_2)   # BatchNorm statistics
      + a_tv2 * TV_l2(v) + a_tv1 * TV_l1(v) + a_l2 * l2(v)                     # input priors

then clips pixels to the valid range. The first ``iterations_half`` steps run at half resolution
(2x2 average pooling of x), the rest at full resolution, each stage with its own warm-up + cosine
schedule. The recursive label calibration that chains rounds lives in `dfnas.synthesize`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dfnas.train import lr_at

# --------------------------------------------------------------------------------------------
# Objective terms


class BNStatsHook:
    """Collects, at every BatchNorm layer, the distance between the batch statistics of its input
    and its running statistics: ``||mu - running_mean||_2 + ||var - running_var||_2`` (biased var).

    The first layer's term is multiplied by ``first_multiplier``. Use as a context manager.
    """

    def __init__(self, model: nn.Module, first_multiplier: float = 10.0):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.weights = [first_multiplier] + [1.0] * (len(self.layers) - 1)
        self.terms: list[torch.Tensor | None] = [None] * len(self.layers)
        self.handles = []

    def __enter__(self):
        for i, layer in enumerate(self.layers):
            self.handles.append(layer.register_forward_hook(self._hook(i)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _hook(self, i):
        def hook(module, inputs, output):
            x = inputs[0]
            # Per-sample spatial means first, then over the batch: twice as fast on the CPU as
            # var_mean over (N, H, W) of an NCHW tensor, forward and backward.
            if x.ndim > 2:
                spatial = tuple(range(2, x.ndim))
                mean = x.mean(spatial).mean(0)
                var = (x * x).mean(spatial).mean(0) - mean * mean
            else:  # BatchNorm1d on N x C
                mean = x.mean(0)
                var = (x * x).mean(0) - mean * mean
            self.terms[i] = torch.linalg.vector_norm(mean - module.running_mean, 2) + torch.linalg.vector_norm(
                var - module.running_var, 2)

        return hook

    def loss(self) -> torch.Tensor:
        """Weighted sum over layers of the terms recorded by the last forward pass."""
        return sum(w * t for w, t in zip(self.weights, self.terms) if t is not None)


def tv_losses(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Total variation over four directions (right, down, and both diagonals).

    Returns ``(tv_l2, tv_l1)``: ``tv_l2`` is the sum over directions of the l2 norm of all the
    differences in the batch; ``tv_l1`` the sum over directions of their mean absolute value.
    """
    diffs = (
        x[:, :, :, :-1] - x[:, :, :, 1:],
        x[:, :, :-1, :] - x[:, :, 1:, :],
        x[:, :, 1:, :-1] - x[:, :, :-1, 1:],
        x[:, :, :-1, :-1] - x[:, :, 1:, 1:],
    )
    tv_l2 = sum(torch.linalg.vector_norm(d) for d in diffs)
    tv_l1 = sum(d.abs().mean() for d in diffs)
    return tv_l2, tv_l1


def l2_prior(x: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of each image's l2 norm."""
    return torch.linalg.vector_norm(x.flatten(1), dim=1).mean()


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against target distributions (rows of ``targets`` sum to 1)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


# --------------------------------------------------------------------------------------------
# Regional update: views of the batch


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Differentiable crop-and-resize of each image to ``size`` with bilinear sampling.

    ``boxes`` is ``N x 4`` of ``(top, left, height, width)`` as fractions of the image; ``flips``
    is ``N`` booleans (mirror the view). Sample positions are clamped to the box's outermost pixel
    centres, so pixels outside the box never contribute (nor receive gradient).
    """
    n, _, h, w = x.shape
    out_h, out_w = size
    boxes = boxes.to(x.device, x.dtype)
    top, left, bh, bw = (boxes[:, i : i + 1] for i in range(4))
    # Pixel-centre coordinates of the box's first and last pixel.
    r0 = torch.floor(top * h + 0.5)
    c0 = torch.floor(left * w + 0.5)
    r1 = torch.clamp(torch.floor((top + bh) * h + 0.5) - 1, max=h - 1)
    c1 = torch.clamp(torch.floor((left + bw) * w + 0.5) - 1, max=w - 1)
    r1, c1 = torch.maximum(r1, r0), torch.maximum(c1, c0)
    jr = (torch.arange(out_h, device=x.device, dtype=x.dtype) + 0.5)[None]
    jc = (torch.arange(out_w, device=x.device, dtype=x.dtype) + 0.5)[None]
    rows = (r0 - 0.5 + jr * (r1 - r0 + 1) / out_h).clamp(min=r0, max=r1)
    cols = (c0 - 0.5 + jc * (c1 - c0 + 1) / out_w).clamp(min=c0, max=c1)
    cols = torch.where(flips.to(x.device)[:, None], cols.flip(1), cols)
    # grid_sample with align_corners=True maps -1..1 to the first..last pixel centre.
    gy = rows / max(h - 1, 1) * 2 - 1
    gx = cols / max(w - 1, 1) * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def random_boxes(n: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """``N x 4`` boxes ``(top, left, height, width)`` in image fractions: area fraction uniform in
    ``scale``, aspect ratio log-uniform in ``ratio``, position uniform where the box fits."""
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_r)  # width / height
    bw = torch.sqrt(area * aspect).clamp(max=1.0)
    bh = torch.sqrt(area / aspect).clamp(max=1.0)
    top = torch.rand(n, generator=generator) * (1 - bh)
    left = torch.rand(n, generator=generator) * (1 - bw)
    return torch.stack([top, left, bh, bw], dim=1)


@dataclass
class Region:
    """How each step's view is taken: ``none``, ``jitter`` (roll by up to ``jitter`` pixels, as
    DeepInversion) or ``resized_crop`` (a random box resized to the full size); ``flip`` mirrors
    half the views."""

    mode: str = "resized_crop"
    scale: tuple[float, float] = (0.25, 1.0)
    ratio: tuple[float, float] = (0.75, 4 / 3)
    jitter: int = 2
    flip: bool = True

    def view(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        flips = (torch.rand(n, generator=generator) < 0.5) if self.flip else torch.zeros(n, dtype=torch.bool)
        if self.mode == "resized_crop":
            boxes = random_boxes(n, self.scale, self.ratio, generator)
            return crop_resize(x, boxes, flips, x.shape[-2:])
        if self.mode == "jitter" and self.jitter > 0:
            dy, dx = (int(v) for v in torch.randint(-self.jitter, self.jitter + 1, (2,), generator=generator))
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        elif self.mode not in ("jitter", "none"):
            raise ValueError(f"unknown region mode {self.mode!r}")
        return torch.where(flips.to(x.device)[:, None, None, None], x.flip(3), x)


# --------------------------------------------------------------------------------------------
# One batch


@dataclass
class Objective:
    main: float = 1.0
    bn: float = 0.01
    first_bn_multiplier: float = 10.0
    tv_l2: float = 1e-4
    tv_l1: float = 0.0
    l2: float = 1e-5


@dataclass
class Schedule:
    iterations_half: int = 200
    iterations_full: int = 300
    lr: float = 0.25
    betas: tuple[float, float] = (0.5, 0.9)
    warmup: int = 20

    def stages(self) -> list[tuple[bool, int]]:
        """``(half_resolution, iterations)`` per stage, skipping empty ones."""
        return [(half, n) for half, n in ((True, self.iterations_half), (False, self.iterations_full)) if n > 0]


@dataclass
class BatchResult:
    images: torch.Tensor  # final images, normalized space
    history: list[dict] = field(default_factory=list)


def synthesize_batch(teacher: nn.Module, targets: torch.Tensor, shape, mean, std, objective: Objective,
                     schedule: Schedule, region: Region, generator: torch.Generator, init: torch.Tensor | None = None,
                     log_every: int = 0, log=None) -> BatchResult:
    """Optimize one batch of ``shape`` (C, H, W) images against ``targets`` (``N x classes``
    distributions) and return them.

    ``init`` (normalized space) replaces the N(0, 1) start, for warm starts. Draws come from the
    CPU ``generator`` so that a seed gives the same images on any device.
    """
    device = next(teacher.parameters()).device
    n = targets.shape[0]
    c, h, w = shape
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
    lo, hi = (0 - mean_t) / std_t, (1 - mean_t) / std_t
    if init is None:
        init = torch.randn(n, c, h, w, generator=generator)
    x = init.to(device).clone().clamp_(lo, hi).requires_grad_(True)
    targets = targets.to(device)
    history = []
    with BNStatsHook(teacher, objective.first_bn_multiplier) as bn:
        for half, iterations in schedule.stages():
            opt = torch.optim.Adam([x], lr=schedule.lr, betas=schedule.betas)
            for it in range(iterations):
                lr = lr_at(it, iterations, schedule.warmup, schedule.lr)
                for group in opt.param_groups:
                    group["lr"] = lr
                base = F.avg_pool2d(x, 2) if half else x
                v = region.view(base, generator)
                logits = teacher(v)
                ce = soft_cross_entropy(logits, targets)
                tv2, tv1 = tv_losses(v)
                loss = objective.main * ce + objective.bn * bn.loss() + objective.tv_l2 * tv2 + objective.tv_l1 * tv1
                if objective.l2:
                    loss = loss + objective.l2 * l2_prior(v)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    x.clamp_(lo, hi)
                if log_every and (it + 1) % log_every == 0:
                    row = {"stage": "half" if half else "full", "iteration": it + 1, "loss": loss.item(), "ce": ce.item(),
                           "bn": float(bn.loss()), "acc": (logits.argmax(1) == targets.argmax(1)).float().mean().item()}
                    history.append(row)
                    if log:
                        log(f"  {row['stage']} {row['iteration']}/{iterations}  loss {row['loss']:.3f}  ce {row['ce']:.3f}"
                            f"  bn {row['bn']:.3f}  acc {row['acc']:.2f}")
    return BatchResult(x.detach(), history)


def noise_images(n: int, shape, mean, std, generator: torch.Generator) -> torch.Tensor:
    """The floor of the ablation: unoptimized N(0, 1) images in the normalized space, clipped."""
    x = torch.randn(n, *shape, generator=generator)
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    return x.clamp((0 - mean_t) / std_t, (1 - mean_t) / std_t)
