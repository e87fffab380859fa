"""Synthesis: objective terms against hand computations, the regional update, recursive calibration,
reproducible and resumable shards, merge checks, and the soft-label cache."""

import copy
import hashlib
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfnas import shards as sh
from dfnas.config import validate_config
from dfnas.errors import DfnasError
from dfnas.bnstats import BatchNormInputs
from dfnas.imaging import crop_resize
from dfnas.merge import merge, sample_grid
from dfnas.sampling import stratified_split
from dfnas.soft_labels import SoftLabelData, make_soft_labels, render_views
from dfnas.synthesis import Region, bn_loss, l2_prior, tv_losses
from dfnas.synthesize import run_shard, shard_sizes
from dfnas.teacher import load_teacher

SMALL = {"shards": 2, "images_per_round": 12, "rounds": 3, "batch_size": 6, "iterations_half": 2,
         "iterations_full": 3, "warmup": 1, "val_per_class": 1}


def quiet(*_):
    pass


@pytest.fixture
def teacher(teacher_file):
    return load_teacher(teacher_file)


def syn_config(**synthesis):
    return validate_config({"seed": 0, "device": "cpu", "synthesis": {**SMALL, **synthesis}, "soft_labels": {"views": 4}})


# ---------------------------------------------------------------------------------------------
# Objective terms


def test_bn_loss_against_a_hand_computation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
    net[1].running_mean.copy_(torch.tensor([0.5, -1.0]))
    net[1].running_var.copy_(torch.tensor([2.0, 0.5]))
    net[4].running_mean.copy_(torch.tensor([0.1, 0.2, 0.3]))
    net[4].running_var.copy_(torch.tensor([1.0, 1.5, 0.25]))
    net.eval()
    x = torch.randn(4, 1, 3, 3)
    with BatchNormInputs(net) as bn:
        net(x)
        loss = bn_loss(bn, first_multiplier=10.0)

    def term(inp, bn):
        mu = inp.mean(dim=(0, 2, 3))
        var = ((inp - mu.view(1, -1, 1, 1)) ** 2).mean(dim=(0, 2, 3))
        return ((mu - bn.running_mean) ** 2).sum().sqrt() + ((var - bn.running_var) ** 2).sum().sqrt()

    with torch.no_grad():
        a1 = net[0](x)
        a2 = net[3](net[2](net[1](a1)))
    expected = 10.0 * term(a1, net[1]) + term(a2, net[4])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # The hooks are gone after the block.
    assert not net[1]._forward_hooks


def test_tv_and_l2_against_hand_values():
    x = torch.tensor([[[[1.0, 2.0], [4.0, 8.0]]]])
    # right: (1-2, 4-8) = (-1, -4); down: (1-4, 2-8) = (-3, -6); diagonals: (4-2) = 2 and (1-8) = -7
    tv2, tv1 = tv_losses(x)
    assert tv2.item() == pytest.approx(17 ** 0.5 + 45 ** 0.5 + 2 + 7)
    assert tv1.item() == pytest.approx(2.5 + 4.5 + 2 + 7)
    assert l2_prior(torch.stack([x[0], 2 * x[0]])).item() == pytest.approx(1.5 * 85 ** 0.5)


def test_regional_update_gives_zero_gradient_outside_the_box():
    x = torch.randn(1, 2, 16, 16, requires_grad=True)
    box = torch.tensor([[0.25, 0.5, 0.5, 0.25]])  # rows 4..11, columns 8..11
    v = crop_resize(x, box, torch.tensor([True]), (16, 16))
    v.pow(2).sum().backward()
    grad = x.grad[0].abs().sum(0)
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[4:12, 8:12] = True
    assert grad[~inside].max().item() == 0.0
    assert (grad[inside] > 0).all()


def test_crop_resize_identity_and_flip():
    x = torch.randn(2, 3, 8, 8)
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    assert torch.allclose(crop_resize(x, full, torch.tensor([False, False]), (8, 8)), x, atol=1e-6)
    flipped = crop_resize(x, full, torch.tensor([True, False]), (8, 8))
    assert torch.allclose(flipped[0], x[0].flip(2), atol=1e-6) and torch.allclose(flipped[1], x[1], atol=1e-6)


def test_region_modes_keep_the_shape():
    x = torch.randn(4, 1, 10, 10)
    gen = torch.Generator().manual_seed(0)
    for mode in ("resized_crop", "jitter", "none"):
        assert Region(mode=mode).view(x, gen).shape == x.shape
    rolled = Region(mode="jitter", jitter=0, flip=False).view(x, gen)
    assert torch.equal(rolled, x)


# ---------------------------------------------------------------------------------------------
# Shards


def test_shard_sizes_cover_the_round():
    assert shard_sizes(10, 3) == [4, 3, 3]
    assert sum(shard_sizes(1000, 7)) == 1000


def test_recursive_targets_are_the_teachers_softmax_on_the_previous_round(teacher, tmp_path):
    cfg = syn_config(calibration={"temperature": 2.0})
    path = run_shard(cfg, teacher, "full", 0, tmp_path / "s.h5", log=quiet)
    with h5py.File(path) as f:
        data = sh.read_group(f)
        assert f.attrs["rounds_done"] == 3 and f.attrs["teacher_sha256"] == teacher.checksum
    n = 6
    assert data["round"].tolist() == [0] * n + [1] * n + [2] * n
    # Round 0: hard, class-balanced targets (shard 0 holds classes 0..5 of the 12 per round).
    assert sorted(data["labels"][:n].tolist()) == [0, 1, 2, 3, 4, 5]
    assert np.array_equal(data["targets"][:n], np.eye(10, dtype=np.float32)[data["labels"][:n]])
    for r in (1, 2):
        prev = sh.from_storage(data["images"][(r - 1) * n : r * n])
        mean = torch.tensor(teacher.mean).view(1, -1, 1, 1)
        std = torch.tensor(teacher.std).view(1, -1, 1, 1)
        with torch.no_grad():
            expected = F.softmax(teacher.model((prev - mean) / std) / 2.0, dim=1)
        np.testing.assert_allclose(data["targets"][r * n : (r + 1) * n], expected.numpy(), atol=1e-5)
        assert np.array_equal(data["labels"][r * n : (r + 1) * n], expected.argmax(1).numpy())
    # The stored logits are the teacher's on the stored images.
    pixels = sh.from_storage(data["images"])
    with torch.no_grad():
        logits = teacher.model((pixels - mean) / std)
    np.testing.assert_allclose(data["teacher_logits"], logits.numpy(), atol=1e-4)


def test_no_recursive_keeps_hard_targets(teacher, tmp_path):
    path = run_shard(syn_config(), teacher, "no_recursive", 1, tmp_path / "s.h5", log=quiet)
    with h5py.File(path) as f:
        targets = f["targets"][...]
        labels = f["labels"][...]
    assert np.array_equal(targets, np.eye(10, dtype=np.float32)[labels])
    # Shard 1 holds classes 6..9 and 0..1 of each round.
    assert sorted(labels[:6].tolist()) == [0, 1, 6, 7, 8, 9]


def test_same_seed_same_shard_bytes(teacher, tmp_path):
    cfg = syn_config()
    a = run_shard(cfg, teacher, "full", 0, tmp_path / "a.h5", log=quiet)
    b = run_shard(cfg, teacher, "full", 0, tmp_path / "b.h5", log=quiet)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    other = run_shard(validate_config({**copy.deepcopy(cfg), "seed": 5}), teacher, "full", 0, tmp_path / "c.h5", log=quiet)
    with h5py.File(a) as fa, h5py.File(other) as fc:
        assert not np.array_equal(fa["images"][...], fc["images"][...])


def test_killed_shard_resumes_from_its_last_round(teacher, tmp_path):
    cfg = syn_config()
    reference = run_shard(cfg, teacher, "full", 0, tmp_path / "ref.h5", log=quiet)

    class Killed(Exception):
        pass

    def kill_after_round_2(msg):
        if "round 2/3 written" in msg:
            raise Killed

    out = tmp_path / "killed.h5"
    with pytest.raises(Killed):
        run_shard(cfg, teacher, "full", 0, out, log=kill_after_round_2)
    partial = tmp_path / "killed.h5.partial"
    assert not out.exists() and partial.exists()
    with h5py.File(partial) as f:
        assert f.attrs["rounds_done"] == 2 and f["labels"].shape[0] == 12
    messages = []
    run_shard(cfg, teacher, "full", 0, out, log=messages.append)
    assert "resuming killed.h5.partial after round 2" in messages
    assert sum("written" in m for m in messages) == 1
    assert out.read_bytes() == reference.read_bytes()
    assert not partial.exists()


def test_partial_from_another_config_is_discarded(teacher, tmp_path):
    out = tmp_path / "s.h5"
    partial = tmp_path / "s.h5.partial"
    partial.write_bytes(b"not hdf5 at all")
    messages = []
    run_shard(syn_config(rounds=1), teacher, "noise", 0, out, log=messages.append)
    assert any(m.startswith("discarding unreadable s.h5.partial") for m in messages)
    assert out.exists()


def test_noise_variant_is_unoptimized_gaussian(teacher, tmp_path):
    path = run_shard(syn_config(rounds=1), teacher, "noise", 0, tmp_path / "n.h5", log=quiet)
    with h5py.File(path) as f:
        pixels = sh.from_storage(f["images"][...])
    z = (pixels - teacher.mean[0]) / teacher.std[0]
    # N(0, 1) clipped to the valid range [-0.81, 2.02]: the mean of the clipped values is about 0.07.
    assert abs(z.mean().item() - 0.07) < 0.05
    assert pixels.min() == 0.0


# ---------------------------------------------------------------------------------------------
# Merge


@pytest.fixture
def two_shards(teacher, tmp_path):
    cfg = syn_config()
    return cfg, [run_shard(cfg, teacher, "full", s, tmp_path / f"shard_{s:03d}.h5", log=quiet) for s in (0, 1)]


def test_stratified_split_keeps_k_per_class():
    labels = np.repeat(np.arange(4), 10)
    train, val = stratified_split(labels, 3, seed=0)
    assert np.bincount(labels[val]).tolist() == [3, 3, 3, 3]
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 40
    assert np.array_equal(val, stratified_split(labels, 3, seed=0)[1])


def test_merge_writes_train_and_val(two_shards, teacher, tmp_path):
    cfg, paths = two_shards
    out = tmp_path / "dataset.h5"
    result = merge(paths, teacher.checksum, 1, cfg["seed"], out, "full")
    assert result["train"] + result["val"] == 36
    with h5py.File(out) as f:
        assert f.attrs["format"] == "dfnas-synthetic-dataset" and f.attrs["variant"] == "full"
        val_labels = f["val/labels"][...]
        assert len(val_labels) == len(set(val_labels.tolist()))  # one per class present
        assert f["train/images"].shape[1:] == (1, 28, 28)
    grid = tmp_path / "grid.png"
    sample_grid(result["data"], 10, grid)
    from PIL import Image

    width, height = Image.open(grid).size
    assert (width, height) == (4 * 3 * 29 + 1, 10 * 29 + 1)  # 4 per round x 3 rounds, 10 classes


def test_merge_rejects_a_corrupted_shard(two_shards, teacher, tmp_path):
    cfg, paths = two_shards
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])
    out = tmp_path / "dataset.h5"
    with pytest.raises(DfnasError, match=f"{paths[1]}: ") as err:
        merge(paths, teacher.checksum, 1, 0, out)
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_merge_rejects_nan_and_foreign_shards(two_shards, teacher, tmp_path):
    cfg, paths = two_shards
    with pytest.raises(DfnasError, match="made with another teacher"):
        merge(paths, "0" * 64, 1, 0, tmp_path / "d.h5")
    with pytest.raises(DfnasError, match="belongs to variant 'full', not 'noise'"):
        merge(paths, teacher.checksum, 1, 0, tmp_path / "d.h5", "noise")
    with h5py.File(paths[0], "a") as f:
        f["teacher_logits"][0, 3] = np.nan
    with pytest.raises(DfnasError, match=f"{paths[0]}: teacher_logits holds NaN"):
        merge(paths, teacher.checksum, 1, 0, tmp_path / "d.h5")
    assert not (tmp_path / "d.h5").exists()


def test_merge_rejects_shards_of_different_configs(teacher, tmp_path):
    a = run_shard(syn_config(), teacher, "full", 0, tmp_path / "a.h5", log=quiet)
    b = run_shard(syn_config(lr=0.05), teacher, "full", 1, tmp_path / "b.h5", log=quiet)
    with pytest.raises(DfnasError, match="config_hash .* differs from the other shards'"):
        merge([a, b], teacher.checksum, 1, 0, tmp_path / "d.h5")


# ---------------------------------------------------------------------------------------------
# Soft labels


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
    assert (x0 - data.pixels).abs().max().item() < 1e-5, (x0 - data.pixels).abs().max()
    val = SoftLabelData(dataset, labels, "val")
    assert val.views == 1
    batches = list(data.batches(5, torch.Generator().manual_seed(0)))
    assert sum(len(b[0]) for b in batches) == len(data)
    # As a torch Dataset: item i is its epoch's cached view, with that view's logits.
    data.set_epoch(3)
    xi, li = data[2]
    k = data.epoch_views[2].item()
    xe, le = data.get(torch.tensor([2]), torch.tensor([k]))
    assert torch.equal(xi, xe[0]) and torch.equal(li, le[0])
    loader = torch.utils.data.DataLoader(data, batch_size=7)
    assert sum(len(y) for _, y in loader) == len(data)


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


def test_replayed_views_match_render_views(cached):
    _, dataset, labels = cached
    data = SoftLabelData(dataset, labels)
    idx = torch.tensor([0, 1])
    view = torch.tensor([2, 3])
    x, _ = data.get(idx, view)
    expected = render_views(data.pixels[idx], data.boxes[idx, view], data.flips[idx, view])
    assert torch.equal(x, expected)


# ---------------------------------------------------------------------------------------------
# The synthetic branch never reads natural images


def test_synthetic_branch_reads_no_natural_data(teacher_file, tmp_path, monkeypatch):
    """Run synthesize, merge and soft_labels with every natural-data path watched."""
    import dfnas.data

    teacher = load_teacher(teacher_file)
    natural_roots = [str(teacher_file.parent / "fashion-mnist"), "/usr/share/datasets", "resources/data"]
    opened = []

    def audit(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes)):
            path = args[0].decode() if isinstance(args[0], bytes) else args[0]
            if any(root in path for root in natural_roots):
                opened.append(path)

    sys.addaudithook(audit)

    def forbidden(*a, **k):
        raise AssertionError("the synthetic branch called a natural-data loader")

    for name in ("load_dataset", "locate", "dataset_from_config", "read_idx"):
        monkeypatch.setattr(dfnas.data, name, forbidden)
    cfg = syn_config(rounds=2)
    paths = [run_shard(cfg, teacher, "full", s, tmp_path / f"shard_{s:03d}.h5", log=quiet) for s in (0, 1)]
    merge(paths, teacher.checksum, 1, 0, tmp_path / "dataset.h5")
    make_soft_labels(cfg, teacher, tmp_path / "dataset.h5", tmp_path / "labels.h5", log=quiet)
    natural_roots.clear()  # the hook stays installed for the process; disarm it
    assert opened == []
