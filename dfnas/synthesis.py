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

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dfnas.bnstats import BatchNormMatch
from dfnas.imaging import Normalize, crop_resize, random_boxes
from dfnas.losses import soft_cross_entropy
from dfnas.optim import cosine_lr, set_lr
from dfnas.runtime import autocast

# --------------------------------------------------------------------------------------------
# Objective terms


def tv_differences(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The differences of neighbouring pixels in four directions (right, down, and both diagonals)."""
    return (
        x[:, :, :, :-1] - x[:, :, :, 1:],
        x[:, :, :-1, :] - x[:, :, 1:, :],
        x[:, :, 1:, :-1] - x[:, :, :-1, 1:],
        x[:, :, :-1, :-1] - x[:, :, 1:, 1:],
    )


def tv_l2(diffs) -> torch.Tensor:
    """The sum over directions of the l2 norm of all the differences in the batch."""
    return sum(torch.linalg.vector_norm(d) for d in diffs)


def tv_l1(diffs) -> torch.Tensor:
    """The sum over directions of the mean absolute difference."""
    return sum(d.abs().mean() for d in diffs)


def tv_losses(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Total variation over four directions: ``(tv_l2, tv_l1)``."""
    diffs = tv_differences(x)
    return tv_l2(diffs), tv_l1(diffs)


def l2_prior(x: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of each image's l2 norm."""
    return torch.linalg.vector_norm(x.flatten(1), dim=1).mean()


# --------------------------------------------------------------------------------------------
# Regional update: views of the batch


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
    halve_jitter: bool = False  # jitter // 2 at half resolution, as DeepInversion

    def draw(self, n: int, steps: int, generator: torch.Generator, half: bool = False, device=None) -> "Views":
        """The views of ``steps`` steps on a batch of ``n``, drawn at once from the CPU ``generator``
        in the order a step-by-step draw takes them (so the same seed gives the same views), then
        moved to ``device`` in one copy per kind: no host-to-device copy inside the loop."""
        if self.mode not in ("resized_crop", "jitter", "none"):
            raise ValueError(f"unknown region mode {self.mode!r}")
        jitter = self.jitter // 2 if half and self.halve_jitter else self.jitter
        flips, boxes, shifts = [], [], []
        for _ in range(steps):
            flips.append((torch.rand(n, generator=generator) < 0.5) if self.flip else torch.zeros(n, dtype=torch.bool))
            if self.mode == "resized_crop":
                boxes.append(random_boxes(n, self.scale, self.ratio, generator))
            elif self.mode == "jitter" and jitter > 0:
                shifts.append(tuple(int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=generator)))
        return Views(self.mode, torch.stack(flips).to(device) if steps else None,
                     torch.stack(boxes).to(device) if boxes else None, shifts)

    def view(self, x: torch.Tensor, generator: torch.Generator, half: bool = False) -> torch.Tensor:
        """One view of ``x`` (the first of `draw`'s)."""
        return self.draw(x.shape[0], 1, generator, half, x.device).apply(x, 0)


@dataclass
class Views:
    """The views of a run of steps (`Region.draw`): per step a flip per image, and a box per image
    (``resized_crop``) or one roll (``jitter``)."""

    mode: str
    flips: torch.Tensor | None  # steps x N booleans
    boxes: torch.Tensor | None  # steps x N x 4, resized_crop
    shifts: list[tuple[int, int]]  # per step (dy, dx), jitter

    def apply(self, x: torch.Tensor, step: int) -> torch.Tensor:
        flips = self.flips[step]
        if self.mode == "resized_crop":
            return crop_resize(x, self.boxes[step], flips, x.shape[-2:])
        if self.shifts:
            x = torch.roll(x, shifts=self.shifts[step], dims=(2, 3))
        return torch.where(flips[:, None, None, None], x.flip(3), x)


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
                     log_every: int = 0, log=None, precision: torch.dtype | None = None) -> BatchResult:
    """Optimize one batch of ``shape`` (C, H, W) images against ``targets`` (``N x classes``
    distributions) and return them.

    ``init`` (normalized space) replaces the N(0, 1) start, for warm starts. Draws come from the
    CPU ``generator`` so that a seed gives the same images on any device. With ``precision``
    (torch.bfloat16) the teacher runs under autocast; pixels, the BatchNorm statistics and every
    loss term stay float32. A step reads nothing back to the host unless it logs.
    """
    return synthesize_stacked(teacher, [targets], shape, mean, std, objective, schedule, region, generator,
                              [init], log_every, log, precision)[0]


def synthesize_stacked(teacher: nn.Module, targets: list[torch.Tensor], shape, mean, std, objective: Objective,
                       schedule: Schedule, region: Region, generator: torch.Generator,
                       inits: list[torch.Tensor | None] | None = None, log_every: int = 0, log=None,
                       precision: torch.dtype | None = None) -> list[BatchResult]:
    """Several independent batches (``targets[b]``, ``inits[b]``) optimized in one teacher pass a
    step, each with its own objective: its cross-entropy, priors and BatchNorm statistics over its
    own images (the teacher is in eval mode, so an image's output does not depend on the others).
    The loss summed over the batches has, for each batch's pixels, that batch's gradient, and Adam
    is elementwise: the images equal `synthesize_batch` run on each batch in turn with the same
    generator (its draws are taken in that order: a batch's start, then its views stage by stage),
    up to float summation order. On a GPU a small teacher then launches its kernels once for all."""
    device = next(teacher.parameters()).device
    c, h, w = shape
    lo, hi = Normalize(mean, std).to(device).bounds()
    inits = inits or [None] * len(targets)
    starts, views = [], []
    for t, init in zip(targets, inits):  # the draws of batch after batch
        starts.append(torch.randn(t.shape[0], c, h, w, generator=generator) if init is None else init)
        views.append([region.draw(t.shape[0], iterations, generator, half, device)
                      for half, iterations in schedule.stages()])
    bounds = torch.tensor([0] + [t.shape[0] for t in targets]).cumsum(0).tolist()
    groups = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    x = torch.cat(starts).to(device).clamp_(lo, hi).requires_grad_(True)
    target = torch.cat(targets).to(device)
    history = []

    def per_group(term, v: torch.Tensor) -> torch.Tensor:
        return term(v) if len(groups) == 1 else sum(term(v[g]) for g in groups)

    with BatchNormMatch(teacher, objective.first_bn_multiplier) as bn:
        for stage, (half, iterations) in enumerate(schedule.stages()):
            opt = torch.optim.Adam([x], lr=schedule.lr, betas=schedule.betas, fused=device.type == "cuda")
            for it in range(iterations):
                set_lr(opt, cosine_lr(it, iterations, schedule.lr, schedule.warmup))
                base = F.avg_pool2d(x, 2) if half else x
                v = (views[0][stage].apply(base, it) if len(groups) == 1
                     else torch.cat([vb[stage].apply(base[g], it) for vb, g in zip(views, groups)]))
                with autocast(device, precision):
                    logits = teacher(v)
                logits = logits.float()
                ce = (soft_cross_entropy(logits, target) if len(groups) == 1
                      else sum(soft_cross_entropy(logits[g], target[g]) for g in groups))
                bn_term = bn.loss(groups if len(groups) > 1 else None)
                loss = objective.main * ce + objective.bn * bn_term
                if objective.tv_l2 or objective.tv_l1:  # terms of weight 0 cost nothing
                    if objective.tv_l2:
                        loss = loss + objective.tv_l2 * per_group(lambda u: tv_l2(tv_differences(u)), v)
                    if objective.tv_l1:
                        loss = loss + objective.tv_l1 * per_group(lambda u: tv_l1(tv_differences(u)), v)
                if objective.l2:
                    loss = loss + objective.l2 * per_group(l2_prior, v)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    x.clamp_(lo, hi)
                if log_every and (it + 1) % log_every == 0:
                    row = {"stage": "half" if half else "full", "iteration": it + 1, "loss": loss.item(), "ce": ce.item(),
                           "bn": float(bn_term), "acc": (logits.argmax(1) == target.argmax(1)).float().mean().item()}
                    history.append(row)
                    if log:
                        log(f"  {row['stage']} {row['iteration']}/{iterations}  loss {row['loss']:.3f}  ce {row['ce']:.3f}"
                            f"  bn {row['bn']:.3f}  acc {row['acc']:.2f}")
    images = x.detach()
    return [BatchResult(images[g], history) for g in groups]


# Keys of the ``synthesis`` config that no shard reads: the list of variants and the merge's split.
NOT_IN_SHARDS = ("variants", "val_per_class")


def shard_keys(cfg: dict) -> dict:
    """The ``synthesis`` keys a shard depends on (what its config hash covers and its job reads);
    ``stack`` only where it is not 1, so that shards made before the key existed stay valid."""
    return {k: v for k, v in cfg["synthesis"].items()
            if k not in NOT_IN_SHARDS and not (k == "stack" and v == 1)}


def noise_images(n: int, shape, mean, std, generator: torch.Generator) -> torch.Tensor:
    """The floor of the ablation: unoptimized N(0, 1) images in the normalized space, clipped."""
    x = torch.randn(n, *shape, generator=generator)
    return x.clamp(*Normalize(mean, std).bounds())
