"""One synthesis iteration against the floor: a bare teacher forward + backward on the same batch.

A synthesis step runs the teacher once on a view of the batch and back-propagates to the pixels,
plus the BatchNorm-statistics hooks, the priors, the regional crop and an Adam step on the pixels.
This prints the time of each and their ratio (goal: <= 1.25), measured in one run.

    python benchmarks/synthesis_step.py [--batch 100] [--iterations 30] [--device auto]
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dfnas.models import build_model  # noqa: E402
from dfnas.runtime import resolve_device, set_threads  # noqa: E402
from dfnas.synthesis import Objective, Region, Schedule, synthesize_batch  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--width", type=int, default=16, help="teacher width (resnet_cifar depth 8, 1 x 28 x 28)")
    args = p.parse_args()
    set_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    teacher = build_model("resnet_cifar", depth=8, width=args.width, num_classes=10, in_channels=1).to(device).eval()
    teacher.requires_grad_(False)
    shape, mean, std = (1, 28, 28), [0.286], [0.353]
    targets = F.one_hot(torch.arange(args.batch) % 10, 10).float()
    schedule = Schedule(iterations_half=0, iterations_full=args.iterations, warmup=1)

    def synthesis():
        synthesize_batch(teacher, targets, shape, mean, std, Objective(), schedule, Region(),
                         torch.Generator().manual_seed(0))

    def bare():
        x = torch.randn(args.batch, *shape, device=device, requires_grad=True)
        y = targets.argmax(1).to(device)
        for _ in range(args.iterations):
            F.cross_entropy(teacher(x), y).backward()

    results = {}
    for name, fn in (("bare teacher forward+backward", bare), ("synthesis iteration", synthesis)):
        fn()  # warm-up
        sync(device)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            sync(device)
            best = min(best, (time.perf_counter() - t0) / args.iterations)
        results[name] = best
        print(f"{name:32s} {best * 1000:8.2f} ms per iteration (batch {args.batch}, {device})")
    ratio = results["synthesis iteration"] / results["bare teacher forward+backward"]
    print(f"ratio synthesis / bare teacher: {ratio:.3f}  (goal <= 1.25)")


if __name__ == "__main__":
    main()
