"""Class-balanced sampling of indices, for natural subsets and synthetic validation splits alike."""

from __future__ import annotations

from typing import Callable

import numpy as np

from dfnas.errors import DfnasError


def per_class_pick(labels, quota: Callable[[int, int], int], seed: int) -> np.ndarray:
    """Sorted indices holding ``quota(k, size)`` members of each class (``k``: the class's rank among
    the sorted classes, ``size``: its number of members), each class's members drawn with ``seed``."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picked = []
    for k, c in enumerate(np.unique(labels)):
        members = np.flatnonzero(labels == c)
        picked.append(rng.permutation(members)[: quota(k, len(members))])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def stratified_subset(labels, n: int | None, seed: int) -> np.ndarray:
    """Indices of a class-balanced subset of size ``n`` (or all, if ``n`` is larger), fixed by ``seed``.

    Each class gets ``n // C`` images (the first ``n % C`` classes one more, where they have them);
    the result is sorted so that the subset keeps the dataset's order.
    """
    labels = np.asarray(labels)
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    classes = len(np.unique(labels))
    return per_class_pick(labels, lambda k, size: n // classes + (1 if k < n % classes else 0), seed)


def stratified_split(labels, val_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_index, val_index)``: ``val_per_class`` images of each class (fewer if a class has
    fewer than twice that many, so that it keeps training images) go to validation."""
    val_index = per_class_pick(labels, lambda k, size: min(val_per_class, size // 2), seed)
    return np.setdiff1d(np.arange(len(labels)), val_index), val_index


def require_every_class(n: int | None, classes: int, key: str) -> None:
    """A class-balanced subset of ``n`` images (config key ``key``; None: the whole split) must hold
    at least one image of each of ``classes`` classes: a one-line error otherwise."""
    if n is not None and n < classes:
        raise DfnasError(f"config key '{key}': {n} images cannot hold one of each of the {classes} classes; "
                         f"give at least {classes}")
