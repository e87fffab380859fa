"""The synthesize stage: one shard of a synthesis variant, all its calibration rounds, to HDF5.

Recursive label calibration: round 0 optimizes images against hard, class-balanced targets;
after round r the teacher's softmax (temperature T) on round r's stored images becomes the
targets of round r+1, whose images start again from fresh noise (``calibration.init: noise``) or
from round r's images (``warm``). The shard holds the union of all rounds. Shards of a variant are
independent jobs (one GPU each on a cluster) and draw from seeds derived from (seed, variant,
shard, round), so a killed shard resumes from its last finished round and ends with the same bytes.

Variants (``synthesis.variants``), so that the paper's ablation runs from one config:

    full            everything on: regional update (synthesis.region) and recursive calibration
    no_recursive    hard targets in every round
    no_regional     DeepInversion's view (random jitter and flip) instead of the regional update
    deepinversion   neither of the two: plain DeepInversion
    noise           unoptimized N(0, 1) images in the teacher's input space: the floor

    python -m dfnas.synthesize --config config.yaml --teacher results/default/teacher/teacher.pt \\
        --variant full --shard 0 --out results/default/synthesis/full/shard_000.h5
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dfnas import shards as sh
from dfnas.cli import cli_main, stage_config, stage_parser
from dfnas.errors import Damaged, DfnasError, FileInUse, Unwritable, reading
from dfnas.imaging import Normalize
from dfnas.runtime import (
    atomic_path,
    check_writable,
    config_hash,
    derived_seed,
    precision_name,
    progress,
    resolve_device,
    resolve_precision,
    versions,
)
from dfnas.synthesis import (
    Objective,
    Region,
    Schedule,
    noise_images,
    shard_keys,
    synthesize_stacked,
)
from dfnas.teacher import load_teacher

VARIANTS = ("full", "no_recursive", "no_regional", "deepinversion", "noise")


@dataclass(frozen=True)
class VariantSpec:
    optimize: bool = True
    recursive: bool = True
    regional: bool = True


VARIANT_SPECS = {
    "full": VariantSpec(),
    "no_recursive": VariantSpec(recursive=False),
    "no_regional": VariantSpec(regional=False),
    "deepinversion": VariantSpec(recursive=False, regional=False),
    "noise": VariantSpec(optimize=False, recursive=False, regional=False),
}


def variant_region(scfg: dict, variant: str) -> Region:
    r = scfg["region"]
    if VARIANT_SPECS[variant].regional:
        return Region(mode=r["mode"], scale=tuple(r["scale"]), ratio=tuple(r["ratio"]), jitter=r["jitter"], flip=r["flip"],
                      halve_jitter=r["halve_jitter"])
    return Region(mode="jitter", jitter=r["jitter"], flip=r["flip"], halve_jitter=r["halve_jitter"])


def shard_sizes(total: int, shards: int) -> list[int]:
    """Images per round of each shard: ``total`` split as evenly as possible."""
    return [total // shards + (1 if s < total % shards else 0) for s in range(shards)]


def balanced_labels(offset: int, n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Classes ``(offset + i) % C`` for i < n, shuffled: shards together cover the classes evenly."""
    labels = (torch.arange(n) + offset) % num_classes
    return labels[torch.randperm(n, generator=generator)]


def synthesis_config_hash(cfg: dict, variant: str) -> str:
    return config_hash({"seed": cfg["seed"], "variant": variant, "synthesis": shard_keys(cfg)})


@torch.no_grad()
def teacher_logits(model, images: torch.Tensor, mean, std, batch_size: int) -> torch.Tensor:
    """The teacher's logits on pixel images in [0, 1]."""
    device = next(model.parameters()).device
    norm = Normalize(mean, std).to(device)
    out = [model(norm(images[i : i + batch_size].to(device))).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


def run_shard(cfg: dict, teacher, variant: str, shard: int, out: Path, log=print) -> Path:
    """Synthesize (or resume) one shard and write it to ``out``; return ``out``."""
    scfg = cfg["synthesis"]
    if variant not in VARIANT_SPECS:
        raise DfnasError(f"unknown synthesis variant {variant!r} (known: {', '.join(VARIANTS)})")
    if not 0 <= shard < scfg["shards"]:
        raise DfnasError(f"shard {shard} out of range: synthesis.shards is {scfg['shards']}")
    spec = VARIANT_SPECS[variant]
    sizes = shard_sizes(scfg["images_per_round"], scfg["shards"])
    n = sizes[shard]
    offset = sum(sizes[:shard])
    num_classes, shape = teacher.num_classes, teacher.input_shape
    mean, std = teacher.mean, teacher.std
    rounds = scfg["rounds"]
    chash = synthesis_config_hash(cfg, variant)
    precision = resolve_precision(cfg["precision"], next(teacher.model.parameters()).device)
    attrs = {
        "format": sh.SHARD_FORMAT, "variant": variant, "shard": shard, "shards": scfg["shards"], "seed": cfg["seed"],
        "config": {"seed": cfg["seed"], "variant": variant, "synthesis": scfg}, "config_hash": chash,
        "teacher_sha256": teacher.checksum, "mean": list(mean), "std": list(std), "storage": scfg["storage"],
        "input_shape": list(shape), "num_classes": num_classes, "class_names": teacher.meta["class_names"],
        "rounds": rounds, "dfnas_version": versions()["dfnas"], "precision": precision_name(precision),
    }
    partial = out.with_name(out.name + ".partial")
    # Room for the rounds still to write and for the final copy (uncompressed bounds), checked before
    # any work and again before every round (another job may fill the disk meanwhile).
    row = int(np.prod(shape)) * (1 if scfg["storage"] == "uint8" else 2) + 8 * num_classes + 10

    def check_room(r: int, written: int = 0) -> None:
        check_writable(out.parent, ((rounds - r) + rounds) * n * row + (1 << 20) - written)

    check_room(0, partial.stat().st_size if partial.exists() else 0)
    done = _open_partial(partial, attrs, n, log)
    objective = Objective(**scfg["loss"])
    schedule = Schedule(iterations_half=scfg["iterations_half"], iterations_full=scfg["iterations_full"], lr=scfg["lr"],
                        betas=tuple(scfg["betas"]), warmup=scfg["warmup"])
    region = variant_region(scfg, variant)
    bs = scfg["batch_size"]
    t0 = time.time()
    with sh.open_h5(partial, "a") as f:
        for r in range(done, rounds):
            check_room(r)
            gen = torch.Generator().manual_seed(derived_seed(cfg["seed"], variant, shard, r))
            if r == 0 or not spec.recursive:
                labels = balanced_labels(offset, n, num_classes, gen)
            warm = r > 0 and scfg["calibration"]["init"] == "warm" and spec.optimize
            agree = 0
            starts = list(range(0, n, bs))
            for first in range(0, len(starts), scfg["stack"]):  # batches optimized together
                chunk = [(b, start, min(start + bs, n)) for b, start in enumerate(starts[first:first + scfg["stack"]], first)]
                targets, inits = [], []
                for _, start, stop in chunk:
                    prev = (sh.read_group(f, slice((r - 1) * n + start, (r - 1) * n + stop))
                            if r > 0 and (spec.recursive or warm) else None)
                    if r > 0 and spec.recursive:
                        targets.append(F.softmax(torch.from_numpy(prev["teacher_logits"])
                                                 / scfg["calibration"]["temperature"], dim=1))
                    else:
                        targets.append(F.one_hot(labels[start:stop], num_classes).float())
                    inits.append(Normalize(mean, std)(sh.from_storage(prev["images"])) if warm else None)
                if spec.optimize:
                    images = [res.images for res in synthesize_stacked(
                        teacher.model, targets, shape, mean, std, objective, schedule, region, gen, inits,
                        precision=precision)]
                else:
                    images = [noise_images(len(tb), shape, mean, std, gen) for tb in targets]
                for (b, start, stop), tb, x in zip(chunk, targets, images):
                    agree += write_batch(f, x, tb, r, teacher, scfg)
                    steps_done = (r - done) * n + stop
                    log(f"{variant} shard {shard}: round {r + 1}/{rounds} batch {b + 1}/{len(starts)} done"
                        f"  {progress(t0, steps_done, (rounds - done) * n)}")
            f.attrs["rounds_done"] = r + 1
            f.flush()
            log(f"{variant} shard {shard}: round {r + 1}/{rounds} written, teacher agrees with the targets' class "
                f"on {agree / n:.1%} of {n} images")
    _finalize(partial, out)
    return out


def write_batch(f, x: torch.Tensor, targets: torch.Tensor, r: int, teacher, scfg: dict) -> int:
    """Append one finished batch of round ``r`` (images as stored, the teacher's logits on exactly
    those) to the open partial shard; return how many the teacher puts in their target's class."""
    stored = sh.to_storage(x.cpu(), teacher.mean, teacher.std, scfg["storage"])
    logits = teacher_logits(teacher.model, sh.from_storage(stored), teacher.mean, teacher.std, scfg["batch_size"])
    sh.append(f, {"images": stored, "targets": targets.numpy().astype(np.float32),
                  "labels": targets.argmax(1).numpy().astype(np.int64),
                  "round": np.full(len(targets), r, np.int16),
                  "teacher_logits": logits.numpy().astype(np.float32)})
    return int((logits.argmax(1) == targets.argmax(1)).sum())


def _finalize(partial: Path, out: Path) -> None:
    """Write the complete shard afresh, a block at a time, so that its bytes depend on its content
    only (a resumed shard equals an uninterrupted one), then drop the partial file."""
    with sh.open_h5(partial) as src, atomic_path(out) as tmp, sh.open_h5(tmp, "w") as f:
        attrs = dict(src.attrs)
        for k, v in attrs.items():
            f.attrs[k] = v
        sh.create_group_datasets(f, attrs["input_shape"], int(attrs["num_classes"]), attrs["storage"])
        sh.copy_rows(src, f, path=partial)
    partial.unlink()


def _open_partial(partial: Path, attrs: dict, n: int, log) -> int:
    """Prepare ``partial`` for appending; return the number of rounds it already holds."""
    if partial.exists():
        try:
            with sh.open_h5(partial, "a") as f, reading(partial):
                same = (f.attrs.get("config_hash") == attrs["config_hash"]
                        and f.attrs.get("precision", "fp32") == attrs["precision"]
                        and f.attrs.get("teacher_sha256") == attrs["teacher_sha256"]
                        and int(f.attrs.get("shard", -1)) == attrs["shard"])
                if same:
                    done = int(f.attrs.get("rounds_done", 0))
                    short = {name: len(f[name]) for name in sh.FIELDS if len(f[name]) < done * n}
                    if short:  # rounds marked done whose rows are not there: never padded with zeros
                        raise Damaged("", f"{done} rounds marked done, but {', '.join(short)} hold "
                                          f"{min(short.values())} of their {done * n} rows")
                    sh.truncate(f, done * n)  # drop a round that was being written when the job died
                    sh.verify_rows(f, partial)  # every checksum: a write that failed (disk full) shows here
                    if done:
                        log(f"resuming {partial.name} after round {done}")
                    return done
            log(f"discarding {partial.name}: it was made with another config, precision or teacher")
        except (FileInUse, Unwritable):
            raise  # a live writer's file, or one this job may not write: never taken for damage
        except Damaged as exc:
            log(f"discarding unreadable {partial.name} ({exc.detail})")
        partial.unlink()
    with sh.open_h5(partial, "w") as f:
        sh.set_attrs(f, attrs)
        f.attrs["rounds_done"] = 0
        sh.create_group_datasets(f, attrs["input_shape"], attrs["num_classes"], attrs["storage"])
    return 0


@cli_main
def main(argv=None):
    parser = stage_parser("synthesize", __doc__, teacher="teacher file written by python -m dfnas.teacher",
                          epilog="Variants: " + ", ".join(VARIANTS))
    parser.add_argument("--variant", required=True, choices=VARIANTS)
    parser.add_argument("--shard", type=int, default=0, help="shard index, 0 .. synthesis.shards-1")
    parser.add_argument("--out", required=True, help="shard file to write (HDF5)")
    args = parser.parse_args(argv)
    cfg = stage_config(args)
    device = resolve_device(cfg["device"])
    teacher = load_teacher(args.teacher, device)
    run_shard(cfg, teacher, args.variant, args.shard, Path(args.out))


if __name__ == "__main__":
    main()
