"""The merge stage (dfnas.merge): shards into one dataset with a stratified validation split, its
sample grid, and one-line refusals of corrupted, foreign and mismatched shards."""

import h5py
import numpy as np
import pytest

from conftest import quiet, syn_config
from dfnas.errors import DfnasError
from dfnas.merge import grid_cells, merge, sample_grid
from dfnas.sampling import stratified_split
from dfnas.synthesize import run_shard


def test_merge_writes_train_and_val(two_shards, teacher, tmp_path):
    cfg, paths = two_shards
    out = tmp_path / "dataset.h5"
    result = merge(paths, teacher.checksum, 1, cfg["seed"], out, "full", block=5)  # blocks of 5 rows
    assert result["train"] + result["val"] == 36
    shards = [h5py.File(p) for p in sorted(paths)]
    with h5py.File(out) as f:
        assert f.attrs["format"] == "dfnas-synthetic-dataset" and f.attrs["variant"] == "full"
        val_labels = f["val/labels"][...]
        assert len(val_labels) == len(set(val_labels.tolist()))  # one per class present
        assert f["train/images"].shape[1:] == (1, 28, 28)
        # Every shard row lands in the split stratified_split gives it, in shard order, unchanged.
        train_idx, val_idx = stratified_split(np.concatenate([s["labels"][...] for s in shards]), 1, cfg["seed"])
        for name in ("images", "targets", "labels", "round", "teacher_logits"):
            whole = np.concatenate([s[name][...] for s in shards])
            assert np.array_equal(f["train"][name][...], whole[train_idx])
            assert np.array_equal(f["val"][name][...], whole[val_idx])
    counts = np.bincount(np.concatenate([s["labels"][...] for s in shards]), minlength=10)
    for s in shards:
        s.close()
    # Asked for 3 a class: a class of c images gives min(3, c // 2); those under 6 are reported.
    wide = merge(paths, teacher.checksum, 3, cfg["seed"], tmp_path / "wide.h5", "full")
    assert wide["val"] == sum(min(3, c // 2) for c in counts)
    assert wide["capped_classes"] == sum(1 for c in counts if 0 < c < 6) > 0
    assert result["capped_classes"] == sum(1 for c in counts if c == 1)
    grid = tmp_path / "grid.png"
    sample_grid(out, grid)
    from PIL import Image

    width, height = Image.open(grid).size
    # 10 named classes as rows of 28-px images enlarged to 56 px (+2 px gaps), under an 18-px
    # header; 4 images per round x 3 rounds, after a label column for "T-shirt/top" (11 characters).
    assert (width, height) == (8 + 7 * 11 + 3 * 4 * 58 + 3 * 2, 18 + 10 * 58)


def test_the_sample_grid_is_bounded():
    labels = np.repeat(np.arange(1000), 3)
    rounds = np.tile(np.arange(3), 1000)
    classes, shown_rounds, cells = grid_cells(labels, rounds, 1000, 20, 4)
    assert len(classes) == 20 and classes[0] == 0 and classes[-1] == 999
    assert shown_rounds == [0, 1, 2]
    assert all(len(rows) == 1 and labels[rows[0]] == k and rounds[rows[0]] == r for (k, r), rows in cells.items())


def test_merge_rejects_a_corrupted_shard(two_shards, teacher, tmp_path):
    cfg, paths = two_shards
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])
    out = tmp_path / "dataset.h5"
    with pytest.raises(DfnasError, match=f"{paths[1]}: ") as err:
        merge(paths, teacher.checksum, 1, 0, out)
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_merge_refuses_an_incomplete_set_of_shards(two_shards, teacher, tmp_path):
    _, paths = two_shards
    out = tmp_path / "dataset.h5"
    with pytest.raises(DfnasError, match=r"^shard\(s\) 1 of 2 missing: the merged set would lack their images"):
        merge(paths[:1], teacher.checksum, 1, 0, out)
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
