"""The synthesize stage (dfnas.synthesize): recursive calibration across rounds, reproducible and
resumable shards, the noise floor, and a synthetic branch that never reads natural data."""

import copy
import hashlib
import json
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import quiet, shard_killed_after_round_2, syn_config
from dfnas import shards as sh
from dfnas.config import validate_config
from dfnas.merge import merge
from dfnas.soft_labels import make_soft_labels
from dfnas.synthesize import run_shard, shard_sizes
from dfnas.teacher import load_teacher


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


def test_warm_calibration_starts_each_round_from_the_previous_images(teacher, tmp_path):
    """With a learning rate too small to move a pixel by one level, a warm round reproduces the
    previous round's images; a round from noise does not."""
    n = 6
    for init in ("warm", "noise"):
        path = run_shard(syn_config(calibration={"init": init}, lr=1e-4), teacher, "full", 0, tmp_path / f"{init}.h5",
                         log=quiet)
        with h5py.File(path) as f:
            images = f["images"][...].astype(np.int16)
        change = [np.abs(images[r * n:(r + 1) * n] - images[(r - 1) * n:r * n]).mean() for r in (1, 2)]
        if init == "warm":
            assert max(change) < 1.0, change
        else:
            assert min(change) > 20.0, change


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


def test_stacked_batches_write_the_shard_of_batches_in_turn(teacher, tmp_path):
    """synthesis.stack: 2 optimizes a round's batches of 4, 2 (6 images) in one teacher pass a step:
    the shard holds the same targets, labels and rounds, images within one storage level (float
    summation order), in the same order, and the recursive targets follow from them."""
    one = run_shard(syn_config(batch_size=4), teacher, "full", 0, tmp_path / "one.h5", log=quiet)
    two = run_shard(syn_config(batch_size=4, stack=2), teacher, "full", 0, tmp_path / "two.h5", log=quiet)
    with h5py.File(one) as fa, h5py.File(two) as fb:
        a, b = sh.read_group(fa), sh.read_group(fb)
        assert json.loads(fb.attrs["config"])["synthesis"]["stack"] == 2  # the stack is part of the shard's config
        assert sh.attrs_dict(fa)["config_hash"] != sh.attrs_dict(fb)["config_hash"]
    assert np.array_equal(a["labels"][:6], b["labels"][:6]) and np.array_equal(a["round"], b["round"])
    assert np.abs(a["images"].astype(int) - b["images"].astype(int)).max() <= 1
    assert (a["images"] != b["images"]).mean() < 0.01
    np.testing.assert_allclose(a["targets"], b["targets"], atol=0.02)


def test_killed_shard_resumes_from_its_last_round(teacher, tmp_path):
    cfg, reference, out, partial = shard_killed_after_round_2(teacher, tmp_path)
    assert not out.exists() and partial.exists()
    with h5py.File(partial) as f:
        assert f.attrs["rounds_done"] == 2 and f["labels"].shape[0] == 12
    messages = []
    run_shard(cfg, teacher, "full", 0, out, log=messages.append)
    assert "resuming killed.h5.partial after round 2" in messages
    assert sum("written" in m for m in messages) == 1
    assert out.read_bytes() == reference.read_bytes()
    assert not partial.exists()


def test_a_partial_made_in_another_precision_starts_afresh(teacher, tmp_path):
    """A shard killed in float32 and rerun in bfloat16 does not mix the two: the partial is
    discarded, the shard records its precision, and merge refuses shards of mixed precision."""
    from dfnas.errors import DfnasError
    from dfnas.merge import check_shards

    cfg, _, out, partial = shard_killed_after_round_2(teacher, tmp_path)
    messages = []
    run_shard({**cfg, "precision": "bf16"}, teacher, "full", 0, out, log=messages.append)
    assert "discarding killed.h5.partial: it was made with another config, precision or teacher" in messages
    assert sum("written" in m for m in messages) == 3
    with h5py.File(out) as f, h5py.File(tmp_path / "ref.h5") as g:
        assert (f.attrs["precision"], g.attrs["precision"]) == ("bf16", "fp32")
    other = run_shard(cfg, teacher, "full", 1, tmp_path / "s1.h5", log=quiet)
    with pytest.raises(DfnasError, match="precision 'fp32' differs from the other shards' 'bf16'"):
        check_shards([out, other], teacher.checksum)


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
