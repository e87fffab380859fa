"""The search stage: run a NAS algorithm on one data source with one seed.

Data sources:
    random       no data: an architecture drawn uniformly from the space with the seed (the baseline)
    natural      cross-entropy on a class-balanced subset of the natural training split
                 (``search.natural_images``), with crop and flip augmentation
    <variant>    a synthesis variant (full, deepinversion, ...): distillation at temperature
                 ``search.temperature`` from the cached soft labels of its training split, replaying
                 the cached views; no teacher and no natural image in the loop

DARTS splits the training data in half (seeded): one half trains the weights, the other the
architecture. SPOS trains its supernet on the training data and scores candidate paths on a
held-out part: on a synthetic variant, the merged set's validation split (``synthesis.val_per_class``
images per class), on natural data ``search.spos.train_portion`` of the subset. ProxylessNAS
(``dfnas.strategies.proxyless``) trains weights on ``search.proxyless.train_portion`` of the data
and its architecture parameters on the rest. A checkpoint is written after every epoch: a killed
search resumes from it and, on the CPU, ends with the same architecture as an uninterrupted one.

Outputs (in ``--out-dir``): ``architecture.json`` (space, its arguments, the choices, how they were
found), ``history.csv`` (per-epoch losses, accuracies and the softmax of the architecture
parameters) and ``architecture.png`` (the derived cells, the chosen path or blocks); for every
source but random, ``search_network.pt``: the trained search network (DARTS network with its
architecture parameters, SPOS or ProxylessNAS supernet), from which `dfnas.ranking` scores fixed
SPOS paths.

    python -m dfnas.search --config config.yaml --algorithm darts --source full --seed 0 \\
        --dataset results/default/synthesis/full/dataset.h5 --labels results/default/synthesis/full/soft_labels.h5 \\
        --out-dir results/default/search/darts/full/seed0
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfnas.cli import cli_main, stage_config, stage_parser
from dfnas.errors import DfnasError
from dfnas.runtime import config_hash, resolve_device, save_torch, seed_everything, versions, write_json
from dfnas.train import Normalize, Recipe, augment_batch, format_seconds

ALGORITHMS = ("darts", "spos", "proxyless")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t / T) || softmax(s / T))``, averaged over the batch."""
    return F.kl_div(F.log_softmax(student_logits / temperature, 1), F.softmax(teacher_logits / temperature, 1),
                    reduction="batchmean") * temperature**2


class SearchData:
    """Two halves of a data source (weights, architecture) as batches of ``(normalized x, target)``."""

    def __init__(self, cfg: dict, source: str, seed: int, dataset_path=None, labels_path=None,
                 train_portion: float | None = None, label_smoothing: float = 0.0, synthetic_holdout: str = "portion"):
        scfg = cfg["search"]
        train_portion = scfg["train_portion"] if train_portion is None else train_portion
        self.label_smoothing = label_smoothing
        self.source = source
        self.synthetic = source != "natural"
        gen = torch.Generator().manual_seed(seed)
        if self.synthetic:
            from dfnas.soft_labels import SoftLabelData

            if not dataset_path or not labels_path:
                raise DfnasError(f"source {source!r} needs --dataset and --labels (its synthetic set and soft labels)")
            self.data = SoftLabelData(dataset_path, labels_path, "train", seed=seed)
            n = len(self.data)
            self.mean, self.std = self.data.mean, self.data.std
            self.input_shape = tuple(self.data.pixels.shape[1:])
            self.num_classes = self.data.num_classes
        else:
            from dfnas.data import all_pixels, dataset_from_config, stratified_subset

            natural = dataset_from_config(cfg)
            idx = stratified_subset(natural.train.targets, scfg["natural_images"], seed)
            self.pixels = all_pixels(natural.train, idx)
            self.labels = torch.as_tensor(np.asarray(natural.train.targets)[idx])
            n = len(self.pixels)
            self.mean, self.std = natural.info.mean, natural.info.std
            self.input_shape = natural.info.input_shape
            self.num_classes = natural.info.num_classes
            self.recipe = Recipe(crop_padding=scfg["crop_padding"], flip=scfg["flip"])
        self.images = n
        if self.synthetic and synthetic_holdout == "val":
            # The whole training split trains; the merged set's validation split scores.
            self.heldout = SoftLabelData(dataset_path, labels_path, "val", seed=seed)
            if len(self.heldout) == 0:
                raise DfnasError(f"{dataset_path} has an empty validation split (synthesis.val_per_class is 0)")
            self.halves = (torch.arange(n), torch.arange(len(self.heldout)))
            self.images = n + len(self.heldout)
        else:
            perm = torch.randperm(n, generator=gen)
            half = int(n * train_portion)
            if half < 1 or half >= n:
                raise DfnasError(f"train_portion {train_portion} leaves an empty part of {n} images")
            self.halves = (perm[:half], perm[half:])
            self.heldout = self.data if self.synthetic else None
        self.temperature = scfg["temperature"]
        self.norm = Normalize(self.mean, self.std)
        self.memory_format = torch.contiguous_format

    def batches(self, half: int, batch_size: int, generator: torch.Generator):
        idx = self.halves[half]
        if self.synthetic:
            source = self.data if half == 0 else self.heldout
            for x, logits in source.batches(batch_size, generator, indices=idx, drop_last=len(idx) >= batch_size):
                yield self.norm(x).contiguous(memory_format=self.memory_format), logits
            return
        order = idx[torch.randperm(len(idx), generator=generator)]
        stop = len(order) - len(order) % batch_size if len(order) >= batch_size else len(order)
        for start in range(0, stop, batch_size):
            b = order[start : start + batch_size]
            x = self.norm(augment_batch(self.pixels[b], self.recipe, generator))
            yield x.contiguous(memory_format=self.memory_format), self.labels[b]

    def heldout_batch(self, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``b`` of the held-out part, whole and unaugmented (normalized), with their targets."""
        if self.synthetic:
            x, target = self.heldout.get(b, torch.zeros_like(b))
            return self.norm(x), target
        return self.norm(self.pixels[b]), self.labels[b]

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        return self.loss_from_logits(model(batch[0]), batch[1])

    def loss_from_logits(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Distillation from cached teacher logits (synthetic), or cross-entropy on labels (natural)."""
        if self.synthetic:
            return kd_loss(logits, target, self.temperature)
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)

    def accuracy(self, logits: torch.Tensor, target: torch.Tensor) -> float:
        truth = target.argmax(1) if self.synthetic else target
        return (logits.argmax(1) == truth).float().mean().item()


# --------------------------------------------------------------------------------------------
# Checkpoints: everything a search needs to continue exactly where it stopped


def resume(checkpoint: Path, fingerprint: str, stateful: dict, gen: torch.Generator, log) -> tuple[list, int]:
    """Load ``checkpoint`` into ``stateful`` (name -> module or optimizer) if it is this search's;
    return the history so far and the number of finished epochs."""
    if not checkpoint.is_file():
        return [], 0
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        log(f"ignoring {checkpoint}: it belongs to another search")
        return [], 0
    for name, obj in stateful.items():
        obj.load_state_dict(state[name])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    log(f"resuming from {checkpoint} after epoch {state['epoch']}")
    return state["history"], state["epoch"]


def save_checkpoint(checkpoint: Path, fingerprint: str, stateful: dict, gen: torch.Generator, history: list,
                    epoch: int) -> None:
    save_torch({"fingerprint": fingerprint, **{name: obj.state_dict() for name, obj in stateful.items()},
                "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "history": history,
                "epoch": epoch}, checkpoint)


# --------------------------------------------------------------------------------------------
# DARTS


def search_darts(cfg: dict, data: SearchData, seed: int, out_dir: Path, device, log=print) -> dict:
    from dfnas.spaces.darts import PRIMITIVES, SearchNetwork, genotype_to_dict
    from dfnas.strategies.darts import Architect

    dcfg = cfg["search"]["darts"]
    seed_everything(seed)
    space_args = {"in_channels": data.input_shape[0], "resolution": data.input_shape[1],
                  "num_classes": data.num_classes, "cells": dcfg["cells"], "channels": dcfg["channels"],
                  "steps": dcfg["steps"], "multiplier": dcfg["multiplier"]}
    model = SearchNetwork(**space_args).to(device)
    if cfg["search"]["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
        data.memory_format = torch.channels_last
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=dcfg["lr"], momentum=dcfg["momentum"],
                            weight_decay=dcfg["weight_decay"])

    architect = Architect(model, data.loss, lr=dcfg["arch_lr"], betas=dcfg["arch_betas"],
                          weight_decay=dcfg["arch_weight_decay"], order=dcfg["order"],
                          network_momentum=dcfg["momentum"], network_weight_decay=dcfg["weight_decay"])
    epochs = dcfg["epochs"]
    gen = torch.Generator().manual_seed(seed)
    checkpoint = out_dir / "checkpoint.pt"
    fingerprint = config_hash({"search": dcfg, "source": data.source, "seed": seed, "images": data.images,
                               "temperature": data.temperature})
    stateful = {"model": model, "w_opt": w_opt, "a_opt": architect.optimizer}
    history, start = resume(checkpoint, fingerprint, stateful, gen, log)
    t0 = time.time()
    for epoch in range(start, epochs):
        lr = dcfg["lr_min"] + 0.5 * (dcfg["lr"] - dcfg["lr_min"]) * (1 + math.cos(math.pi * epoch / epochs))
        for g in w_opt.param_groups:
            g["lr"] = lr
        model.train()
        sums = {"train_loss": 0.0, "train_acc": 0.0, "arch_loss": 0.0, "steps": 0}
        for train_batch, val_batch in zip(data.batches(0, dcfg["batch_size"], gen), data.batches(1, dcfg["batch_size"], gen)):
            train_batch = tuple(t.to(device) for t in train_batch)
            val_batch = tuple(t.to(device) for t in val_batch)
            if epoch >= dcfg["arch_warmup_epochs"]:
                sums["arch_loss"] += architect.step(train_batch, val_batch, lr, w_opt)
            logits = model(train_batch[0])
            loss = data.loss_from_logits(logits, train_batch[1])
            w_opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.weight_parameters(), dcfg["grad_clip"])
            w_opt.step()
            sums["train_loss"] += loss.item()
            sums["train_acc"] += data.accuracy(logits.detach(), train_batch[1])
            sums["steps"] += 1
        steps = max(1, sums["steps"])
        val = evaluate_half(model, data, device, dcfg["batch_size"])
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": sums["train_loss"] / steps,
               "train_acc": sums["train_acc"] / steps, "arch_loss": sums["arch_loss"] / steps, **val}
        for kind, alphas in (("normal", model.alphas_normal), ("reduce", model.alphas_reduce)):
            probs = F.softmax(alphas.detach().cpu(), dim=-1)
            for e in range(probs.shape[0]):
                for k, name in enumerate(PRIMITIVES):
                    row[f"alpha_{kind}_{e}_{name}"] = round(probs[e, k].item(), 6)
        history.append(row)
        save_checkpoint(checkpoint, fingerprint, stateful, gen, history, epoch + 1)
        log(f"darts {data.source} seed {seed}: epoch {epoch + 1}/{epochs}  train loss {row['train_loss']:.3f}"
            f"  acc {row['train_acc']:.3f}  val loss {row['val_loss']:.3f}  acc {row['val_acc']:.3f}"
            f"  {progress(t0, epoch + 1, start, epochs)}")
    genotype = model.genotype()
    return {"space": "darts", "space_args": {k: space_args[k] for k in ("steps", "multiplier")},
            "choices": genotype_to_dict(genotype), "history": history, "checkpoint": checkpoint, "network": model,
            "search_args": {k: space_args[k] for k in ("in_channels", "resolution", "num_classes", "cells", "channels")}}


# --------------------------------------------------------------------------------------------
# SPOS


def spos_space_args(cfg: dict, input_shape, num_classes: int) -> dict:
    s = cfg["search"]["spos"]
    return {"in_channels": input_shape[0], "num_classes": num_classes, "stem": s["stem"], "stem_stride": s["stem_stride"],
            "stage_blocks": list(s["stage_blocks"]), "widths": list(s["widths"]), "last_conv": s["last_conv"]}


def search_spos(cfg: dict, data: SearchData, seed: int, out_dir: Path, device, log=print) -> dict:
    """Train the supernet with one path per step (uniform within FLOPs bins), then evolve paths
    under the FLOPs bound, each scored on the held-out part after BatchNorm recalibration."""
    from dfnas.spaces.shufflenet import CHOICES, FlopsTable, ShuffleNetOneShot, sample_path
    from dfnas.strategies.spos import Evolution, evolve

    s = cfg["search"]["spos"]
    space_args = spos_space_args(cfg, data.input_shape, data.num_classes)
    table = FlopsTable(space_args, data.input_shape)
    seed_everything(seed)
    model = ShuffleNetOneShot(None, **space_args, dropout=0.0).to(device)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": s["weight_decay"]}, {"params": no_decay, "weight_decay": 0}],
                          lr=s["lr"], momentum=s["momentum"])
    gen = torch.Generator().manual_seed(seed)
    epochs, bs = s["epochs"], s["batch_size"]
    steps_per_epoch = max(1, len(data.halves[0]) // bs)
    total = epochs * steps_per_epoch
    low, high = s["train_flops"] or (None, None)
    checkpoint = out_dir / "checkpoint.pt"
    fingerprint = config_hash({"search": s, "source": data.source, "seed": seed, "images": data.images,
                               "temperature": data.temperature})
    stateful = {"model": model, "opt": opt}
    history, start = resume(checkpoint, fingerprint, stateful, gen, log)
    t0 = time.time()
    for epoch in range(start, epochs):
        model.train()
        loss_sum, acc_sum, steps = 0.0, 0.0, 0
        for x, y in data.batches(0, bs, gen):
            step = epoch * steps_per_epoch + steps
            for g in opt.param_groups:
                g["lr"] = s["lr"] * max(0.0, 1 - step / total)  # linear decay, as SPOS
            path = sample_path(table, gen, low, high, s["bins"])
            x, y = x.to(device), y.to(device)
            logits = model(x, path)
            loss = data.loss_from_logits(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            acc_sum += data.accuracy(logits.detach(), y)
            steps += 1
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "train_loss": loss_sum / max(1, steps),
               "train_acc": acc_sum / max(1, steps)}
        history.append(row)
        save_checkpoint(checkpoint, fingerprint, stateful, gen, history, epoch + 1)
        log(f"spos {data.source} seed {seed}: supernet epoch {epoch + 1}/{epochs}  loss {row['train_loss']:.3f}"
            f"  acc {row['train_acc']:.3f}  {progress(t0, epoch + 1, start, epochs)}")

    score = spos_scorer(model, data, s, seed, device)

    bound = s["flops_bound"] if s["flops_bound"] is not None else table.bounds()[1]
    ecfg = Evolution(**{k: s[k] for k in ("population", "generations", "topk", "mutations", "crossovers",
                                          "mutation_prob")})
    best, evolution = evolve(score, table.macs, table.n_blocks, len(CHOICES), bound, ecfg, gen, log)
    fixed = ShuffleNetOneShot(best, **space_args)
    from dfnas.flops import count_parameters

    history = history + [{"epoch": "", **row} for row in evolution]
    return {"space": "spos", "space_args": space_args, "choices": {"path": list(best)}, "history": history,
            "checkpoint": checkpoint, "search_args": space_args, "network": model,
            "extra": {"multiply_adds": table.macs(best), "parameters": count_parameters(fixed),
                      "flops_bound": bound}}


def spos_scorer(model, data: SearchData, s: dict, seed: int, device):
    """How SPOS scores a path: BatchNorm recalibrated on the same ``bn_batches`` training batches
    (drawn with ``seed + 1``), then accuracy on the held-out part."""
    from dfnas.strategies.spos import recalibrate_bn

    recal_gen = torch.Generator().manual_seed(seed + 1)
    recal = [x for _, (x, _) in zip(range(s["bn_batches"]), data.batches(0, s["batch_size"], recal_gen))]

    def score(path) -> float:
        recalibrate_bn(model, recal, lambda m, x: m(x.to(device), path))
        return evaluate_half(model, data, device, s["batch_size"], path)["val_acc"]

    return score


def progress(t0: float, done: int, start: int, total: int) -> str:
    """``elapsed ..  eta ..`` after ``done`` of ``total`` epochs, ``start`` of them done before a resume."""
    elapsed = time.time() - t0
    eta = elapsed / (done - start) * (total - done)
    return f"elapsed {format_seconds(elapsed)}  eta {format_seconds(eta)}"


@torch.no_grad()
def evaluate_half(model, data: SearchData, device, batch_size: int, path=None) -> dict:
    """Loss and accuracy on the architecture half (whole images, no augmentation)."""
    model.eval()
    idx = data.halves[1]
    total, acc, n = 0.0, 0.0, 0
    for start in range(0, len(idx), batch_size):
        b = idx[start : start + batch_size]
        x, target = data.heldout_batch(b)
        logits = model(x.to(device)) if path is None else model(x.to(device), path)
        target = target.to(device)
        total += data.loss_from_logits(logits, target).item() * len(b)
        acc += data.accuracy(logits, target) * len(b)
        n += len(b)
    model.train()
    return {"val_loss": total / n, "val_acc": acc / n}


# --------------------------------------------------------------------------------------------
# Outputs


def write_history(path: Path, history: list[dict]) -> None:
    from dfnas.runtime import atomic_path

    fields = list(dict.fromkeys(k for row in history for k in row)) or ["epoch"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(history)


def plot_darts_cells(choices: dict, path: Path) -> None:
    """A PNG of the normal and reduction cells: inputs, intermediate nodes, output, labelled edges."""
    from dfnas.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, kind in zip(axes, ("normal", "reduce")):
        edges = choices[kind]
        steps = len(edges) // 2
        pos = {0: (0, 1.5), 1: (0, -1.5)}
        for i in range(steps):
            pos[i + 2] = (2 + 2 * i, (1.8, 0.6, -0.6, -1.8)[i % 4])
        pos["out"] = (2 + 2 * steps, 0)
        names = {0: "c_{k-2}", 1: "c_{k-1}", "out": "c_{k}"}
        for (op, src), k in zip(edges, range(len(edges))):
            dst = k // 2 + 2
            (x0, y0), (x1, y1) = pos[src], pos[dst]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops={"arrowstyle": "->", "color": "0.3"})
            ax.text(x0 + 0.4 * (x1 - x0), y0 + 0.4 * (y1 - y0), op, fontsize=7, ha="center", color="tab:blue",
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
        for node in choices[f"{kind}_concat"]:
            (x0, y0), (x1, y1) = pos[node], pos["out"]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops={"arrowstyle": "->", "color": "0.7"})
        for node, (x, y) in pos.items():
            ax.text(x, y, names[node] if node in names else str(node - 2), ha="center", va="center", fontsize=9,
                    bbox={"boxstyle": "round", "fc": "lightyellow" if node in names else "lightblue"})
        ax.set_xlim(-1, 3 + 2 * steps)
        ax.set_ylim(-2.5, 2.5)
        ax.set_title(f"{kind} cell")
        ax.axis("off")
    save_figure(fig, path)


def plot_spos_path(path, out: Path) -> None:
    """A PNG strip: one coloured cell per block, labelled with its choice."""
    from dfnas.plots import pyplot, save_figure
    from dfnas.spaces.shufflenet import CHOICES

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(path)), 1.6))
    colors = ["#a6cee3", "#1f78b4", "#08306b", "#fdbf6f"]
    for i, c in enumerate(path):
        ax.add_patch(plt.Rectangle((i, 0), 0.95, 1, color=colors[c]))
        ax.text(i + 0.47, 0.5, CHOICES[c].replace("_", "\n"), ha="center", va="center", fontsize=6,
                color="white" if c in (1, 2) else "black")
    ax.set_xlim(0, len(path))
    ax.set_ylim(0, 1)
    ax.axis("off")
    ax.set_title("SPOS path (one choice per block)", fontsize=9)
    save_figure(fig, out)


def plot_proxyless_ops(ops, out: Path) -> None:
    """A PNG strip: one cell per searchable block, its height the expansion, labelled with the kernel."""
    from dfnas.plots import pyplot, save_figure
    from dfnas.spaces.proxyless import OPS, ZERO

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(ops)), 1.8))
    for i, c in enumerate(ops):
        if c == ZERO:
            ax.text(i + 0.47, 0.1, "skip", ha="center", va="bottom", fontsize=6, color="0.4")
            continue
        kernel, expansion = OPS[c].split("_e")
        ax.add_patch(plt.Rectangle((i, 0), 0.95, int(expansion) / 6, color={"3x3": "#a6cee3", "5x5": "#1f78b4",
                                                                           "7x7": "#08306b"}[kernel]))
        ax.text(i + 0.47, 0.05, f"{kernel[0]}\ne{expansion}", ha="center", va="bottom", fontsize=6,
                color="black" if kernel == "3x3" else "white")
    ax.set_xlim(0, len(ops))
    ax.set_ylim(0, 1)
    ax.axis("off")
    ax.set_title("ProxylessNAS blocks (kernel, expansion as height; skip = zero operation)", fontsize=9)
    save_figure(fig, out)


def plot_architecture(arch: dict, out: Path) -> None:
    if arch["space"] == "darts":
        plot_darts_cells(arch["choices"], out)
    elif arch["space"] == "proxyless":
        plot_proxyless_ops(arch["choices"]["ops"], out)
    else:
        plot_spos_path(arch["choices"]["path"], out)


def run_search(cfg: dict, algorithm: str, source: str, seed: int, out_dir: Path, dataset=None, labels=None,
               log=print) -> dict:
    if algorithm not in ALGORITHMS:
        raise DfnasError(f"unknown search algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")
    device = resolve_device(cfg["device"])
    out_dir.mkdir(parents=True, exist_ok=True)
    if source == "random":
        return random_architecture(cfg, algorithm, seed, out_dir, log)
    options = {}
    if algorithm in ("spos", "proxyless"):
        s = cfg["search"][algorithm]
        options = {"train_portion": s["train_portion"], "label_smoothing": s["label_smoothing"]}
    if algorithm == "spos":
        options["synthetic_holdout"] = "val"
    data = SearchData(cfg, source, seed, dataset, labels, **options)
    log(f"{algorithm} on {source} ({data.images} images, halves of {len(data.halves[0])} and {len(data.halves[1])}),"
        f" seed {seed}, device {device}")
    t0 = time.time()
    if algorithm == "darts":
        result = search_darts(cfg, data, seed, out_dir, device, log)
    elif algorithm == "spos":
        result = search_spos(cfg, data, seed, out_dir, device, log)
    else:
        from dfnas.strategies.proxyless import search_proxyless

        result = search_proxyless(cfg, data, seed, out_dir, device, log)
    seconds = time.time() - t0
    arch = {
        "space": result["space"],
        "space_args": result["space_args"],
        "choices": result["choices"],
        "found_by": {
            "algorithm": algorithm, "source": source, "seed": seed, "data_images": data.images,
            "search_network": result["search_args"], "config": cfg["search"][algorithm],
            "config_hash": config_hash({"search": cfg["search"][algorithm], "source": source, "seed": seed}),
            "search_seconds": seconds, "device": str(device), "versions": versions(),
        },
    }
    if data.synthetic:
        arch["found_by"]["teacher_sha256"] = data.data.attrs.get("teacher_sha256")
    arch["found_by"].update(result.get("extra", {}))
    write_history(out_dir / "history.csv", result["history"])
    plot_architecture(arch, out_dir / "architecture.png")
    save_search_network(out_dir / "search_network.pt", result["network"], arch, result["search_args"])
    write_json(out_dir / "architecture.json", arch)
    result["checkpoint"].unlink(missing_ok=True)
    log(f"architecture written to {out_dir / 'architecture.json'}: {json.dumps(result['choices'])}")
    return arch


def save_search_network(path: Path, network: nn.Module, arch: dict, search_args: dict) -> None:
    """The trained search network's weights (CPU, contiguous) with what rebuilds it."""
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_torch({"space": arch["space"], "space_args": arch["space_args"], "search_args": search_args, "found_by": {
        k: arch["found_by"][k] for k in ("algorithm", "source", "seed", "config_hash")}, "state_dict": state}, path)


def load_search_network(path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DfnasError(f"search network {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - truncated or foreign files
        raise DfnasError(f"{path}: not a readable search network ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not {"space", "search_args", "state_dict"} <= set(state):
        raise DfnasError(f"{path}: not a dfnas search network (write one with python -m dfnas.search)")
    return state


def random_architecture(cfg: dict, algorithm: str, seed: int, out_dir: Path, log=print) -> dict:
    """The random baseline: an architecture drawn uniformly from the algorithm's space with ``seed``."""
    from dfnas.spaces import get_space

    found_by = {"algorithm": algorithm, "source": "random", "seed": seed, "data_images": 0, "search_seconds": 0.0,
                "versions": versions()}
    from dfnas.data import SPECS

    spec = SPECS[cfg["data"]["name"]]
    if algorithm == "darts":
        dcfg = cfg["search"][algorithm]
        space_args = {"steps": dcfg["steps"], "multiplier": dcfg["multiplier"]}
        choices = get_space(algorithm).random(seed, **space_args)
    elif algorithm == "proxyless":  # one operation per block, uniform over those the block allows
        from dfnas.flops import count_macs
        from dfnas.strategies.proxyless import proxyless_space_args

        space_args = proxyless_space_args(cfg, spec.input_shape, spec.num_classes)
        choices = get_space(algorithm).random(seed, **space_args)
        net = get_space(algorithm).build({"space_args": space_args, "choices": choices}, spec.input_shape[0],
                                         spec.input_shape[1], spec.num_classes, {})
        found_by["multiply_adds"] = count_macs(net, spec.input_shape)
    else:  # a uniform path under the same FLOPs bound as the search
        from dfnas.spaces.shufflenet import FlopsTable, sample_path

        space_args = spos_space_args(cfg, spec.input_shape, spec.num_classes)
        table = FlopsTable(space_args, spec.input_shape)
        bound = cfg["search"]["spos"]["flops_bound"]
        path = sample_path(table, torch.Generator().manual_seed(seed), None, bound)
        choices = {"path": list(path)}
        found_by.update({"multiply_adds": table.macs(path), "flops_bound": bound})
    arch = {"space": algorithm, "space_args": space_args, "choices": choices, "found_by": found_by}
    write_history(out_dir / "history.csv", [])
    plot_architecture(arch, out_dir / "architecture.png")
    write_json(out_dir / "architecture.json", arch)
    log(f"random {algorithm} architecture (seed {seed}) written to {out_dir / 'architecture.json'}")
    return arch


@cli_main
def main(argv=None):
    parser = stage_parser("search", __doc__)
    parser.add_argument("--algorithm", required=True, choices=ALGORITHMS)
    parser.add_argument("--source", required=True, help="natural, a synthesis variant, or random (the baseline)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", help="synthetic dataset (HDF5) for a synthetic source")
    parser.add_argument("--labels", help="its soft-label cache (HDF5)")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    cfg = stage_config(args)
    run_search(cfg, args.algorithm, args.source, args.seed, Path(args.out_dir), args.dataset, args.labels)


if __name__ == "__main__":
    main()
