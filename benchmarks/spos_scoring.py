"""Seconds per scored SPOS path: the held-out part and the recalibration batches read and moved to
the device once (now) against read, rendered and uploaded for every path (before).

The evolution of a SPOS search scores about a thousand candidate paths, each recalibrated on
``bn_batches`` training batches and evaluated on the held-out part. The supernet here is untrained
(the cost of a score does not depend on its weights); both ways must give the same scores.

    python benchmarks/spos_scoring.py --dataset results/default/synthesis/full/dataset.h5 \\
        --labels results/default/synthesis/full/soft_labels.h5 [--paths 10 --device auto]
    python benchmarks/spos_scoring.py          # natural Fashion-MNIST (the embedded default's data)
"""

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dfnas.config import load_config  # noqa: E402
from dfnas.runtime import resolve_device, set_threads  # noqa: E402
from dfnas.search_data import SearchData  # noqa: E402
from dfnas.spaces.shufflenet import ShuffleNetOneShot, flops_table, sample_path, space_args  # noqa: E402
from dfnas.strategies.spos import data_options, path_scorer  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="config (default: the embedded default)")
    p.add_argument("--dataset", help="merged synthetic dataset; without it, the config's natural data")
    p.add_argument("--labels", help="its soft labels")
    p.add_argument("--paths", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    set_threads(args.threads)
    device = resolve_device(args.device)
    cfg = load_config(args.config)
    s = cfg["search"]["spos"]
    source = "full" if args.dataset else "natural"
    data = SearchData(cfg, source, 0, args.dataset, args.labels, **data_options(s))
    net_args = space_args(s, data.input_shape, data.num_classes)
    torch.manual_seed(0)
    model = ShuffleNetOneShot(None, **net_args, dropout=0.0).to(device)
    table = flops_table(net_args, data.input_shape)
    gen = torch.Generator().manual_seed(0)
    paths = [sample_path(table, gen) for _ in range(args.paths)]
    print(f"{source} data, {len(data.halves[1])} held-out images, {s['bn_batches']} recalibration batches of "
          f"{s['batch_size']}, {device}")
    results = {}
    for _ in range(args.rounds):  # alternately, best of the rounds: neither way gets the warm caches
        for name, cache_bytes in (("per path (before)", 0), ("once (now)", 2 << 30)):
            t0 = time.perf_counter()
            score = path_scorer(model, data, s, 0, device, cache_bytes=cache_bytes)
            setup = time.perf_counter() - t0
            t0 = time.perf_counter()
            scores = [score(path) for path in paths]
            per_path = (time.perf_counter() - t0) / len(paths)
            if name not in results or per_path < results[name][0]:
                results[name] = (per_path, scores, setup)
    for name, (per_path, _, setup) in results.items():
        print(f"data read {name:18s} {per_path:7.3f} s per scored path (+ {setup:.2f} s once)")
    (before, s_before, _), (now, s_now, _) = results.values()
    assert s_before == s_now, "the cached held-out part gave other scores"
    print(f"same scores: yes; ratio now / before: {now / before:.3f}")


if __name__ == "__main__":
    main()
