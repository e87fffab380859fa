"""Learning-rate schedules and parameter groups shared by every training loop.

Teacher training, retraining, synthesis and the three searches take their schedules from here, so a
schedule means the same thing everywhere it is named.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_lr(step: int, total: int, base: float, warmup: int = 0, minimum: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps to ``base``, then cosine decay to ``minimum`` at ``total``
    (and ``minimum`` after it)."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return minimum + 0.5 * (base - minimum) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def linear_lr(step: int, total: int, base: float) -> float:
    """Linear decay from ``base`` at step 0 to zero at ``total`` (SPOS's supernet schedule)."""
    return base * max(0.0, 1 - step / total)


def scheduled_lr(schedule: str, step: int, total: int, base: float, warmup: int = 0) -> float:
    """The learning rate of ``schedule`` at ``step`` of ``total``: after a linear warm-up over
    ``warmup`` steps, cosine decay (DARTS, ProxylessNAS) or linear decay (SPOS) to zero at ``total``."""
    if schedule == "cosine":
        return cosine_lr(step, total, base, warmup)
    if schedule != "linear":
        raise ValueError(f"schedule is cosine or linear, not {schedule!r}")
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    return linear_lr(step - warmup, max(1, total - warmup), base)


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# Which parameters a training leaves out of weight decay: none (DARTS decays all), those of the
# normalization layers (ProxylessNAS's released training), or every one-dimensional tensor, i.e.
# biases and normalization affine parameters (SPOS).
NO_DECAY = ("none", "norm", "norm_and_bias")
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def decay_groups(model: nn.Module, weight_decay: float, no_decay: str = "norm_and_bias") -> list[dict]:
    """Parameter groups: ``weight_decay`` on every parameter but those ``no_decay`` exempts (one of
    `NO_DECAY`), which get none."""
    if no_decay not in NO_DECAY:
        raise ValueError(f"no_decay is one of {NO_DECAY}, not {no_decay!r}")
    norm = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}

    def exempt(p: torch.Tensor) -> bool:
        return (no_decay == "norm" and id(p) in norm) or (no_decay == "norm_and_bias" and p.ndim <= 1)

    decay = [p for p in model.parameters() if not exempt(p)]
    no = [p for p in model.parameters() if exempt(p)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no, "weight_decay": 0.0}]


def step_budget(epochs: int, iterations: int | None, steps_per_epoch: int) -> tuple[int, int]:
    """``(weight updates, passes over the data)`` of a training phase: ``iterations`` updates when
    set (the last pass cut short), else ``epochs`` whole passes. Counting updates gives the arms of
    a comparison the same training whatever the size of their data."""
    if iterations is None:
        return epochs * steps_per_epoch, epochs
    return iterations, -(-iterations // steps_per_epoch)
