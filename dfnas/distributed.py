"""Data-parallel training across the GPUs of one job (torch.distributed, started by torchrun).

A job given several GPUs runs its stage under ``torchrun --standalone --nproc_per_node N``; each
process (rank) drives one GPU. `from_env` reads torchrun's variables and joins the process group
(NCCL on CUDA, gloo on the CPU, which is how the tests run two ranks on one machine). Training then
splits every batch of the single-process plan, not the dataset: all ranks draw the same shuffle and
the same augmentation parameters for the whole global batch, and each keeps its contiguous share
(`share`); random-view seeds (decoded crops) are made per rank (`rank_share`). So ``batch_size``
stays the global batch, the learning-rate schedule and epoch length do not change with the number
of GPUs (but for a last batch too small to give every rank two images, which is left out), and a
run on N GPUs follows the same curve as one on a single device up to BatchNorm statistics
(computed per rank, as in the published multi-GPU recipes), those view seeds and float reduction
order. Rank 0 writes the checkpoint, the log and the outputs.

Without torchrun's variables (or with WORLD_SIZE 1) nothing here is used.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch

from dfnas.errors import DfnasError
from dfnas.runtime import derived_seed, world_from_env
from dfnas.streaming import SEED_LIMIT, Batch


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous part of a global batch of ``n`` items (sizes differ by at most one;
        a rank's part is empty when ``n`` < world size)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def sum(self, *tensors: torch.Tensor) -> None:
        """Sum ``tensors`` over the ranks, in place (one collective per tensor; for per-epoch totals)."""
        for t in tensors:
            torch.distributed.all_reduce(t)

    def barrier(self) -> None:
        torch.distributed.barrier()

    def batch_gradients(self, grads: list, count: int) -> list:
        """The gradients of the global batch's mean loss, given each rank's ``grads`` of the mean loss
        over its own ``count`` items: sum_r count_r g_r / sum_r count_r, in one all-reduce (a flat
        buffer, as DistributedDataParallel's buckets). A None entry (a tensor the rank's loss does not
        reach) stays None; it must be None on every rank."""
        present = [g for g in grads if g is not None]
        if not present:
            return list(grads)
        dtype = functools.reduce(torch.promote_types, (g.dtype for g in present))
        flat = torch.cat([g.detach().reshape(-1).to(dtype) * count for g in present]
                         + [torch.full((1,), float(count), dtype=dtype, device=present[0].device)])
        torch.distributed.all_reduce(flat)
        flat = flat[:-1] / flat[-1]
        out, offset = [], 0
        for g in grads:
            if g is None:
                out.append(None)
                continue
            out.append(flat[offset:offset + g.numel()].view_as(g).to(g.dtype))
            offset += g.numel()
        return out

    def reduce_grads(self, params, count: int) -> None:
        """`batch_gradients` of the parameters' ``.grad``, written back in place."""
        params = list(params)
        for p, g in zip(params, self.batch_gradients([p.grad for p in params], count)):
            if g is not None:
                p.grad.copy_(g)


def rank_share(batch: Batch, dist: Dist) -> Batch:
    """One rank's part of a planned batch. Its view seed (random resized crops and the search's
    crops and flips, drawn per image in order) is made the rank's own, so that ranks do not
    transform their images alike."""
    seed = None if batch.seed is None else derived_seed(batch.seed, "rank", dist.rank) % SEED_LIMIT
    return Batch(batch.indices[dist.share(len(batch.indices))], seed)


def from_env(device: torch.device) -> Dist | None:
    """Join the process group of this torchrun job for training on ``device`` (the rank's GPU, or
    the CPU); None when the job is a single process."""
    world = world_from_env()
    if world is None:
        return None
    rank, size, local = world
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {}
        if device.type == "cuda" and "device_id" in inspect.signature(torch.distributed.init_process_group).parameters:
            kwargs["device_id"] = device  # binds NCCL to the rank's GPU (torch 2.3 and later)
        torch.distributed.init_process_group(backend, rank=rank, world_size=size, **kwargs)
    return Dist(rank, size, local)


def check_batch(dist: Dist | None, batch: int, key: str) -> None:
    """Refuse a global batch that cannot give every rank the two images BatchNorm needs."""
    if dist is not None and batch < 2 * dist.world:
        raise DfnasError(f"config key '{key}': a batch of {batch} cannot give each of {dist.world} ranks the two "
                         "images BatchNorm needs; raise it or use fewer GPUs")


def epoch_sums(dist: Dist | None, sums: torch.Tensor) -> list[float]:
    """A rank's per-epoch sums of batch means (a tensor on the device) as floats, averaged over the
    ranks (divided by the steps, the mean of the ranks' means: the batch's when their shares are
    equal); one read from the device."""
    if dist is not None:
        dist.sum(sums)
        sums = sums / dist.world
    return sums.tolist()


def on_main(dist: Dist | None, work) -> None:
    """``work()`` on rank 0 (or in a single process); then every rank waits for it, so that none runs
    ahead of what rank 0 saves."""
    if dist is None or dist.main:
        work()
    if dist is not None:
        dist.barrier()


def finish(dist: Dist | None) -> bool:
    """Leave the process group; True where the caller goes on to write the result (rank 0, or a
    single process)."""
    close(dist)
    return dist is None or dist.main


def close(dist: Dist | None) -> None:
    """Leave the process group (after the last collective of the job)."""
    if dist is not None and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
