"""The retrain stage: train a found architecture from scratch on natural data and test it.

This is how every NAS paper scores a search, and it is the same for every arm of a comparison
(searched on natural data, on each synthetic variant, random): one recipe from ``retrain`` in
the config (epochs, batch, SGD + cosine, cutout, drop-path, auxiliary weight, gradient clip,
label smoothing), the network sized by ``retrain.<space>`` (which may also set that space's
epochs). Under ``torchrun --nproc_per_node N`` it trains data-parallel on N GPUs with the same
global batch (`dfnas.distributed`); rank 0 tests and writes. The metrics JSON holds top-1/top-5 on
the natural test split, parameters (auxiliary head excluded), multiply-adds, training time and
the recipe. Training checkpoints every epoch and resumes after a kill.

    python -m dfnas.retrain --config config.yaml --arch results/default/search/darts/full/seed0/architecture.json \\
        --out results/default/retrain/darts/full/seed0/metrics.json
"""

from __future__ import annotations

import time
from pathlib import Path

from dfnas import distributed
from dfnas.cli import cli_main, stage_config, stage_parser
from dfnas.data import data_identity, dataset_from_config
from dfnas.flops import count_macs, count_parameters
from dfnas.runtime import (
    derived_seed,
    precision_name,
    resolve_device,
    resolve_precision,
    seed_everything,
    versions,
    write_json,
)
from dfnas.spaces import build_architecture, get_space, read_architecture, retrain_recipe, retrain_sizes
from dfnas.train import Recipe, evaluate, train_classifier


def retrain(cfg: dict, arch_path, out: Path, log=print, repeat: int = 0) -> dict:
    arch = read_architecture(arch_path, "retrain")
    rcfg = cfg["retrain"]
    space = get_space(arch["space"])
    sizes = retrain_sizes(rcfg, arch["space"])
    sizes["auxiliary"] = rcfg["aux_weight"] > 0
    data = dataset_from_config({**cfg, "data": {**cfg["data"], "subset": {
        "train": rcfg["train_images"], "test": cfg["data"]["subset"].get("test")}}}, "retrain.train_images")
    c, h, _ = data.info.input_shape
    search_seed = arch.get("found_by", {}).get("seed", 0)
    # The same for every arm of a seed; a repeat (the fidelity truth's further retrains) draws its own.
    seed = derived_seed(cfg["seed"], "retrain", search_seed, *(("repeat", repeat) if repeat else ())) % (2**31)
    seed_everything(seed)
    model = build_architecture(arch, c, h, data.info.num_classes, sizes)
    device = resolve_device(cfg["device"])
    dist = distributed.from_env(device)
    recipe = Recipe.from_dict(retrain_recipe(rcfg, arch["space"]))
    precision = resolve_precision(cfg["precision"], device)
    params = count_parameters(model, exclude=space.aux_name)
    macs = count_macs(model, data.info.input_shape)
    source = arch.get("found_by", {}).get("source", "?")
    if dist is not None and not dist.main:
        log = lambda *_: None  # noqa: E731 - rank 0 speaks for the job
    ranks = "" if dist is None else f" x {dist.world} ranks"
    log(f"retraining {arch['space']} ({source}, seed {search_seed}): {params:,} parameters, {macs / 1e6:.1f}M "
        f"multiply-adds, {len(data.train)} images, {recipe.epochs} epochs, device {device}{ranks}")
    t0 = time.time()
    checkpoint = out.with_name(out.name + ".ckpt")
    history = train_classifier(model, data.train, recipe, device, seed, data.info.mean, data.info.std, log=log,
                               num_workers=cfg["data"]["workers"], checkpoint=checkpoint,
                               precision=precision, dist=dist,
                               identity={"architecture": {k: arch.get(k) for k in ("space", "space_args", "choices")},
                                         "data": data_identity(cfg, data)})
    seconds = time.time() - t0
    distributed.close(dist)
    if dist is not None and not dist.main:
        return None  # rank 0 tests the network and writes the metrics
    scores = evaluate(model, data.test, device, data.info.mean, data.info.std, cfg["data"]["eval_batch_size"],
                      cfg["data"]["workers"])
    checkpoint.unlink(missing_ok=True)
    log(f"top-1 {scores['top1']:.4f} on {scores['n']} {data.info.name} test images after {seconds:.0f} s")
    return {
        "space": arch["space"], "choices": arch["choices"], "found_by": arch.get("found_by", {}),
        "top1": scores["top1"], "top5": scores["top5"], "test_images": scores["n"],
        "parameters": params, "multiply_adds": macs, "train_seconds": seconds, "train_images": len(data.train),
        "recipe": recipe.to_dict(), "sizes": sizes, "seed": seed, "repeat": repeat, "history": history,
        "device": str(device),
        "precision": precision_name(precision), "ranks": 1 if dist is None else dist.world,
        "versions": versions(),
    }


@cli_main
def main(argv=None):
    parser = stage_parser("retrain", __doc__)
    parser.add_argument("--arch", required=True, help="architecture JSON written by python -m dfnas.search")
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    parser.add_argument("--repeat", type=int, default=0,
                        help="a further retrain of the same architecture with its own seed (0: the architecture's own)")
    args = parser.parse_args(argv)
    if args.repeat < 0:
        parser.error(f"--repeat: {args.repeat} is negative")
    cfg = stage_config(args)
    out = Path(args.out)
    metrics = retrain(cfg, args.arch, out, repeat=args.repeat)
    if metrics is not None:
        write_json(out, metrics)


if __name__ == "__main__":
    main()
