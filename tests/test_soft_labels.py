"""The soft-label cache (dfnas.soft_labels): cached logits equal a fresh teacher pass on the replayed
views, the cache refuses a changed dataset, and views replay exactly."""

import h5py
import pytest
import torch
import torch.nn.functional as F

from conftest import quiet
from dfnas.errors import DfnasError
from dfnas.merge import merge
from dfnas.soft_labels import SoftLabelData, make_soft_labels, render_views
from dfnas.streaming import batch_plan, stream


@pytest.mark.parametrize("topk", [None, 3])
def test_cached_soft_labels_equal_a_fresh_teacher_pass(two_shards, teacher, tmp_path, topk):
    cfg, paths = two_shards
    cfg["soft_labels"]["topk"] = topk
    dataset = tmp_path / "dataset.h5"
    merge(paths, teacher.checksum, 1, 0, dataset)
    labels = tmp_path / "labels.h5"
    make_soft_labels(cfg, teacher, dataset, labels, log=quiet)
    data = SoftLabelData(dataset, labels, "train")
    assert data.views == 4
    idx = torch.arange(len(data))
    view = torch.arange(len(data)) % 4
    x, logits = data.get(idx, view)
    mean = torch.tensor(teacher.mean).view(1, -1, 1, 1)
    std = torch.tensor(teacher.std).view(1, -1, 1, 1)
    with torch.no_grad():
        fresh = teacher.model((x - mean) / std)
    if topk is None:
        torch.testing.assert_close(logits, fresh, atol=2e-2, rtol=2e-3)  # float16 storage
    else:
        probs = F.softmax(fresh / cfg["soft_labels"]["temperature"], dim=1)
        top = probs.topk(topk, dim=1)
        torch.testing.assert_close(logits.exp().gather(1, top.indices), top.values, atol=2e-3, rtol=2e-3)
        assert torch.allclose(logits.exp().sum(1), torch.ones(len(x)), atol=1e-3)
    # View 0 is the whole image.
    x0, _ = data.get(idx, torch.zeros_like(idx))
    pixels = data.images.pixels(idx)
    assert (x0 - pixels).abs().max().item() < 1e-5, (x0 - pixels).abs().max()
    assert torch.equal(data.read(idx)[0], x0)  # no generator: view 0
    val = SoftLabelData(dataset, labels, "val")
    assert val.views == 1
    # A generator draws one cached view per image: the same as asking for those views.
    gen = torch.Generator().manual_seed(5)
    drawn = torch.randint(0, data.views, (len(idx),), generator=torch.Generator().manual_seed(5))
    xr, lr = data.read(idx, gen)
    xe, le = data.get(idx, drawn)
    assert torch.equal(xr, xe) and torch.equal(lr, le)
    # Streamed through DataLoader workers (one HDF5 handle each): the same batches.
    plan = batch_plan(len(data), 7, torch.Generator().manual_seed(0), shuffle=True, random_views=True)
    alone, workers = list(stream(data, plan)), list(stream(data, plan, workers=2))
    assert sum(len(y) for _, y in workers) == len(data)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(alone, workers))


@pytest.fixture
def cached(two_shards, teacher, tmp_path):
    """A merged dataset and its soft-label cache: (shard paths, dataset, labels)."""
    cfg, paths = two_shards
    dataset, labels = tmp_path / "dataset.h5", tmp_path / "labels.h5"
    merge(paths, teacher.checksum, 1, 0, dataset)
    make_soft_labels(cfg, teacher, dataset, labels, log=quiet)
    return paths, dataset, labels


def test_soft_labels_refuse_a_changed_dataset(cached, teacher):
    paths, dataset, labels = cached
    merge(paths, teacher.checksum, 2, 0, dataset)
    with pytest.raises(DfnasError, match="was cached from another version of"):
        SoftLabelData(dataset, labels)


def test_soft_labels_of_another_variant_are_named_as_a_mix_up(cached, tmp_path):
    """The labels of variant 'full' passed with a dataset of another variant: not "delete it" (the
    file is fine, for its own variant), but which variant each holds; the labels file is untouched."""
    import shutil

    import h5py

    _, dataset, labels = cached
    other = tmp_path / "other.h5"
    shutil.copy(dataset, other)
    with h5py.File(other, "r+") as f:
        assert f.attrs["variant"] == "full"
        f.attrs["variant"] = "deepinversion"
    before = labels.read_bytes()
    with pytest.raises(DfnasError) as err:
        SoftLabelData(other, labels)
    assert str(err.value) == (f"{labels}: holds the soft labels of variant 'full', but {other} is variant "
                              "'deepinversion'; pass that variant's soft labels")
    assert labels.read_bytes() == before


def test_replayed_views_match_render_views(cached):
    _, dataset, labels = cached
    data = SoftLabelData(dataset, labels)
    idx = torch.tensor([0, 1])
    view = torch.tensor([2, 3])
    x, _ = data.get(idx, view)
    with h5py.File(labels) as f:
        boxes = torch.from_numpy(f["train/boxes"][...])
        flips = torch.from_numpy(f["train/flips"][...])
    expected = render_views(data.images.pixels(idx), boxes[idx, view], flips[idx, view])
    assert torch.equal(x, expected)


def test_lighting_views_shift_colours_along_the_pca_and_need_rgb(two_shards, teacher, tmp_path):
    from dfnas.imaging import LIGHTING_EIGVAL, LIGHTING_EIGVEC, lighting
    from dfnas.soft_labels import draw_views

    x = torch.rand(2, 3, 8, 8)
    alphas = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    out = lighting(x, alphas)
    # image 0: 1 * 0.2175 along the first eigenvector; image 1: 2 * 0.0045 along the third
    first = torch.tensor([row[0] for row in LIGHTING_EIGVEC]) * LIGHTING_EIGVAL[0]
    third = torch.tensor([row[2] for row in LIGHTING_EIGVEC]) * 2 * LIGHTING_EIGVAL[2]
    torch.testing.assert_close(out[0] - x[0], first[:, None, None].expand(3, 8, 8))
    torch.testing.assert_close(out[1] - x[1], third[:, None, None].expand(3, 8, 8))
    boxes, flips, drawn = draw_views(500, 3, (0.5, 1.0), (0.75, 4 / 3), True, torch.Generator().manual_seed(0), 0.1)
    assert drawn.shape == (500, 3, 3) and torch.equal(drawn[:, 0], torch.zeros(500, 3))  # view 0: no noise
    assert abs(drawn[:, 1:].std().item() - 0.1) < 0.01
    same, _, none = draw_views(500, 3, (0.5, 1.0), (0.75, 4 / 3), True, torch.Generator().manual_seed(0))
    assert none is None and torch.equal(same, boxes)  # lighting draws after the boxes: they do not change
    views = render_views(x[:1].expand(2, 3, 8, 8), boxes[:2, 1], flips[:2, 1], drawn[:2, 1])
    torch.testing.assert_close(views, lighting(render_views(x[:1].expand(2, 3, 8, 8), boxes[:2, 1], flips[:2, 1]),
                                               drawn[:2, 1]))
    cfg, paths = two_shards
    cfg["soft_labels"]["lighting"] = 0.1
    merge(paths, teacher.checksum, 1, 0, tmp_path / "dataset.h5")
    with pytest.raises(DfnasError, match=r"soft_labels.lighting: colour noise needs RGB images, these have 1"):
        make_soft_labels(cfg, teacher, tmp_path / "dataset.h5", tmp_path / "labels.h5", log=quiet)
    assert not (tmp_path / "labels.h5").exists()


def test_more_top_classes_than_the_teacher_has_is_one_line(two_shards, teacher, tmp_path):
    cfg, paths = two_shards
    cfg["soft_labels"]["topk"] = teacher.num_classes + 1
    merge(paths, teacher.checksum, 1, 0, tmp_path / "dataset.h5")
    with pytest.raises(DfnasError, match=rf"^config key 'soft_labels.topk': {teacher.num_classes + 1} exceeds the "
                                         rf"teacher's {teacher.num_classes} classes; lower it, or use 0"):
        make_soft_labels(cfg, teacher, tmp_path / "dataset.h5", tmp_path / "labels.h5", log=quiet)
    assert not (tmp_path / "labels.h5").exists()
