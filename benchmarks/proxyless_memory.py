"""Memory of one ProxylessNAS search step: a supernet with 7 choices per block against the same
supernet with 1 choice per block (the goal of path binarization: a ratio of at most 1.5).

What is measured: the activation memory a step holds for its backward pass, i.e. the bytes of the
distinct tensor storages that autograd saves during the forward pass (recorded with
torch.autograd.graph.saved_tensors_hooks; parameters left out, since they are resident anyway).
This is what grows with the number of paths run with a graph, and it is the same on any device. On
a CUDA device the peak of torch.cuda.max_memory_allocated during the step, above what was allocated
before it (weights, optimizer state), is printed as well.

    weight step   one operation per block drawn from the architecture probabilities, forward,
                  backward, SGD step
    arch step     two operations per block drawn, binary gates (the inactive output computed
                  without a graph), gradient of the gates, Adam step on the architecture parameters

Each draw compares like with like: the 7-choice supernet takes a step, and the 1-choice supernet
holding, in every block, just the operation that step ran (for the arch step: the active one) takes
the same step; the ratio printed is the largest over ``--draws`` draws. For scale, the script also
measures a DARTS-style step that runs every operation of every block with softmax weights.

    python benchmarks/proxyless_memory.py [--size 64 --batch 16 --draws 4 --device auto]
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dfnas.runtime import resolve_device, set_threads  # noqa: E402
from dfnas.spaces.proxyless import IMAGENET_SPACE, ZERO, ProxylessNet  # noqa: E402
from dfnas.strategies.proxyless import ArchParameters, arch_step, weight_step  # noqa: E402


class SavedBytes:
    """Bytes of the distinct storages autograd saves for backward while active (parameters excluded)."""

    def __init__(self, exclude):
        self.exclude = {p.untyped_storage().data_ptr() for p in exclude}
        self.storages = {}

    def pack(self, t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.exclude:
            self.storages[ptr] = storage.nbytes()
        return t

    def __enter__(self):
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def measure(step, params, device) -> tuple[int, int | None]:
    """(saved activation bytes, CUDA peak above the start or None) of one call of ``step``."""
    cuda_peak = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
    with SavedBytes(params) as saved:
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        cuda_peak = torch.cuda.max_memory_allocated(device) - start
    return saved.total, cuda_peak


def all_paths_step(model, arch, x, y):
    """A DARTS-style step: every operation of every block, weighted by its softmax probability."""
    probs = arch.probs()
    h = model.features_in(x)
    for b, block in enumerate(model.blocks):
        out = sum(probs[b, k] * block.candidate(k)(h) for k in block.choices if k != ZERO)
        h = h + out if block.residual else out
    loss = F.cross_entropy(model.head(h), y)
    loss.backward()


def one_step(model, kind, x, y, gen, arch=None):
    """Memory of one step of ``kind`` on ``model`` (and ``arch``, fresh when None) with fresh optimizers."""
    arch = ArchParameters(model.allowed).to(x.device) if arch is None else arch
    params = list(model.parameters()) + [arch.alpha]
    if kind == "weight step":
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        return measure(lambda: weight_step(model, arch, opt, x, y, F.cross_entropy, gen), params, x.device)
    opt = torch.optim.Adam([arch.alpha], lr=1e-3, betas=(0.0, 0.999))
    return measure(lambda: arch_step(model, arch, opt, x, y, F.cross_entropy, gen), params, x.device)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64, help="input resolution (the ImageNet space, 3 channels)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--draws", type=int, default=4, help="drawn steps compared (the largest ratio is printed)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    set_threads(args.threads)
    device = resolve_device(args.device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(device)
    y = torch.randint(0, 1000, (args.batch,), generator=gen).to(device)
    torch.manual_seed(0)
    supernet = ProxylessNet(None, **IMAGENET_SPACE).to(device)
    arch = ArchParameters(supernet.allowed).to(device)
    print(f"ImageNet space at {args.size}x{args.size}, batch {args.batch}, {device}: supernet of "
          f"{sum(p.numel() for p in supernet.parameters()) / 1e6:.2f}M weights; activation memory saved for "
          f"backward in MiB{' (CUDA peak above start in MiB)' if device.type == 'cuda' else ''}")

    def mib(m):
        return f"{m[0] / 2**20:8.1f}" + (f" ({m[1] / 2**20:8.1f})" if m[1] is not None else "")

    worst = {"weight step": 0.0, "arch step": 0.0}
    for d in range(args.draws):
        for kind in worst:
            # The operations this draw runs: the path of a weight step, the active operations of an arch step.
            probe = torch.Generator().manual_seed(d)
            ops = arch.sample_path(probe) if kind == "weight step" else [a for a, _ in arch.sample_pairs(probe)[0]]
            seven = one_step(supernet, kind, x, y, torch.Generator().manual_seed(d), arch)
            single = ProxylessNet(ops, **IMAGENET_SPACE).to(device)
            one = one_step(single, kind, x, y, torch.Generator().manual_seed(d))
            ratio = seven[0] / one[0]
            worst[kind] = max(worst[kind], ratio)
            cuda = f", CUDA peak ratio {seven[1] / one[1]:.3f}" if device.type == "cuda" else ""
            print(f"  draw {d} {kind:11s}: 7 choices {mib(seven)}  1 choice {mib(one)}  ratio {ratio:.3f}{cuda}"
                  f"  ({sum(c == ZERO for c in ops)} zero blocks)")
    supernet.zero_grad(set_to_none=True)
    full = measure(lambda: all_paths_step(supernet, arch, x, y), list(supernet.parameters()) + [arch.alpha], device)
    heaviest = one_step(ProxylessNet([5] * len(supernet.blocks), **IMAGENET_SPACE).to(device), "weight step", x, y,
                        torch.Generator().manual_seed(0))
    for kind, ratio in worst.items():
        print(f"largest ratio 7 choices / 1 choice, {kind}: {ratio:.3f}  "
              f"[goal <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'}]")
    print(f"for scale: all paths at once (DARTS-style) {mib(full)} MiB, {full[0] / heaviest[0]:.2f}x the heaviest "
          f"single path (7x7_e6 everywhere, {mib(heaviest)} MiB)")


if __name__ == "__main__":
    main()
