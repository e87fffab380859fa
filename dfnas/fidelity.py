"""The fidelity stage: is a data source a faithful proxy for architecture search?

Apart from any single search's luck, a source is a good proxy when architectures trained briefly
on it rank the way their true accuracies do. Per search space:

    draw     ``fidelity.architectures`` (K) architectures drawn with the run's seed from the space as
             the search sees it (the random baseline's draw: SPOS under its FLOPs bound, or over the
             whole space with ``fidelity.bounded: false``; ProxylessNAS near its cost target),
             spread over sizes: K x ``candidates`` draws sorted by multiply-adds, K of them taken
             at evenly spaced ranks. Each is written as an
             architecture JSON; its true accuracy is the retrain stage's top-1 on the natural test
             split (the same recipe as every found architecture), the mean of
             ``fidelity.truth_repeats`` retrains with their own seeds (`dfnas.retrain --repeat`).
    proxy    on one source (natural data, or a synthesis variant by distillation from its cached
             soft labels: the search's own data, `dfnas.search_data`), every architecture is trained
             from scratch for ``steps`` updates (SGD, cosine learning rate, the same seed for every
             source) and scored on the source's held-out part: a natural subset's held-out share, or
             the synthetic set's validation split (agreement with the teacher). One budget for all.

The report compares each source's proxy ranking with the true one (Kendall tau-b, top-quartile
overlap, bootstrap intervals over the architectures). A killed proxy job resumes after the last
architecture it finished.

    python -m dfnas.fidelity --config config/fmnist-study.yaml draw --space darts \\
        --dataset-json results/fmnist-study/data/dataset.json --out-dir results/fmnist-study/fidelity/darts
    python -m dfnas.fidelity --config config/fmnist-study.yaml proxy --space darts --source full \\
        --architectures results/fmnist-study/fidelity/darts/architectures.json \\
        --dataset results/fmnist-study/synthesis/full/dataset.h5 --labels results/fmnist-study/synthesis/full/soft_labels.h5 \\
        --out results/fmnist-study/fidelity/darts/proxy_full.json
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from dfnas.cli import cli_main, stage_config, stage_parser
from dfnas.data import read_description
from dfnas.errors import DfnasError
from dfnas.flops import count_macs, count_parameters
from dfnas.optim import cosine_lr, decay_groups, set_lr
from dfnas.runtime import (
    autocast_forward,
    config_hash,
    derived_seed,
    read_json,
    resolve_device,
    resolve_precision,
    seed_everything,
    versions,
    write_json,
)
from dfnas.search_data import SearchData
from dfnas.spaces import build_architecture, get_space, retrain_sizes, space_names


def network_sizes(cfg: dict, space: str) -> dict:
    """The network sizes of a space's architectures: the retrain sizes, without an auxiliary head."""
    return {**retrain_sizes(cfg["retrain"], space), "auxiliary": False}


def spread(values: list[float], k: int) -> list[int]:
    """Indices of ``k`` items at evenly spaced ranks of ``values`` (smallest and largest included)."""
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    if k >= len(order):
        return order
    if k == 1:
        return [order[len(order) // 2]]
    return [order[round(j * (len(order) - 1) / (k - 1))] for j in range(k)]


def draw_architectures(cfg: dict, space: str, input_shape, num_classes: int, log=print) -> list[dict]:
    """The K architectures of a space (see the module's doc), smallest first."""
    fcfg = cfg["fidelity"]
    k, seed = fcfg["architectures"], cfg["seed"]
    scfg = cfg["search"][space]
    if not fcfg["bounded"] and "flops_bound" in scfg:  # the whole space, not the search's FLOPs bound
        scfg = {**scfg, "flops_bound": None}
    sizes = network_sizes(cfg, space)
    c, h = input_shape[0], input_shape[1]
    drawn, seen = [], set()
    for i in range(k * fcfg["candidates"] * 4):  # distinct draws; a small space may repeat itself
        arch = get_space(space).random(scfg, derived_seed(seed, "fidelity", space, i) % (2**31),
                                       tuple(input_shape), num_classes)
        key = json.dumps(arch["choices"], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        network = build_architecture({"space": space, **arch}, c, h, num_classes, sizes)
        drawn.append({**arch, "multiply_adds": count_macs(network, tuple(input_shape)),
                      "parameters": count_parameters(network)})
        if len(drawn) == k * fcfg["candidates"]:
            break
    if len(drawn) < k:
        raise DfnasError(f"fidelity.architectures: the {space} space gave only {len(drawn)} distinct architectures "
                         f"for {k} asked")
    picked = sorted((drawn[i] for i in spread([d["multiply_adds"] for d in drawn], k)),
                    key=lambda d: d["multiply_adds"])
    log(f"fidelity {space}: {k} of {len(drawn)} drawn architectures, {picked[0]['multiply_adds'] / 1e6:.2f}M to "
        f"{picked[-1]['multiply_adds'] / 1e6:.2f}M multiply-adds")
    return [{"space": space, "space_args": d["space_args"], "choices": d["choices"],
             "found_by": {"algorithm": space, "source": "fidelity", "seed": seed, "index": j,
                          "multiply_adds": d["multiply_adds"], "parameters": d["parameters"], "versions": versions()}}
            for j, d in enumerate(picked)]


def train_briefly(model: nn.Module, data: SearchData, fcfg: dict, seed: int, device, precision=None) -> dict:
    """``fcfg['steps']`` updates of ``model`` on the source's training part, then its held-out scores
    (``precision``: the autocast dtype of the forward passes)."""
    autocast_forward(model.to(device).train(), device, precision)
    opt = torch.optim.SGD(decay_groups(model, fcfg["weight_decay"]), lr=fcfg["lr"], momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(seed)
    steps, bs, loss_sum, step = fcfg["steps"], fcfg["batch_size"], torch.zeros((), device=device), 0
    while step < steps:
        for x, y in data.batches(0, bs, gen):
            if step == steps:
                break
            set_lr(opt, cosine_lr(step, steps, fcfg["lr"]))
            loss = data.loss(model, (x.to(device, non_blocking=True), y.to(device, non_blocking=True)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            step += 1
    scores = data.evaluate(model, device, fcfg["eval_batch_size"])
    return {"val_acc": scores["val_acc"], "val_loss": scores["val_loss"], "train_loss": loss_sum.item() / steps}


def proxy_scores(cfg: dict, architectures: list[dict], source: str, dataset=None, labels=None, out: Path | None = None,
                 log=print) -> dict:
    """Every architecture trained briefly on ``source`` and scored on its held-out part. With
    ``out``, progress is kept in ``<out>.partial`` after each architecture and a rerun resumes."""
    fcfg = cfg["fidelity"]
    device = resolve_device(cfg["device"])
    data = SearchData(cfg, source, cfg["seed"], dataset, labels, train_portion=fcfg["train_portion"],
                      synthetic_holdout="val", device=device)
    space = architectures[0]["space"]
    sizes = network_sizes(cfg, space)
    c, h = data.input_shape[0], data.input_shape[1]
    fingerprint = config_hash({"fidelity": fcfg, "sizes": sizes, "data": data.fingerprint(cfg["seed"]),
                               "architectures": [a["choices"] for a in architectures]})
    partial = Path(f"{out}.partial") if out is not None else None
    rows = []
    if partial is not None and partial.is_file():
        try:
            saved = json.loads(partial.read_text())
        except (OSError, ValueError):  # damaged with its job: started afresh
            saved = {}
        if isinstance(saved, dict) and saved.get("fingerprint") == fingerprint and isinstance(saved.get("rows"), list):
            rows = saved["rows"]
            log(f"resuming after {len(rows)} of {len(architectures)} architectures ({partial})")
        else:
            log(f"ignoring {partial}: it belongs to another run (config, data or architectures)")
    log(f"fidelity {space} on {source}: {len(architectures)} architectures, {fcfg['steps']} steps of "
        f"{fcfg['batch_size']} on {len(data.halves[0])} images, scored on {len(data.halves[1])} held-out images, "
        f"device {device}")
    for arch in architectures[len(rows):]:
        index = arch["found_by"]["index"]
        seed = derived_seed(cfg["seed"], "fidelity", space, index) % (2**31)  # the same for every source
        seed_everything(seed)
        model = build_architecture(arch, c, h, data.num_classes, sizes)
        t0 = time.time()
        scores = train_briefly(model, data, fcfg, seed, device, resolve_precision(cfg["precision"], device))
        rows.append({"index": index, **scores, "seconds": time.time() - t0})
        log(f"architecture {index + 1}/{len(architectures)} ({arch['found_by']['multiply_adds'] / 1e6:.2f}M "
            f"multiply-adds): held-out accuracy {scores['val_acc']:.3f}, loss {scores['val_loss']:.3f} "
            f"({rows[-1]['seconds']:.0f} s)")
        if partial is not None:
            write_json(partial, {"fingerprint": fingerprint, "rows": rows})
    result = {"space": space, "source": source, "seed": cfg["seed"], "scores": rows, "steps": fcfg["steps"],
              "batch_size": fcfg["batch_size"], "train_images": len(data.halves[0]),
              "heldout_images": len(data.halves[1]), "config_hash": fingerprint, "device": str(device),
              "versions": versions()}
    if data.synthetic:
        result["teacher_sha256"] = data.data.attrs.get("teacher_sha256")
    return result


def read_architectures(path) -> list[dict]:
    archs = read_json(path, "the fidelity proxy", "write it with python -m dfnas.fidelity draw", kind=list)
    if not isinstance(archs, list) or not archs or not all(isinstance(a, dict) and "choices" in a for a in archs):
        raise DfnasError(f"{path}: not a list of architectures (python -m dfnas.fidelity draw writes one)")
    return archs


def check_finite(result: dict, out) -> None:
    bad = [r["index"] for r in result["scores"] if not math.isfinite(r["val_loss"])]
    if bad:
        raise DfnasError(f"{out}: the held-out loss of architectures {bad} is not finite "
                         "(fidelity.lr too high for these networks?)")


@cli_main
def main(argv=None):
    parser = stage_parser("fidelity", __doc__)
    actions = parser.add_subparsers(dest="action", required=True)
    draw = actions.add_parser("draw", help="draw the architectures of a space; one JSON each and a list")
    draw.add_argument("--space", required=True, choices=space_names())
    draw.add_argument("--dataset-json", required=True, help="the data stage's dataset description")
    draw.add_argument("--out-dir", required=True, help="writes architectures.json and arch<k>.json")
    proxy = actions.add_parser("proxy", help="train every architecture briefly on one source and score it")
    proxy.add_argument("--space", required=True, choices=space_names())
    proxy.add_argument("--source", required=True, help="natural or a synthesis variant")
    proxy.add_argument("--architectures", required=True, help="architectures.json of the draw")
    proxy.add_argument("--dataset", help="synthetic dataset (HDF5) for a synthetic source")
    proxy.add_argument("--labels", help="its soft-label cache (HDF5)")
    proxy.add_argument("--out", required=True, help="the scores JSON to write")
    args = parser.parse_args(argv)
    cfg = stage_config(args)
    if args.action == "draw":
        archs = draw_architectures(cfg, args.space, *read_description(args.dataset_json, "the fidelity draw"))
        out_dir = Path(args.out_dir)
        for arch in archs:
            write_json(out_dir / f"arch{arch['found_by']['index']}.json", arch)
        write_json(out_dir / "architectures.json", archs)
    else:
        archs = read_architectures(args.architectures)
        if any(a.get("space") != args.space for a in archs):
            raise DfnasError(f"{args.architectures}: not architectures of the {args.space} space")
        result = proxy_scores(cfg, archs, args.source, args.dataset, args.labels, Path(args.out))
        check_finite(result, args.out)
        write_json(args.out, result)
        Path(f"{args.out}.partial").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
