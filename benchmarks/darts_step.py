"""DARTS search step time, and what replaying cached soft labels saves over running the teacher.

1. One DARTS search step (a first-order architecture step on one batch, then a weight step on
   another) at a fixed configuration: dfnas's search network in the default memory format and in
   channels_last, in float32 and (``--precision``, bf16 on CUDA by default) under autocast, against
   the plain PyTorch formulation that NNI's DARTS layer choice uses (all eight operations computed,
   the zero one included, stacked and summed with the softmax weights), float32. With
   ``--compile BACKEND`` (e.g. inductor), also dfnas's network through torch.compile
   (``search.darts.compile``) in float32 and in ``--precision``; its first step (the compilation)
   is printed apart.
2. Producing the distillation targets of one batch: replaying cached views and logits
   (dfnas.soft_labels) against running the teacher online on freshly augmented views.

Every figure comes from this one run; the ratios are what to read.

    python benchmarks/darts_step.py [--channels 8 --cells 5 --batch 64 --size 32 --in-channels 3]
    python benchmarks/darts_step.py --device cuda --channels 16 --cells 8 --batch 64   # the DARTS paper's search network
    python benchmarks/darts_step.py --device cuda --channels 16 --cells 8 --batch 64 --compile inductor
"""

import argparse
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dfnas.models import build_model  # noqa: E402
from dfnas.runtime import autocast_forward, resolve_device, resolve_precision, set_threads  # noqa: E402
from dfnas.losses import kd_loss  # noqa: E402
from dfnas.soft_labels import draw_views, render_views  # noqa: E402
from dfnas.spaces.darts import MixedOp, SearchNetwork  # noqa: E402
from dfnas.strategies.darts import Architect, compiled  # noqa: E402


def stacked_forward(self, x, weights):
    """NNI-style mixed operation: every operation, stacked, weighted, summed."""
    out = torch.stack([op(x) for op in self.ops])
    return (out * weights.view(-1, *[1] * (out.ndim - 1))).sum(0)


def reference_network(*args) -> SearchNetwork:
    net = SearchNetwork(*args)
    for m in net.modules():
        if isinstance(m, MixedOp):
            m.forward = types.MethodType(stacked_forward, m)
    return net


def timed(fn, repeats: int, device) -> float:
    """Best of ``repeats`` timed calls after one untimed warm-up call (its seconds: ``timed.warmup``)."""
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    timed.warmup = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--cells", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA), fp32 or bf16: the last dfnas line")
    p.add_argument("--compile", default=None, metavar="BACKEND",
                   help="also time the network through torch.compile with this backend (inductor, eager, ...)")
    args = p.parse_args()
    if args.cells < 3:
        p.error("--cells must be at least 3 (a search network has two reduction cells and a normal one)")
    set_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    shape = (args.in_channels, args.size, args.size)
    x = torch.randn(args.batch, *shape, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def loss_fn(model, batch):
        return F.cross_entropy(model(batch[0]), batch[1])

    dtype = resolve_precision(args.precision, device)
    runs = [("NNI-style reference", reference_network, "contiguous", None, False),
            ("dfnas", SearchNetwork, "contiguous", None, False), ("dfnas", SearchNetwork, "channels_last", None, False)]
    if dtype is not None:
        runs += [("dfnas", SearchNetwork, fmt, dtype, False) for fmt in ("contiguous", "channels_last")]
    if args.compile:
        runs += [(f"dfnas {args.compile}", SearchNetwork, "contiguous", d, args.compile)
                 for d in dict.fromkeys([None, dtype])]
    times = {}
    for name, build, fmt, run_dtype, backend in runs:
        net = autocast_forward(build(args.in_channels, args.size, 10, args.cells, args.channels).to(device), device,
                               run_dtype)
        xb = x
        if fmt == "channels_last":
            net = net.to(memory_format=torch.channels_last)
            xb = x.contiguous(memory_format=torch.channels_last)
        w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
        forward = compiled(net, backend)
        architect = Architect(net, loss_fn, order=1, forward=forward)

        def step():
            architect.step((xb, y), (xb, y), 0.025, w_opt)
            w_opt.zero_grad(set_to_none=True)
            loss_fn(forward, (xb, y)).backward()
            w_opt.step()

        label = f"{name}, {fmt}, {'fp32' if run_dtype is None else 'bf16'}"
        times[label] = timed(step, args.repeats, device)
        first = f"; first step {timed.warmup:.1f} s" if forward is not net else ""
        print(f"DARTS step ({label:38s}) {times[label]:8.3f} s   ({args.cells} cells, {args.channels} channels, "
              f"batch {args.batch}, {'x'.join(map(str, shape))}, {device}{first})", flush=True)
    reference = times["NNI-style reference, contiguous, fp32"]
    plain = times["dfnas, contiguous, fp32"]
    best = min(v for k, v in times.items() if k.startswith("dfnas"))
    print(f"ratio channels_last / contiguous (fp32): {times['dfnas, channels_last, fp32'] / plain:.3f}")
    print(f"ratio dfnas fp32 / NNI-style reference: {plain / reference:.3f}")
    print(f"ratio best dfnas setting / NNI-style reference: {best / reference:.3f}")
    if args.compile:
        print(f"ratio compiled ({args.compile}) / eager, fp32: {times[f'dfnas {args.compile}, contiguous, fp32'] / plain:.3f}")

    # Targets of one batch: cached replay against the teacher online.
    teacher = build_model("resnet_cifar", depth=20, width=16, num_classes=10, in_channels=args.in_channels).to(device).eval()
    pixels = torch.rand(args.batch, *shape)
    boxes, flips, _ = draw_views(args.batch, 10, (0.35, 1.0), (0.75, 4 / 3), True, torch.Generator().manual_seed(0))
    view = torch.randint(0, 10, (args.batch,))
    idx = torch.arange(args.batch)
    cached = torch.randn(args.batch, 10, 10).half()

    def replay():
        v = render_views(pixels, boxes[idx, view], flips[idx, view]).to(device)
        return v, cached[idx, view].float().to(device)

    @torch.no_grad()
    def online():
        v = render_views(pixels, boxes[idx, view], flips[idx, view]).to(device)
        return v, teacher(v)

    t_replay = timed(replay, 10, device)
    t_online = timed(online, 10, device)
    s_logits = torch.randn(args.batch, 10, device=device)
    kd_loss(s_logits, replay()[1], 3.0)
    print(f"targets by replaying the cache  {t_replay * 1000:8.2f} ms per batch")
    print(f"targets by the teacher online   {t_online * 1000:8.2f} ms per batch (ResNet-20 teacher)")
    print(f"speed-up of replay over online teacher: {t_online / t_replay:.1f}x; "
          f"share of a DARTS step the online teacher would add: {t_online * 2 / plain:.1%}")


if __name__ == "__main__":
    main()
