"""The soft_labels stage: cache the teacher's output on K augmented views of every synthetic image.

With augmentation the teacher's output depends on the crop, so searches on synthetic data would
have to run the teacher in their loop. Instead this stage stores, per image, K views (a crop box
as fractions of the image, and a flip) with the teacher's logits on each (float16 by default, or
the top-k probabilities at the distillation temperature, the rest of the mass spread uniformly),
and `SoftLabelData` replays exactly those views: the search stages never run the teacher.

View 0 of every image is the identity (whole image, no flip); the validation split stores only it.

    python -m dfnas.soft_labels --config config.yaml --teacher results/default/teacher/teacher.pt \\
        --dataset results/default/synthesis/full/dataset.h5 --out results/default/synthesis/full/soft_labels.h5
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from dfnas import shards as sh
from dfnas.cli import cli_main, stage_config, stage_parser
from dfnas.errors import REMAKE, DfnasError, reading
from dfnas.imaging import Normalize, crop_resize, lighting, random_boxes
from dfnas.runtime import (
    atomic_path,
    config_hash,
    derived_seed,
    resolve_device,
    sha256_file,
)
from dfnas.streaming import LazyH5
from dfnas.teacher import load_teacher

LABELS_FORMAT = "dfnas-soft-labels"


def draw_views(n: int, views: int, scale, ratio, flip: bool, generator: torch.Generator, lighting_std: float = 0.0):
    """``(boxes N x K x 4, flips N x K, lighting N x K x 3 or None)``; view 0 is the identity."""
    boxes = torch.zeros(n, views, 4)
    boxes[:, 0] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    flips = torch.zeros(n, views, dtype=torch.bool)
    alphas = torch.zeros(n, views, 3) if lighting_std > 0 else None
    if views > 1:
        boxes[:, 1:] = random_boxes(n * (views - 1), tuple(scale), tuple(ratio), generator).view(n, views - 1, 4)
        if flip:
            flips[:, 1:] = torch.rand(n, views - 1, generator=generator) < 0.5
        if alphas is not None:
            alphas[:, 1:] = torch.randn(n, views - 1, 3, generator=generator) * lighting_std
    return boxes, flips, alphas


def render_views(pixels: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor,
                 alphas: torch.Tensor | None = None) -> torch.Tensor:
    """The views ``(boxes[i], flips[i], lighting alphas[i])`` of images ``pixels[i]`` at the images'
    own size."""
    views = crop_resize(pixels, boxes, flips, tuple(pixels.shape[-2:]))
    return views if alphas is None else lighting(views, alphas)


def render_stored(stored: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, alphas: torch.Tensor | None,
                  device=None) -> torch.Tensor:
    """Views of stored images (`SoftLabelData.get_stored`) as float pixels, rendered on ``device``
    (default: where the images are); the stored bytes are what crosses to the device."""
    if device is not None:
        stored = stored.to(device, non_blocking=True)
    pixels = stored.float().div_(255) if stored.dtype == torch.uint8 else stored.float()
    return render_views(pixels, boxes, flips, alphas)


@torch.no_grad()
def cache_split(teacher, split: sh.SyntheticSplit, views: int, lcfg: dict, generator, group: h5py.Group,
                batch_size: int, temperature: float) -> None:
    """Cache ``views`` views of every image of ``split`` into ``group``, a batch of images at a time
    (views drawn per batch from ``generator``)."""
    n, num_classes = len(split), teacher.num_classes
    device = next(teacher.model.parameters()).device
    if lcfg["lighting"] > 0 and split.input_shape[0] != 3:
        raise DfnasError(f"soft_labels.lighting: colour noise needs RGB images, these have {split.input_shape[0]} "
                         "channel(s); set it to 0")
    if lcfg["topk"] and lcfg["topk"] > num_classes:
        raise DfnasError(f"config key 'soft_labels.topk': {lcfg['topk']} exceeds the teacher's {num_classes} "
                         "classes; lower it, or use 0 to store every class")
    rows = max(1, min(n, 256))  # every array chunked with a checksum: a damaged chunk fails its read

    def array(name, shape, dtype, **options):
        return group.create_dataset(name, (n, *shape), dtype=dtype, chunks=(rows, *shape), maxshape=(None, *shape),
                                    fletcher32=True, **options)

    boxes = array("boxes", (views, 4), np.float32)
    flips = array("flips", (views,), bool)
    alphas = array("lighting", (views, 3), np.float32) if lcfg["lighting"] > 0 else None
    topk = lcfg["topk"]
    width = topk or num_classes
    dtype = np.float16 if lcfg["dtype"] == "float16" else np.float32
    values = array("logits" if not topk else "topk_probs", (views, width), dtype, compression="gzip")
    indices = array("topk_indices", (views, width), np.int16) if topk else None
    norm = Normalize(teacher.mean, teacher.std).to(device)
    per_batch = max(1, batch_size // views)
    for start in range(0, n, per_batch):
        stop = min(start + per_batch, n)
        x = split.pixels(np.arange(start, stop))
        m = len(x)
        b, f, a = draw_views(m, views, lcfg["scale"], lcfg["ratio"], lcfg["flip"], generator, lcfg["lighting"])
        boxes[start:stop], flips[start:stop] = b.numpy(), f.numpy()
        if alphas is not None:
            alphas[start:stop] = a.numpy()
        rep = x.repeat_interleave(views, dim=0)
        v = render_views(rep, b.reshape(-1, 4), f.reshape(-1), None if a is None else a.reshape(-1, 3))
        logits = teacher.model(norm(v.to(device))).float().cpu().view(m, views, num_classes)
        if topk:
            probs = F.softmax(logits / temperature, dim=-1)
            top = probs.topk(topk, dim=-1)
            values[start:stop] = top.values.numpy().astype(dtype)
            indices[start:stop] = top.indices.numpy().astype(np.int16)
        else:
            values[start:stop] = logits.numpy().astype(dtype)


def make_soft_labels(cfg: dict, teacher, dataset_path: Path, out: Path, log=print) -> dict:
    lcfg = cfg["soft_labels"]
    with sh.open_format(dataset_path, sh.DATASET_FORMAT, "python -m dfnas.merge") as f:
        attrs = sh.attrs_dict(f)
    if attrs.get("teacher_sha256") != teacher.checksum:
        raise DfnasError(f"{dataset_path}: made with another teacher than {teacher.checksum[:12]}")
    gen = torch.Generator().manual_seed(derived_seed(cfg["seed"], attrs.get("variant"), "soft_labels"))
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        sh.set_attrs(f, {
            "format": LABELS_FORMAT, "variant": attrs.get("variant"), "views": lcfg["views"],
            "scale": list(lcfg["scale"]), "ratio": list(lcfg["ratio"]), "flip": lcfg["flip"], "lighting": lcfg["lighting"],
            "topk": lcfg["topk"] or 0, "temperature": lcfg["temperature"], "dtype": lcfg["dtype"],
            "teacher_sha256": teacher.checksum, "dataset_sha256": sha256_file(dataset_path),
            "mean": list(teacher.mean), "std": list(teacher.std), "num_classes": teacher.num_classes,
            "config_hash": config_hash({"seed": cfg["seed"], "soft_labels": lcfg}),
        })
        for split_name, views in (("train", lcfg["views"]), ("val", 1)):
            split = sh.SyntheticSplit(dataset_path, split_name)
            cache_split(teacher, split, views, lcfg, gen, f.create_group(split_name), lcfg["batch_size"],
                        lcfg["temperature"])
            split.close()
            log(f"cached {views} view(s) x {len(split)} {split_name} images")
    return {"views": lcfg["views"]}


class SoftLabelData:
    """A synthetic split with its cached views: ``(view, teacher_logits)`` batches with no teacher.

    Read lazily, a batch at a time (`read`; the file handles are opened once per process, so the
    set streams through DataLoader workers too): ``read(indices, generator)`` replays, for every
    image, one of its cached views drawn from ``generator`` (view 0, the whole image, without one).
    Views are pixel images in [0, 1] (normalize them with ``mean``/``std``, the teacher's). In
    top-k mode the returned "logits" are log-probabilities of the cached distribution, already at
    the cache's ``temperature``: distil from them as they are (`dfnas.losses.kd_loss_from_log_probs`).
    """

    def __init__(self, dataset_path, labels_path, split: str = "train"):
        self.images = sh.SyntheticSplit(dataset_path, split)
        self.attrs = self.images.attrs  # the merged dataset's
        self.split = split
        dataset_sha256 = sha256_file(dataset_path)
        with sh.open_format(labels_path, LABELS_FORMAT, "python -m dfnas.soft_labels") as f, reading(labels_path):
            if f.attrs["dataset_sha256"] != dataset_sha256:
                theirs, ours = f.attrs.get("variant"), self.attrs.get("variant")
                if theirs is not None and ours is not None and theirs != ours:  # a mix-up, not a stale file
                    raise DfnasError(f"{labels_path}: holds the soft labels of variant {theirs!r}, but {dataset_path} "
                                     f"is variant {ours!r}; pass that variant's soft labels")
                raise DfnasError(f"{labels_path}: was cached from another version of {dataset_path}; {REMAKE}")
            self.label_attrs = sh.attrs_dict(f)
            if split not in f or "boxes" not in f[split]:
                raise DfnasError(f"{labels_path}: has no cached views of split {split!r} (corrupted?)")
            g = f[split]
            cached, self.views = g["boxes"].shape[:2]
            self.has_lighting = "lighting" in g
        self.topk = int(self.label_attrs["topk"])
        self.temperature = float(self.label_attrs["temperature"])  # of the cached top-k probabilities
        self.num_classes = int(self.label_attrs["num_classes"])
        self.mean, self.std = self.label_attrs["mean"], self.label_attrs["std"]
        self.input_shape = self.images.input_shape
        if cached != len(self.images):
            raise DfnasError(f"{labels_path}: {cached} cached images but {dataset_path} {split} has {len(self.images)}")
        self.h5 = LazyH5(labels_path)

    def __len__(self) -> int:
        return len(self.images)

    def _rows(self, name: str, idx) -> torch.Tensor:
        return torch.from_numpy(self.h5.rows(f"{self.split}/{name}", idx))

    def get(self, idx: torch.Tensor, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Views ``view[i]`` of images ``idx[i]`` and the cached teacher output on each."""
        stored, boxes, flips, alphas, target = self.get_stored(idx, view)
        return render_stored(stored, boxes, flips, alphas), target

    def get_stored(self, idx: torch.Tensor, view: torch.Tensor) -> tuple:
        """What `get` renders, before rendering: ``(stored images, boxes, flips, lighting alphas or
        None, cached teacher output)``, the images as the dataset keeps them (uint8, or float16), so
        that a GPU job uploads those bytes and renders the views there (`render_stored`)."""
        idx, view = torch.as_tensor(idx), torch.as_tensor(view)
        rows = torch.arange(len(idx))
        boxes = self._rows("boxes", idx)[rows, view]
        flips = self._rows("flips", idx)[rows, view]
        alphas = self._rows("lighting", idx)[rows, view] if self.has_lighting else None
        stored = torch.from_numpy(np.ascontiguousarray(self.images.rows("images", idx)))
        if not self.topk:
            return stored, boxes, flips, alphas, self._rows("logits", idx)[rows, view].float()
        vals = self._rows("topk_probs", idx)[rows, view].float()
        top = self._rows("topk_indices", idx)[rows, view].long()
        probs = torch.zeros(len(idx), self.num_classes)
        probs += (1 - vals.sum(1, keepdim=True)).clamp(min=0) / max(1, self.num_classes - self.topk)
        probs.scatter_(1, top, vals)
        return stored, boxes, flips, alphas, probs.clamp(min=1e-8).log()

    def read(self, indices, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One cached view per image, drawn from ``generator`` (view 0 without one)."""
        return self.get(torch.as_tensor(indices), self.draw_view(len(indices), generator))

    def read_stored(self, indices, generator: torch.Generator | None = None) -> tuple:
        """`read` before rendering (`get_stored`): the same view per image for the same generator."""
        return self.get_stored(torch.as_tensor(indices), self.draw_view(len(indices), generator))

    def draw_view(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        return (torch.randint(0, self.views, (n,), generator=generator) if generator is not None
                else torch.zeros(n, dtype=torch.long))

    def close(self) -> None:
        self.images.close()
        self.h5.close()


@cli_main
def main(argv=None):
    parser = stage_parser("soft_labels", __doc__, teacher="the teacher file the dataset was made from")
    parser.add_argument("--dataset", required=True, help="merged synthetic dataset (python -m dfnas.merge)")
    parser.add_argument("--out", required=True, help="soft-label cache to write (HDF5)")
    args = parser.parse_args(argv)
    cfg = stage_config(args)
    teacher = load_teacher(args.teacher, resolve_device(cfg["device"]))
    make_soft_labels(cfg, teacher, Path(args.dataset), Path(args.out))


if __name__ == "__main__":
    main()
