"""Planned batches: every item once, per-batch view seeds, the same batches with DataLoader
workers as without, worker errors as one line, lazy HDF5 reads in any order."""

import h5py
import numpy as np
import pytest
import torch

from dfnas.errors import DfnasError
from dfnas.streaming import LazyH5, Rows, batch_plan, random_plan, stream


class Noisy:
    """A source whose training view adds noise from the batch's generator."""

    def __len__(self):
        return 37

    def read(self, indices, generator=None):
        x = indices.float()[:, None].repeat(1, 3)
        if generator is not None:
            x = x + torch.rand(x.shape, generator=generator)
        return x, indices


class Failing(Noisy):
    def read(self, indices, generator=None):
        if 30 in indices.tolist():
            raise DfnasError("item 30: unreadable image")
        return super().read(indices, generator)


def test_plan_covers_every_item_once_and_drops_only_a_short_last_batch():
    gen = torch.Generator().manual_seed(0)
    plan = batch_plan(37, 10, gen, shuffle=True)
    assert [len(b.indices) for b in plan] == [10, 10, 10, 7]
    assert sorted(torch.cat([b.indices for b in plan]).tolist()) == list(range(37))
    assert [len(b.indices) for b in batch_plan(37, 10, drop_last=True)] == [10, 10, 10]
    assert [len(b.indices) for b in batch_plan(7, 10, drop_last=True)] == [7]  # the only batch stays
    assert batch_plan(torch.tensor([5, 3]), 1)[1].indices.tolist() == [3]
    assert all(b.seed is None for b in plan)
    seeded = batch_plan(37, 10, torch.Generator().manual_seed(0), random_views=True)
    assert len({b.seed for b in seeded}) == 4


def test_workers_give_the_same_batches_in_the_same_order():
    plan = batch_plan(37, 8, torch.Generator().manual_seed(3), shuffle=True, random_views=True)
    alone = list(stream(Noisy(), plan))
    with_workers = list(stream(Noisy(), plan, workers=2))
    assert len(alone) == len(with_workers) == 5
    for (xa, ya), (xb, yb) in zip(alone, with_workers):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    assert not torch.equal(alone[0][0], alone[0][0].floor())  # the views did get noise


def test_workers_leave_the_global_generator_alone():
    """Dropout and drop-path masks come from torch's global generator: reading with workers must not
    draw from it, or a training would depend on data.workers."""
    plan = batch_plan(37, 8, torch.Generator().manual_seed(3), shuffle=True, random_views=True)
    draws = []
    for workers in (0, 2):
        torch.manual_seed(11)
        list(stream(Noisy(), plan, workers=workers))
        draws.append(torch.rand(3))
    assert torch.equal(draws[0], draws[1])


def test_a_worker_error_is_one_line():
    plan = batch_plan(37, 8)
    with pytest.raises(DfnasError) as err:
        list(stream(Failing(), plan, workers=1))
    assert str(err.value) == "item 30: unreadable image"


def test_random_plan_draws_with_replacement():
    plan = random_plan(5, 4, 3, torch.Generator().manual_seed(0))
    assert [b.indices.shape for b in plan] == [(4,)] * 3
    assert all(0 <= i < 5 for b in plan for i in b.indices.tolist())
    assert len({b.seed for b in plan}) == 3


def test_lazy_rows_in_any_order_with_repeats_and_rows_view(tmp_path):
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("g/x", data=np.arange(20).reshape(10, 2), chunks=(3, 2), compression="gzip")
    lazy = LazyH5(path)
    assert lazy.rows("g/x", torch.tensor([7, 2, 7, 0])).tolist() == [[14, 15], [4, 5], [14, 15], [0, 1]]
    with pytest.raises(DfnasError, match="cannot read g/y"):
        lazy.rows("g/y", torch.tensor([0]))
    lazy.close()
    with pytest.raises(DfnasError, match="does not exist"):
        LazyH5(tmp_path / "missing.h5").rows("g/x", torch.tensor([0]))
    view = Rows(Noisy(), torch.tensor([9, 4, 1]))
    assert len(view) == 3 and view.read(torch.tensor([2, 0]))[1].tolist() == [1, 9]


@pytest.mark.parametrize("chunk_rows", [1, 3, 64])
def test_lazy_rows_read_by_runs_or_by_list_agree_with_numpy(tmp_path, chunk_rows):
    """One image per chunk (224 px) is read as runs of rows, many per chunk by h5py's list indexing:
    either way a random batch with repeats and runs gives numpy's rows, in the batch's order."""
    images = np.random.default_rng(0).integers(0, 256, (200, 3, 4, 4), dtype=np.uint8)
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("train/images", data=images, chunks=(chunk_rows, 3, 4, 4), compression="gzip",
                         shuffle=True, fletcher32=True)
    # Runs (5..9, 120..122), singles, repeats, unsorted, both ends.
    idx = torch.tensor([9, 5, 6, 7, 8, 199, 0, 121, 120, 122, 7, 50, 0, 33])
    rows = LazyH5(path).rows("train/images", idx)
    assert rows.dtype == np.uint8 and np.array_equal(rows, images[idx.numpy()])
    assert LazyH5(path).rows("train/images", torch.tensor([], dtype=torch.long)).shape == (0, 3, 4, 4)
    with pytest.raises(DfnasError, match="cannot read train/images"):
        LazyH5(path).rows("train/images", torch.tensor([3, 200]))
