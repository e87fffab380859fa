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
from dfnas.errors import DfnasError
from dfnas.imaging import Normalize, crop_resize, lighting, random_boxes
from dfnas.runtime import (
    atomic_path,
    config_hash,
    derived_seed,
    resolve_device,
    sha256_file,
)
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


@torch.no_grad()
def cache_split(teacher, pixels: torch.Tensor, views: int, lcfg: dict, generator, group: h5py.Group,
                batch_size: int, temperature: float) -> None:
    n, num_classes = len(pixels), teacher.num_classes
    device = next(teacher.model.parameters()).device
    if lcfg["lighting"] > 0 and pixels.shape[1] != 3:
        raise DfnasError(f"soft_labels.lighting: colour noise needs RGB images, these have {pixels.shape[1]} "
                         "channel(s); set it to 0")
    boxes, flips, alphas = draw_views(n, views, lcfg["scale"], lcfg["ratio"], lcfg["flip"], generator,
                                      lcfg["lighting"])
    group.create_dataset("boxes", data=boxes.numpy())
    group.create_dataset("flips", data=flips.numpy())
    if alphas is not None:
        group.create_dataset("lighting", data=alphas.numpy())
    topk = lcfg["topk"]
    width = topk or num_classes
    dtype = np.float16 if lcfg["dtype"] == "float16" else np.float32
    values = group.create_dataset("logits" if not topk else "topk_probs", (n, views, width), dtype=dtype,
                                  chunks=(max(1, min(n, 256)), views, width), compression="gzip")
    indices = group.create_dataset("topk_indices", (n, views, width), dtype=np.int16) if topk else None
    norm = Normalize(teacher.mean, teacher.std).to(device)
    per_batch = max(1, batch_size // views)
    for start in range(0, n, per_batch):
        x = pixels[start : start + per_batch]
        m = len(x)
        rep = x.repeat_interleave(views, dim=0)
        v = render_views(rep, boxes[start : start + m].reshape(-1, 4), flips[start : start + m].reshape(-1),
                         None if alphas is None else alphas[start : start + m].reshape(-1, 3))
        logits = teacher.model(norm(v.to(device))).float().cpu().view(m, views, num_classes)
        if topk:
            probs = F.softmax(logits / temperature, dim=-1)
            top = probs.topk(topk, dim=-1)
            values[start : start + m] = top.values.numpy().astype(dtype)
            indices[start : start + m] = top.indices.numpy().astype(np.int16)
        else:
            values[start : start + m] = logits.numpy().astype(dtype)


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
        for split, views in (("train", lcfg["views"]), ("val", 1)):
            pixels, _, _ = sh.load_split(dataset_path, split)
            cache_split(teacher, pixels, views, lcfg, gen, f.create_group(split), lcfg["batch_size"],
                        lcfg["temperature"])
            log(f"cached {views} view(s) x {len(pixels)} {split} images")
    return {"views": lcfg["views"]}


class SoftLabelData(torch.utils.data.Dataset):
    """A synthetic split with its cached views: ``(view, teacher_logits)`` pairs with no teacher.

    ``batches`` draws one cached view per image per pass from the generator (the fast path for
    in-memory sets); as a torch Dataset, item ``i`` is image i's view chosen for the current
    epoch (``set_epoch``). Views are pixel images in [0, 1] (normalize them with ``mean``/``std``,
    the teacher's). In top-k mode the returned "logits" are log-probabilities of the cached
    distribution, already at the cache's ``temperature``: distil from them as they are
    (`dfnas.losses.kd_loss_from_log_probs`).
    """

    def __init__(self, dataset_path, labels_path, split: str = "train", seed: int = 0):
        self.pixels, self.arrays, self.attrs = sh.load_split(dataset_path, split)
        with sh.open_format(labels_path, LABELS_FORMAT, "python -m dfnas.soft_labels") as f:
            if f.attrs["dataset_sha256"] != sha256_file(dataset_path):
                raise DfnasError(f"{labels_path}: was cached from another version of {dataset_path}")
            self.label_attrs = sh.attrs_dict(f)
            g = f[split]
            self.boxes = torch.from_numpy(g["boxes"][...])
            self.flips = torch.from_numpy(g["flips"][...])
            self.alphas = torch.from_numpy(g["lighting"][...]) if "lighting" in g else None
            self.topk = int(self.label_attrs["topk"])
            self.temperature = float(self.label_attrs["temperature"])  # of the cached top-k probabilities
            if self.topk:
                self.values = torch.from_numpy(g["topk_probs"][...].astype(np.float32))
                self.indices = torch.from_numpy(g["topk_indices"][...].astype(np.int64))
            else:
                self.values = torch.from_numpy(g["logits"][...].astype(np.float32))
        self.num_classes = int(self.label_attrs["num_classes"])
        self.mean, self.std = self.label_attrs["mean"], self.label_attrs["std"]
        if len(self.boxes) != len(self.pixels):
            raise DfnasError(f"{labels_path}: {len(self.boxes)} cached images but {dataset_path} {split} has {len(self.pixels)}")
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Choose, for every image, which cached view ``__getitem__`` replays in this epoch."""
        gen = torch.Generator().manual_seed(derived_seed(self.seed, "views", epoch))
        self.epoch_views = torch.randint(0, self.views, (len(self),), generator=gen)

    def __getitem__(self, i):
        x, logits = self.get(torch.tensor([i]), self.epoch_views[i : i + 1])
        return x[0], logits[0]

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def views(self) -> int:
        return self.boxes.shape[1]

    def logits(self, idx: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        vals = self.values[idx, view]
        if not self.topk:
            return vals
        probs = torch.zeros(len(idx), self.num_classes)
        rest = (1 - vals.sum(1, keepdim=True)).clamp(min=0) / max(1, self.num_classes - self.topk)
        probs += rest
        probs.scatter_(1, self.indices[idx, view], vals)
        return probs.clamp(min=1e-8).log()

    def get(self, idx: torch.Tensor, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = render_views(self.pixels[idx], self.boxes[idx, view], self.flips[idx, view],
                         None if self.alphas is None else self.alphas[idx, view])
        return x, self.logits(idx, view)

    def batches(self, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True,
                drop_last: bool = False, indices: torch.Tensor | None = None):
        """``(views, logits)`` batches over ``indices`` (default: all images), one random cached
        view per image (view 0, the whole image, without a generator)."""
        indices = torch.arange(len(self)) if indices is None else torch.as_tensor(indices)
        n = len(indices)
        order = indices[torch.randperm(n, generator=generator)] if shuffle else indices
        view = (torch.randint(0, self.views, (n,), generator=generator) if generator is not None
                else torch.zeros(n, dtype=torch.long))
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield self.get(order[start : start + batch_size], view[start : start + batch_size])


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
