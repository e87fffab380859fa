"""Natural datasets behind one interface.

Natural images are used by dfnas only to train a stand-in teacher, for the natural-data baseline
searches, and to retrain and test found architectures. The synthetic branch never imports this
module's loaders.

A split is an image source of `dfnas.streaming`: ``split.read(indices, generator)`` returns a batch
of uint8 images of shape ``info.input_shape`` (``as_pixels`` turns them into floats in [0, 1]) and
their int64 labels. Normalization is the consumer's job (``info.mean`` / ``info.std``) so that
synthesis, which works in the teacher's normalized space, and training share one convention.

Two kinds of split:

    TensorImages   the small fixed benchmarks (MNIST, Fashion-MNIST, CIFAR), held whole as uint8
                   (at most 150 MB); batch augmentation happens on the training device
    FolderImages   an ImageFolder tree (ImageNet, or ``data.name: folder``: any ``train/`` and
                   ``val/`` or ``test/`` of class folders), decoded batch by batch: the training
                   view is a random resized crop and flip drawn from the batch's generator, the
                   evaluation view a centre crop; memory holds file names, never images

    python -m dfnas.data --name fashion_mnist --out results/default/data/dataset.json
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from dfnas.cli import cli_main, stage_config, stage_parser
from dfnas.download import download_file, extract_archive
from dfnas.errors import REMAKE, DfnasError
from dfnas.runtime import read_json, write_json
from dfnas.sampling import require_every_class, stratified_subset

SYSTEM_DATASETS = Path("/usr/share/datasets")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        d["input_shape"] = list(self.input_shape)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


class TensorImages:
    """Images held in memory as uint8 ``N x C x H x W`` with int64 labels; a batch is a slice."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("TensorImages expects uint8 images of shape N x C x H x W")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def targets(self) -> np.ndarray:
        return self.labels.numpy()

    def read(self, indices: torch.Tensor, generator: torch.Generator | None = None):
        """Images ``indices`` (uint8) and their labels; the same view with or without a generator
        (augmentation of in-memory sets is batch-wise, on the training device)."""
        return self.images[indices], self.labels[indices]

    def subset(self, indices) -> "TensorImages":
        indices = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return TensorImages(self.images[indices], self.labels[indices])


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class FolderImages:
    """The images of one split of an ImageFolder tree, decoded when a batch is read.

    Holds the root, the file names (relative, as one bytes array) and the labels. ``read`` with a
    generator gives the training view: a random resized crop (area fraction in ``crop_scale``,
    aspect ratio in [3/4, 4/3], in image fractions) resized to ``size`` and a horizontal flip with
    probability 1/2; without one, the evaluation view: the central square of ``center_crop`` of the
    shorter side, resized to ``size`` (a resize to ``size / center_crop`` then a centre crop).
    """

    def __init__(self, root, files, labels, size: int, channels: int, crop_scale=(0.08, 1.0),
                 center_crop: float = 0.875):
        self.root = Path(root)
        self.files = np.asarray(files, dtype=bytes)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.size, self.channels = int(size), int(channels)
        self.crop_scale, self.center_crop = tuple(crop_scale), float(center_crop)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def targets(self) -> np.ndarray:
        return self.labels

    def path(self, i: int) -> Path:
        return self.root / self.files[i].decode()

    def open(self, i: int):
        """Image ``i`` as a decoded PIL image in the split's colour mode; one line naming the file if
        it cannot be read."""
        from PIL import Image

        path = self.path(i)
        try:
            with Image.open(path) as im:
                return im.convert("RGB" if self.channels == 3 else "L")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DfnasError(f"{path}: unreadable image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None

    def view(self, i: int, generator: torch.Generator | None = None) -> torch.Tensor:
        from PIL import Image

        im = self.open(i)
        w, h = im.size
        flip = False
        if generator is None:
            side = min(w, h) * self.center_crop
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        else:
            box = resized_crop_box(w, h, self.crop_scale, generator)
            flip = bool(torch.rand(1, generator=generator).item() < 0.5)
        im = im.resize((self.size, self.size), Image.BILINEAR, box=box)
        if flip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        arr = np.array(im, dtype=np.uint8)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())

    def read(self, indices: torch.Tensor, generator: torch.Generator | None = None):
        idx = torch.as_tensor(indices).tolist()
        out = torch.empty(len(idx), self.channels, self.size, self.size, dtype=torch.uint8)
        for j, i in enumerate(idx):
            out[j] = self.view(i, generator)
        return out, torch.from_numpy(self.labels[idx])

    def subset(self, indices) -> "FolderImages":
        indices = np.asarray(indices, dtype=np.int64)
        return FolderImages(self.root, self.files[indices], self.labels[indices], self.size, self.channels,
                            self.crop_scale, self.center_crop)


def resized_crop_box(w: int, h: int, scale, generator: torch.Generator) -> tuple[float, float, float, float]:
    """The box ``(left, top, right, bottom)`` of a random resized crop of a ``w`` x ``h`` image, in
    pixels: area a fraction of the image's, uniform in ``scale``; aspect ratio log-uniform in 3/4 to
    4/3 in pixels (as torchvision's RandomResizedCrop), also on a non-square image; a box that does
    not fit is shrunk until it does, its aspect kept."""
    area = torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item() * w * h
    ratio = math.exp(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator).item())
    bw, bh = math.sqrt(area * ratio), math.sqrt(area / ratio)
    shrink = max(1.0, bw / w, bh / h)
    bw, bh = bw / shrink, bh / shrink
    top = torch.rand(1, generator=generator).item() * max(0.0, h - bh)
    left = torch.rand(1, generator=generator).item() * max(0.0, w - bw)
    return left, top, left + bw, top + bh


def as_pixels(images: torch.Tensor) -> torch.Tensor:
    """A batch read from a split (uint8) as float pixels in [0, 1]; float batches pass through."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images


@dataclass
class NaturalData:
    info: DatasetInfo
    train: TensorImages | FolderImages
    test: TensorImages | FolderImages
    source: str = ""
    notes: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            **self.info.to_dict(),
            "train_size": len(self.train),
            "test_size": len(self.test),
            "source": self.source,
            **self.notes,
        }


# --------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a NumPy array, checking its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DfnasError(f"{path}: cannot read IDX file ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DfnasError(f"{path}: not an IDX file (bad magic number)")
    type_code, ndim = data[2], data[3]
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if type_code not in dtypes:
        raise DfnasError(f"{path}: unknown IDX element type 0x{type_code:02x}")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=dtypes[type_code], offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DfnasError(f"{path}: IDX header says {shape} but the file holds {body.size} values (truncated?)")
    return body.reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _idx_folder_complete(folder: Path) -> bool:
    return all(_find_idx(folder, stem) for pair in IDX_FILES.values() for stem in pair)


def _load_idx_split(folder: Path, split: str) -> TensorImages:
    img_path, lbl_path = (_find_idx(folder, stem) for stem in IDX_FILES[split])
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3:
        raise DfnasError(f"{img_path}: expected N x H x W images, found shape {images.shape}")
    if len(images) != len(labels):
        raise DfnasError(f"{img_path}: {len(images)} images but {lbl_path.name} has {len(labels)} labels")
    return TensorImages(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


# --------------------------------------------------------------------------------------------
# CIFAR (python pickle batches)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise DfnasError(f"{path}: cannot read CIFAR batch ({exc})") from None


def _cifar_batches(rows: list[dict], label_key: str, path: Path) -> TensorImages:
    try:
        data = np.concatenate([np.asarray(r["data"], dtype=np.uint8) for r in rows])
        labels = np.concatenate([np.asarray(r[label_key], dtype=np.int64) for r in rows])
    except KeyError as exc:
        raise DfnasError(f"{path}: CIFAR batch lacks the key {exc}") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DfnasError(f"{path}: CIFAR rows must hold 3072 bytes, found shape {data.shape}")
    return TensorImages(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels))


# --------------------------------------------------------------------------------------------
# Dataset specifications


@dataclass(frozen=True)
class _Spec:
    name: str
    kind: str  # idx | cifar | folder
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()
    num_classes: int = 10
    mirrors: tuple[str, ...] = ()  # base URLs tried in order for each of ``files``
    files: tuple[tuple[str, str], ...] = ()  # (file name, md5); an archive is unpacked into data.root
    subdirs: tuple[str, ...] = ()
    system_dirs: tuple[str, ...] = ()
    how_to_get: str = ""


FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

SPECS = {
    "fashion_mnist": _Spec(
        "fashion_mnist", "idx", (1, 28, 28), (0.2860,), (0.3530,), FASHION_CLASSES,
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        files=(("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
               ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
               ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
               ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310")),
        subdirs=("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"), system_dirs=("fashion-mnist",),
        how_to_get="install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
    ),
    "mnist": _Spec(
        "mnist", "idx", (1, 28, 28), (0.1307,), (0.3081,), tuple(str(i) for i in range(10)),
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        files=(("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
               ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
               ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
               ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c")),
        subdirs=("mnist", "MNIST/raw"), system_dirs=("mnist",),
        how_to_get="place the four IDX files of MNIST in data.root",
    ),
    "cifar10": _Spec(
        "cifar10", "cifar", (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), (),
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        files=(("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),), subdirs=("cifar-10-batches-py",), system_dirs=("cifar10",),
        how_to_get="extract cifar-10-python.tar.gz into data.root",
    ),
    "cifar100": _Spec(
        "cifar100", "cifar", (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), (), 100,
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        files=(("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),), subdirs=("cifar-100-python",), system_dirs=("cifar100",),
        how_to_get="extract cifar-100-python.tar.gz into data.root",
    ),
    "imagenet": _Spec(
        "imagenet", "folder", (3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (), 1000,
        subdirs=("imagenet", "ILSVRC2012"), system_dirs=("imagenet",),
        how_to_get="put the ILSVRC2012 images in ImageFolder layout (train/<class>/*.JPEG, val/<class>/*.JPEG) "
        "under data.root; ImageNet cannot be downloaded automatically",
    ),
}

DATASET_NAMES = tuple(SPECS)


def _candidate_dirs(spec: _Spec, root: Path | None) -> list[Path]:
    dirs = []
    if root is not None:
        dirs += [root / sub for sub in spec.subdirs] + [root]
    dirs += [SYSTEM_DATASETS / sub for sub in spec.system_dirs]
    return dirs


def _is_complete(spec: _Spec, folder: Path) -> bool:
    if spec.kind == "idx":
        return _idx_folder_complete(folder)
    if spec.kind == "cifar":
        names = ["data_batch_1", "test_batch"] if spec.name == "cifar10" else ["train", "test"]
        return all((folder / n).is_file() for n in names)
    return (folder / "train").is_dir() and (folder / "val").is_dir()


def _download(spec: _Spec, root: Path) -> str | None:
    """Download ``spec.files`` into ``root``; return None on success, else why it failed.

    IDX files go to ``root/<first subdir>``; archives are unpacked into ``root`` and removed.
    """
    if not spec.files:
        return "this dataset has no automatic download"
    target = root / spec.subdirs[0] if spec.kind == "idx" else root
    for name, md5 in spec.files:
        dest = target / name
        if dest.is_file():
            continue
        failures = []
        for mirror in spec.mirrors:
            try:
                download_file(mirror + name, dest, md5=md5)
                break
            except DfnasError as exc:
                failures.append(str(exc))
        else:
            return "; ".join(failures)
        if name.endswith((".tar.gz", ".tgz", ".tar")):
            extract_archive(dest, root)
            dest.unlink()
    return None


def locate(name: str, root=None, download: bool = False) -> Path:
    """Find the folder that holds dataset ``name``; download it into ``root`` when allowed.

    The search order is: ``root`` (and its usual sub-folders), the system dataset folder
    (Debian ships Fashion-MNIST under /usr/share/datasets), then a torchvision download.
    """
    if name not in SPECS:
        raise DfnasError(f"config key 'data.name': unknown dataset {name!r} (known: {', '.join(DATASET_NAMES)}, "
                         "or folder)")
    spec = SPECS[name]
    root = Path(root) if root else None
    looked = _candidate_dirs(spec, root)
    for folder in looked:
        if _is_complete(spec, folder):
            return folder
    reason = "download disabled (data.download: false)"
    if download and root is not None:
        reason = _download(spec, root)
        if reason is None:
            for folder in _candidate_dirs(spec, root):
                if _is_complete(spec, folder):
                    return folder
            reason = "download finished but the files were not where expected"
    elif download:
        reason = "no data.root to download into"
    where = ", ".join(str(p) for p in looked)
    raise DfnasError(f"dataset {name} not found; looked in: {where}; {reason}. To get it: {spec.how_to_get}"
                     + (", or set data.download: true on a machine with internet" if spec.files else ""))


def scan_split(folder: Path) -> tuple[list[str], list[str], np.ndarray]:
    """``(classes, files, labels)`` of an ImageFolder split: one sub-folder per class (sorted by
    name), image files found recursively below it (sorted); one-line errors for a missing split, no
    class folders or an empty class."""
    if not folder.is_dir():
        raise DfnasError(f"{folder}: no such folder")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DfnasError(f"{folder}: no class folders (expected {folder}/<class>/<image file>)")
    files, labels = [], []
    for k, name in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(folder / name):
            dirnames.sort()
            rel = os.path.relpath(dirpath, folder)
            found += [os.path.join(rel, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_SUFFIXES)]
        if not found:
            raise DfnasError(f"{folder / name}: empty class (no {'/'.join(s[1:] for s in IMAGE_SUFFIXES[:3])}... files)")
        files += found
        labels += [k] * len(found)
    return classes, files, np.asarray(labels, dtype=np.int64)


def folder_splits(root: Path) -> tuple[Path, Path]:
    """The training and test folders of an ImageFolder tree: ``train/`` and ``val/`` (else ``test/``)."""
    train = root / "train"
    test = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if not train.is_dir() or test is None:
        found = sorted(e.name for e in os.scandir(root) if e.is_dir()) if root.is_dir() else None
        raise DfnasError(f"{root}: an image-folder dataset needs train/ and val/ (or test/) sub-folders of class "
                         f"folders; " + ("no such folder" if found is None else f"found {found or 'no folders'}"))
    return train, test


def measure_folder(split: FolderImages, images: int = 256) -> dict:
    """Input size (the median shorter side) and per-channel mean and std (of the evaluation views at
    that size) of up to ``images`` class-balanced images of ``split``; fixed, not seeded by the run."""
    from PIL import Image

    idx = stratified_subset(split.targets, images, 0)
    sides = []
    for i in idx:
        try:
            with Image.open(split.path(int(i))) as im:
                sides.append(min(im.size))
        except (OSError, ValueError, SyntaxError) as exc:
            raise DfnasError(f"{split.path(int(i))}: unreadable image ({exc})") from None
    size = int(np.median(sides))
    sample = replace_size(split, size).subset(idx)
    s1 = s2 = 0.0
    n = 0
    for start in range(0, len(sample), 32):
        x, _ = sample.read(torch.arange(start, min(start + 32, len(sample))))
        x = as_pixels(x).double()
        s1 = s1 + x.sum((0, 2, 3))
        s2 = s2 + (x * x).sum((0, 2, 3))
        n += x.numel() // x.shape[1]
    mean = s1 / n
    std = (s2 / n - mean * mean).clamp(min=1e-12).sqrt()
    return {"input_size": size, "mean": [round(v, 4) for v in mean.tolist()], "std": [round(v, 4) for v in std.tolist()]}


def replace_size(split: FolderImages, size: int) -> FolderImages:
    return FolderImages(split.root, split.files, split.labels, size, split.channels, split.crop_scale, split.center_crop)


def _folder_dataset(name: str, folder: Path, data: dict) -> tuple[FolderImages, FolderImages, DatasetInfo]:
    """The two splits of an ImageFolder tree and their description: ImageNet's fixed size and
    normalization, or, for ``folder``, the configured ones (measured where the config says null)."""
    train_dir, test_dir = folder_splits(folder)
    classes, train_files, train_labels = scan_split(train_dir)
    test_classes, test_files, test_labels = scan_split(test_dir)
    if classes != test_classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        raise DfnasError(f"{folder}: {train_dir.name}/ and {test_dir.name}/ hold different classes (only in "
                         f"{train_dir.name}: {_names(only_train)}; only in {test_dir.name}: {_names(only_test)})")
    spec = SPECS.get(name)
    channels = data.get("channels", 3) if name == "folder" else spec.input_shape[0]
    crop = dict(crop_scale=tuple(data.get("crop_scale", (0.08, 1.0))), center_crop=data.get("center_crop", 0.875))
    size = spec.input_shape[1] if name != "folder" else data.get("input_size")
    train = FolderImages(train_dir, train_files, train_labels, size or 1, channels, **crop)
    if name == "folder":
        if len(classes) < 2:
            raise DfnasError(f"{train_dir}: a classification dataset needs at least 2 classes, found {len(classes)}")
        mean, std = data.get("mean"), data.get("std")
        if size is None or mean is None or std is None:
            measured = measure_folder(train if size is None else replace_size(train, size))
            size = size or measured["input_size"]
            mean, std = mean or measured["mean"], std or measured["std"]
        for key, value in (("mean", mean), ("std", std)):
            if len(value) != channels:
                raise DfnasError(f"config key 'data.{key}': {len(value)} values for {channels}-channel images")
        train = replace_size(train, size)
    else:
        mean, std = spec.mean, spec.std  # classes from the folders (ImageNet subsets too)
    test = FolderImages(test_dir, test_files, test_labels, size, channels, **crop)
    info = DatasetInfo(name, len(classes), tuple(classes), (channels, size, size), tuple(mean), tuple(std))
    return train, test, info


def _names(names: list[str], limit: int = 5) -> str:
    if not names:
        return "none"
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_dataset(name: str, root=None, download: bool = False, subset: dict | None = None, seed: int = 0,
                 data: dict | None = None, train_key: str = "data.subset.train") -> NaturalData:
    """Load the train and test splits of a natural dataset.

    ``subset`` may give ``{"train": N, "test": M}``: a class-balanced subset drawn with ``seed``; the
    training subset must hold every class (``train_key`` names its config key in the error).
    ``data`` is the config's ``data`` section (the keys of image-folder datasets).
    """
    data = data or {}
    if name == "folder":
        if not root:
            raise DfnasError("config key 'data.root': data.name folder needs the folder that holds train/ and val/")
        folder = Path(root)
    else:
        folder = locate(name, root, download)
    spec = SPECS.get(name)
    if name == "folder" or spec.kind == "folder":
        train, test, info = _folder_dataset(name, folder, data)
    else:
        class_names = spec.class_names
        if spec.kind == "idx":
            train, test = _load_idx_split(folder, "train"), _load_idx_split(folder, "test")
        else:
            if name == "cifar10":
                train_rows = [_unpickle(folder / f"data_batch_{i}") for i in range(1, 6) if (folder / f"data_batch_{i}").is_file()]
                test_rows = [_unpickle(folder / "test_batch")]
                meta_name, label_key, names_key = "batches.meta", "labels", "label_names"
            else:
                train_rows, test_rows = [_unpickle(folder / "train")], [_unpickle(folder / "test")]
                meta_name, label_key, names_key = "meta", "fine_labels", "fine_label_names"
            train, test = _cifar_batches(train_rows, label_key, folder), _cifar_batches(test_rows, label_key, folder)
            meta = folder / meta_name
            class_names = (tuple(_unpickle(meta)[names_key]) if meta.is_file()
                           else tuple(str(i) for i in range(spec.num_classes)))
        for split, ds in (("train", train), ("test", test)):
            if len(ds) and not (0 <= ds.targets.min() and ds.targets.max() < len(class_names)):
                raise DfnasError(f"{folder}: {split} labels outside 0..{len(class_names) - 1}")
        info = DatasetInfo(name, len(class_names), tuple(class_names), spec.input_shape, spec.mean, spec.std)
    subset = subset or {}
    if subset.get("train") is not None:
        require_every_class(int(subset["train"]), info.num_classes, train_key)
        train = train.subset(stratified_subset(train.targets, int(subset["train"]), seed))
    if subset.get("test") is not None:
        test = test.subset(stratified_subset(test.targets, int(subset["test"]), seed + 1))
    return NaturalData(info, train, test, source=str(folder))


def dataset_from_config(cfg: dict, train_key: str = "data.subset.train") -> NaturalData:
    """The config's natural dataset; ``train_key``: the config key of its training subset's size."""
    data = cfg["data"]
    return load_dataset(data["name"], data.get("root"), data.get("download", False), data.get("subset"),
                        cfg.get("seed", 0), data, train_key)


def read_description(path, needed_by: str) -> tuple[tuple, int]:
    """The input shape and class count from the data stage's description (``dataset.json``)."""
    return description_shape(read_json(path, needed_by, "make it with python -m dfnas.data --out"), path)


def description_shape(info: dict, path) -> tuple[tuple, int]:
    """The input shape and class count of a dataset description read from ``path``."""
    try:
        return tuple(int(d) for d in info["input_shape"]), int(info["num_classes"])
    except (KeyError, TypeError, ValueError):
        raise DfnasError(f"{path}: not a dataset description (no input_shape or num_classes); {REMAKE}") from None


def data_identity(cfg: dict, data: NaturalData) -> dict:
    """What a checkpoint trained on ``data`` must match: its description, the subset and the seed
    that drew it (another seed draws other images of the same count), and the views of an image
    folder (its random resized crop's area range, its evaluation centre crop)."""
    subset = cfg["data"].get("subset")
    views = {k: cfg["data"].get(k) for k in ("crop_scale", "center_crop")}
    return {**data.summary(), "subset": subset, "subset_seed": cfg.get("seed", 0) if subset else None, **views}


# --------------------------------------------------------------------------------------------
# CLI: make the dataset available and describe it


@cli_main
def main(argv=None):
    parser = stage_parser("data", __doc__, threads=False)
    parser.add_argument("--name", help="dataset name (overrides data.name)")
    parser.add_argument("--root", help="data folder (overrides data.root)")
    parser.add_argument("--out", help="write the dataset description JSON here")
    args = parser.parse_args(argv)
    cfg = stage_config(args)
    if args.name:
        cfg["data"]["name"] = args.name
    if args.root:
        cfg["data"]["root"] = args.root
    data = dataset_from_config(cfg)
    summary = data.summary()
    summary["subset"] = cfg["data"].get("subset")
    if args.out:
        write_json(args.out, summary)
    print(f"{data.info.name}: {len(data.train)} train / {len(data.test)} test images, "
          f"{data.info.num_classes} classes, input {data.info.input_shape}, from {data.source}")


if __name__ == "__main__":
    main()
