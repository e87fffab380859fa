"""Natural datasets behind one interface.

Natural images are used by dfnas only to train a stand-in teacher, for the natural-data baseline
searches, and to retrain and test found architectures. The synthetic branch never imports this
module's loaders.

Every dataset yields ``(image, label)`` with the image a float tensor in [0, 1] of shape
``info.input_shape``; normalization is the consumer's job (``info.mean`` / ``info.std``) so that
synthesis, which works in the teacher's normalized space, and training share one convention.

    python -m dfnas.data --name fashion_mnist --out results/default/data/dataset.json
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dfnas.cli import cli_main, stage_config, stage_parser
from dfnas.download import download_file, extract_archive
from dfnas.errors import DfnasError
from dfnas.runtime import write_json
from dfnas.sampling import stratified_subset

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


class TensorImages(Dataset):
    """Images held in memory as uint8 ``N x C x H x W`` with int64 labels.

    Training loops read ``images``/``labels`` directly in whole batches (see `iterate_batches`),
    which on a CPU is several times faster than per-sample indexing through a DataLoader.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("TensorImages expects uint8 images of shape N x C x H x W")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i].float().div_(255), int(self.labels[i])

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()


@dataclass
class NaturalData:
    info: DatasetInfo
    train: Dataset
    test: Dataset
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
        raise DfnasError(f"config key 'data.name': unknown dataset {name!r} (known: {', '.join(DATASET_NAMES)})")
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


def _subset(ds: Dataset, n, seed: int) -> Dataset:
    if n is None:
        return ds
    idx = stratified_subset(ds.targets, int(n), seed)
    if isinstance(ds, TensorImages):
        return TensorImages(ds.images[idx], ds.labels[idx])
    return torch.utils.data.Subset(ds, idx.tolist())


def _image_folder(spec: _Spec, folder: Path):
    from torchvision import datasets, transforms

    size = spec.input_shape[1]
    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
    )
    test_tf = transforms.Compose(
        [transforms.Resize(int(round(size * 256 / 224))), transforms.CenterCrop(size), transforms.ToTensor()]
    )
    train = datasets.ImageFolder(str(folder / "train"), transform=train_tf)
    test = datasets.ImageFolder(str(folder / "val"), transform=test_tf)
    if train.classes != test.classes:
        raise DfnasError(f"{folder}: train/ and val/ hold different class folders")
    return train, test, tuple(train.classes)


def load_dataset(name: str, root=None, download: bool = False, subset: dict | None = None, seed: int = 0) -> NaturalData:
    """Load the train and test splits of a natural dataset.

    ``subset`` may give ``{"train": N, "test": M}``: a class-balanced subset drawn with ``seed``.
    """
    folder = locate(name, root, download)
    spec = SPECS[name]
    class_names = spec.class_names
    if spec.kind == "idx":
        train, test = _load_idx_split(folder, "train"), _load_idx_split(folder, "test")
    elif spec.kind == "cifar":
        if name == "cifar10":
            train_rows = [_unpickle(folder / f"data_batch_{i}") for i in range(1, 6) if (folder / f"data_batch_{i}").is_file()]
            test_rows = [_unpickle(folder / "test_batch")]
            meta_name, label_key, names_key = "batches.meta", "labels", "label_names"
        else:
            train_rows, test_rows = [_unpickle(folder / "train")], [_unpickle(folder / "test")]
            meta_name, label_key, names_key = "meta", "fine_labels", "fine_label_names"
        train, test = _cifar_batches(train_rows, label_key, folder), _cifar_batches(test_rows, label_key, folder)
        meta = folder / meta_name
        n_classes = 10 if name == "cifar10" else 100
        class_names = tuple(_unpickle(meta)[names_key]) if meta.is_file() else tuple(str(i) for i in range(n_classes))
    else:
        train, test, class_names = _image_folder(spec, folder)
    for split, ds in (("train", train), ("test", test)):
        bad = [t for t in (ds.targets[:1] + ds.targets[-1:]) if not 0 <= t < len(class_names)]
        if bad:
            raise DfnasError(f"{folder}: {split} labels outside 0..{len(class_names) - 1}")
    subset = subset or {}
    train = _subset(train, subset.get("train"), seed)
    test = _subset(test, subset.get("test"), seed + 1)
    info = DatasetInfo(name, len(class_names), tuple(class_names), spec.input_shape, spec.mean, spec.std)
    return NaturalData(info, train, test, source=str(folder))


def dataset_from_config(cfg: dict) -> NaturalData:
    data = cfg["data"]
    return load_dataset(data["name"], data.get("root"), data.get("download", False), data.get("subset"), cfg.get("seed", 0))


# --------------------------------------------------------------------------------------------
# Batches


def all_pixels(ds: Dataset, index=None) -> torch.Tensor:
    """Every image of ``ds`` (or those in ``index``) as one float tensor in [0, 1]."""
    if isinstance(ds, TensorImages):
        images = ds.images if index is None else ds.images[torch.as_tensor(index)]
        return images.float().div_(255)
    index = range(len(ds)) if index is None else index
    return torch.stack([ds[int(i)][0] for i in index])


def iterate_batches(ds: Dataset, batch_size: int, shuffle: bool = False, generator=None, num_workers: int = 0,
                    drop_last: bool = False):
    """Yield ``(images, labels)`` batches; in-memory datasets are sliced directly."""
    if isinstance(ds, TensorImages):
        n = len(ds)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield ds.images[idx].float().div_(255), ds.labels[idx]
        return
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=num_workers,
        drop_last=drop_last, persistent_workers=False, pin_memory=torch.cuda.is_available(),
    )
    yield from loader


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
