"""Random batches from a synthetic set's HDF5 file: dfnas's row reader against h5py list indexing.

A search on synthetic images reads every batch as random rows of the merged set (dfnas.streaming.
LazyH5.rows). The files have the shard layout (dfnas.shards: gzip, shuffle, fletcher32; one image
per chunk at 224 px). This writes such a file of random pixels per image size, reads the same
random batches both ways (h5py's ``dataset[sorted_indices]``, a point selection, against dfnas's
contiguous runs) and prints milliseconds per batch and their ratio.

    python benchmarks/h5_rows.py [--work /tmp/h5_rows]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from dfnas import shards  # noqa: E402
from dfnas.streaming import LazyH5  # noqa: E402

# (channels, size, images in the file, batch): ImageNet-, CIFAR- and Fashion-MNIST-sized sets.
CASES = [(3, 224, 1500, 256), (3, 32, 20000, 64), (1, 28, 20000, 256)]
BATCHES = 5


def write(path: Path, c: int, size: int, n: int) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        group = f.create_group("train")
        shards.create_group_datasets(group, (c, size, size), 10, "uint8", n)
        for start in range(0, n, 500):
            m = min(500, n - start)
            group["images"][start:start + m] = rng.integers(0, 256, (m, c, size, size), dtype=np.uint8)


def list_indexing(h5: LazyH5, name: str, indices: torch.Tensor) -> np.ndarray:
    unique, inverse = np.unique(indices.numpy(), return_inverse=True)
    return h5.file()[name][unique][inverse]


def per_batch(read, h5: LazyH5, batches: list) -> float:
    read(h5, "train/images", batches[0])  # opens the file
    t0 = time.perf_counter()
    for idx in batches[1:]:
        read(h5, "train/images", idx)
    return (time.perf_counter() - t0) / (len(batches) - 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/dfnas-h5-rows"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    ratio_224 = None
    print("| size | batch | h5py list indexing (ms) | dfnas rows (ms) | ratio |")
    print("|---|---|---|---|---|")
    for c, size, n, batch in CASES:
        path = args.work / f"set_{size}.h5"
        write(path, c, size, n)
        gen = torch.Generator().manual_seed(1)
        batches = [torch.randperm(n, generator=gen)[:batch] for _ in range(BATCHES + 1)]
        assert np.array_equal(list_indexing(LazyH5(path), "train/images", batches[1]),
                              LazyH5(path).rows("train/images", batches[1]))
        before = per_batch(list_indexing, LazyH5(path), batches)
        after = per_batch(LazyH5.rows, LazyH5(path), batches)
        print(f"| {size} | {batch} | {before * 1e3:.1f} | {after * 1e3:.1f} | {before / after:.2f} |")
        ratio_224 = before / after if size == 224 else ratio_224
        path.unlink()
    print(f"read ratio (224 px) {ratio_224:.2f}")


if __name__ == "__main__":
    main()
