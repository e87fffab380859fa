"""Retrain throughput at ImageNet size: training images per second in float32 and in bfloat16.

The networks are what the ImageNet preset retrains (config/paper-imagenet.yaml: the SPOS and
ProxylessNAS spaces at 224 px, 1000 classes, the preset's retrain sizes), each a random
architecture of the space drawn under its FLOPs target; they train through `dfnas.train` itself
(augmentation on the device, SGD, label smoothing) on random uint8 images held in memory, so the
figure is the training loop's, not a data loader's. Each precision runs ``--epochs`` passes over
``--steps`` batches; the first pass (cuDNN autotuning, allocator warm-up) is not timed. Every
figure comes from a process of its own, so none inherits another's allocator or cuDNN caches (on
an H100, bf16 measured after fp32 in one process came out below fp32 twice, above it once).

    python benchmarks/retrain_throughput.py --device cuda [--batch 256 --steps 20]
    python benchmarks/retrain_throughput.py --device cpu --batch 8 --steps 2 --spaces proxyless   # smoke

Prints images per second per space and precision, and ``bf16 / fp32 speed-up`` per space.
"""

import argparse
import multiprocessing
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dfnas.config import load_config  # noqa: E402
from dfnas.data import TensorImages  # noqa: E402
from dfnas.runtime import resolve_device, resolve_precision, set_threads  # noqa: E402
from dfnas.spaces import build_architecture, get_space  # noqa: E402
from dfnas.train import Recipe, train_classifier  # noqa: E402

SIZE, CLASSES = 224, 1000
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def throughput(space: str, cfg: dict, precision: str, args, device) -> float:
    set_threads(args.threads)  # in the process this figure runs in
    arch = get_space(space).random(cfg["search"][space], 0, (3, SIZE, SIZE), CLASSES)
    arch["space"] = space
    torch.manual_seed(0)
    model = build_architecture(arch, 3, SIZE, CLASSES, dict(cfg["retrain"].get(space, {})))
    n = args.batch * args.steps
    gen = torch.Generator().manual_seed(0)
    data = TensorImages(torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=gen),
                        torch.randint(0, CLASSES, (n,), generator=gen))
    recipe = Recipe.from_dict({**cfg["retrain"], "epochs": args.epochs, "batch_size": args.batch,
                               "channels_last": {"auto": "auto", "true": True, "false": False}[args.channels_last]})
    history = train_classifier(model, data, recipe, device, 0, MEAN, STD, log=lambda *_: None,
                               precision=resolve_precision(precision, device))
    seconds = history[-1]["seconds"] - history[0]["seconds"]  # after the first pass
    return n * (args.epochs - 1) / seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20, help="batches per pass")
    p.add_argument("--epochs", type=int, default=3, help="passes; the first is not timed")
    p.add_argument("--spaces", nargs="+", default=["spos", "proxyless"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--channels-last", choices=["auto", "true", "false"], default="auto",
                   help="the recipe's memory format (auto: NHWC on CUDA)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the first pass is not timed)")
    set_threads(args.threads)
    device = resolve_device(args.device)
    cfg = load_config(REPO / "config" / "paper-imagenet.yaml")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"retrain throughput on {name}: 224 px, 1000 classes, batch {args.batch}, "
          f"{args.steps} steps per pass, torch {torch.__version__}")
    for space in args.spaces:
        rates = {}
        for precision in args.precisions:
            with multiprocessing.get_context("spawn").Pool(1) as pool:  # a fresh process per figure
                rates[precision] = pool.apply(throughput, (space, cfg, precision, args, device))
            print(f"{space:10s} {precision:5s} {rates[precision]:10.1f} images/s")
        if {"fp32", "bf16"} <= set(rates):
            print(f"{space:10s} bf16 / fp32 speed-up {rates['bf16'] / rates['fp32']:.2f}")


if __name__ == "__main__":
    main()
