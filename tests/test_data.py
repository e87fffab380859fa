"""Natural-data loaders on small files in the real formats (IDX, CIFAR pickles, ImageFolder)."""

import dataclasses
import gzip
import hashlib
import shutil
import tarfile

import numpy as np
import pytest
import torch

import dfnas.data as data_mod
from conftest import make_idx_dataset, write_cifar, write_idx
from dfnas.data import as_pixels, load_dataset, locate, read_idx, resized_crop_box, stratified_subset
from dfnas.errors import DfnasError
from dfnas.example_data import write_image_folder


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
    x, y = d.train.read(torch.tensor([0]))
    x = as_pixels(x)
    assert x.shape == (1, 1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.tolist() == [train_labels[0]]
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
    x = as_pixels(load_dataset("cifar10", tmp_path).train.read(torch.tensor([0]))[0])[0]
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
    x, y = d.test.read(torch.tensor([0, 5]))
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.uint8 and y.tolist() == [0, 2]
    # The evaluation view of a flat colour is that colour.
    assert x[1, :, 100, 100].tolist() == [80, 10, 200]


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


def test_unknown_dataset_name():
    with pytest.raises(DfnasError, match="unknown dataset 'svhn'"):
        locate("svhn")
    with pytest.raises(DfnasError, match="data.name folder needs the folder"):
        load_dataset("folder", None)


def test_gzip_and_raw_may_mix(tmp_path):
    folder = tmp_path / "fashion-mnist"
    make_idx_dataset(folder, 20, 10, gz=False)
    raw = folder / "train-images-idx3-ubyte"
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw.read_bytes()))
    raw.unlink()
    assert len(load_dataset("fashion_mnist", tmp_path).train) == 20


# --------------------------------------------------------------------------------------------
# data.name: folder


def folder_config(root, **keys):
    return {"name": "folder", "root": str(root), "channels": 3, "input_size": None, "mean": None, "std": None,
            "crop_scale": [0.08, 1.0], "center_crop": 0.875, **keys}


def test_folder_dataset_classes_from_folder_names_and_keys(tmp_path):
    root = write_image_folder(tmp_path / "tree", classes=3, train_per_class=4, test_per_class=2, size=40,
                              test_name="test")
    d = load_dataset("folder", root, data=folder_config(root, input_size=32, mean=[0.5] * 3, std=[0.25] * 3))
    assert d.info.class_names == ("class_000", "class_001", "class_002")
    assert d.info.input_shape == (3, 32, 32) and d.info.mean == (0.5,) * 3 and d.info.std == (0.25,) * 3
    assert len(d.train) == 12 and len(d.test) == 6  # test/ serves when there is no val/
    x, y = d.train.read(torch.tensor([11, 0]))
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [2, 0]


def test_folder_measures_size_and_normalization(tmp_path):
    from PIL import Image

    root = tmp_path / "tree"
    for split in ("train", "val"):
        for k, (colour, side) in enumerate((((200, 100, 0), 20), ((0, 100, 200), 30))):
            (root / split / f"c{k}").mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (side + 5, side), colour).save(root / split / f"c{k}" / f"{i}.png")
    d = load_dataset("folder", root, data=folder_config(root))
    # Shorter sides 20, 20, 20, 30, 30, 30: the median is 25. Half the pixels are each colour.
    assert d.info.input_shape == (3, 25, 25)
    assert d.info.mean == pytest.approx((100 / 255, 100 / 255, 100 / 255), abs=1e-4)
    assert d.info.std == pytest.approx((100 / 255, 0.0, 100 / 255), abs=1e-4)


def test_folder_views_by_hand(tmp_path):
    from PIL import Image

    root = tmp_path / "tree"
    # Left half black, right half white, 40 x 20: the centre crop (7/8 of 20 = 17.5 px square) is
    # split down the middle.
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 20:] = 255
    for split in ("train", "val"):
        for k in range(2):
            (root / split / f"c{k}").mkdir(parents=True)
            Image.fromarray(img).save(root / split / f"c{k}" / "0.png")
    d = load_dataset("folder", root, data=folder_config(root, input_size=16, mean=[0.5] * 3, std=[0.5] * 3))
    x, _ = d.test.read(torch.tensor([0]))
    assert x[0, 0, 8, :6].max().item() == 0 and x[0, 0, 8, -6:].min().item() == 255
    # Training views: random, the same for the same seed, different for another.
    a = d.train.read(torch.tensor([0, 1]), torch.Generator().manual_seed(1))[0]
    b = d.train.read(torch.tensor([0, 1]), torch.Generator().manual_seed(1))[0]
    c = d.train.read(torch.tensor([0, 1]), torch.Generator().manual_seed(2))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("w, h", [(500, 375), (375, 500), (400, 100), (64, 64)])
def test_random_resized_crops_keep_their_aspect_in_pixels(w, h):
    """As torchvision's RandomResizedCrop: the crop's aspect ratio lies in 3/4..4/3 in pixels whatever
    the image's shape, log-uniform (median 1 where the box fits), and the box stays inside the image."""
    gen = torch.Generator().manual_seed(0)
    boxes = [resized_crop_box(w, h, (0.08, 1.0), gen) for _ in range(4000)]
    ratios = np.array([(r - left) / (b - t) for left, t, r, b in boxes])
    assert ratios.min() >= 3 / 4 - 1e-9 and ratios.max() <= 4 / 3 + 1e-9
    assert all(0 <= left and 0 <= t and r <= w + 1e-9 and b <= h + 1e-9 for left, t, r, b in boxes)
    if w == h:
        assert abs(np.median(ratios) - 1) < 0.03
        areas = np.array([(r - left) * (b - t) for left, t, r, b in boxes]) / (w * h)
        assert abs(areas.mean() - 0.54) < 0.02  # uniform in [0.08, 1], a few shrunk to fit


def _empty_class(root):
    for image in (root / "train" / "class_001").glob("*"):
        image.unlink()


def _renamed_val_class(root):
    (root / "val" / "class_002").rename(root / "val" / "other")


def _no_val(root):
    shutil.rmtree(root / "val")


def _one_class(root):
    for split in ("train", "val"):
        for name in ("class_001", "class_002"):
            shutil.rmtree(root / split / name)


@pytest.mark.parametrize("damage, message", [
    (_empty_class, "train/class_001: empty class"),
    (_renamed_val_class, "train/ and val/ hold different classes \\(only in train: class_002; only in val: other\\)"),
    (_no_val, "needs train/ and val/ \\(or test/\\) sub-folders of class folders; found \\['train'\\]"),
    (_one_class, "at least 2 classes, found 1"),
])
def test_folder_errors_name_the_folder_and_the_problem(tmp_path, damage, message):
    root = write_image_folder(tmp_path / "tree", classes=3, train_per_class=2, test_per_class=1, size=16)
    damage(root)
    with pytest.raises(DfnasError, match=message):
        load_dataset("folder", root, data=folder_config(root, input_size=16, mean=[0.5] * 3, std=[0.5] * 3))


def test_folder_unreadable_image_is_named_when_read(tmp_path):
    root = write_image_folder(tmp_path / "tree", classes=2, train_per_class=2, test_per_class=1, size=16)
    bad = root / "train" / "class_001" / "00001.jpg"
    bad.write_bytes(b"not a jpeg")
    d = load_dataset("folder", root, data=folder_config(root, input_size=16, mean=[0.5] * 3, std=[0.5] * 3))
    with pytest.raises(DfnasError, match=f"{bad}: unreadable image"):
        d.train.read(torch.arange(4))


def test_folder_normalization_must_match_channels(tmp_path):
    root = write_image_folder(tmp_path / "tree", classes=2, train_per_class=2, test_per_class=1, size=16)
    with pytest.raises(DfnasError, match="'data.mean': 1 values for 3-channel images"):
        load_dataset("folder", root, data=folder_config(root, input_size=16, mean=[0.5], std=[0.5] * 3))
    grey = load_dataset("folder", root, data=folder_config(root, channels=1, input_size=16, mean=[0.5], std=[0.5]))
    assert grey.train.read(torch.tensor([0]))[0].shape == (1, 1, 16, 16)


def test_a_training_subset_smaller_than_the_class_count_is_one_line(base_config, tmp_path):
    """9 images cannot hold each of Fashion-MNIST's 10 classes: the data subset and the searches'
    natural subset each name their own key (the retrain's: test_retrain); 10 is enough."""
    import copy

    from dfnas.config import validate_config
    from dfnas.data import dataset_from_config
    from dfnas.search_data import SearchData

    def with_(section, key, value):
        cfg = copy.deepcopy(base_config)
        cfg[section] = {**cfg.get(section, {}), key: value}
        return validate_config(cfg)

    message = "config key '{}': 9 images cannot hold one of each of the 10 classes; give at least 10"
    with pytest.raises(DfnasError) as err:
        dataset_from_config(with_("data", "subset", {"train": 9}))
    assert str(err.value) == message.format("data.subset.train")
    assert len(set(dataset_from_config(with_("data", "subset", {"train": 10})).train.targets.tolist())) == 10
    with pytest.raises(DfnasError) as err:
        SearchData(with_("search", "natural_images", 9), "natural", 0)
    assert str(err.value) == message.format("search.natural_images")
