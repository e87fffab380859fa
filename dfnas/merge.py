"""The merge stage: all shards of a synthesis variant into one dataset with a train/val split.

Every shard is checked first (format, variant, config hash, teacher checksum against the teacher
file, shapes, no NaN): a corrupted or foreign shard is a one-line error that names it, and nothing
is written. The validation split keeps ``synthesis.val_per_class`` images per class (by the
class of the image's target), drawn with the seed; the rest is the training split. A PNG grid of
samples per class (rows) and round (column groups) is written beside the dataset.

    python -m dfnas.merge --config config.yaml --teacher results/default/teacher/teacher.pt \\
        --shards results/default/synthesis/full/shard_*.h5 --out results/default/synthesis/full/dataset.h5
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dfnas import shards as sh
from dfnas.cli import cli_main, stage_config, stage_parser
from dfnas.errors import DfnasError
from dfnas.runtime import atomic_path
from dfnas.sampling import stratified_split
from dfnas.teacher import load_teacher


def read_shards(paths, teacher_sha256: str, variant: str | None = None) -> tuple[dict, dict]:
    """Read and check every shard; return the concatenated arrays and the common attributes."""
    if not paths:
        raise DfnasError("no shards to merge")
    arrays, common, shard_ids = [], None, []
    for path in sorted(map(Path, paths)):
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
            for key in ("config_hash", "input_shape", "num_classes", "storage", "shards", "mean", "std"):
                if attrs.get(key) != common.get(key):
                    raise DfnasError(f"{path}: {key} {attrs.get(key)!r} differs from the other shards' {common.get(key)!r}")
            data = sh.read_arrays(f, path)
        sh.check_arrays(data, path, common["num_classes"], common["input_shape"])
        arrays.append(data)
    if len(set(shard_ids)) != len(shard_ids):
        raise DfnasError("the same shard was given twice")
    merged = {name: np.concatenate([a[name] for a in arrays]) for name in sh.FIELDS}
    return merged, common


def merge(paths, teacher_sha256: str, val_per_class: int, seed: int, out: Path, variant: str | None = None) -> dict:
    data, attrs = read_shards(paths, teacher_sha256, variant)
    train_idx, val_idx = stratified_split(data["labels"], val_per_class, seed)
    with atomic_path(out) as tmp:
        with sh.open_h5(tmp, "w") as f:
            meta = {k: v for k, v in attrs.items() if k not in ("format", "shard", "rounds_done")}
            sh.set_attrs(f, {**meta, "config": _json_attr(attrs.get("config")), "format": sh.DATASET_FORMAT,
                             "val_per_class": val_per_class, "split_seed": seed,
                             "shard_count": len(paths)})
            for split, idx in (("train", train_idx), ("val", val_idx)):
                group = f.create_group(split)
                sh.create_group_datasets(group, attrs["input_shape"], attrs["num_classes"], attrs["storage"])
                sh.append(group, {name: data[name][idx] for name in sh.FIELDS})
    return {"train": len(train_idx), "val": len(val_idx), "attrs": attrs, "data": data}


def _json_attr(value):
    import json

    return json.loads(value) if isinstance(value, str) else value


def sample_grid(data: dict, num_classes: int, out: Path, per_cell: int = 4) -> None:
    """A PNG: one row per class, ``per_cell`` images of that class for each round side by side."""
    from torchvision.utils import make_grid, save_image

    images = sh.from_storage(data["images"])
    rounds = sorted(set(data["round"].tolist()))
    c, h, w = images.shape[1:]
    tiles = []
    for k in range(num_classes):
        for r in rounds:
            idx = np.flatnonzero((data["labels"] == k) & (data["round"] == r))[:per_cell]
            for i in range(per_cell):
                tiles.append(images[idx[i]] if i < len(idx) else torch.ones(c, h, w))
    grid = make_grid(torch.stack(tiles), nrow=per_cell * len(rounds), padding=1, pad_value=1.0)
    with atomic_path(out) as tmp:
        save_image(grid, tmp, format="png")


@cli_main
def main(argv=None):
    parser = stage_parser("merge", __doc__, teacher="the teacher file the shards were made from", threads=False)
    parser.add_argument("--variant", help="refuse shards of any other variant")
    parser.add_argument("--shards", nargs="+", required=True, help="shard files (HDF5)")
    parser.add_argument("--out", required=True, help="merged dataset (HDF5)")
    parser.add_argument("--grid", help="PNG of samples per class and round")
    args = parser.parse_args(argv)
    cfg = stage_config(args)
    teacher = load_teacher(args.teacher)
    result = merge(args.shards, teacher.checksum, cfg["synthesis"]["val_per_class"],
                   cfg["seed"], Path(args.out), args.variant)
    if args.grid:
        sample_grid(result["data"], result["attrs"]["num_classes"], Path(args.grid))
    print(f"merged {len(args.shards)} shard(s): {result['train']} train / {result['val']} val images -> {args.out}")


if __name__ == "__main__":
    main()
