"""One synthesis iteration against the floor: a bare teacher forward + backward on the same batch.

A synthesis step runs the teacher once on a view of the batch and back-propagates to the pixels,
plus the BatchNorm-statistics term, the priors, the regional crop and an Adam step on the pixels.

Timing (default): the time of each and their ratio, measured in one run (goal: <= 1.25).

    python benchmarks/synthesis_step.py [--batch 100] [--iterations 30] [--device auto]
    python benchmarks/synthesis_step.py --model torchvision:resnet50 --size 224 --batch 64 --device cuda --precision bf16
    python benchmarks/synthesis_step.py --batch 50 --stack 4    # also 4 batches stacked (synthesis.stack)

Operations (``--count-ops``): the kernel-launching operations of one synthesis step and of a bare
forward + backward, counted on the CPU along the path a GPU takes (dfnas.opcount), ResNet-50 at
224 px by default; one step is
the difference between runs of two and of one iteration, so per-stage work (view draws, the
statistics layout) is left out. Goal: ``op ratio`` at most 2.0.

    python benchmarks/synthesis_step.py --count-ops
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dfnas.models import build_model  # noqa: E402
from dfnas.runtime import autocast, resolve_device, resolve_precision, set_threads  # noqa: E402
from dfnas.synthesis import Objective, Region, Schedule, synthesize_batch, synthesize_stacked  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def teacher_and_shape(model: str, size: int, width: int, classes: int):
    """The frozen teacher and its input (shape, mean, std): the Fashion-MNIST stand-in, or any
    ``torchvision:<model>`` at ``size`` px."""
    if model == "resnet_cifar":
        net = build_model("resnet_cifar", depth=8, width=width, num_classes=classes, in_channels=1)
        shape, mean, std = (1, size or 28, size or 28), [0.286], [0.353]
    else:
        net = build_model(model, num_classes=classes)
        shape, mean, std = (3, size or 224, size or 224), IMAGENET_MEAN, IMAGENET_STD
    return net.eval().requires_grad_(False), shape, mean, std


def count_ops(args):
    from dfnas import bnstats
    from dfnas.opcount import OpCounter

    bnstats.SPATIAL_SUMS_ON_CPU = False  # count the operations a GPU runs

    teacher, shape, mean, std = teacher_and_shape(args.model, args.size, args.width, args.classes)
    targets = F.one_hot(torch.arange(args.batch) % args.classes, args.classes).float()

    def synthesis(iterations):
        with OpCounter() as ops:
            synthesize_batch(teacher, targets, shape, mean, std, Objective(), Schedule(iterations_half=0,
                             iterations_full=iterations, warmup=1), Region(), torch.Generator().manual_seed(0))
        return ops.counts

    step = synthesis(2)
    step.subtract(synthesis(1))
    step = +step  # drop the zero counts
    x = torch.randn(args.batch, *shape, requires_grad=True)
    with OpCounter() as bare:
        F.cross_entropy(teacher(x), targets.argmax(1)).backward()
    n_step, n_bare = sum(step.values()), bare.total
    print(f"{args.model} at {shape[-1]} px, batch {args.batch}: {len(list(teacher.modules()))} modules")
    print(f"bare teacher forward+backward  {n_bare:6d} operations")
    print(f"synthesis step                 {n_step:6d} operations")
    extra = step.copy()
    extra.subtract(bare.counts)
    print("  most frequent beyond the bare pass: "
          + ", ".join(f"{name} {n}" for name, n in (+extra).most_common(8)))
    print(f"op ratio {n_step / n_bare:.2f}  (goal <= 2.0)")


def time_steps(args):
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    torch.manual_seed(0)
    teacher, shape, mean, std = teacher_and_shape(args.model, args.size, args.width, args.classes)
    teacher.to(device)
    targets = F.one_hot(torch.arange(args.batch) % args.classes, args.classes).float()
    schedule = Schedule(iterations_half=0, iterations_full=args.iterations, warmup=1)
    extra = {"precision": dtype} if dtype is not None else {}

    def synthesis():
        synthesize_batch(teacher, targets, shape, mean, std, Objective(), schedule, Region(),
                         torch.Generator().manual_seed(0), **extra)

    def bare():
        x = torch.randn(args.batch, *shape, device=device, requires_grad=True)
        y = targets.argmax(1).to(device)
        for _ in range(args.iterations):
            with autocast(device, dtype):
                logits = teacher(x)
            F.cross_entropy(logits.float(), y).backward()

    results = {}
    label = f"batch {args.batch}, {args.model} at {shape[-1]} px, {device}, {args.precision}"
    for name, fn in (("bare teacher forward+backward", bare), ("synthesis iteration", synthesis)):
        fn()  # warm-up (cuDNN autotuning included)
        sync(device)
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            sync(device)
            best = min(best, (time.perf_counter() - t0) / args.iterations)
        results[name] = best
        print(f"{name:32s} {best * 1000:8.2f} ms per iteration ({label})")
    ratio = results["synthesis iteration"] / results["bare teacher forward+backward"]
    print(f"images per second in synthesis: {args.batch / results['synthesis iteration']:.0f}")
    print(f"ratio synthesis / bare teacher: {ratio:.3f}  (goal <= 1.25)")
    if args.stack > 1:
        stacked = [targets] * args.stack

        def per_iteration(run) -> float:
            best = float("inf")
            for _ in range(args.repeats + 1):  # the first is a warm-up
                t0 = time.perf_counter()
                run()
                sync(device)
                best = min(best, (time.perf_counter() - t0) / args.iterations)
            return best

        best = per_iteration(lambda: synthesize_stacked(teacher, stacked, shape, mean, std, Objective(), schedule,
                                                        Region(), torch.Generator().manual_seed(0), **extra))
        one = per_iteration(lambda: synthesize_batch(teacher, torch.cat(stacked), shape, mean, std, Objective(),
                                                     schedule, Region(), torch.Generator().manual_seed(0), **extra))
        print(f"{args.stack} batches stacked            {best * 1000:8.2f} ms per iteration "
              f"({args.stack * args.batch / best:.0f} images per second)")
        print(f"one batch of {args.stack * args.batch} images         {one * 1000:8.2f} ms per iteration (the floor)")
        print(f"ratio stacked / {args.stack} batches in turn: {best / (args.stack * results['synthesis iteration']):.3f}")
        print(f"ratio stacked / one batch of as many images: {best / one:.3f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count-ops", action="store_true", help="count operations on the CPU instead of timing")
    p.add_argument("--model", default=None,
                   help="resnet_cifar (the Fashion-MNIST stand-in) or torchvision:<model>; "
                        "default resnet_cifar, torchvision:resnet50 with --count-ops")
    p.add_argument("--size", type=int, default=0, help="input size in pixels (default 28, or 224 for torchvision)")
    p.add_argument("--classes", type=int, default=0, help="classes (default 10, or 1000 for torchvision)")
    p.add_argument("--batch", type=int, default=0, help="default 100, or 2 with --count-ops")
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA), fp32 or bf16")
    p.add_argument("--width", type=int, default=16, help="width of the resnet_cifar teacher (depth 8, 1 x 28 x 28)")
    p.add_argument("--stack", type=int, default=1, help="also time this many batches in one pass (synthesis.stack)")
    args = p.parse_args()
    set_threads(args.threads)
    args.model = args.model or ("torchvision:resnet50" if args.count_ops else "resnet_cifar")
    args.classes = args.classes or (10 if args.model == "resnet_cifar" else 1000)
    args.batch = args.batch or (2 if args.count_ops else 100)
    count_ops(args) if args.count_ops else time_steps(args)


if __name__ == "__main__":
    main()
