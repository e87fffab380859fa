"""Supervised training and evaluation of classifiers on natural data.

One recipe type (`Recipe`) serves the stand-in teacher and, with more keys set, the retraining of
found architectures: SGD with momentum, linear warm-up then cosine decay per step, label smoothing,
batch-wise augmentation (random crop with zero padding, horizontal flip, cutout) done on the
training device so that a 2-core CPU is not spent in per-image Python transforms.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dfnas.data import iterate_batches
from dfnas.runtime import config_hash, save_torch


@dataclass
class Recipe:
    epochs: int = 6
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    warmup_epochs: float = 0.0
    crop_padding: int = 2
    flip: bool = True
    cutout: int = 0
    grad_clip: float | None = None
    drop_path: float = 0.0  # final drop-path probability, reached linearly (networks with drop_path_prob)
    aux_weight: float = 0.0  # weight of an auxiliary head's loss (networks returning (logits, aux) in training)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as a module so it travels with the model to the device."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def augment_batch(x: torch.Tensor, recipe: Recipe, generator: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding), horizontal flip and cutout, each image drawn independently.

    Draws come from ``generator`` on the CPU, so the same seed gives the same batches on any device.
    """
    n, c, h, w = x.shape
    dev = x.device
    if recipe.crop_padding > 0:
        p = recipe.crop_padding
        padded = F.pad(x, (p, p, p, p))
        top = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(dev)
        left = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(dev)
        rows = (top[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (left[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        x = padded[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    if recipe.flip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if recipe.cutout > 0:
        # An s x s square of zeros centred on a uniform pixel (clipped at the border), as in DeVries & Taylor.
        s = recipe.cutout
        cy = torch.randint(0, h, (n,), generator=generator).to(dev)[:, None, None] - s // 2
        cx = torch.randint(0, w, (n,), generator=generator).to(dev)[:, None, None] - s // 2
        ys = torch.arange(h, device=dev)[None, :, None]
        xs = torch.arange(w, device=dev)[None, None, :]
        hole = (ys >= cy) & (ys < cy + s) & (xs >= cx) & (xs < cx + s)
        x = x * (~hole)[:, None].to(x.dtype)
    return x


def lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


def format_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def train_classifier(model: nn.Module, train_set, recipe: Recipe, device, seed: int, mean, std,
                     test_set=None, log=print, num_workers: int = 0, eval_batch_size: int = 500,
                     checkpoint=None) -> list[dict]:
    """Train ``model`` in place with cross-entropy on ``train_set``; return the per-epoch history.

    Prints one line per epoch with the loss, accuracy, learning rate and the ETA. With
    ``checkpoint`` (a path), the state after every epoch is saved there, and a run that finds a
    checkpoint of the same model, recipe, seed and data size resumes from it: on the CPU it ends
    with the same weights as an uninterrupted run. The caller deletes the checkpoint when done.
    """
    model.to(device)
    norm = Normalize(mean, std).to(device)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov and recipe.momentum > 0,
    )
    steps_per_epoch = math.ceil(len(train_set) / recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    warmup = int(recipe.warmup_epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    history, step, t0, start = [], 0, time.time(), 0
    fingerprint = config_hash({"recipe": recipe.to_dict(), "seed": seed, "n": len(train_set),
                               "shapes": [list(p.shape) for p in model.state_dict().values()]})
    if checkpoint is not None and Path(checkpoint).is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
            history, step, start = state["history"], state["step"], state["epoch"]
            log(f"resuming from {checkpoint} after epoch {start}")
        else:
            log(f"ignoring {checkpoint}: it belongs to another model, recipe or dataset")
    for epoch in range(start, recipe.epochs):
        model.train()
        if hasattr(model, "drop_path_prob"):
            model.drop_path_prob = recipe.drop_path * epoch / recipe.epochs
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in iterate_batches(train_set, recipe.batch_size, shuffle=True, generator=gen, num_workers=num_workers):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x = augment_batch(x, recipe, gen)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, warmup, recipe.lr)
            logits = model(norm(x))
            aux = None
            if isinstance(logits, tuple):
                logits, aux = logits
            loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
            if aux is not None and recipe.aux_weight > 0:
                loss = loss + recipe.aux_weight * F.cross_entropy(aux, y, label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            opt.step()
            step += 1
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_top1": correct / seen,
               "lr": opt.param_groups[0]["lr"], "seconds": time.time() - t0}
        if test_set is not None:
            row["test_top1"] = evaluate(model, test_set, device, mean, std, eval_batch_size, num_workers)["top1"]
        history.append(row)
        if checkpoint is not None:
            save_torch({"fingerprint": fingerprint, "model": model.state_dict(), "optimizer": opt.state_dict(),
                        "generator": gen.get_state(), "history": history, "step": step, "epoch": epoch + 1}, checkpoint)
        eta = (time.time() - t0) / (epoch + 1 - start) * (recipe.epochs - epoch - 1)
        extra = f" test {row['test_top1']:.4f}" if "test_top1" in row else ""
        log(f"epoch {epoch + 1}/{recipe.epochs}  loss {row['train_loss']:.4f}  train {row['train_top1']:.4f}{extra}"
            f"  lr {row['lr']:.4g}  elapsed {format_seconds(row['seconds'])}  eta {format_seconds(eta)}")
    return history


@torch.no_grad()
def evaluate(model: nn.Module, dataset, device, mean, std, batch_size: int = 500, num_workers: int = 0) -> dict:
    """Top-1 and top-5 accuracy (fractions) and the mean cross-entropy of ``model`` on ``dataset``."""
    model.eval().to(device)
    norm = Normalize(mean, std).to(device)
    n, top1, top5, loss = 0, 0, 0, 0.0
    for x, y in iterate_batches(dataset, batch_size, num_workers=num_workers):
        x, y = x.to(device), y.to(device)
        logits = model(norm(x))
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        top1 += (topk[:, 0] == y).sum().item()
        top5 += (topk == y[:, None]).any(1).sum().item()
        n += len(y)
    if n == 0:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"), "n": 0}
    return {"top1": top1 / n, "top5": top5 / n, "loss": loss / n, "n": n}
