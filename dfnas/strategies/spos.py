"""The SPOS search strategy's pieces: evolutionary search under a FLOPs bound, BatchNorm recalibration.

Evolution (Guo et al. 2020): a population of paths within the bound, scored; every generation
keeps the ``topk`` best ever seen, and the next population is made of mutations (each block
re-drawn with probability ``mutation_prob``) and crossovers (each block from one of two parents)
of those, filled with random paths, every candidate within the bound and never scored twice.
Scoring is a callback, so that the strategy runs on any space and data source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


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


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches, forward: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them as the plain average over
    ``batches`` (cumulative moving average), as SPOS does before scoring a path."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for x in batches:
        forward(model, x)
    model.eval()
    for m, (momentum, _) in zip(bns, saved):
        m.momentum = momentum
