"""Scoring a classifier on batches: one loop for test sets, held-out search data and ranked paths."""

from __future__ import annotations

from typing import Callable, Iterable

import torch


@torch.no_grad()
def evaluate_batches(forward: Callable, batches: Iterable, loss_fn: Callable | None = None,
                     labels_of: Callable | None = None, device=None) -> dict:
    """Top-1, top-5 and mean loss of ``forward(x) -> logits`` over ``(x, target)`` batches.

    ``loss_fn(logits, target)`` is a batch mean (weighted by the batch size here); ``labels_of(target)``
    gives the class of each target (default: the target itself; soft targets: their argmax).
    Accuracies are exact counts over ``n`` images; nan when there are none.
    """
    n, top1, top5, loss = 0, 0, 0, 0
    for x, target in batches:
        if device is not None:
            x, target = x.to(device, non_blocking=True), target.to(device, non_blocking=True)
        logits = forward(x)
        labels = target if labels_of is None else labels_of(target)
        # Sums stay on the device (no host read per batch); read once at the end.
        top1 = top1 + (logits.argmax(1) == labels).sum()
        top5 = top5 + (logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]).any(1).sum()
        if loss_fn is not None:
            loss = loss + loss_fn(logits, target).double() * len(labels)
        n += len(labels)
    if n == 0:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"), "n": 0}
    return {"top1": int(top1) / n, "top5": int(top5) / n, "loss": float(loss) / n if loss_fn is not None else float("nan"),
            "n": n}
