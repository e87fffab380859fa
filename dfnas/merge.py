"""The merge stage: all shards of a synthesis variant into one dataset with a train/val split.

Every shard is checked first (format, variant, config hash, teacher checksum against the teacher
file, shapes, no NaN): a corrupted or foreign shard is a one-line error that names it, and nothing
is written. The validation split keeps ``synthesis.val_per_class`` images per class (by the
class of the image's target), drawn with the seed; the rest is the training split. Shards are
copied a block at a time: memory holds the labels and one block, whatever the set's size. A PNG
grid of samples (at most 20 classes, named, as rows; a few images per calibration round as column
groups) is written beside the dataset.

    python -m dfnas.merge --config config.yaml --teacher results/default/teacher/teacher.pt \\
        --shards results/default/synthesis/full/shard_*.h5 --out results/default/synthesis/full/dataset.h5
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dfnas import shards as sh
from dfnas.cli import cli_main, stage_config, stage_parser
from dfnas.errors import DfnasError, reading
from dfnas.runtime import atomic_path, check_writable
from dfnas.sampling import stratified_split
from dfnas.teacher import load_teacher


def check_shards(paths, teacher_sha256: str, variant: str | None = None) -> tuple[list[Path], dict, list[np.ndarray]]:
    """Check every shard's attributes and field lengths; return the paths (sorted), the common
    attributes and each shard's labels (the only per-image field read whole: 8 bytes an image)."""
    if not paths:
        raise DfnasError("no shards to merge")
    paths = sorted(map(Path, paths))
    common, shard_ids, labels = None, [], []
    for path in paths:
        with sh.open_format(path, sh.SHARD_FORMAT, "python -m dfnas.synthesize") as f:
            attrs = sh.attrs_dict(f)
            if attrs.get("teacher_sha256") != teacher_sha256:
                raise DfnasError(f"{path}: made with another teacher (weights sha256 {str(attrs.get('teacher_sha256'))[:12]}, "
                                 f"expected {teacher_sha256[:12]})")
            if variant is not None and attrs.get("variant") != variant:
                raise DfnasError(f"{path}: belongs to variant {attrs.get('variant')!r}, not {variant!r}")
            if int(attrs.get("rounds_done", -1)) != int(attrs.get("rounds", -2)):
                raise DfnasError(f"{path}: incomplete ({attrs.get('rounds_done')} of {attrs.get('rounds')} rounds)")
            if common is None:
                common = attrs
            shard_ids.append(int(attrs.get("shard", -1)))
            for key in ("config_hash", "precision", "input_shape", "num_classes", "storage", "shards", "mean", "std"):
                if attrs.get(key) != common.get(key):
                    raise DfnasError(f"{path}: {key} {attrs.get(key)!r} differs from the other shards' {common.get(key)!r}")
            with reading(path, "cannot read its arrays"):
                lengths = {name: f[name].shape[0] for name in sh.FIELDS}
                labels.append(f["labels"][...])
        if len(set(lengths.values())) != 1:
            raise DfnasError(f"{path}: its fields have different lengths {lengths} (corrupted?)")
    if len(set(shard_ids)) != len(shard_ids):
        raise DfnasError("the same shard was given twice")
    missing = sorted(set(range(int(common.get("shards", len(paths))))) - set(shard_ids))
    if missing:
        raise DfnasError(f"shard(s) {', '.join(map(str, missing))} of {common.get('shards')} missing: the merged set "
                         "would lack their images; pass every shard of the variant")
    return paths, common, labels


def merge(paths, teacher_sha256: str, val_per_class: int, seed: int, out: Path, variant: str | None = None,
          block: int | None = None) -> dict:
    """Check the shards, then copy them a block at a time into the train and val splits of ``out``
    (every block checked for shapes, NaN and labels on the way); nothing is written on an error."""
    paths, attrs, labels = check_shards(paths, teacher_sha256, variant)
    all_labels = np.concatenate(labels)
    num_classes, shape = attrs["num_classes"], attrs["input_shape"]
    if len(all_labels) and (all_labels.min() < 0 or all_labels.max() >= num_classes):
        bad = next(p for p, lab in zip(paths, labels) if len(lab) and (lab.min() < 0 or lab.max() >= num_classes))
        raise DfnasError(f"{bad}: labels outside 0..{num_classes - 1}")
    train_idx, val_idx = stratified_split(all_labels, val_per_class, seed)
    offsets = np.cumsum([0] + [len(lab) for lab in labels])
    with atomic_path(out) as tmp:
        with sh.open_h5(tmp, "w") as f:
            meta = {k: v for k, v in attrs.items() if k not in ("format", "shard", "rounds_done")}
            sh.set_attrs(f, {**meta, "config": _json_attr(attrs.get("config")), "format": sh.DATASET_FORMAT,
                             "val_per_class": val_per_class, "split_seed": seed,
                             "shard_count": len(paths)})
            for split, idx in (("train", train_idx), ("val", val_idx)):
                group = f.create_group(split)
                sh.create_group_datasets(group, shape, num_classes, attrs["storage"])
                for k, path in enumerate(paths):
                    lo, hi = offsets[k], offsets[k + 1]
                    rows = idx[(idx >= lo) & (idx < hi)] - lo
                    if len(rows) == 0:
                        continue
                    with sh.open_h5(path) as src:
                        sh.copy_rows(src, group, rows, path, block,
                                     check=lambda a, p=path: sh.check_arrays(a, p, num_classes, shape))
    counts = np.bincount(all_labels, minlength=num_classes) if len(all_labels) else np.zeros(num_classes, int)
    # Classes too small to give val_per_class and keep as many for training: half of each validates.
    capped = int(((counts > 0) & (counts // 2 < val_per_class)).sum())
    return {"train": len(train_idx), "val": len(val_idx), "attrs": attrs, "capped_classes": capped}


def _json_attr(value):
    import json

    return json.loads(value) if isinstance(value, str) else value


def grid_cells(labels: np.ndarray, rounds: np.ndarray, num_classes: int, max_classes: int, per_cell: int):
    """The rows of a bounded sample grid: ``(classes shown, rounds, {(class, round): row indices})``,
    at most ``max_classes`` classes spread evenly over all of them, ``per_cell`` images each."""
    classes = np.unique(np.linspace(0, num_classes - 1, min(max_classes, num_classes)).round().astype(int))
    shown_rounds = sorted(set(rounds.tolist()))
    cells = {(k, r): np.flatnonzero((labels == k) & (rounds == r))[:per_cell] for k in classes for r in shown_rounds}
    return classes.tolist(), shown_rounds, cells


def sample_grid(dataset_path: Path, out: Path, max_classes: int = 20, per_cell: int = 4, min_tile: int = 56) -> None:
    """A labelled PNG of the training split: one row per class (at most ``max_classes``, with its
    name), ``per_cell`` images per calibration round side by side under a "round r" header; tiles
    of small images are enlarged (nearest neighbour) to at least ``min_tile`` pixels. Only the
    images shown are read."""
    from PIL import Image, ImageDraw

    split = sh.SyntheticSplit(dataset_path, "train")
    names = split.attrs.get("class_names") or [str(k) for k in range(split.num_classes)]
    classes, rounds, cells = grid_cells(split.column("labels"), split.column("round"), split.num_classes,
                                        max_classes, per_cell)
    c, h, w = split.input_shape
    scale = max(1, -(-min_tile // max(h, w)))
    th, tw, pad = h * scale, w * scale, 2
    label_w, header_h = 8 + 7 * min(24, max(len(str(names[k])) for k in classes)), 18
    cols = per_cell * len(rounds)
    width = label_w + cols * (tw + pad) + pad * len(rounds)
    height = header_h + len(classes) * (th + pad)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, r in enumerate(rounds):
        x0 = label_w + j * (per_cell * (tw + pad) + pad)
        draw.text((x0 + 2, 3), f"round {r}", fill="black")
    for i, k in enumerate(classes):
        y0 = header_h + i * (th + pad)
        draw.text((4, y0 + th // 2 - 6), str(names[k])[:24], fill="black")
        for j, r in enumerate(rounds):
            rows = cells[(k, r)]
            pixels = split.pixels(rows) if len(rows) else None
            for m in range(len(rows)):
                tile = (pixels[m].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                img = Image.fromarray(tile[:, :, 0] if c == 1 else tile).convert("RGB")
                x0 = label_w + j * (per_cell * (tw + pad) + pad) + m * (tw + pad)
                canvas.paste(img.resize((tw, th), Image.NEAREST), (x0, y0))
    split.close()
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="png")


@cli_main
def main(argv=None):
    parser = stage_parser("merge", __doc__, teacher="the teacher file the shards were made from", threads=False)
    parser.add_argument("--variant", help="refuse shards of any other variant")
    parser.add_argument("--shards", nargs="+", required=True, help="shard files (HDF5)")
    parser.add_argument("--out", required=True, help="merged dataset (HDF5)")
    parser.add_argument("--grid", help="PNG of samples per class and round")
    args = parser.parse_args(argv)
    cfg = stage_config(args)
    # The merged set is about as large as its shards together (the same compressed rows).
    check_writable(Path(args.out).parent, sum(Path(p).stat().st_size for p in args.shards if Path(p).is_file()))
    teacher = load_teacher(args.teacher)
    result = merge(args.shards, teacher.checksum, cfg["synthesis"]["val_per_class"],
                   cfg["seed"], Path(args.out), args.variant)
    if args.grid:
        sample_grid(Path(args.out), Path(args.grid))
    print(f"merged {len(args.shards)} shard(s): {result['train']} train / {result['val']} val images -> {args.out}")
    if result["capped_classes"]:
        print(f"note: {result['capped_classes']} class(es) have fewer than 2 x synthesis.val_per_class "
              f"({cfg['synthesis']['val_per_class']}) images; half of each went to validation")


if __name__ == "__main__":
    main()
