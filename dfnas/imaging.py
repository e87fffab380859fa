"""Image tensors: normalization, crops and resizes, batch augmentation.

Images travel as float pixels in [0, 1] (``N x C x H x W``); a network sees them normalized by the
dataset's or teacher's per-channel mean and std (`Normalize`). Every random draw comes from a CPU
``torch.Generator`` so that a seed gives the same views on any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as a module so it travels with the model to the device."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std

    def inverse(self, x):
        """Normalized images back to pixels (not clipped)."""
        return x * self.std + self.mean

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalized values of pixels 0 and 1, per channel: the valid range of a normalized image."""
        return (0 - self.mean) / self.std, (1 - self.mean) / self.std


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Differentiable crop-and-resize of each image to ``size`` with bilinear sampling.

    ``boxes`` is ``N x 4`` of ``(top, left, height, width)`` as fractions of the image; ``flips``
    is ``N`` booleans (mirror the view). Sample positions are clamped to the box's outermost pixel
    centres, so pixels outside the box never contribute (nor receive gradient).
    """
    n, _, h, w = x.shape
    out_h, out_w = size
    boxes = boxes.to(x.device, x.dtype, non_blocking=True)  # drawn on the host: no wait for the stream
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
    cols = torch.where(flips.to(x.device, non_blocking=True)[:, None], cols.flip(1), cols)
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


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """``N x 1 x H x W`` luma of RGB pixels (ITU-R 601, as torchvision's rgb_to_grayscale); a
    one-channel batch is its own."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def augment_batch(x: torch.Tensor, recipe, generator: torch.Generator, share: slice | None = None,
                  total: int | None = None, fill=None) -> torch.Tensor:
    """Colour jitter, random crop (zero padding), horizontal flip and cutout, each image drawn
    independently.

    ``recipe`` has ``crop_padding``, ``flip`` and ``cutout``, and may have ``color_jitter``
    (brightness, contrast, saturation: a `dfnas.train.Recipe` has all). Colour jitter is
    torchvision's ColorJitter without hue, its three adjustments in that fixed order: each factor
    uniform in [max(0, 1 - v), 1 + v], a blend with black, the image's mean grey, and the pixel's grey,
    clamped to [0, 1]; an amount of 0 draws nothing. ``x`` is in
    pixels, before normalization: padding is black, as a padded crop of the image; a cutout hole is
    ``fill`` (per channel; the dataset's mean makes it 0 after normalization, as DeVries & Taylor's
    and DARTS's cutout after Normalize), black without one; a tensor on ``x``'s device is used as it
    is, with no copy per batch.

    Draws come from ``generator`` on the CPU, so the same seed gives the same batches on any device.
    ``x`` may be one data-parallel rank's ``share`` of a global batch of ``total`` images: the draws
    are then made for the global batch and the share's are used, so that every rank's generator
    stays in step and each image is augmented as on a single device.
    """
    n, c, h, w = x.shape
    dev = x.device

    def draw(values: torch.Tensor) -> torch.Tensor:
        return (values if share is None else values[share]).to(dev, non_blocking=True)

    size = (n if total is None else total,)
    for kind, amount in zip(("brightness", "contrast", "saturation"), getattr(recipe, "color_jitter", None) or ()):
        if amount <= 0:
            continue
        low = max(0.0, 1.0 - amount)
        factor = draw(low + torch.rand(size, generator=generator) * (1.0 + amount - low)).to(x.dtype)[:, None, None, None]
        if kind == "brightness":
            x = (factor * x).clamp(0, 1)
        else:
            gray = grayscale(x)
            base = gray.mean((1, 2, 3), keepdim=True) if kind == "contrast" else gray
            x = (factor * x + (1 - factor) * base).clamp(0, 1)
    if recipe.crop_padding > 0:
        p = recipe.crop_padding
        padded = F.pad(x, (p, p, p, p))
        top = draw(torch.randint(0, 2 * p + 1, size, generator=generator))
        left = draw(torch.randint(0, 2 * p + 1, size, generator=generator))
        rows = (top[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (left[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        x = padded[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    if recipe.flip:
        flip = draw(torch.rand(size, generator=generator) < 0.5)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if recipe.cutout > 0:
        # An s x s square centred on a uniform pixel (clipped at the border), as in DeVries & Taylor.
        s = recipe.cutout
        cy = draw(torch.randint(0, h, size, generator=generator))[:, None, None] - s // 2
        cx = draw(torch.randint(0, w, size, generator=generator))[:, None, None] - s // 2
        ys = torch.arange(h, device=dev)[None, :, None]
        xs = torch.arange(w, device=dev)[None, None, :]
        hole = ((ys >= cy) & (ys < cy + s) & (xs >= cx) & (xs < cx + s))[:, None]
        x = x * (~hole).to(x.dtype)
        if fill is not None:
            x = x + hole.to(x.dtype) * torch.as_tensor(fill, dtype=x.dtype, device=dev)[None, :, None, None]
    return x


# The principal components of ImageNet's RGB pixels (eigenvalues; eigenvectors as columns), as used
# by the "lighting" colour noise of AlexNet and of the SPOS / DF-NAS training pipelines.
LIGHTING_EIGVAL = (0.2175, 0.0188, 0.0045)
LIGHTING_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                   (-0.5808, -0.0045, -0.8140),
                   (-0.5836, -0.6948, 0.4203))


def lighting(x: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """PCA colour noise on RGB pixels: image i gets ``eigvec @ (alphas[i] * eigval)`` added to every
    pixel (``alphas`` is N x 3, drawn from N(0, std)); not clipped, as in the original."""
    # The N x 3 shift is computed where the alphas are (on the host when drawn there) and copied
    # without waiting: no constant is built on the device per batch.
    eigval = torch.tensor(LIGHTING_EIGVAL, dtype=alphas.dtype, device=alphas.device)
    eigvec = torch.tensor(LIGHTING_EIGVEC, dtype=alphas.dtype, device=alphas.device)
    shift = ((alphas * eigval) @ eigvec.T).to(x.device, x.dtype, non_blocking=True)
    return x + shift[:, :, None, None]
