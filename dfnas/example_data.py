"""A generated image-folder dataset: real JPEG files in the ``data.name: folder`` layout.

For trying a folder dataset without one at hand, and for the tests and benchmarks that need files
like ImageNet's (``config/smoke-folder.yaml``, ``benchmarks/memory_scale.py``). Class k is a colour
(hue k / classes) with stripes at angle k / classes x 180 degrees, plus noise; images have random
sizes of 1 to 1.3 times ``size`` per side, so that resizing and cropping are exercised. A small
network learns the classes in an epoch or two, from any crop.

    python -m dfnas.example_data --out resources/data/example --classes 10 --per-class 30 --size 64
"""

from __future__ import annotations

import argparse
import colorsys
import math
from pathlib import Path

import numpy as np


def class_image(k: int, classes: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """One ``height x width x 3`` uint8 image of class ``k``."""
    r, g, b = colorsys.hsv_to_rgb(k / classes, 0.75, 0.8)
    angle = math.pi * k / classes
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    period = max(6.0, min(height, width) / 6)
    stripes = np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period + rng.uniform(0, 2 * math.pi))
    base = np.array([r, g, b], np.float32) * 255
    img = base[None, None, :] + 45 * stripes[:, :, None] + rng.normal(0, 18, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_image_folder(root, classes: int = 10, train_per_class: int = 30, test_per_class: int = 10,
                       size: int = 64, seed: int = 0, test_name: str = "val", quality: int = 90) -> Path:
    """Write ``root/train/<class>/*.jpg`` and ``root/<test_name>/<class>/*.jpg``; return ``root``."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    names = [f"class_{k:03d}" for k in range(classes)]
    for split, per_class in (("train", train_per_class), (test_name, test_per_class)):
        for k, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = (int(size * rng.uniform(1.0, 1.3)) for _ in range(2))
                Image.fromarray(class_image(k, classes, h, w, rng)).save(folder / f"{i:05d}.jpg", quality=quality)
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dfnas.example_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write train/ and val/ into")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=30, help="training images per class")
    parser.add_argument("--test-per-class", type=int, default=10, help="validation images per class")
    parser.add_argument("--size", type=int, default=64, help="smallest side of the images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = write_image_folder(args.out, args.classes, args.per_class, args.test_per_class, args.size, args.seed)
    print(f"wrote {args.classes} classes x ({args.per_class} train + {args.test_per_class} val) JPEG images to {root}")


if __name__ == "__main__":
    main()
