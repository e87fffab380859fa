"""The data a search runs on, and its held-out evaluation.

Data sources:
    natural      cross-entropy on a class-balanced subset of the natural training split
                 (``search.natural_images``), with crop and flip augmentation drawn every step
    <variant>    a synthesis variant (full, deepinversion, ...): distillation at temperature
                 ``search.temperature`` from the cached soft labels of its training split, replaying
                 the cached views; no teacher and no natural image in the loop

A search sees two parts of its source: part 0 trains the weights, part 1 is held out (DARTS and
ProxylessNAS train their architecture parameters on it, SPOS scores candidate paths on it). They are
a seeded split of the data by ``train_portion``, or, for a synthetic source with
``synthetic_holdout="val"``, the merged set's training and validation splits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfnas.data import as_pixels, data_identity, dataset_from_config
from dfnas.distributed import rank_share
from dfnas.errors import DfnasError
from dfnas.evaluation import evaluate_batches
from dfnas.imaging import Normalize, augment_batch
from dfnas.losses import kd_loss, kd_loss_from_log_probs
from dfnas.sampling import require_every_class, stratified_subset
from dfnas.soft_labels import SoftLabelData, render_stored
from dfnas.streaming import batch_plan, stream
from dfnas.train import Recipe


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches, forward) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them as the plain average over
    ``batches`` (cumulative moving average), as SPOS does before scoring a path; ``forward(model, x)``
    runs one batch. The model is left in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for x in batches:
        forward(model, x)
    model.eval()
    for m, momentum in zip(bns, saved):
        m.momentum = momentum


class AugmentedImages:
    """A natural split whose training views (read with a generator) also get the search's batch
    augmentation (crop with zero padding, flip); evaluation views (no generator) are left alone.
    Reads float pixels in [0, 1]."""

    def __init__(self, split, recipe: Recipe):
        self.split, self.recipe = split, recipe

    def __len__(self) -> int:
        return len(self.split)

    def read(self, indices, generator=None):
        x, y = self.split.read(indices, generator)
        x = as_pixels(x)
        return (x if generator is None else augment_batch(x, self.recipe, generator)), y


class _Stored:
    """A soft-label split read as stored images with their view parameters (`SoftLabelData.read_stored`)."""

    def __init__(self, data: SoftLabelData):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def read(self, indices, generator=None):
        return self.data.read_stored(indices, generator)

    def close(self) -> None:
        self.data.close()


# Fixed batches that a search evaluates with many times (recalibration batches, a held-out part)
# are kept in memory up to this many bytes (as float32 images) in host memory, and on a GPU up to
# a quarter of its memory, at most 16 GiB: scoring runs after training, when the GPU is free.
HOLD_BYTES = 2 << 30
DEVICE_HOLD_BYTES = 16 << 30


def hold_budget(device) -> int:
    """How many bytes of fixed batches are kept on ``device`` (None: host memory)."""
    if device is not None and torch.device(device).type == "cuda":
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        return min(DEVICE_HOLD_BYTES, total // 4)
    return HOLD_BYTES


class HeldBatches:
    """The batches ``make()`` yields (a fresh iterator, the same batches every time), at every pass,
    each through ``prepare`` where given: made once and held (moved to ``device`` when given) where
    their ``nbytes`` fit in ``max_bytes`` (default `hold_budget` of the device), else made again at
    every pass, so that memory holds one batch, not all (on ImageNet, 20 recalibration batches of
    1024 at 224 px would be 12 GB)."""

    def __init__(self, make, nbytes: int, device=None, max_bytes: int | None = None, prepare=None):
        self.make, self.prepare = make, prepare
        self.held = None
        if nbytes <= (hold_budget(device) if max_bytes is None else max_bytes):
            self.held = [_moved(batch, device) for batch in make()]

    def __iter__(self):
        batches = iter(self.held) if self.held is not None else self.make()
        return batches if self.prepare is None else map(self.prepare, batches)


def _moved(batch, device):
    """A tensor, or a tuple of tensors and Nones, on ``device`` (None: where it is)."""
    if isinstance(batch, tuple):
        return tuple(_moved(t, device) for t in batch)
    return batch if batch is None or device is None else batch.to(device, non_blocking=True)


class SearchData:
    """Two halves of a data source (weights, architecture) as batches of ``(normalized x, target)``."""

    def __init__(self, cfg: dict, source: str, seed: int, dataset_path=None, labels_path=None,
                 train_portion: float | None = None, label_smoothing: float = 0.0, synthetic_holdout: str = "portion",
                 device=None):
        scfg = cfg["search"]
        train_portion = scfg["train_portion"] if train_portion is None else train_portion
        self.label_smoothing = label_smoothing
        self.source = source
        self.synthetic = source != "natural"
        gen = torch.Generator().manual_seed(seed)
        if self.synthetic:
            if not dataset_path or not labels_path:
                raise DfnasError(f"source {source!r} needs --dataset and --labels (its synthetic set and soft labels)")
            self.data = SoftLabelData(dataset_path, labels_path, "train")
            self.mean, self.std = self.data.mean, self.data.std
            self.input_shape = tuple(self.data.input_shape)
            self.num_classes = self.data.num_classes
            self.workers = 0
        else:
            natural = dataset_from_config(cfg)
            require_every_class(scfg["natural_images"], natural.info.num_classes, "search.natural_images")
            split = natural.train.subset(stratified_subset(natural.train.targets, scfg["natural_images"], seed))
            self.augment = {"crop_padding": scfg["crop_padding"], "flip": scfg["flip"]}
            self.data = AugmentedImages(split, Recipe(**self.augment))
            self.mean, self.std = natural.info.mean, natural.info.std
            self.input_shape = natural.info.input_shape
            self.num_classes = natural.info.num_classes
            self.workers = cfg["data"].get("workers", 0)
            self.natural = data_identity(cfg, natural)
        n = self.images = len(self.data)
        if self.synthetic and synthetic_holdout == "val":
            # The whole training split trains; the merged set's validation split scores.
            self.heldout = SoftLabelData(dataset_path, labels_path, "val")
            if len(self.heldout) == 0:
                raise DfnasError(f"{dataset_path} has an empty validation split (synthesis.val_per_class is 0)")
            self.halves = (torch.arange(n), torch.arange(len(self.heldout)))
            self.images = n + len(self.heldout)
        else:
            perm = torch.randperm(n, generator=gen)
            half = int(n * train_portion)
            if half < 1 or half >= n:
                raise DfnasError(f"train_portion {train_portion} leaves an empty part of {n} images")
            self.halves = (perm[:half], perm[half:])
            self.heldout = self.data
        self.channels_last = scfg["channels_last"]  # the numerics of the strategies that use it
        self.temperature = scfg["temperature"]
        self.t_squared = scfg["t_squared"]
        self.cached_distribution = self.synthetic and bool(self.data.topk)
        if self.cached_distribution and abs(self.data.temperature - self.temperature) > 1e-9:
            raise DfnasError(f"{labels_path}: its top-k soft labels were cached at temperature {self.data.temperature:g} "
                             f"(soft_labels.temperature), the search distils at search.temperature "
                             f"{self.temperature:g}; make the two equal")
        self.norm = Normalize(self.mean, self.std)
        self.memory_format = torch.contiguous_format
        # Where training views of a synthetic source are rendered: the stored images (uint8) are
        # read and uploaded, the crops, flips and lighting done there (`batches`).
        self.device = None if device is None else torch.device(device)
        self.device_norm = None if self.device is None else Normalize(self.mean, self.std).to(self.device)

    def fingerprint(self, seed: int) -> dict:
        """What a search's checkpoint on this data must match: the source, its size and split, the
        loss (temperature, T^2, label smoothing) and the memory format; for a synthetic source the
        checksums of its dataset and teacher and the soft labels' config, for natural data the
        dataset's description (name, location, sizes, normalization, subset, views) and the
        augmentation."""
        out = {"source": self.source, "seed": seed, "images": self.images, "temperature": self.temperature,
               "t_squared": self.t_squared, "label_smoothing": self.label_smoothing,
               # The split: train_portion, or a synthetic set's own validation split.
               "halves": [len(h) for h in self.halves], "channels_last": self.channels_last}
        if self.synthetic:
            out.update({k: self.data.label_attrs.get(k) for k in ("dataset_sha256", "teacher_sha256", "config_hash")})
        else:
            out.update(data=self.natural, augment=self.augment)
        return out

    def in_memory_format(self, model: nn.Module) -> nn.Module:
        """``model`` in the search's memory format: with ``search.channels_last``, the network and
        from now on the batches of `batches` are NHWC."""
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
            self.memory_format = torch.channels_last
        return model

    def steps_per_epoch(self, half: int, batch_size: int) -> int:
        """How many batches one pass of `batches` over part ``half`` yields."""
        return max(1, len(self.halves[half]) // batch_size)

    def batches(self, half: int, batch_size: int, generator: torch.Generator, dist=None, limit: int | None = None):
        """One shuffled pass over part ``half`` in training views (random cached views of a synthetic
        source; augmented natural images), normalized, with their targets; an incomplete last batch
        is dropped unless it is the only one. Streamed: a few batches in memory at a time. With
        ``dist`` (a data-parallel rank), the rank's share of each batch of that plan. With a
        ``device``, a synthetic source's views are rendered there from the stored images, and the
        batches are on it. ``limit``: the first that many batches of the pass alone (nothing
        beyond them is read)."""
        source = self.data if half == 0 else self.heldout
        plan = batch_plan(self.halves[half], batch_size, generator, shuffle=True, drop_last=True, random_views=True)
        plan = plan[:limit]
        if dist is not None:
            plan = [rank_share(b, dist) for b in plan]
        if self.synthetic and self.device is not None:
            for stored, boxes, flips, alphas, target in stream(_Stored(source), plan, self.workers):
                x = render_stored(stored, boxes, flips, alphas, self.device)
                yield (self.device_norm(x).contiguous(memory_format=self.memory_format),
                       target.to(self.device, non_blocking=True))
            return
        for x, target in stream(source, plan, self.workers):
            yield self.norm(x).contiguous(memory_format=self.memory_format), target

    def heldout_batch(self, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``b`` of the held-out part, whole and unaugmented (normalized), with their targets."""
        x, target = self.heldout.read(b)
        return self.norm(x), target

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        return self.loss_from_logits(model(batch[0]), batch[1])

    def loss_from_logits(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Distillation from cached teacher logits (synthetic), or cross-entropy on labels (natural)."""
        if self.cached_distribution:  # the cache's distribution at T, as log-probabilities: not tempered again
            return kd_loss_from_log_probs(logits, target, self.temperature, self.t_squared)
        if self.synthetic:
            return kd_loss(logits, target, self.temperature, self.t_squared)
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)

    def accuracy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The batch's top-1 accuracy, a scalar tensor on the logits' device (read back once per epoch)."""
        return (logits.argmax(1) == self.labels_of(target)).float().mean()

    def labels_of(self, target: torch.Tensor) -> torch.Tensor:
        """The class of each target: the teacher's top class (synthetic) or the label (natural)."""
        return target.argmax(1) if self.synthetic else target

    def heldout_batches(self, batch_size: int):
        """The held-out part in order, whole and unaugmented (normalized), with its targets."""
        for batch in stream(self._heldout_stored(), batch_plan(self.halves[1], batch_size), self.workers):
            yield self._images(batch, self.norm)

    def _heldout_stored(self):
        """The held-out part as stored, unaugmented: uint8 pixels and labels (natural data), or a
        synthetic set's stored images with their whole view and the cached targets."""
        return _Stored(self.heldout) if self.synthetic else self.data.split

    def _images(self, batch, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of `_heldout_stored` as ``norm``-alized float images, with its targets."""
        if self.synthetic:
            stored, boxes, flips, alphas, target = batch
            return norm(render_stored(stored, boxes, flips, alphas)), target
        x, target = batch
        return norm(as_pixels(x)), target

    def recalibration_batches(self, count: int, batch_size: int, seed: int, device=None,
                              max_bytes: int | None = None) -> HeldBatches:
        """``count`` training batches (normalized images) drawn with ``seed + 1``, the same at every
        pass (`HeldBatches`): the fixed batches on which BatchNorm is recalibrated before a held-out
        evaluation."""
        batches = min(count, self.steps_per_epoch(0, batch_size))
        c, h, w = self.input_shape
        nbytes = batches * min(batch_size, len(self.halves[0])) * c * h * w * 4

        def make():
            gen = torch.Generator().manual_seed(seed + 1)
            return (x for x, _ in self.batches(0, batch_size, gen, limit=count))

        return HeldBatches(make, nbytes, device, max_bytes)

    def heldout_on(self, device, batch_size: int, max_bytes: int) -> HeldBatches | None:
        """The held-out part's evaluation batches, read once and kept on ``device`` in the bytes they
        are stored in (`_heldout_stored`), then at every pass made into the normalized images and
        targets that `heldout_batches` streams, for scoring many paths without reading or uploading
        them again (at ImageNet size, 50,000 natural images are 7.5 GB as pixels, 30 GB as float32).
        None when they would take more than ``max_bytes`` (they are then streamed per score)."""
        if len(self.halves[1]) == 0 or max_bytes <= 0:
            return None
        c, h, w = self.input_shape
        source = self._heldout_stored()
        pixel = source.read(self.halves[1][:1])[0].element_size()
        norm = Normalize(self.mean, self.std).to(device)
        held = HeldBatches(lambda: stream(source, batch_plan(self.halves[1], batch_size), self.workers),
                           len(self.halves[1]) * (c * h * w * pixel + self.num_classes * 4), device, max_bytes,
                           prepare=lambda batch: self._images(batch, norm))
        return held if held.held is not None else None

    def evaluate(self, model: nn.Module, device, batch_size: int, path=None, recalibrate=None,
                 batches=None) -> dict:
        """``val_loss`` and ``val_acc`` of ``model`` (with ``path``, that path of a supernet) on the
        held-out part (``batches`` from `heldout_on`, or streamed); with ``recalibrate`` (batches of
        `recalibration_batches`), BatchNorm statistics are first re-estimated on them for this network
        or path: a supernet's running statistics mix every path and, early in training, lag behind its
        weights."""
        forward = model if path is None else (lambda x: model(x, path))
        if recalibrate is not None:
            recalibrate_bn(model, recalibrate, lambda m, x: forward(x.to(device, non_blocking=True)))
        model.eval()
        scores = evaluate_batches(forward, self.heldout_batches(batch_size) if batches is None else batches,
                                  self.loss_from_logits, self.labels_of, device)
        model.train()
        return {"val_loss": scores["loss"], "val_acc": scores["top1"]}
