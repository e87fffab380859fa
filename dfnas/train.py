"""Supervised training and evaluation of classifiers on natural data.

One recipe type (`Recipe`) serves the stand-in teacher and, with more keys set, the retraining of
found architectures: SGD with momentum, linear warm-up then cosine decay per step, label smoothing,
batch-wise augmentation (random crop with zero padding, horizontal flip, cutout) done on the
training device so that a 2-core CPU is not spent in per-image Python transforms. Batches are
streamed (`dfnas.streaming`): an image folder's random resized crops are decoded per batch, in
``data.workers`` DataLoader workers, with a seed per batch, so the same seed gives the same run with
any number of workers.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from dfnas.checkpoint import Checkpoint, Resumed
from dfnas.distributed import check_batch, rank_share
from dfnas.data import as_pixels
from dfnas.evaluation import evaluate_batches
from dfnas.imaging import Normalize, augment_batch
from dfnas.optim import decay_groups, scheduled_lr, set_lr
from dfnas.runtime import autocast, derived_seed, precision_name, progress
from dfnas.streaming import batch_plan, stream


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
    color_jitter: tuple = (0.0, 0.0, 0.0)  # brightness, contrast, saturation (dfnas.imaging.augment_batch)
    grad_clip: float | None = None
    drop_path: float = 0.0  # final drop-path probability, reached linearly (networks with drop_path_prob)
    aux_weight: float = 0.0  # weight of an auxiliary head's loss (networks returning (logits, aux) in training)
    channels_last: bool | str = "auto"  # NHWC network and batches; auto: on CUDA (1.8x at 224 px on an H200)
    no_decay: str = "norm_and_bias"  # parameters without weight decay (dfnas.optim.NO_DECAY)
    schedule: str = "cosine"  # learning-rate decay after the warm-up: cosine or linear (dfnas.optim.scheduled_lr)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


def train_classifier(model: nn.Module, train_set, recipe: Recipe, device, seed: int, mean, std,
                     test_set=None, log=print, num_workers: int = 0, eval_batch_size: int = 500,
                     checkpoint=None, identity=None, precision=None, dist=None) -> list[dict]:
    """Train ``model`` in place with cross-entropy on ``train_set``; return the per-epoch history.

    Prints one line per epoch with the loss, accuracy, learning rate and the ETA. With
    ``checkpoint`` (a path), the state after every epoch is saved there, and a run that finds a
    checkpoint of the same model, recipe, seed and data resumes from it: on the CPU it ends
    with the same weights as an uninterrupted run. ``identity`` (JSON-able: the exact architecture,
    the dataset's description) tells apart models whose parameters have the same shapes and data of
    the same size. The caller deletes the checkpoint. ``precision`` (torch.bfloat16, or None for
    float32) is the autocast dtype of the forward pass. Steps read nothing back to the host: the
    epoch's sums stay on the device until its line is printed.

    With ``dist`` (a `dfnas.distributed.Dist`: this process is one rank of a torchrun job), every
    batch of the plan is split over the ranks (its share per rank, augmented with the global batch's
    draws), gradients are averaged by DistributedDataParallel, and the epoch's sums are added over
    the ranks before its line; rank 0 writes the checkpoint and the log. ``recipe.batch_size`` is
    the global batch.
    """
    model.to(device)
    fmt = torch.channels_last if uses_channels_last(recipe.channels_last, device) else torch.contiguous_format
    model.to(memory_format=fmt)
    net = model
    if dist is not None:
        check_batch(dist, min(recipe.batch_size, len(train_set)), "retrain.batch_size")
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        log = log if dist.main else (lambda *_: None)
    norm = Normalize(mean, std).to(device)
    opt = torch.optim.SGD(decay_groups(model, recipe.weight_decay, recipe.no_decay), lr=recipe.lr, momentum=recipe.momentum,
                          nesterov=recipe.nesterov and recipe.momentum > 0)
    # A last batch too small to give every rank two images (BatchNorm's minimum) is left out.
    full, rest = divmod(len(train_set), recipe.batch_size)
    steps_per_epoch = full + (rest >= (1 if dist is None else 2 * dist.world) or full == 0)
    total = recipe.epochs * steps_per_epoch
    warmup = int(recipe.warmup_epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    stateful = {"model": model, "optimizer": opt}
    if checkpoint is not None:
        checkpoint = Checkpoint(checkpoint, {
            "recipe": recipe.to_dict(), "seed": seed, "n": len(train_set), "identity": identity,
            "precision": precision_name(precision), **({"ranks": dist.world} if dist is not None else {}),
            "shapes": {k: list(p.shape) for k, p in model.state_dict().items()}}, log)
        resumed = checkpoint.resume(stateful, gen)
    else:
        resumed = Resumed()
    history, start, step = resumed.history, resumed.epoch, resumed.extra.get("step", 0)
    hole_fill = torch.tensor(mean, dtype=torch.float32).to(device)  # cutout: the mean pixel, 0 once normalized
    for epoch in range(start, recipe.epochs):
        model.train()
        if hasattr(model, "drop_path_prob"):
            model.drop_path_prob = recipe.drop_path * epoch / recipe.epochs
        if dist is not None:  # dropout and drop-path masks of their own per rank, the same after a resume
            torch.manual_seed(derived_seed(seed, "rank", dist.rank, epoch) % (2**63))
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = torch.zeros((), dtype=torch.long, device=device)
        plan = batch_plan(len(train_set), recipe.batch_size, gen, shuffle=True, random_views=True)[:steps_per_epoch]
        sizes = [len(b.indices) for b in plan]
        if dist is not None:
            plan = [rank_share(b, dist) for b in plan]
        for (x, y), size in zip(stream(train_set, plan, num_workers), sizes):
            x, y = as_pixels(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
            x = augment_batch(x, recipe, gen, None if dist is None else dist.share(size), size, fill=hole_fill)
            set_lr(opt, scheduled_lr(recipe.schedule, step, total, recipe.lr, warmup))
            with autocast(device, precision):
                logits = net(norm(x).contiguous(memory_format=fmt))
            aux = None
            if isinstance(logits, tuple):
                logits, aux = logits
            loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
            if aux is not None and recipe.aux_weight > 0:
                loss = loss + recipe.aux_weight * F.cross_entropy(aux.float(), y, label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            # DDP averages the ranks' gradients; weighted by share, that average is the global batch's.
            (loss if dist is None else loss * (len(y) * dist.world / size)).backward()
            if recipe.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            opt.step()
            step += 1
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        if dist is not None:
            dist.sum(loss_sum, correct, seen)
        row = {"epoch": epoch + 1, "train_loss": loss_sum.item() / seen.item(),
               "train_top1": correct.item() / seen.item(), "lr": opt.param_groups[0]["lr"],
               "seconds": time.time() - t0}
        if test_set is not None:
            row["test_top1"] = evaluate(model, test_set, device, mean, std, eval_batch_size, num_workers)["top1"]
        history.append(row)
        if checkpoint is not None and (dist is None or dist.main):
            checkpoint.save(stateful, gen, history, epoch + 1, final=epoch + 1 == recipe.epochs, step=step)
        if dist is not None:
            dist.barrier()  # no rank runs ahead of the saved epoch
        extra = f" test {row['test_top1']:.4f}" if "test_top1" in row else ""
        log(f"epoch {epoch + 1}/{recipe.epochs}  loss {row['train_loss']:.4f}  train {row['train_top1']:.4f}{extra}"
            f"  lr {row['lr']:.4g}  {progress(t0, epoch + 1, recipe.epochs, start)}")
    return history


def uses_channels_last(setting: bool | str, device) -> bool:
    """``channels_last`` of a recipe: true, false, or auto (on CUDA, where depthwise and bfloat16
    convolutions are much faster in NHWC; on the CPU the small networks gain nothing)."""
    return setting is True or (setting == "auto" and torch.device(device).type == "cuda")


def evaluate(model: nn.Module, dataset, device, mean, std, batch_size: int = 500, num_workers: int = 0) -> dict:
    """Top-1 and top-5 accuracy (fractions) and the mean cross-entropy of ``model`` on ``dataset``
    (its evaluation views, streamed)."""
    model.eval().to(device)
    norm = Normalize(mean, std).to(device)
    batches = stream(dataset, batch_plan(len(dataset), batch_size), num_workers)
    return evaluate_batches(lambda x: model(norm(as_pixels(x))), batches, F.cross_entropy, device=device)
