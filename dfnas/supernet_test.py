"""Did the search network learn the task? Its accuracy on natural test images, for the report.

A search's own held-out accuracy (``heldout_acc`` of its architecture) is measured on its own
source: natural images for a natural search, but for a synthetic one agreement with the teacher on
held-out synthetic images, many of which recursive label calibration drew near the teacher's
decision boundaries on purpose (their teacher confidence is lower, and the top class of a calibrated
image is ambiguous by design). The two arms' figures are then not on one scale. This stage scores
every trained search network the same way: on a class-balanced subset of the natural test split
(``search.supernet_test.images``), with the forward its search scores last (DARTS: the mixed
network; ProxylessNAS: the found path; SPOS: the found path, whereas its ``heldout_acc`` is the
mean over the evolution's first generation of random paths) and BatchNorm recalibrated, as in the
search, on the search's own training batches, in the precision the search recorded. The search has
ended and its choices are written: the test images inform the report only, never a synthetic
search (which reads no natural image).

Output: ``supernet_test.json`` beside the architecture: top-1 on the test subset and its size, the
search's own held-out accuracy, and that held-out part scored again by this stage
(``heldout_acc_rescored``; for DARTS and ProxylessNAS the search's final figure, for SPOS the found
path's score in the evolution: equal on the CPU, up to rounding where a GPU search rendered its
views on the device or ran channels-last), which shows that the rebuilt network is the one the
search scored.

    python -m dfnas.supernet_test --config config.yaml --network results/default/search/darts/full/seed0/search_network.pt \\
        --architecture results/default/search/darts/full/seed0/architecture.json \\
        --dataset results/default/synthesis/full/dataset.h5 --labels results/default/synthesis/full/soft_labels.h5 \\
        --out results/default/search/darts/full/seed0/supernet_test.json
"""

from __future__ import annotations

from pathlib import Path

import torch

from dfnas.cli import cli_main, stage_config, stage_parser
from dfnas.data import as_pixels, dataset_from_config
from dfnas.errors import DfnasError
from dfnas.evaluation import evaluate_batches
from dfnas.runtime import (
    autocast_forward,
    derived_seed,
    read_json,
    resolve_device,
    seed_everything,
    versions,
    write_json,
)
from dfnas.sampling import stratified_subset
from dfnas.search_data import SearchData, recalibrate_bn
from dfnas.search_result import load_search_network, search_config_hash
from dfnas.strategies import get_strategy
from dfnas.streaming import batch_plan, stream


def supernet_test(cfg: dict, network_path, architecture_path, dataset_path=None, labels_path=None,
                  log=print) -> dict:
    saved = load_search_network(network_path)
    arch = read_json(architecture_path, "the supernet test", numbers=())
    found = saved["found_by"]
    algorithm, source, seed = found["algorithm"], found["source"], found["seed"]
    if arch.get("found_by", {}).get("config_hash") != found.get("config_hash"):
        raise DfnasError(f"{architecture_path} was not found by the search that wrote {network_path} "
                         f"(their config hashes differ); rerun that search")
    strategy = get_strategy(algorithm)
    scfg = cfg["search"][algorithm]
    if search_config_hash(scfg, source, seed) != found.get("config_hash"):
        raise DfnasError(f"{network_path} was searched with other search.{algorithm} keys than this config's "
                         f"(config hashes differ); score it with the config that ran the search")
    device = resolve_device(cfg["device"])
    seed_everything(seed)
    model, forward = strategy.trained_network(saved["search_args"], saved["space_args"], arch["choices"])
    model.load_state_dict(saved["state_dict"])
    # The arithmetic the search scored in: bf16 autocast where it recorded bf16.
    bf16 = arch["found_by"].get("precision") == "bf16"
    model = autocast_forward(model.to(device), device, torch.bfloat16 if bf16 else None)

    # BatchNorm as the search's own evaluation had it: recalibrated on its training batches.
    data = SearchData(cfg, source, seed, dataset_path, labels_path, **strategy.data_options(scfg))
    recal = data.recalibration_batches(scfg["bn_batches"], scfg["batch_size"], seed)
    recalibrate_bn(model, recal, lambda m, x: forward(m, x.to(device)))
    model.eval()
    # The search's own held-out part scored again: the rebuilt network is the one the search scored.
    rescored = evaluate_batches(lambda x: forward(model, x), data.heldout_batches(scfg["batch_size"]),
                                labels_of=data.labels_of, device=device)["top1"]

    natural = dataset_from_config(cfg)
    wanted = cfg["search"]["supernet_test"]["images"]
    test = natural.test
    if wanted < len(test):
        test = test.subset(stratified_subset(test.targets, wanted, derived_seed(seed, "supernet_test") % (2**32)))
    batches = ((data.norm(as_pixels(x)), y)
               for x, y in stream(test, batch_plan(len(test), cfg["data"]["eval_batch_size"]), cfg["data"]["workers"]))
    scores = evaluate_batches(lambda x: forward(model, x), batches, device=device)
    heldout = arch["found_by"].get("heldout_acc")
    log(f"{algorithm} search network ({source}, seed {seed}): top-1 {scores['top1']:.4f} on {scores['n']} "
        f"{natural.info.name} test images (its search's held-out accuracy: "
        f"{'n/a' if heldout is None else f'{heldout:.4f}'})")
    return {"algorithm": algorithm, "source": source, "seed": seed, "test_top1": scores["top1"],
            "test_images": scores["n"], "heldout_acc": heldout, "heldout_acc_rescored": rescored,
            "bn_batches": scfg["bn_batches"],
            "device": str(device), "versions": versions()}


@cli_main
def main(argv=None):
    parser = stage_parser("supernet_test", __doc__)
    parser.add_argument("--network", required=True, help="search_network.pt of a search")
    parser.add_argument("--architecture", required=True, help="the architecture.json that search wrote")
    parser.add_argument("--dataset", help="for a synthetic source: its synthetic dataset (HDF5)")
    parser.add_argument("--labels", help="for a synthetic source: its soft-label cache (HDF5)")
    parser.add_argument("--out", required=True, help="supernet_test.json to write")
    args = parser.parse_args(argv)
    result = supernet_test(stage_config(args), args.network, args.architecture, args.dataset, args.labels)
    write_json(Path(args.out), result)


if __name__ == "__main__":
    main()
