"""The search stage: run a NAS algorithm on one data source with one seed.

Algorithms are `dfnas.strategies` (DARTS, SPOS, ProxylessNAS), each searching its space of
`dfnas.spaces`. Data sources (`dfnas.search_data`):

    natural      a class-balanced subset of the natural training split (``search.natural_images``)
    <variant>    a synthesis variant (full, deepinversion, ...): distillation from the cached soft
                 labels of its training split; no teacher and no natural image in the loop
    random       no data and no search: an architecture drawn from the space with the seed, under
                 the space's FLOPs bound (the baseline)

A checkpoint is written after every epoch: a killed search resumes from it and, on the CPU, ends
with the same architecture as an uninterrupted one.

Outputs (in ``--out-dir``): ``architecture.json`` (space, its arguments, the choices, how they were
found: among others ``heldout_acc``, the search network's final accuracy on its held-out part, and
``chance``), ``history.csv`` (per-epoch losses, accuracies and architecture probabilities) and
``architecture.png`` (the cells, path or blocks); for every source but random ``search_network.pt``,
the trained search network or supernet, from which `dfnas.ranking` scores fixed SPOS paths.

    python -m dfnas.search --config config.yaml --algorithm darts --source full --seed 0 \\
        --dataset results/default/synthesis/full/dataset.h5 --labels results/default/synthesis/full/soft_labels.h5 \\
        --out-dir results/default/search/darts/full/seed0
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from dfnas import distributed
from dfnas.checkpoint import CHECKPOINT_NAME
from dfnas.cli import cli_main, stage_config, stage_parser
from dfnas.data import read_description
from dfnas.errors import DfnasError
from dfnas.runtime import precision_name, resolve_device, resolve_precision, versions, write_csv, write_json
from dfnas.search_data import SearchData
from dfnas.search_result import save_search_network, search_config_hash
from dfnas.spaces import get_space
from dfnas.strategies import get_strategy, strategy_names


def run_search(cfg: dict, algorithm: str, source: str, seed: int, out_dir: Path, dataset=None, labels=None,
               log=print, dataset_json=None) -> dict:
    strategy = get_strategy(algorithm)
    out_dir.mkdir(parents=True, exist_ok=True)
    if source == "random":
        return random_architecture(cfg, algorithm, seed, out_dir, dataset_json, log)
    device = resolve_device(cfg["device"])
    dist = distributed.from_env(device)
    scfg = cfg["search"][algorithm]
    data = SearchData(cfg, source, seed, dataset, labels, **strategy.data_options(scfg), device=device)
    ranks = "" if dist is None else f" x {dist.world} ranks"
    if dist is None or dist.main:
        log(f"{algorithm} on {source} ({data.images} images, halves of {len(data.halves[0])} and "
            f"{len(data.halves[1])}), seed {seed}, device {device}{ranks}")
    t0 = time.time()
    result = strategy.search(cfg, data, seed, out_dir, device, log, dist=dist)
    if result is None:  # a rank other than 0 of a data-parallel search: rank 0 writes
        return None
    arch = {
        "space": strategy.space,
        "space_args": result.space_args,
        "choices": result.choices,
        "found_by": {
            "algorithm": algorithm, "source": source, "seed": seed, "data_images": data.images,
            "heldout_images": len(data.halves[1]), "chance": 1.0 / data.num_classes,
            "search_network": result.search_args, "config": scfg,
            "config_hash": search_config_hash(scfg, source, seed),
            "search_seconds": time.time() - t0, "device": str(device), "versions": versions(),
            "precision": precision_name(resolve_precision(cfg["precision"], device)),
            "ranks": 1 if dist is None else dist.world,
        },
    }
    if data.synthetic:
        arch["found_by"]["teacher_sha256"] = data.data.attrs.get("teacher_sha256")
    arch["found_by"].update(result.found_by)
    write_outputs(arch, result.history, out_dir)
    save_search_network(out_dir / "search_network.pt", result.network, arch, result.search_args)
    write_json(out_dir / "architecture.json", arch)
    (out_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
    log(f"architecture written to {out_dir / 'architecture.json'}: {json.dumps(result.choices)}")
    return arch


def random_architecture(cfg: dict, algorithm: str, seed: int, out_dir: Path, dataset_json, log=print) -> dict:
    """The random baseline: an architecture drawn from the algorithm's space with ``seed``, under the
    space's FLOPs bound where it has one. It reads the space's keys and, from the data stage's
    description (``dataset_json``), the input shape and the number of classes only."""
    strategy = get_strategy(algorithm)
    if not dataset_json:
        raise DfnasError("the random baseline needs --dataset-json (the dataset description of python -m dfnas.data)")
    shape, classes = read_description(dataset_json, "the random baseline")
    drawn = get_space(strategy.space).random(cfg["search"][algorithm], seed, shape, classes)
    arch = {"space": strategy.space, "space_args": drawn["space_args"], "choices": drawn["choices"],
            "found_by": {"algorithm": algorithm, "source": "random", "seed": seed, "data_images": 0,
                         "search_seconds": 0.0, "versions": versions(), **drawn["found_by"]}}
    write_outputs(arch, [], out_dir)
    write_json(out_dir / "architecture.json", arch)
    log(f"random {algorithm} architecture (seed {seed}) written to {out_dir / 'architecture.json'}")
    return arch


def write_outputs(arch: dict, history: list[dict], out_dir: Path) -> None:
    """The history CSV and the architecture figure."""
    write_csv(out_dir / "history.csv", history)
    get_space(arch["space"]).plot(arch["choices"], out_dir / "architecture.png")


@cli_main
def main(argv=None):
    parser = stage_parser("search", __doc__)
    parser.add_argument("--algorithm", required=True, choices=strategy_names())
    parser.add_argument("--source", required=True, help="natural, a synthesis variant, or random (the baseline)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", help="synthetic dataset (HDF5) for a synthetic source")
    parser.add_argument("--labels", help="its soft-label cache (HDF5)")
    parser.add_argument("--dataset-json", help="the data stage's dataset description (for the random baseline)")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    cfg = stage_config(args)
    run_search(cfg, args.algorithm, args.source, args.seed, Path(args.out_dir), args.dataset, args.labels,
               dataset_json=args.dataset_json)


if __name__ == "__main__":
    main()
