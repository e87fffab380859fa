"""The SPOS search strategy (Guo et al., ECCV 2020) on the ShuffleNetV2 one-shot space
(`dfnas.spaces.shufflenet`).

The supernet trains on the training part of the data with one path per step, drawn uniformly
within FLOPs bins (``train_flops``, ``bins``), SGD with linear decay, for ``epochs`` passes or
``iterations`` updates; then an evolution searches
paths under the FLOPs bound, each scored (`path_scorer`) by its accuracy on the held-out part after
BatchNorm recalibration on training batches. On a synthetic source the held-out part is the merged
set's validation split; on natural data ``train_portion`` of the subset trains. How well the
supernet learned (``heldout_acc`` of the architecture's ``found_by``) is the mean score of the first
generation: paths drawn at random under the bound, each recalibrated and scored. Under torchrun
the supernet trains data-parallel over the job's GPUs (`dfnas.distributed`); the evolution runs on
rank 0.

Evolution (Guo et al. 2020): a population of paths within the bound, scored; every generation
keeps the ``topk`` best ever seen, and the next population is made of mutations (each block
re-drawn with probability ``mutation_prob``) and crossovers (each block from one of two parents)
of those, filled with random paths, every candidate within the bound and never scored twice.
Scoring is a callback, so that the strategy runs on any space and data source.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from dfnas import distributed
from dfnas.checkpoint import CHECKPOINT_NAME, Checkpoint
from dfnas.distributed import Dist
from dfnas.flops import count_parameters
from dfnas.optim import decay_groups, linear_lr, set_lr, step_budget
from dfnas.runtime import autocast_forward, precision_name, progress, resolve_precision, seed_everything
from dfnas.search_data import SearchData, hold_budget
from dfnas.search_result import SearchResult
from dfnas.spaces.shufflenet import (
    CHOICES,
    ShuffleNetOneShot,
    flops_table,
    sample_path,
    space_args,
)


@dataclass
class Evolution:
    population: int = 50
    generations: int = 20
    topk: int = 10
    mutations: int = 25
    crossovers: int = 25
    mutation_prob: float = 0.1
    max_tries: int = 1000


def evolve(score: Callable[[tuple], float], macs: Callable[[tuple], float], n_blocks: int, n_choices: int,
           bound: float, cfg: Evolution, generator: torch.Generator, log=None) -> tuple[tuple, list[dict]]:
    """Return the best path found (highest score, multiply-adds <= bound) and the per-generation history."""
    seen: dict[tuple, float] = {}
    history = []

    def draw():
        return tuple(int(c) for c in torch.randint(n_choices, (n_blocks,), generator=generator))

    def valid(path):
        return macs(path) <= bound and path not in seen

    def fill(candidates, make, count):
        tries = 0
        added = 0
        while added < count and tries < cfg.max_tries:
            tries += 1
            path = make()
            if path is not None and valid(path) and path not in candidates:
                candidates.append(path)
                added += 1
        return candidates

    def mutate():
        parent = top[int(torch.randint(len(top), (1,), generator=generator))]
        flips = torch.rand(n_blocks, generator=generator) < cfg.mutation_prob
        fresh = draw()
        return tuple(f if m else p for p, f, m in zip(parent, fresh, flips.tolist()))

    def crossover():
        if len(top) < 2:
            return None
        i, j = torch.randperm(len(top), generator=generator)[:2].tolist()
        pick = torch.rand(n_blocks, generator=generator) < 0.5
        return tuple(a if s else b for a, b, s in zip(top[i], top[j], pick.tolist()))

    top: list[tuple] = []
    candidates = fill([], draw, cfg.population)
    for gen in range(cfg.generations):
        for path in candidates:
            seen[path] = float(score(path))
        top = sorted(seen, key=lambda p: -seen[p])[: cfg.topk]
        best = top[0]
        row = {"generation": gen + 1, "scored": len(seen), "best_score": seen[best],
               "mean_score": sum(seen[p] for p in candidates) / len(candidates),
               "best_macs": float(macs(best)), "top_mean_score": sum(seen[p] for p in top) / len(top),
               "best_path": "".join(map(str, best))}
        history.append(row)
        if log:
            log(f"generation {gen + 1}/{cfg.generations}: best {row['best_score']:.4f} at {row['best_macs'] / 1e6:.1f}M "
                f"multiply-adds, top-{len(top)} mean {row['top_mean_score']:.4f}, {len(seen)} paths scored")
        if gen + 1 == cfg.generations:
            break
        candidates = fill([], mutate, cfg.mutations)
        candidates = fill(candidates, crossover, cfg.crossovers)
        candidates = fill(candidates, draw, cfg.population - len(candidates))
    return top[0], history


def trained_network(search_args: dict, space_args: dict, choices: dict):
    """The supernet (its state to be loaded) and the forward that scores it: the found path."""
    path = tuple(choices["path"])
    return ShuffleNetOneShot(None, **search_args, dropout=0.0), lambda model, x: model(x, path)


def data_options(scfg: dict) -> dict:
    return {"train_portion": scfg["train_portion"], "label_smoothing": scfg["label_smoothing"],
            "synthetic_holdout": "val"}




def path_scorer(model, data: SearchData, scfg: dict, seed: int, device,
                cache_bytes: int | None = None) -> Callable[[tuple], float]:
    """How SPOS scores a path: BatchNorm recalibrated on the same ``bn_batches`` training batches
    (drawn with ``seed + 1``), then accuracy on the held-out part. On a GPU both are read and moved
    to the device once, not per path, where they fit (each in `hold_budget`: a quarter of the GPU's
    memory, at most 16 GiB; the held-out part as stored, the recalibration batches as float32
    images), else read again per path; the evolution scores about a thousand paths. On the CPU,
    where reading is cheap and memory is the job's, the held-out part is streamed unless
    ``cache_bytes`` says otherwise. ``cache_bytes=0`` moves nothing ahead."""
    if cache_bytes is None:
        cache_bytes = hold_budget(device) if torch.device(device).type != "cpu" else 0
    recal = data.recalibration_batches(scfg["bn_batches"], scfg["batch_size"], seed, device if cache_bytes else None)
    heldout = data.heldout_on(device, scfg["batch_size"], cache_bytes)

    def score(path) -> float:
        return data.evaluate(model, device, scfg["batch_size"], path, recalibrate=recal, batches=heldout)["val_acc"]

    return score


def search(cfg: dict, data: SearchData, seed: int, out_dir: Path, device, log=print,
           dist: Dist | None = None) -> SearchResult | None:
    """Train the supernet, then evolve paths under the FLOPs bound (``flops_bound``; none: the
    largest path of the space). With ``dist`` (a rank of a torchrun job), the supernet trains
    data-parallel: every rank draws the same path and the same batch plan and takes its share of
    each batch (``batch_size`` is the global batch); rank 0 then runs the evolution and returns the
    result, the other ranks None."""
    s = cfg["search"]["spos"]
    args = space_args(s, data.input_shape, data.num_classes)
    table = flops_table(args, data.input_shape)
    seed_everything(seed)
    model = data.in_memory_format(ShuffleNetOneShot(None, **args, dropout=0.0).to(device))
    precision = resolve_precision(cfg["precision"], device)
    autocast_forward(model, device, precision)
    net = model
    if dist is not None:  # one path a step: the other choice blocks get no gradient
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                                  find_unused_parameters=True)
        log = log if dist.main else (lambda *_: None)
    opt = torch.optim.SGD(decay_groups(model, s["weight_decay"]), lr=s["lr"], momentum=s["momentum"])
    gen = torch.Generator().manual_seed(seed)
    bs = s["batch_size"]
    steps_per_epoch = data.steps_per_epoch(0, bs)
    total, epochs = step_budget(s["epochs"], s["iterations"], steps_per_epoch)
    low, high = s["train_flops"] or (None, None)
    global_batch = min(bs, len(data.halves[0]))
    distributed.check_batch(dist, global_batch, "search.spos.batch_size")
    checkpoint = Checkpoint(Path(out_dir) / CHECKPOINT_NAME, {"search": s, **data.fingerprint(seed),
                                                              "precision": precision_name(precision)}, log)
    stateful = {"model": model, "opt": opt}
    resumed = checkpoint.resume(stateful, gen)
    history, start = resumed.history, resumed.epoch
    t0 = time.time()
    for epoch in range(start, epochs):
        model.train()
        loss_sum, acc_sum, steps = torch.zeros((), device=device), torch.zeros((), device=device), 0
        for x, y in data.batches(0, bs, gen, dist):
            if epoch * steps_per_epoch + steps == total:  # an update budget ends inside a pass
                break
            set_lr(opt, linear_lr(epoch * steps_per_epoch + steps, total, s["lr"]))
            path = sample_path(table, gen, low, high, s["bins"])
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = net(x, path)
            loss = data.loss_from_logits(logits, y)
            opt.zero_grad(set_to_none=True)
            # DDP averages the ranks' gradients; weighted by share, that average is the global batch's.
            (loss if dist is None else loss * (len(y) * dist.world / global_batch)).backward()
            opt.step()
            loss_sum += loss.detach()
            acc_sum += data.accuracy(logits.detach(), y)
            steps += 1
        loss_sum, acc_sum = distributed.epoch_sums(dist, torch.stack([loss_sum, acc_sum]))
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "train_loss": loss_sum / max(1, steps),
               "train_acc": acc_sum / max(1, steps)}
        history.append(row)
        distributed.on_main(dist, lambda: checkpoint.save(stateful, gen, history, epoch + 1,
                                                                    final=epoch + 1 == epochs))
        log(f"spos {data.source} seed {seed}: supernet epoch {epoch + 1}/{epochs}  loss {row['train_loss']:.3f}"
            f"  acc {row['train_acc']:.3f}  {progress(t0, epoch + 1, epochs, start)}")

    if not distributed.finish(dist):
        return None
    score = path_scorer(model, data, s, seed, device)
    bound = s["flops_bound"] if s["flops_bound"] is not None else table.bounds()[1]
    ecfg = Evolution(**{k: s[k] for k in ("population", "generations", "topk", "mutations", "crossovers",
                                          "mutation_prob")})
    best, evolution = evolve(score, table.cost, table.n_blocks, len(CHOICES), bound, ecfg, gen, log)
    return SearchResult(space_args=args, choices={"path": list(best)},
                        history=history + [{"epoch": "", **row} for row in evolution], network=model, search_args=args,
                        found_by={"weight_updates": total, "heldout_acc": evolution[0]["mean_score"],
                                  "multiply_adds": table.cost(best),
                                  "parameters": count_parameters(ShuffleNetOneShot(best, **args)), "flops_bound": bound})
