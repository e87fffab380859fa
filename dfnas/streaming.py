"""Batches streamed from data that need not fit in memory.

Every image source of dfnas (a natural split in memory or in an image folder, a merged synthetic
set, a soft-label cache) reads whole batches: ``source.read(indices, generator)`` returns the
images of ``indices`` (and their targets), drawing any random view from ``generator`` (None: the
deterministic evaluation view). A job plans its batches first (`batch_plan`: the indices of each
batch and, for random views, a seed per batch drawn from the job's generator), then `stream` reads
them, in the job's process or in DataLoader workers with pinned memory. Because every batch carries
its own seed, the batches are the same for any number of workers, and a job's memory holds a few
batches at a time, never the dataset.

Sources backed by files open them lazily, once per process (`LazyH5`): each worker has its own
HDF5 handle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from dfnas.errors import DfnasError, damaged

SEED_LIMIT = 2**62


@dataclass(frozen=True)
class Batch:
    """The plan of one batch: which items, and the seed of its random views (None: no randomness)."""

    indices: torch.Tensor
    seed: int | None = None

    def generator(self) -> torch.Generator | None:
        return None if self.seed is None else torch.Generator().manual_seed(self.seed)


def batch_plan(indices, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = False,
               drop_last: bool = False, random_views: bool = False) -> list[Batch]:
    """Split ``indices`` (a count or a sequence) into batches, shuffled with ``generator`` when
    ``shuffle``; with ``random_views`` each batch gets a seed from ``generator`` for its views.
    ``drop_last`` drops an incomplete last batch unless it is the only one."""
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size} < 1")
    indices = torch.arange(indices) if isinstance(indices, int) else torch.as_tensor(indices, dtype=torch.long)
    if shuffle:
        indices = indices[torch.randperm(len(indices), generator=generator)]
    n = len(indices)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    starts = range(0, stop, batch_size)
    seeds = (torch.randint(0, SEED_LIMIT, (len(starts),), generator=generator).tolist() if random_views
             else [None] * len(starts))
    return [Batch(indices[s : s + batch_size], seed) for s, seed in zip(starts, seeds)]


def random_plan(n: int, batch_size: int, steps: int, generator: torch.Generator) -> list[Batch]:
    """``steps`` batches of ``batch_size`` items drawn uniformly with replacement from ``n``, each
    with its own view seed (for step-budgeted training that does not count epochs)."""
    idx = torch.randint(0, n, (steps, batch_size), generator=generator)
    seeds = torch.randint(0, SEED_LIMIT, (steps,), generator=generator).tolist()
    return [Batch(idx[k], seeds[k]) for k in range(steps)]


class Rows:
    """Items ``indices`` of an image source, as a source of their own (item i is ``indices[i]``)."""

    def __init__(self, source, indices):
        self.source = source
        self.indices = torch.as_tensor(indices, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, indices, generator: torch.Generator | None = None):
        return self.source.read(self.indices[torch.as_tensor(indices, dtype=torch.long)], generator)

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close is not None:
            close()


class _Failure:
    """A `DfnasError` raised in a worker, carried to the main process as a value (its message stays
    one line instead of a worker traceback)."""

    def __init__(self, message: str):
        self.message = message


class _PlannedBatches(torch.utils.data.Dataset):
    def __init__(self, source, plan: list[Batch]):
        self.source, self.plan = source, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int):
        batch = self.plan[k]
        try:
            return self.source.read(batch.indices, batch.generator())
        except DfnasError as exc:
            return _Failure(str(exc))


def stream(source, plan: list[Batch], workers: int = 0, pin_memory: bool | None = None):
    """Yield ``source.read(batch.indices, batch.generator())`` for every batch of ``plan``, in order.

    With ``workers`` > 0, DataLoader worker processes read ahead (two batches each) into pinned
    memory when a GPU is present, so that the caller's ``.to(device, non_blocking=True)`` overlaps
    the copy with compute.
    """
    if workers <= 0:
        for batch in plan:
            yield source.read(batch.indices, batch.generator())
        return
    close = getattr(source, "close", None)
    if close is not None:
        close()  # workers open their own handles; none is inherited
    # The workers' base seed from a generator of their own: DataLoader draws it from torch's global
    # generator otherwise, and the dropout and drop-path masks that follow would depend on `workers`.
    # Nothing in a worker draws from it (each batch carries its own seed).
    loader = torch.utils.data.DataLoader(
        _PlannedBatches(source, plan), batch_size=None, shuffle=False, num_workers=workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory, prefetch_factor=2,
        generator=torch.Generator().manual_seed(0),
    )
    for item in loader:
        if isinstance(item, _Failure):
            raise DfnasError(item.message)
        yield item


class LazyH5:
    """An HDF5 file opened on first use in each process, read through a bounded chunk cache.

    Pickling (DataLoader workers started by spawn) drops the handle; a forked worker sees another
    process id and opens its own.
    """

    CACHE_BYTES = 8 << 20  # per dataset: bounded, whatever the file's size
    RUNS_BELOW_CHUNK_ROWS = 8  # rows() reads runs of rows where a chunk holds at most this many

    def __init__(self, path):
        self.path = path
        self._file = None
        self._pid = None

    def file(self):
        if self._file is None or self._pid != os.getpid():
            import h5py

            try:
                self._file = h5py.File(self.path, "r", rdcc_nbytes=self.CACHE_BYTES, rdcc_nslots=10007)
            except FileNotFoundError:
                raise DfnasError(f"{self.path} does not exist") from None
            except OSError as exc:
                raise damaged(self.path, "not a readable HDF5 file", exc) from None
            self._pid = os.getpid()
        return self._file

    def rows(self, name: str, indices: torch.Tensor):
        """Rows ``indices`` (any order, repeats allowed) of dataset ``name`` as a NumPy array.

        Where a chunk holds few rows (large images: one per chunk at 224 px), the sorted rows are
        read as contiguous runs, one slice each: h5py's list indexing costs about 24x more there for
        a random batch. Where chunks hold many small rows, list indexing is as fast or faster
        (benchmarks/h5_rows.py).
        """
        unique, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
        try:
            ds = self.file()[name]
            if ds.chunks is not None and ds.chunks[0] > self.RUNS_BELOW_CHUNK_ROWS:
                return (ds[unique] if len(unique) else ds[0:0])[inverse]
            data = np.empty((len(unique), *ds.shape[1:]), dtype=ds.dtype)
            starts = np.flatnonzero(np.diff(unique, prepend=-2) != 1)
            for a, b in zip(starts.tolist(), [*starts[1:].tolist(), len(unique)]):
                ds.read_direct(data, np.s_[unique[a]:unique[a] + b - a], np.s_[a:b])
        except (KeyError, OSError, RuntimeError, ValueError, TypeError) as exc:
            raise damaged(self.path, f"cannot read {name}", exc) from None
        return data[inverse]

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
        self._pid = None

    def __getstate__(self):
        return {"path": self.path, "_file": None, "_pid": None}
