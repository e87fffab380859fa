"""Peak memory of every stage that reads data, at N and at 10N images: does it grow with the dataset?

For each size, a generated image-folder dataset of 224-px JPEG files (``dfnas.example_data``) and a
synthetic set of as many images go through the real workflow (Snakemake, the SPOS and ProxylessNAS
spaces with their ImageNet stems, uint8 shards, top-k soft labels): every stage records its peak
resident memory (``DFNAS_PEAK_MEMORY_LOG``, read by ``dfnas.cli``). Printed per stage: the peak at
N and at 10N and their ratio. Goal: at most 1.15 for every stage (memory grows with the batch,
never with the dataset); the last line is ``max ratio X.XX``.

    python benchmarks/memory_scale.py --quick          # N = 50 and 500 images, about 9.5 minutes on 2 cores
    python benchmarks/memory_scale.py --images 200     # N = 200 and 2000

The two sizes run in turn, one job at a time (``--cores 1``), so that the figures are per process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dfnas.cli import PEAK_MEMORY_ENV  # noqa: E402
from dfnas.example_data import write_image_folder  # noqa: E402

# Stages as the benchmark reports them: (label, module, a test on the command line).
STAGES = (
    ("data", "dfnas.data", None),
    ("teacher", "dfnas.teacher", None),
    ("teacher_eval", "dfnas.teacher_eval", None),
    ("synthesize", "dfnas.synthesize", None),
    ("merge", "dfnas.merge", None),
    ("soft_labels", "dfnas.soft_labels", None),
    ("natural_reference", "dfnas.synthesis_quality", lambda argv: "--write-reference" in argv),
    ("synthesis_quality", "dfnas.synthesis_quality", lambda argv: "--write-reference" not in argv),
    ("search (natural)", "dfnas.search", lambda argv: _source(argv) == "natural"),
    ("search (synthetic)", "dfnas.search", lambda argv: _source(argv) not in ("natural", "random")),
    ("ranking", "dfnas.ranking", None),
    ("retrain", "dfnas.retrain", None),
)


def _source(argv) -> str | None:
    return argv[argv.index("--source") + 1] if "--source" in argv else None


def config(images: int, classes: int, size: int, root: Path, steps: int, ranked: int) -> dict:
    """A run whose every data-reading stage touches all ``images`` natural (and as many synthetic)
    images, with networks small enough for a CPU. The searches take ``steps`` weight updates and the
    ranking scores ``ranked`` natural images at both sizes: work the config fixes stays fixed, so
    that a ratio compares what a stage holds, not how far the allocator's heap has grown after more
    steps (glibc's heap reaches a plateau a few hundred MB up after ~100 batches)."""
    per_class = images // classes
    return {
        "run": "memory", "seed": 0, "device": "cpu", "threads": 1,
        "data": {"name": "folder", "root": str(root), "input_size": size, "workers": 1, "eval_batch_size": 25},
        "teacher": {"source": "train", "arch": {"name": "torchvision:mobilenet_v3_small", "kwargs": {}},
                    "train": {"epochs": 1, "batch_size": 25, "crop_padding": 0, "flip": False}},
        "synthesis": {"variants": ["full"], "shards": 1, "images_per_round": images // 2, "rounds": 2,
                      "batch_size": 25, "iterations_half": 1, "iterations_full": 1, "warmup": 0,
                      "region": {"mode": "resized_crop", "scale": [0.25, 1.0], "jitter": 16},
                      "val_per_class": max(1, per_class // 10)},
        "soft_labels": {"views": 2, "scale": [0.08, 1.0], "lighting": 0.1, "topk": 5, "temperature": 1.0,
                        "batch_size": 50},
        "quality": {"student": {"steps": 4, "batch_size": 16}},
        "search": {
            "algorithms": ["spos", "proxyless"], "sources": ["natural", "full"], "natural_images": images,
            "temperature": 1.0, "t_squared": False, "crop_padding": 0, "flip": False,
            "spos": {"stem": 4, "stem_stride": 4, "stage_blocks": [1, 1], "widths": [8, 16], "last_conv": 32,
                     "iterations": steps, "batch_size": 25, "train_flops": None, "bins": 2, "flops_bound": None,
                     "population": 2, "generations": 1, "topk": 1, "mutations": 1, "crossovers": 0,
                     "bn_batches": 1, "ranking": {"paths": 2, "natural_images": ranked}},
            "proxyless": {"stem": 4, "stem_stride": 4, "first": 4, "stage_blocks": [1, 1], "widths": [8, 16],
                          "strides": [2, 2], "feature_mix": 32, "warmup_iterations": 0, "iterations": steps,
                          "batch_size": 25, "arch_every": 1},
        },
        "retrain": {"train_images": images, "epochs": 1, "batch_size": 25, "crop_padding": 0, "flip": False,
                    "cutout": 0},
    }


def run_size(images: int, work: Path, classes: int, size: int, cores: int, steps: int,
             ranked: int) -> dict[str, float]:
    """Peak resident memory (MiB) of every stage of a run on ``images`` images."""
    root = write_image_folder(work / "data", classes, images // classes, images // classes, size, seed=1)
    cfg_path = work / "config.json"
    cfg_path.write_text(json.dumps(config(images, classes, size, root, steps, ranked)))
    log = work / "peaks.jsonl"
    env = {**os.environ, PEAK_MEMORY_ENV: str(log)}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--cores", str(cores), "--configfile", str(cfg_path), "--quiet", "all"]
    t0 = time.time()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    print(f"{images} images: the run took {time.time() - t0:.0f} s", flush=True)
    if done.returncode != 0:
        sys.exit(f"the run on {images} images failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    peaks = {}
    for label, module, test in STAGES:
        kb = [max(r["max_rss_kb"], r["workers_max_rss_kb"]) for r in rows
              if r["module"] == module and (test is None or test(r["argv"]))]
        if not kb:
            sys.exit(f"no peak recorded for {label} on {images} images")
        peaks[label] = max(kb) / 1024
    return peaks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 50 (about 9.5 minutes on 2 cores)")
    parser.add_argument("--images", type=int, default=200, help="N, the smaller size (default 200)")
    parser.add_argument("--factor", type=int, default=10, help="the larger size is N times this")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--size", type=int, default=224, help="side of the JPEG files and of the input")
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    n = 50 if args.quick else args.images
    sizes = (n, n * args.factor)
    with tempfile.TemporaryDirectory(prefix="dfnas-memory-") as tmp:
        # As many search steps at both sizes: enough for a pass over the larger set.
        steps = max(1, sizes[1] // 25)
        peaks = {m: run_size(m, Path(tmp) / str(m), args.classes, args.size, args.cores, steps, sizes[0])
                 for m in sizes}
    print(f"peak resident memory per stage, {args.size}-px JPEG folder of N = {sizes[0]} and {sizes[1]} images")
    print(f"{'stage':<22}{'N (MiB)':>10}{'10N (MiB)':>11}{'ratio':>8}")
    ratios = {}
    for label, _, _ in STAGES:
        small, large = peaks[sizes[0]][label], peaks[sizes[1]][label]
        ratios[label] = large / small
        print(f"{label:<22}{small:>10.0f}{large:>11.0f}{ratios[label]:>8.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"sizes": sizes, "image_side": args.size, "peaks_mib": peaks,
                                              "ratios": ratios}, indent=1) + "\n")
    print(f"max ratio {max(ratios.values()):.2f}")


if __name__ == "__main__":
    main()
