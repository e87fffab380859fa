"""The synthesis_quality stage: how good a synthetic set is, per variant, to JSON.

- teacher agreement: the teacher's class on the round-0 images against their hard targets;
- per round: the teacher's confidence and the entropy of its softmax (the soft labels), and the
  entropy of the targets the round was optimized for: recursive calibration shows as rising entropy;
- BatchNorm-statistics distance: per layer, ``||mu - running_mean|| + ||var - running_var||``
  over the whole set, averaged over layers (the natural test split's value is the reference);
  moments, like every statistic here, are accumulated batch by batch (memory does not grow with
  the set);
- within-class diversity: mean pairwise cosine distance of the teacher's penultimate features;
- the data-free score: a small student distilled from the teacher on the synthetic training split
  alone, tested on the natural test split, next to the same student distilled (same recipe) from as
  many natural training images; their ratio is the data efficiency (goal >= 1).

This is an evaluation stage: it reads the natural test split, unlike the synthetic branch.

    python -m dfnas.synthesis_quality --config config.yaml --teacher results/default/teacher/teacher.pt \\
        --dataset results/default/synthesis/full/dataset.h5 --out results/default/synthesis/full/quality.json
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfnas import shards as sh
from dfnas.bnstats import MomentAccumulator
from dfnas.cli import cli_main, stage_config, stage_parser
from dfnas.data import as_pixels, dataset_from_config
from dfnas.errors import DfnasError
from dfnas.imaging import Normalize, crop_resize, random_boxes
from dfnas.losses import kd_loss
from dfnas.models import build_model
from dfnas.optim import cosine_lr, set_lr
from dfnas.runtime import (
    progress,
    read_json,
    resolve_device,
    seed_everything,
    versions,
    write_json,
)
from dfnas.sampling import stratified_subset
from dfnas.streaming import Batch, batch_plan, random_plan, stream
from dfnas.teacher import load_teacher
from dfnas.train import evaluate


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row."""
    return -(probs * probs.clamp(min=1e-12).log()).sum(dim=1)


class RoundStatistics:
    """Per-round sums over blocks of a synthetic set (``teacher_logits``, ``targets``, ``round``);
    `rows` gives the means."""

    def __init__(self):
        self.sums: dict[int, np.ndarray] = {}

    def add(self, arrays: dict) -> None:
        logits = torch.from_numpy(np.asarray(arrays["teacher_logits"], np.float32))
        probs = F.softmax(logits, dim=1)
        targets = torch.from_numpy(np.asarray(arrays["targets"], np.float32))
        rounds = np.asarray(arrays["round"])
        per_image = torch.stack([torch.ones(len(rounds)), probs.max(1).values, entropy(probs), entropy(targets),
                                 (logits.argmax(1) == targets.argmax(1)).float()], dim=1).double().numpy()
        for r in np.unique(rounds):
            total = per_image[rounds == r].sum(0)
            self.sums[int(r)] = self.sums.get(int(r), 0) + total

    def rows(self) -> list[dict]:
        out = []
        for r in sorted(self.sums):
            n, conf, ent, target_ent, agree = self.sums[r]
            out.append({"round": r, "images": int(n), "teacher_confidence": conf / n, "soft_label_entropy": ent / n,
                        "target_entropy": target_ent / n, "teacher_agrees_with_target_class": agree / n})
        return out


def round_statistics(blocks) -> list[dict]:
    """Per calibration round: images, the teacher's mean confidence and soft-label entropy, the
    targets' entropy and how often the teacher's class is the target's; ``blocks`` is one dict of
    arrays or an iterable of them."""
    stats = RoundStatistics()
    for arrays in [blocks] if isinstance(blocks, dict) else blocks:
        stats.add(arrays)
    return stats.rows()


class ClassFeatureSums:
    """Per class, the sum of unit-normalized feature vectors, their squared norms and the count: all
    that the mean pairwise cosine similarity of a class needs, in memory independent of its size,
    since ``sum_{i != j} f_i . f_j = ||sum_i f_i||^2 - sum_i ||f_i||^2``."""

    def __init__(self):
        self.sums: dict[int, list] = {}

    def add(self, features: torch.Tensor, labels) -> None:
        f = F.normalize(features.double(), dim=1)
        labels = np.asarray(labels)
        for c in np.unique(labels):
            fc = f[torch.from_numpy(labels == c)]
            add = [fc.sum(0), float((fc * fc).sum()), len(fc)]
            old = self.sums.get(int(c))
            self.sums[int(c)] = add if old is None else [old[0] + add[0], old[1] + add[1], old[2] + add[2]]

    def diversity(self) -> float:
        """Mean over classes (with two images or more) of the mean pairwise cosine distance."""
        out = []
        for total, squares, k in self.sums.values():
            if k < 2:
                continue
            out.append(1 - (float(total @ total) - squares) / (k * (k - 1)))
        return float(np.mean(out)) if out else float("nan")


def within_class_diversity(features: torch.Tensor, labels) -> float:
    """Mean over classes of the mean pairwise cosine distance between features of that class."""
    sums = ClassFeatureSums()
    sums.add(features, labels)
    return sums.diversity()


@torch.no_grad()
def teacher_pass(teacher, batches, device) -> tuple[float, float]:
    """BatchNorm-statistics distance and within-class diversity (of the penultimate features) over
    ``(pixels, labels)`` batches, accumulated batch by batch."""
    model = teacher.model
    norm = Normalize(teacher.mean, teacher.std).to(device)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    feats = []
    classes = ClassFeatureSums()
    handle = head.register_forward_hook(lambda mod, inp, out: feats.append(inp[0].detach().float().cpu()))
    try:
        with MomentAccumulator(model) as stats:
            for x, labels in batches:
                model(norm(as_pixels(x.to(device))))
                stats.add()
                classes.add(feats.pop(), labels)
    finally:
        handle.remove()
    return stats.mean_distance(), classes.diversity()


def distill_student(teacher, images, qcfg: dict, device, seed: int, in_channels: int, log, workers: int = 0) -> nn.Module:
    """A student trained to match the teacher (KL at temperature T) on random resized crops of
    ``images`` (a split read a batch at a time: its evaluation views, cropped here alike for
    natural and synthetic images)."""
    seed_everything(seed)
    s = qcfg["student"]
    # The classes and channels are the teacher's; kwargs may repeat them, not change them.
    student = build_model(s["arch"], **{**s["kwargs"], "num_classes": teacher.num_classes,
                                        "in_channels": in_channels}).to(device)
    norm = Normalize(teacher.mean, teacher.std).to(device)
    opt = torch.optim.SGD(student.parameters(), lr=s["lr"], momentum=0.9, nesterov=True, weight_decay=s["weight_decay"])
    gen = torch.Generator().manual_seed(seed)
    steps = s["steps"]
    bs = min(s["batch_size"], len(images))
    temperature = s["temperature"]
    plan = random_plan(len(images), bs, steps, gen)
    t0 = time.time()
    whole = stream(images, [Batch(b.indices) for b in plan], workers)
    for step, (batch, (x, _)) in enumerate(zip(plan, whole)):
        view_gen = batch.generator()
        boxes = random_boxes(bs, tuple(s["scale"]), (0.75, 4 / 3), view_gen)
        flips = torch.rand(bs, generator=view_gen) < 0.5
        x = as_pixels(x)
        x = norm(crop_resize(x, boxes, flips, tuple(x.shape[-2:])).to(device))
        with torch.no_grad():
            t_logits = teacher.model(x)
        student.train()
        s_logits = student(x)
        loss = kd_loss(s_logits, t_logits, temperature)
        set_lr(opt, cosine_lr(step, steps, s["lr"]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % max(1, steps // 4) == 0:
            log(f"  student step {step + 1}/{steps}  kd loss {loss.item():.4f}  {progress(t0, step + 1, steps)}")
    return student


def natural_reference(cfg: dict, teacher, n_images: int, log=print) -> dict:
    """The reference student: the same recipe distilled from ``n_images`` class-balanced natural
    training images (as many as a variant's synthetic training split), tested on the natural test
    split. It is the same for every variant, so the workflow computes it once."""
    device = resolve_device(cfg["device"])
    qcfg = cfg["quality"]
    natural = dataset_from_config(cfg)
    workers = cfg["data"]["workers"]
    teacher.model.to(device)
    t0 = time.time()
    images = natural.train.subset(stratified_subset(natural.train.targets, n_images, cfg["seed"]))
    log(f"distilling the reference student from {len(images)} natural training images")
    ref = distill_student(teacher, images, qcfg, device, cfg["seed"], teacher.input_shape[0], log, workers)
    top1 = evaluate(ref, natural.test, device, teacher.mean, teacher.std, cfg["data"]["eval_batch_size"], workers)["top1"]
    log(f"reference student top-1 on the natural test split: {top1:.4f}")
    return {"images": int(len(images)), "top1": top1, "recipe": qcfg["student"], "seconds": time.time() - t0,
            "teacher_sha256": teacher.checksum}


def _labelled_batches(split: sh.SyntheticSplit, batch_size: int):
    for start, arrays in split.blocks(("images", "labels"), batch_size):
        yield sh.from_storage(arrays["images"]), arrays["labels"]


def quality(cfg: dict, teacher, dataset_path: Path, log=print, reference: dict | None = None) -> dict:
    device = resolve_device(cfg["device"])
    qcfg = cfg["quality"]
    splits = [sh.SyntheticSplit(dataset_path, name) for name in ("train", "val")]
    train = splits[0]
    if train.attrs.get("teacher_sha256") != teacher.checksum:
        raise DfnasError(f"{dataset_path}: made with another teacher than {teacher.checksum[:12]}")
    teacher.model.to(device)
    rounds, agree, round0 = RoundStatistics(), 0, 0
    for split in splits:
        for _, arrays in split.blocks(("teacher_logits", "targets", "round", "labels")):
            rounds.add(arrays)
            first = arrays["round"] == 0
            agree += int((arrays["teacher_logits"][first].argmax(1) == arrays["labels"][first]).sum())
            round0 += int(first.sum())
    batch = cfg["data"]["eval_batch_size"]
    bn_distance, diversity = teacher_pass(teacher, (b for split in splits for b in _labelled_batches(split, batch)),
                                          device)

    natural = dataset_from_config(cfg)
    nat_test, workers = natural.test, cfg["data"]["workers"]
    nat_bn, nat_div = teacher_pass(teacher, stream(nat_test, batch_plan(len(nat_test), batch), workers), device)
    result = {
        "variant": train.attrs.get("variant"),
        "images": sum(len(split) for split in splits),
        "train_images": len(train),
        "teacher_agreement_round0": agree / round0 if round0 else math.nan,
        "rounds": rounds.rows(),
        "bn_distance": bn_distance,
        "bn_distance_natural_test": nat_bn,
        "within_class_diversity": diversity,
        "within_class_diversity_natural_test": nat_div,
    }
    s = qcfg["student"]
    if s["steps"] > 0:
        c = teacher.input_shape[0]
        t0 = time.time()
        log(f"distilling the student from {len(train)} synthetic images")
        student = distill_student(teacher, train, qcfg, device, cfg["seed"], c, log)
        syn_acc = evaluate(student, nat_test, device, teacher.mean, teacher.std, batch, workers)["top1"]
        seconds = time.time() - t0
        if reference is None:
            reference = natural_reference(cfg, teacher, len(train), log)
        elif reference.get("images") != len(train) or reference.get("recipe") != s or \
                reference.get("teacher_sha256") != teacher.checksum:
            raise DfnasError(f"the natural reference ({reference.get('images')} images) was not made for this "
                             f"variant's {len(train)} training images, student recipe and teacher; remake it")
        nat_acc = reference["top1"]
        result["student"] = {
            "recipe": s,
            "synthetic_top1": syn_acc,
            "natural_reference_top1": nat_acc,
            "data_efficiency": syn_acc / nat_acc if nat_acc > 0 else math.nan,
            "seconds": seconds,
        }
        log(f"student top-1 on the natural test split: {syn_acc:.4f} from synthetic vs {nat_acc:.4f} from natural "
            f"images (ratio {result['student']['data_efficiency']:.3f})")
    for split in splits:
        split.close()
    result["teacher_sha256"] = teacher.checksum
    result["versions"] = versions()
    return result


@cli_main
def main(argv=None):
    parser = stage_parser("synthesis_quality", __doc__, teacher="the teacher file the dataset was made from")
    parser.add_argument("--dataset", required=True, help="merged synthetic dataset (python -m dfnas.merge)")
    parser.add_argument("--out", help="quality JSON to write")
    parser.add_argument("--reference", help="natural reference JSON to compare with (made with --write-reference;"
                                            " without it, the reference student is distilled here)")
    parser.add_argument("--write-reference", help="only distill the natural reference student, sized like the "
                                                  "dataset's training split, and write it to this JSON")
    args = parser.parse_args(argv)
    if bool(args.out) == bool(args.write_reference):
        raise DfnasError("give either --out (the quality of a variant) or --write-reference")
    cfg = stage_config(args)
    teacher = load_teacher(args.teacher, resolve_device(cfg["device"]))
    if args.write_reference:
        n_train = len(sh.SyntheticSplit(Path(args.dataset), "train"))
        write_json(args.write_reference, natural_reference(cfg, teacher, n_train))
        return
    reference = read_json(args.reference, "the quality stage") if args.reference else None
    write_json(args.out, quality(cfg, teacher, Path(args.dataset), reference=reference))


if __name__ == "__main__":
    main()
