"""HDF5 files of the synthetic branch: synthesis shards and merged datasets.

A shard (or each split group of a merged dataset) holds, per image:

    images          uint8 N x C x H x W (pixels in [0, 255]) or float16 in [0, 1]; chunked, gzip
    targets         float32 N x K   the target distribution the image was optimized for
    labels          int64   N       its class (argmax of the target)
    round           int16   N       the calibration round that made it
    teacher_logits  float32 N x K   the teacher's output on the stored image

and attributes: format, variant, seed, config (JSON) and config_hash, teacher_sha256, mean, std,
storage, input_shape, num_classes, class_names. Shards are appended batch by batch into
``<name>.partial`` (attribute ``rounds_done`` set when a round is complete) and renamed when
complete, so a killed job resumes from its last finished round and a reader never sees half a file.
Every reader goes a block or a batch at a time (`copy_rows`, `SyntheticSplit`): no stage holds a
whole set in memory. Every array is chunked with a Fletcher-32 checksum per chunk, so damaged bytes
fail the read that meets them (one line naming the file, `dfnas.errors.damaged`) instead of
feeding a search wrong pixels or labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch

from dfnas.errors import DfnasError, access_failure, damaged, reading, unwritable, write_failure
from dfnas.imaging import Normalize
from dfnas.streaming import LazyH5

SHARD_FORMAT = "dfnas-synthesis-shard"
DATASET_FORMAT = "dfnas-synthetic-dataset"
FIELDS = ("images", "targets", "labels", "round", "teacher_logits")


def to_storage(x: torch.Tensor, mean, std, storage: str) -> np.ndarray:
    """Normalized-space images to the stored form (uint8 pixels or float16 in [0, 1])."""
    pixels = Normalize(mean, std).inverse(x.detach().cpu().float()).clamp(0, 1)
    if storage == "uint8":
        return (pixels * 255).round().to(torch.uint8).numpy()
    if storage == "float16":
        return pixels.to(torch.float16).numpy()
    raise ValueError(f"unknown storage {storage!r}")


def from_storage(images: np.ndarray) -> torch.Tensor:
    """Stored images to float32 pixels in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(images))
    return t.float().div_(255) if t.dtype == torch.uint8 else t.float()


# Images per chunk: compressed chunks are read whole, so a random batch costs about one chunk per
# image; at most ~128 KB per chunk keeps that small (one image per chunk at 224 px).
CHUNK_BYTES = 128 << 10


def create_group_datasets(group: h5py.Group, shape, num_classes: int, storage: str, n: int = 0) -> None:
    dtype = np.uint8 if storage == "uint8" else np.float16
    c, h, w = shape
    chunk = max(1, min(64, CHUNK_BYTES // (c * h * w * np.dtype(dtype).itemsize)))
    group.create_dataset("images", (n, c, h, w), dtype=dtype, maxshape=(None, c, h, w), chunks=(chunk, c, h, w),
                         compression="gzip", compression_opts=4, shuffle=True, fletcher32=True)
    group.create_dataset("targets", (n, num_classes), dtype=np.float32, maxshape=(None, num_classes),
                         chunks=(max(1, min(1024, n or 1024)), num_classes), compression="gzip", fletcher32=True)
    for name, dtype in (("labels", np.int64), ("round", np.int16)):
        group.create_dataset(name, (n,), dtype=dtype, maxshape=(None,), chunks=(4096,), compression="gzip",
                             fletcher32=True)
    group.create_dataset("teacher_logits", (n, num_classes), dtype=np.float32, maxshape=(None, num_classes),
                         chunks=(max(1, min(1024, n or 1024)), num_classes), compression="gzip", fletcher32=True)


def append(group: h5py.Group, arrays: dict) -> None:
    n = len(arrays["labels"])
    start = group["labels"].shape[0]
    for name in FIELDS:
        ds = group[name]
        ds.resize(start + n, axis=0)
        ds[start:] = arrays[name]


def truncate(group: h5py.Group, n: int) -> None:
    for name in FIELDS:
        group[name].resize(n, axis=0)


def read_group(group: h5py.Group, index=None) -> dict:
    """All fields of a group as NumPy arrays (or the rows in ``index``, sorted, or a slice)."""
    if index is None:
        return {name: group[name][...] for name in FIELDS}
    if isinstance(index, slice):
        return {name: group[name][index] for name in FIELDS}
    return {name: group[name][np.sort(index)] for name in FIELDS}


def attrs_dict(obj) -> dict:
    out = {}
    for k, v in obj.attrs.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def check_arrays(arrays: dict, path, num_classes: int, shape) -> None:
    """Raise a one-line error naming ``path`` when the arrays are not a valid synthetic set."""
    n = len(arrays["labels"])
    for name in FIELDS:
        if len(arrays[name]) != n:
            raise DfnasError(f"{path}: field {name} has {len(arrays[name])} rows but labels has {n} (corrupted?)")
    if tuple(arrays["images"].shape[1:]) != tuple(shape):
        raise DfnasError(f"{path}: images have shape {tuple(arrays['images'].shape[1:])}, expected {tuple(shape)}")
    for name in ("targets", "teacher_logits"):
        if arrays[name].shape[1:] != (num_classes,):
            raise DfnasError(f"{path}: {name} has {arrays[name].shape[1:]} columns, expected {num_classes} classes")
        if not np.isfinite(arrays[name]).all():
            raise DfnasError(f"{path}: {name} holds NaN or infinite values")
    if arrays["images"].dtype != np.uint8 and not np.isfinite(arrays["images"]).all():
        raise DfnasError(f"{path}: images hold NaN or infinite values")
    if n and (arrays["labels"].min() < 0 or arrays["labels"].max() >= num_classes):
        raise DfnasError(f"{path}: labels outside 0..{num_classes - 1}")


def open_h5(path, mode="r") -> h5py.File:
    """``h5py.File(path, mode)`` with one-line errors: a missing file, a file another process is
    writing (`FileInUse`: HDF5 locks a file open for writing), a damaged file (`damaged`)."""
    try:
        return h5py.File(path, mode)
    except FileNotFoundError:
        raise DfnasError(f"{path} does not exist") from None
    except OSError as exc:
        if mode != "r" and (write_failure(exc) or access_failure(exc) or not Path(path).exists()
                            or mode in ("w", "w-", "x")):
            raise unwritable(path, exc) from None
        raise damaged(path, "not a readable HDF5 file", exc) from None


def open_format(path, fmt: str, made_by: str) -> h5py.File:
    """Open ``path`` for reading if it is a dfnas file of format ``fmt``; else one line that names the
    file and the command that makes one (``made_by``)."""
    f = open_h5(path)
    try:
        with reading(path, "cannot read its attributes"):
            kind = f.attrs.get("format")
    except DfnasError:
        f.close()
        raise
    if kind != fmt:
        f.close()
        raise DfnasError(f"{path}: not a {fmt.replace('-', ' ')} file (make one with {made_by})")
    return f


def read_arrays(group: h5py.Group, path, index=None) -> dict:
    """`read_group`, with a damaged file reported in one line that names it."""
    with reading(path, "cannot read its arrays"):
        return read_group(group, index)


def verify_rows(group: h5py.Group, path, block: int = 1024) -> None:
    """Read every row of ``group`` a block at a time, so that every chunk's checksum is checked."""
    n = group["labels"].shape[0]
    for start in range(0, n, block):
        read_arrays(group, path, slice(start, min(n, start + block)))


def set_attrs(obj, attrs: dict) -> None:
    for k, v in attrs.items():
        if isinstance(v, (dict, list, tuple)) and k in ("config", "class_names"):
            obj.attrs[k] = json.dumps(v) if k == "config" else [str(s) for s in v]
        elif v is None:
            obj.attrs[k] = "null"
        else:
            obj.attrs[k] = v


BLOCK_BYTES = 16 << 20


def copy_rows(src: h5py.Group, dst: h5py.Group, index=None, path=None, block: int | None = None, check=None) -> int:
    """Append rows ``index`` (sorted; default: all) of every field of ``src`` to ``dst``, a block at
    a time (``check(arrays)`` sees each block first; by default a block holds ~16 MB of images);
    return the number of rows copied."""
    n = len(src["labels"])
    if block is None:
        images = src["images"]
        block = max(1, BLOCK_BYTES // (int(np.prod(images.shape[1:])) * images.dtype.itemsize))
    index = np.arange(n) if index is None else np.asarray(index, dtype=np.int64)
    for start in range(0, len(index), block):
        rows = index[start : start + block]
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        arrays = read_arrays(src, path or src.file.filename, slice(lo, hi) if hi - lo == len(rows) else rows)
        if check is not None:
            check(arrays)
        append(dst, arrays)
    return len(index)


class SyntheticSplit:
    """One split (``train`` or ``val``) of a merged synthetic dataset, read lazily: nothing but the
    attributes is in memory until rows are asked for (`read`, `rows`, `blocks`)."""

    def __init__(self, path, split: str = "train"):
        self.path = path
        self.split = split
        with open_format(path, DATASET_FORMAT, "python -m dfnas.merge") as f, reading(path):
            if split not in f:
                raise DfnasError(f"{path}: has no split {split!r}")
            missing = [name for name in FIELDS if name not in f[split]]
            if missing:
                raise DfnasError(f"{path}: split {split} lacks {', '.join(missing)} (corrupted?)")
            self.attrs = attrs_dict(f)
            sizes = {name: f[split][name].shape[0] for name in FIELDS}
        self.n = sizes["labels"]
        if len(set(sizes.values())) != 1:
            raise DfnasError(f"{path}: the fields of split {split} have different lengths {sizes} (corrupted?)")
        self.input_shape = tuple(self.attrs["input_shape"])
        self.num_classes = int(self.attrs["num_classes"])
        self.h5 = LazyH5(path)

    def __len__(self) -> int:
        return self.n

    def rows(self, name: str, indices) -> np.ndarray:
        return self.h5.rows(f"{self.split}/{name}", indices)

    def pixels(self, indices) -> torch.Tensor:
        """Images ``indices`` as float pixels in [0, 1]."""
        return from_storage(self.rows("images", indices))

    def read(self, indices, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``indices`` (float pixels) and their target distributions."""
        return self.pixels(indices), torch.from_numpy(self.rows("targets", indices))

    def column(self, name: str) -> np.ndarray:
        """A whole per-image scalar field (``labels``, ``round``): a few bytes per image."""
        return self.rows(name, np.arange(self.n))

    def blocks(self, names, block: int = 1024):
        """``(start, {name: rows})`` for consecutive blocks of the split."""
        for start in range(0, self.n, block):
            idx = np.arange(start, min(start + block, self.n))
            yield start, {name: self.rows(name, idx) for name in names}

    def close(self) -> None:
        self.h5.close()
