"""Natural-data loaders on small files in the real formats (IDX, CIFAR pickles, ImageFolder)."""

import dataclasses
import gzip
import hashlib
import tarfile

import numpy as np
import pytest
import torch

import dfnas.data as data_mod
from conftest import make_idx_dataset, write_cifar, write_idx
from dfnas.data import iterate_batches, load_dataset, locate, read_idx, stratified_subset
from dfnas.errors import DfnasError


@pytest.fixture(autouse=True)
def no_system_datasets(tmp_path, monkeypatch):
    """Keep the machine's /usr/share/datasets out of these tests."""
    monkeypatch.setattr(data_mod, "SYSTEM_DATASETS", tmp_path / "system")


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "x-idx3-ubyte", array, gz)
    np.testing.assert_array_equal(read_idx(path), array)


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    path = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((4, 5, 5), np.uint8))
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DfnasError, match=r"IDX header says \(4, 5, 5\) but the file holds 93 values"):
        read_idx(path)
    junk = tmp_path / "junk"
    junk.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DfnasError, match="bad magic number"):
        read_idx(junk)


def test_fashion_mnist_from_configured_root(tmp_path):
    train_labels, test_labels = make_idx_dataset(tmp_path / "root" / "fashion-mnist", 60, 20, gz=True)
    d = load_dataset("fashion_mnist", tmp_path / "root")
    assert (len(d.train), len(d.test)) == (60, 20)
    assert d.info.num_classes == 10 and d.info.class_names[0] == "T-shirt/top"
    assert d.info.input_shape == (1, 28, 28)
    x, y = d.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y == train_labels[0]
    assert d.test.labels.tolist() == test_labels.tolist()


def test_system_folder_is_searched_after_root(tmp_path):
    make_idx_dataset(tmp_path / "system" / "fashion-mnist", 30, 10)
    assert locate("fashion_mnist", tmp_path / "empty-root") == tmp_path / "system" / "fashion-mnist"
    make_idx_dataset(tmp_path / "root", 40, 10)
    assert locate("fashion_mnist", tmp_path / "root") == tmp_path / "root"


def test_missing_dataset_lists_where_it_looked(tmp_path):
    with pytest.raises(DfnasError) as err:
        locate("fashion_mnist", tmp_path / "nothing", download=False)
    msg = str(err.value)
    assert str(tmp_path / "nothing" / "fashion-mnist") in msg
    assert str(tmp_path / "system" / "fashion-mnist") in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "download disabled" in msg and "\n" not in msg


def _mirror_spec(monkeypatch, name, mirror_dir, files):
    spec = data_mod.SPECS[name]
    files = tuple((f, hashlib.md5((mirror_dir / f).read_bytes()).hexdigest()) for f in files)
    monkeypatch.setitem(data_mod.SPECS, name, dataclasses.replace(
        spec, mirrors=((mirror_dir / "missing").as_uri() + "/", mirror_dir.as_uri() + "/"), files=files))


def test_download_idx_from_a_file_url_mirror(tmp_path, monkeypatch):
    """The real download code, served from local files; the first mirror is down, the second works."""
    mirror = tmp_path / "mirror"
    make_idx_dataset(mirror, 50, 20, gz=True)
    _mirror_spec(monkeypatch, "fashion_mnist", mirror, sorted(p.name for p in mirror.iterdir()))
    root = tmp_path / "root"
    d = load_dataset("fashion_mnist", root, download=True)
    assert (len(d.train), len(d.test)) == (50, 20)
    assert d.source == str(root / "fashion-mnist")
    assert not list(root.rglob("*.tmp"))


def test_download_cifar_archive_is_unpacked(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_cifar(src / "cifar-10-batches-py", 10, n_train=50, n_test=10)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(mirror / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    _mirror_spec(monkeypatch, "cifar10", mirror, ["cifar-10-python.tar.gz"])
    d = load_dataset("cifar10", tmp_path / "root", download=True)
    assert len(d.train) == 50
    assert not (tmp_path / "root" / "cifar-10-python.tar.gz").exists()


def test_download_with_wrong_checksum_keeps_nothing(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    make_idx_dataset(mirror, 20, 10, gz=True)
    _mirror_spec(monkeypatch, "fashion_mnist", mirror, sorted(p.name for p in mirror.iterdir()))
    spec = data_mod.SPECS["fashion_mnist"]
    bad = ((spec.files[0][0], "0" * 32),) + spec.files[1:]
    monkeypatch.setitem(data_mod.SPECS, "fashion_mnist", dataclasses.replace(spec, files=bad))
    with pytest.raises(DfnasError, match="md5 is [0-9a-f]{32} but 0{32} was expected") as err:
        load_dataset("fashion_mnist", tmp_path / "root", download=True)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "root" / "fashion-mnist" / spec.files[0][0]).exists()
    assert not list((tmp_path / "root").rglob("*.tmp"))


@pytest.mark.parametrize("name, classes, folder", [("cifar10", 10, "cifar-10-batches-py"),
                                                    ("cifar100", 100, "cifar-100-python")])
def test_cifar_pickles(tmp_path, name, classes, folder):
    train_labels = write_cifar(tmp_path / folder, classes, n_train=200, n_test=100)
    d = load_dataset(name, tmp_path)
    assert d.info.num_classes == classes and d.info.input_shape == (3, 32, 32)
    assert len(d.train) == 200 and len(d.test) == 100
    assert d.train.labels.tolist() == train_labels
    assert d.info.class_names[1] == ("class1" if classes == 10 else "c1")


def test_cifar_row_layout_is_channel_major(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py", 10, n_train=10, n_test=10)
    raw = data_mod._unpickle(tmp_path / "cifar-10-batches-py" / "data_batch_1")["data"][0]
    x, _ = load_dataset("cifar10", tmp_path).train[0]
    # CIFAR rows hold 1024 red, then 1024 green, then 1024 blue bytes, each row-major.
    assert x[1, 0, 5].item() == pytest.approx(raw[1024 + 5] / 255)
    assert x[2, 3, 0].item() == pytest.approx(raw[2048 + 3 * 32] / 255)


def test_imagenet_folder_layout(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for wnid in ("n01", "n02", "n03"):
            (tmp_path / "imagenet" / split / wnid).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (300, 260), (i * 80, 10, 200)).save(tmp_path / "imagenet" / split / wnid / f"{i}.png")
    d = load_dataset("imagenet", tmp_path)
    assert d.info.class_names == ("n01", "n02", "n03")
    assert len(d.train) == 6 and len(d.test) == 6
    x, y = d.test[0]
    assert x.shape == (3, 224, 224) and y == 0


def test_stratified_subset_is_balanced_and_seeded():
    labels = np.repeat(np.arange(10), [50, 60, 70, 80, 90, 100, 110, 120, 130, 140])
    idx = stratified_subset(labels, 105, seed=3)
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.tolist() == [11, 11, 11, 11, 11, 10, 10, 10, 10, 10]
    assert np.array_equal(idx, stratified_subset(labels, 105, seed=3))
    assert not np.array_equal(idx, stratified_subset(labels, 105, seed=4))
    assert np.all(np.diff(idx) > 0)


def test_subset_option_through_load_dataset(tmp_path):
    make_idx_dataset(tmp_path / "fashion-mnist", 300, 100)
    d = load_dataset("fashion_mnist", tmp_path, subset={"train": 50, "test": 20}, seed=1)
    assert len(d.train) == 50 and len(d.test) == 20
    assert np.bincount(d.train.labels.numpy(), minlength=10).tolist() == [5] * 10


def test_iterate_batches_covers_every_image_once(tmp_path):
    make_idx_dataset(tmp_path / "fashion-mnist", 95, 10)
    d = load_dataset("fashion_mnist", tmp_path)
    gen = torch.Generator().manual_seed(0)
    seen = torch.cat([y for _, y in iterate_batches(d.train, 20, shuffle=True, generator=gen)])
    assert len(seen) == 95
    assert sorted(seen.tolist()) == sorted(d.train.labels.tolist())
    sizes = [len(y) for _, y in iterate_batches(d.train, 20, drop_last=True)]
    assert sizes == [20, 20, 20, 20]


def test_unknown_dataset_name():
    with pytest.raises(DfnasError, match="unknown dataset 'svhn'"):
        locate("svhn")


def test_gzip_and_raw_may_mix(tmp_path):
    folder = tmp_path / "fashion-mnist"
    make_idx_dataset(folder, 20, 10, gz=False)
    raw = folder / "train-images-idx3-ubyte"
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw.read_bytes()))
    raw.unlink()
    assert len(load_dataset("fashion_mnist", tmp_path).train) == 20
