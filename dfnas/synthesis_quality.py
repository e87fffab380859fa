"""The synthesis_quality stage: how good a synthetic set is, per variant, to JSON.

- teacher agreement: the teacher's class on the round-0 images against their hard targets;
- per round: the teacher's confidence and the entropy of its softmax (the soft labels), and the
  entropy of the targets the round was optimized for: recursive calibration shows as rising entropy;
- BatchNorm-statistics distance: per layer, ``||mu - running_mean|| + ||var - running_var||``
  over the whole set, averaged over layers (the natural test split's value is the reference);
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
from dfnas.data import all_pixels, dataset_from_config
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
from dfnas.teacher import load_teacher
from dfnas.train import evaluate


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row."""
    return -(probs * probs.clamp(min=1e-12).log()).sum(dim=1)


def round_statistics(arrays: dict) -> list[dict]:
    logits = torch.from_numpy(arrays["teacher_logits"])
    probs = F.softmax(logits, dim=1)
    targets = torch.from_numpy(arrays["targets"])
    rows = []
    for r in sorted(set(arrays["round"].tolist())):
        m = torch.from_numpy(arrays["round"] == r)
        rows.append({
            "round": r,
            "images": int(m.sum()),
            "teacher_confidence": probs[m].max(1).values.mean().item(),
            "soft_label_entropy": entropy(probs[m]).mean().item(),
            "target_entropy": entropy(targets[m]).mean().item(),
            "teacher_agrees_with_target_class": (logits[m].argmax(1) == targets[m].argmax(1)).float().mean().item(),
        })
    return rows


@torch.no_grad()
def teacher_pass(teacher, pixels: torch.Tensor, device, batch_size: int = 500) -> tuple[float, torch.Tensor]:
    """BatchNorm-statistics distance over ``pixels`` and the penultimate features of every image."""
    model = teacher.model
    norm = Normalize(teacher.mean, teacher.std).to(device)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    feats = []
    handle = head.register_forward_hook(lambda mod, inp, out: feats.append(inp[0].detach().float().cpu()))
    try:
        with MomentAccumulator(model) as stats:
            for i in range(0, len(pixels), batch_size):
                model(norm(pixels[i : i + batch_size].to(device)))
                stats.add()
    finally:
        handle.remove()
    return stats.mean_distance(), torch.cat(feats)


def within_class_diversity(features: torch.Tensor, labels: np.ndarray) -> float:
    """Mean over classes of the mean pairwise cosine distance between features of that class."""
    f = F.normalize(features, dim=1)
    out = []
    for c in np.unique(labels):
        fc = f[torch.from_numpy(labels == c)]
        k = len(fc)
        if k < 2:
            continue
        sim = fc @ fc.T
        out.append(1 - (sim.sum() - sim.diagonal().sum()).item() / (k * (k - 1)))
    return float(np.mean(out)) if out else float("nan")


def distill_student(teacher, pixels: torch.Tensor, qcfg: dict, device, seed: int, in_channels: int, log) -> nn.Module:
    """A student trained to match the teacher (KL at temperature T) on random resized crops of ``pixels``."""
    seed_everything(seed)
    s = qcfg["student"]
    student = build_model(s["arch"], **s["kwargs"], num_classes=teacher.num_classes, in_channels=in_channels).to(device)
    norm = Normalize(teacher.mean, teacher.std).to(device)
    opt = torch.optim.SGD(student.parameters(), lr=s["lr"], momentum=0.9, nesterov=True, weight_decay=s["weight_decay"])
    gen = torch.Generator().manual_seed(seed)
    n = len(pixels)
    steps = s["steps"]
    bs = min(s["batch_size"], n)
    temperature = s["temperature"]
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, n, (bs,), generator=gen)
        boxes = random_boxes(bs, tuple(s["scale"]), (0.75, 4 / 3), gen)
        flips = torch.rand(bs, generator=gen) < 0.5
        x = norm(crop_resize(pixels[idx], boxes, flips, tuple(pixels.shape[-2:])).to(device))
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
    teacher.model.to(device)
    t0 = time.time()
    idx = stratified_subset(natural.train.targets, n_images, cfg["seed"])
    nat_px = all_pixels(natural.train, idx)
    log(f"distilling the reference student from {len(nat_px)} natural training images")
    ref = distill_student(teacher, nat_px, qcfg, device, cfg["seed"], teacher.input_shape[0], log)
    top1 = evaluate(ref, natural.test, device, teacher.mean, teacher.std)["top1"]
    log(f"reference student top-1 on the natural test split: {top1:.4f}")
    return {"images": int(len(nat_px)), "top1": top1, "recipe": qcfg["student"], "seconds": time.time() - t0,
            "teacher_sha256": teacher.checksum}


def quality(cfg: dict, teacher, dataset_path: Path, log=print, reference: dict | None = None) -> dict:
    device = resolve_device(cfg["device"])
    qcfg = cfg["quality"]
    train_px, train, attrs = sh.load_split(dataset_path, "train")
    val_px, val, _ = sh.load_split(dataset_path, "val")
    pixels = torch.cat([train_px, val_px])
    arrays = {k: np.concatenate([train[k], val[k]]) for k in train}
    if attrs.get("teacher_sha256") != teacher.checksum:
        raise DfnasError(f"{dataset_path}: made with another teacher than {teacher.checksum[:12]}")
    teacher.model.to(device)
    rounds = round_statistics(arrays)
    round0 = arrays["round"] == 0
    agreement = float((arrays["teacher_logits"][round0].argmax(1) == arrays["labels"][round0]).mean())
    bn_distance, feats = teacher_pass(teacher, pixels, device)
    diversity = within_class_diversity(feats, arrays["labels"])

    natural = dataset_from_config(cfg)
    nat_test = natural.test
    nat_bn, nat_feats = teacher_pass(teacher, all_pixels(nat_test), device)
    nat_div = within_class_diversity(nat_feats, np.asarray(nat_test.targets))
    result = {
        "variant": attrs.get("variant"),
        "images": int(len(pixels)),
        "train_images": int(len(train_px)),
        "teacher_agreement_round0": agreement,
        "rounds": rounds,
        "bn_distance": bn_distance,
        "bn_distance_natural_test": nat_bn,
        "within_class_diversity": diversity,
        "within_class_diversity_natural_test": nat_div,
    }
    s = qcfg["student"]
    if s["steps"] > 0:
        c = teacher.input_shape[0]
        t0 = time.time()
        log(f"distilling the student from {len(train_px)} synthetic images")
        student = distill_student(teacher, train_px, qcfg, device, cfg["seed"], c, log)
        syn_acc = evaluate(student, nat_test, device, teacher.mean, teacher.std)["top1"]
        seconds = time.time() - t0
        if reference is None:
            reference = natural_reference(cfg, teacher, len(train_px), log)
        elif reference.get("images") != len(train_px) or reference.get("recipe") != s or \
                reference.get("teacher_sha256") != teacher.checksum:
            raise DfnasError(f"the natural reference ({reference.get('images')} images) was not made for this "
                             f"variant's {len(train_px)} training images, student recipe and teacher; remake it")
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
        n_train = sh.load_split(Path(args.dataset), "train")[0].shape[0]
        write_json(args.write_reference, natural_reference(cfg, teacher, n_train))
        return
    reference = read_json(args.reference, "the quality stage") if args.reference else None
    write_json(args.out, quality(cfg, teacher, Path(args.dataset), reference=reference))


if __name__ == "__main__":
    main()
