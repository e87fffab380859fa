"""Memory flat in the dataset's size: the data-reading stages, each in its own process, on N and on
10N images; their peak resident memory (VmHWM) may not grow with the set.

The images are 1 x 224 x 224 (the test teacher's single channel), so that a whole-set float32 copy
at 10N (120 MB) shows plainly above a process's ~500 MB of libraries; benchmarks/memory_scale.py
measures every stage of the workflow on 224-px RGB JPEG files.
"""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import REPO
from dfnas import shards as sh
from dfnas.example_data import write_image_folder
from dfnas.merge import merge
from dfnas.teacher import load_teacher

SIDE = 224
SIZES = (60, 600)
TOLERANCE = 1.1

# One pass of a stage over everything it reads, then the process's peak memory (KiB) on stdout.
PASSES = {
    "merge": "from dfnas.merge import merge\n"
             "merge(a['shards'], a['teacher_sha256'], 2, 0, Path(a['work']) / 'merged_again.h5')",
    "soft_labels": "from dfnas.soft_labels import make_soft_labels\n"
                   "make_soft_labels(cfg, teacher, Path(a['dataset']), Path(a['work']) / 'labels_again.h5', log=print)",
    "synthetic search data": "from dfnas.search_data import SearchData\n"
                             "import torch\n"
                             "d = SearchData(cfg, 'full', 0, a['dataset'], a['labels'], synthetic_holdout='val')\n"
                             "n = sum(len(y) for _, y in d.batches(0, 25, torch.Generator().manual_seed(0)))\n"
                             "n += sum(len(y) for _, y in d.heldout_batches(25))\n"
                             "assert n > d.images - 25, (n, d.images)  # whole batches",
    "synthesis quality": "from dfnas.synthesis_quality import quality\n"
                         "quality(cfg, teacher, Path(a['dataset']), log=print)",
    "teacher evaluation": "from dfnas.data import dataset_from_config\n"
                          "from dfnas.train import evaluate\n"
                          "evaluate(teacher.model, dataset_from_config(cfg).test, 'cpu', teacher.mean, teacher.std, 25, 1)",
}

PRELUDE = """
import json, sys
from pathlib import Path
from dfnas.config import validate_config
from dfnas.runtime import peak_rss_kib, set_threads
from dfnas.teacher import load_teacher
set_threads(1)
a = json.loads(sys.argv[1])
cfg = validate_config(a['config'])
teacher = load_teacher(a['teacher'])
"""


def fake_shards(folder, teacher, n: int) -> list:
    """Two complete shards of ``n`` images together, random pixels and outputs, as synthesis writes them."""
    rng = np.random.default_rng(n)
    paths = []
    for shard, count in enumerate((n // 2, n - n // 2)):
        path = folder / f"shard_{shard:03d}.h5"
        with h5py.File(path, "w") as f:
            sh.set_attrs(f, {"format": sh.SHARD_FORMAT, "variant": "full", "shard": shard, "shards": 2, "seed": 0,
                             "config": {}, "config_hash": "test", "teacher_sha256": teacher.checksum,
                             "mean": list(teacher.mean), "std": list(teacher.std), "storage": "uint8",
                             "input_shape": [1, SIDE, SIDE], "num_classes": 10,
                             "class_names": [str(k) for k in range(10)], "rounds": 1, "rounds_done": 1})
            sh.create_group_datasets(f, (1, SIDE, SIDE), 10, "uint8")
            for start in range(0, count, 100):
                m = min(100, count - start)
                labels = (np.arange(start, start + m) + shard) % 10
                sh.append(f, {"images": rng.integers(0, 256, (m, 1, SIDE, SIDE), dtype=np.uint8),
                              "targets": np.eye(10, dtype=np.float32)[labels], "labels": labels.astype(np.int64),
                              "round": np.zeros(m, np.int16),
                              "teacher_logits": rng.normal(size=(m, 10)).astype(np.float32)})
        paths.append(path)
    return paths


def prepare(work, teacher_file, n: int) -> dict:
    from dfnas.config import validate_config
    from dfnas.soft_labels import make_soft_labels

    teacher = load_teacher(teacher_file)
    root = write_image_folder(work / "folder", classes=10, train_per_class=n // 10, test_per_class=n // 10,
                              size=SIDE, seed=n)
    config = {"device": "cpu", "threads": 1,
              "data": {"name": "folder", "root": str(root), "channels": 1, "input_size": SIDE,
                       "mean": [0.5], "std": [0.25], "workers": 1, "eval_batch_size": 25},
              "soft_labels": {"views": 2, "batch_size": 50, "topk": 3, "temperature": 1.0},
              "quality": {"student": {"steps": 0}},
              "search": {"natural_images": n, "temperature": 1.0}}
    shards = fake_shards(work, teacher, n)
    dataset, labels = work / "dataset.h5", work / "labels.h5"
    merge(shards, teacher.checksum, 2, 0, dataset)
    make_soft_labels(validate_config(config), teacher, dataset, labels, log=lambda *_: None)
    return {"work": str(work), "config": config, "teacher": str(teacher_file), "teacher_sha256": teacher.checksum,
            "shards": [str(p) for p in shards], "dataset": str(dataset), "labels": str(labels)}


def peak_kib(name: str, args: dict) -> int:
    code = PRELUDE + PASSES[name] + "\nprint('PEAK', peak_rss_kib())\n"
    # Large blocks go back to the system when freed (a fixed mmap threshold), so that the peak
    # measures what a pass holds, not how far glibc's heap has fragmented after n batches.
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run([sys.executable, "-c", code, json.dumps(args)], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split("PEAK")[-1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_dataset(teacher_file, tmp_path):
    runs = []
    for n in SIZES:
        (tmp_path / str(n)).mkdir()
        runs.append(prepare(tmp_path / str(n), teacher_file, n))
    # What a whole-set float32 copy of the larger set would add (natural search data streams like
    # the folder evaluation here; tests/test_search_data.py checks its batches):
    copy_mib = SIZES[1] * SIDE * SIDE * 4 / 2**20
    ratios = {}
    for name in PASSES:
        small, large = (peak_kib(name, args) for args in runs)
        ratios[name] = large / small
        print(f"{name}: {small / 1024:.0f} MiB at {SIZES[0]} images, {large / 1024:.0f} MiB at {SIZES[1]}")
        assert large - small < copy_mib * 2**10 / 2, (name, small, large)
    assert max(ratios.values()) <= TOLERANCE, ratios
