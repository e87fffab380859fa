"""The SPOS ranking check: does the synthetic data rank architectures as natural data would?

A one-shot search is only as good as the ranking its supernet gives to paths. For a fixed set of
paths (drawn with the seed, uniformly under the search's FLOPs bound; the same paths for every
source of a seed), the supernet trained on a synthetic variant scores each path twice, each time
after recalibrating BatchNorm on training batches of the same domain:

    synthetic   accuracy (agreement with the teacher) on the merged set's validation split,
                what the evolution ranks by; recalibrated on synthetic training views
    natural     accuracy on a class-balanced set of natural training images
                (``search.spos.ranking.natural_images``); recalibrated on other natural images

Kendall's tau (tau-b, ties counted) between the two score vectors says how faithful the synthetic
data is as a proxy: 1 = the same order, 0 = unrelated. This is an evaluation rule beside retrain:
it reads natural data, so it never runs inside the synthetic search.

Outputs: ``ranking.json`` (tau, the scores, the paths), ``ranking.csv`` (one row per path) and
``ranking.png`` (synthetic against natural accuracy).

    python -m dfnas.ranking --config config.yaml --network results/default/search/spos/full/seed0/search_network.pt \\
        --dataset results/default/synthesis/full/dataset.h5 --labels results/default/synthesis/full/soft_labels.h5 \\
        --out-dir results/default/search/spos/full/seed0
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from dfnas.cli import cli_main, stage_config, stage_parser
from dfnas.data import as_pixels, dataset_from_config
from dfnas.errors import DfnasError
from dfnas.evaluation import evaluate_batches
from dfnas.plots import pyplot, save_figure
from dfnas.runtime import (
    derived_seed,
    resolve_device,
    seed_everything,
    write_csv,
    write_json,
)
from dfnas.sampling import stratified_subset
from dfnas.search_data import HeldBatches, SearchData, recalibrate_bn
from dfnas.stats import kendall_tau_b
from dfnas.search_result import load_search_network
from dfnas.spaces.shufflenet import ShuffleNetOneShot, flops_table, sample_path
from dfnas.strategies.spos import data_options, path_scorer
from dfnas.streaming import batch_plan, stream


def ranking_paths(cfg: dict, table, seed: int) -> list[tuple[int, ...]]:
    """The fixed paths of a seed: distinct, drawn uniformly under the search's FLOPs bound."""
    s = cfg["search"]["spos"]
    count = s["ranking"]["paths"]
    gen = torch.Generator().manual_seed(derived_seed(seed, "ranking", "paths"))
    paths: list[tuple[int, ...]] = []
    for _ in range(100 * count):
        path = sample_path(table, gen, None, s["flops_bound"])
        if path not in paths:
            paths.append(path)
        if len(paths) == count:
            return paths
    raise DfnasError(f"search.spos.ranking.paths: only {len(paths)} distinct paths under the FLOPs bound")


def rank(cfg: dict, network_path, dataset_path, labels_path, out_dir: Path, log=print) -> dict:
    s = cfg["search"]["spos"]
    saved = load_search_network(network_path)
    if saved["space"] != "spos":
        raise DfnasError(f"{network_path}: a {saved['space']} search network; the ranking check needs a SPOS supernet")
    seed, source = saved["found_by"]["seed"], saved["found_by"]["source"]
    device = resolve_device(cfg["device"])
    seed_everything(seed)
    space_args = saved["search_args"]
    model = ShuffleNetOneShot(None, **space_args, dropout=0.0)
    model.load_state_dict(saved["state_dict"])
    model.to(device)
    data = SearchData(cfg, source, seed, dataset_path, labels_path, **data_options(s), device=device)
    table = flops_table(space_args, data.input_shape)
    paths = ranking_paths(cfg, table, seed)
    bs, n_recal = s["batch_size"], s["bn_batches"]

    # Synthetic: the search's own scoring (recalibrate on training views, score the validation split).
    synthetic_score = path_scorer(model, data, s, seed, device)

    # Natural: a class-balanced set of training images, part recalibrates, the rest is scored.
    natural = dataset_from_config(cfg)
    n_val = s["ranking"]["natural_images"]
    n_recal_images = min(n_recal * bs, n_val)
    idx = stratified_subset(natural.train.targets, n_val + n_recal_images, derived_seed(seed, "ranking", "natural") % (2**32))
    images = natural.train.subset(np.random.default_rng(seed).permutation(idx))
    workers = cfg["data"]["workers"]
    # Recalibration batches (bn_batches, as in the search) are kept where they fit (`HeldBatches`),
    # else read again for every path, as the validation images are.
    recal_plan = batch_plan(torch.arange(n_recal_images), bs)
    c, h, w = data.input_shape
    nat_recal = HeldBatches(lambda: (data.norm(as_pixels(x)) for x, _ in stream(images, recal_plan, workers)),
                            n_recal_images * c * h * w * 4)
    val_plan = batch_plan(torch.arange(n_recal_images, len(images)), bs)
    n_natural = len(images) - n_recal_images
    log(f"ranking {len(paths)} paths of the {source} supernet (seed {seed}): {len(data.halves[1])} synthetic and "
        f"{n_natural} natural validation images, device {device}")

    rows = []
    for k, path in enumerate(paths):
        syn = synthetic_score(path)
        recalibrate_bn(model, nat_recal, lambda m, x, p=path: m(x.to(device), p))
        model.eval()
        nat_val = ((data.norm(as_pixels(x)), y) for x, y in stream(images, val_plan, workers))
        nat = evaluate_batches(lambda x, p=path: model(x, p), nat_val, device=device)["top1"]
        rows.append({"path": "".join(map(str, path)), "multiply_adds": table.cost(path), "synthetic_acc": syn,
                     "natural_acc": nat})
        log(f"path {k + 1}/{len(paths)} {rows[-1]['path']}: synthetic {syn:.3f}  natural {nat:.3f}")
    tau = kendall_tau_b([r["synthetic_acc"] for r in rows], [r["natural_acc"] for r in rows])
    log(f"Kendall tau between the synthetic and the natural ranking: {tau:.3f}")
    result = {"source": source, "seed": seed, "kendall_tau": None if math.isnan(tau) else tau, "paths": rows,
              "synthetic_images": len(data.halves[1]), "natural_images": n_natural,
              "bn_batches": n_recal, "flops_bound": s["flops_bound"]}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "ranking.csv", rows)
    plot_ranking(result, out_dir / "ranking.png")
    write_json(out_dir / "ranking.json", result)
    return result


def plot_ranking(result: dict, out: Path) -> None:
    plt = pyplot()
    syn = [r["synthetic_acc"] for r in result["paths"]]
    nat = [r["natural_acc"] for r in result["paths"]]
    macs = [r["multiply_adds"] / 1e6 for r in result["paths"]]
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    points = ax.scatter(syn, nat, c=macs, cmap="viridis", s=28)
    fig.colorbar(points, ax=ax, label="multiply-adds (M)")
    ax.set_xlabel("accuracy on synthetic validation")
    ax.set_ylabel("accuracy on natural validation")
    tau = result["kendall_tau"]
    ax.set_title(f"SPOS supernet ({result['source']}, seed {result['seed']}): Kendall tau "
                 + ("undefined (a constant ranking)" if tau is None else f"{tau:.2f}"), fontsize=9)
    save_figure(fig, out)


@cli_main
def main(argv=None):
    parser = stage_parser("ranking", __doc__)
    parser.add_argument("--network", required=True, help="search_network.pt of a SPOS search on a synthetic source")
    parser.add_argument("--dataset", required=True, help="that source's synthetic dataset (HDF5)")
    parser.add_argument("--labels", required=True, help="its soft-label cache (HDF5)")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    rank(stage_config(args), args.network, args.dataset, args.labels, Path(args.out_dir))


if __name__ == "__main__":
    main()
