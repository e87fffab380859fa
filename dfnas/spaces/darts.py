"""The DARTS cell search space (Liu, Simonyan, Yang, ICLR 2019) as data plus builders.

A cell has two inputs (the outputs of the two previous cells), ``steps`` intermediate nodes and
one output (the concatenation of the intermediate nodes). Node i takes every earlier node as an
input through an edge that, in the search network, mixes the eight operations with softmax weights
(``MixedOp``) and, in the derived network, keeps the two strongest non-``none`` inputs with their
strongest operation (a ``Genotype``). Reduction cells (at 1/3 and 2/3 of the depth) apply stride 2
on the edges from the cell inputs and double the channels.

Every builder takes the same arguments: input channels and resolution, classes, cells, initial
channels; paper size (20 cells, 36 channels, 32x32x3) and laptop size are the same code.
"""

from __future__ import annotations

from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn

from dfnas.errors import DfnasError
from dfnas.plots import pyplot, save_figure

PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

# The genotype found by second-order DARTS on CIFAR-10 (the paper's "DARTS (second order)" cell).
DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5],
)


def genotype_to_dict(g: Genotype) -> dict:
    return {"normal": [list(e) for e in g.normal], "normal_concat": list(g.normal_concat),
            "reduce": [list(e) for e in g.reduce], "reduce_concat": list(g.reduce_concat)}


def genotype_from_dict(d: dict) -> Genotype:
    return Genotype([tuple(e) for e in d["normal"]], list(d["normal_concat"]),
                    [tuple(e) for e in d["reduce"]], list(d["reduce_concat"]))


# --------------------------------------------------------------------------------------------
# Operations


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in, c_out, kernel, stride, padding, affine=True):
        super().__init__(nn.ReLU(inplace=False), nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
                         nn.BatchNorm2d(c_out, affine=affine))


class DilConv(nn.Sequential):
    """ReLU, depthwise (dilated) conv, pointwise conv, BatchNorm."""

    def __init__(self, c_in, c_out, kernel, stride, padding, dilation, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked depthwise-separable convolutions (the first carries the stride)."""

    def __init__(self, c_in, c_out, kernel, stride, padding, affine=True):
        super().__init__(DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
                         DilConv(c_in, c_out, kernel, 1, padding, 1, affine))


class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x.mul(0.0) if self.stride == 1 else x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset 1x1 stride-2 convolutions, concatenated."""

    def __init__(self, c_in, c_out, affine=True):
        super().__init__()
        if c_out % 2:
            raise ValueError("FactorizedReduce needs an even number of output channels")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))  # keeps odd sizes aligned with conv_1
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


def make_op(name: str, c: int, stride: int, affine: bool) -> nn.Module:
    if name == "none":
        return Zero(stride)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    if name == "sep_conv_3x3":
        return SepConv(c, c, 3, stride, 1, affine)
    if name == "sep_conv_5x5":
        return SepConv(c, c, 5, stride, 2, affine)
    if name == "dil_conv_3x3":
        return DilConv(c, c, 3, stride, 2, 2, affine)
    if name == "dil_conv_5x5":
        return DilConv(c, c, 5, stride, 4, 2, affine)
    raise ValueError(f"unknown DARTS operation {name!r}")


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples of a path with probability ``drop_prob`` (scaling the kept ones)."""
    if drop_prob <= 0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


# --------------------------------------------------------------------------------------------
# Derived (discrete) network


class GenotypeError(ValueError):
    """A genotype a cell cannot be built from (an input or concat index out of range)."""


class Cell(nn.Module):
    def __init__(self, genotype: Genotype, c_pp, c_p, c, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = FactorizedReduce(c_pp, c) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0)
        edges = genotype.reduce if reduction else genotype.normal
        self.concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        kind = "reduce" if reduction else "normal"
        if len(edges) % 2:
            raise GenotypeError(f"{kind} cell: a genotype lists two inputs per node")
        self.steps = len(edges) // 2
        for k, (_, index) in enumerate(edges):  # node i reads the two cell inputs and nodes before it
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 2 + k // 2:
                raise GenotypeError(f"{kind} cell: node {k // 2} takes input {index!r}, it can take 0..{1 + k // 2}")
        if not self.concat or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < 2 + self.steps
                                  for i in self.concat):
            raise GenotypeError(f"{kind} cell: concat {self.concat} names states outside 0..{1 + self.steps}")
        self.ops = nn.ModuleList()
        self.inputs = []
        for name, index in edges:
            stride = 2 if reduction and index < 2 else 1
            self.ops.append(make_op(name, c, stride, True))
            self.inputs.append(index)
        self.multiplier = len(self.concat)

    def forward(self, s0, s1, drop_prob: float = 0.0):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self.steps):
            outs = []
            for k in (2 * i, 2 * i + 1):
                op = self.ops[k]
                h = op(states[self.inputs[k]])
                if self.training and drop_prob > 0 and not isinstance(op, nn.Identity):
                    h = drop_path(h, drop_prob)
                outs.append(h)
            states.append(outs[0] + outs[1])
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """The auxiliary classifier of the derived network, on the features at 2/3 of the depth (8x8 at 32 px)."""

    def __init__(self, c, num_classes, resolution: int):
        super().__init__()
        pool_stride = max(1, resolution - 5)  # 8x8 -> 2x2 as in DARTS; smaller inputs pool less
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=pool_stride, padding=0, count_include_pad=False),
            nn.Conv2d(c, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class DartsNetwork(nn.Module):
    """The derived network: ``cells`` cells of ``genotype`` with reductions at 1/3 and 2/3 depth."""

    def __init__(self, genotype: Genotype, in_channels: int = 3, resolution: int = 32, num_classes: int = 10,
                 cells: int = 20, channels: int = 36, auxiliary: bool = False, stem_multiplier: int = 3):
        super().__init__()
        self.cells_count = cells
        self.auxiliary = auxiliary
        self.drop_path_prob = 0.0
        c_curr = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_pp, c_p, c_curr = c_curr, c_curr, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        self.aux_index = 2 * cells // 3
        res = resolution
        aux_c, aux_res = None, None
        for i in range(cells):
            reduction = i in (cells // 3, 2 * cells // 3)
            if reduction:
                c_curr *= 2
                res = (res + 1) // 2
            cell = Cell(genotype, c_pp, c_p, c_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, cell.multiplier * c_curr
            if i == self.aux_index:
                aux_c, aux_res = c_p, res
        self.aux_head = AuxiliaryHead(aux_c, num_classes, aux_res) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x):
        s0 = s1 = self.stem(x)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.aux_head is not None and self.training:
                aux = self.aux_head(s1)
        logits = self.classifier(torch.flatten(self.global_pooling(s1), 1))
        return (logits, aux) if self.training and self.aux_head is not None else logits


# --------------------------------------------------------------------------------------------
# Search network: every edge a softmax-weighted mixture of the operations


class MixedOp(nn.Module):
    def __init__(self, c: int, stride: int):
        super().__init__()
        ops = []
        for name in PRIMITIVES:
            op = make_op(name, c, stride, affine=False)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(c, affine=False))
            ops.append(op)
        self.ops = nn.ModuleList(ops)
        # The 'none' operation contributes exactly zero: it is not computed (its weight still takes
        # part in the softmax, so its architecture parameter gets its gradient as before).
        self.computed = [k for k, op in enumerate(ops) if not isinstance(op, Zero)]
        self.register_buffer("computed_index", torch.tensor(self.computed), persistent=False)

    def forward(self, x, weights):
        # Stacked and reduced in three launches (gather, multiply, sum) rather than two per
        # operation: a GPU step of the search network is bound by launches, not arithmetic.
        outs = [self.ops[k](x) for k in self.computed]
        # Stacked as N x H x W x C where the outputs are channels_last, so that the sum keeps that
        # layout (a stack of NHWC tensors is otherwise made contiguous).
        nhwc = outs[0].is_contiguous(memory_format=torch.channels_last) and not outs[0].is_contiguous()
        stacked = torch.stack([o.permute(0, 2, 3, 1) for o in outs] if nhwc else outs)
        w = weights[self.computed_index].to(stacked.dtype)  # bf16 under autocast, as a scalar weight keeps it
        out = (stacked * w.view(-1, *[1] * x.ndim)).sum(0)
        return out.permute(0, 3, 1, 2) if nhwc else out


class SearchCell(nn.Module):
    def __init__(self, steps: int, multiplier: int, c_pp, c_p, c, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.steps, self.multiplier = steps, multiplier
        self.preprocess0 = (FactorizedReduce(c_pp, c, affine=False) if reduction_prev
                            else ReLUConvBN(c_pp, c, 1, 1, 0, affine=False))
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(
            MixedOp(c, 2 if reduction and j < 2 else 1) for i in range(steps) for j in range(2 + i)
        )

    def forward(self, s0, s1, weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.steps):
            s = sum(self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self.multiplier:], dim=1)


def num_edges(steps: int) -> int:
    return sum(2 + i for i in range(steps))


class SearchNetwork(nn.Module):
    """The one-shot network of the cell space, with architecture parameters ``alphas_normal`` and
    ``alphas_reduce`` (one row of logits over `PRIMITIVES` per edge)."""

    def __init__(self, in_channels: int = 3, resolution: int = 32, num_classes: int = 10, cells: int = 8,
                 channels: int = 16, steps: int = 4, multiplier: int = 4, stem_multiplier: int = 3):
        super().__init__()
        self.steps, self.multiplier = steps, multiplier
        c_curr = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_pp, c_p, c_curr = c_curr, c_curr, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(cells):
            reduction = i in (cells // 3, 2 * cells // 3)
            if reduction:
                c_curr *= 2
            self.cells.append(SearchCell(steps, multiplier, c_pp, c_p, c_curr, reduction, reduction_prev))
            reduction_prev = reduction
            c_pp, c_p = c_p, multiplier * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)
        k = num_edges(steps)
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(k, len(PRIMITIVES)))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(k, len(PRIMITIVES)))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas_normal, self.alphas_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("alphas_")]

    def forward(self, x):
        w_normal = F.softmax(self.alphas_normal, dim=-1)
        w_reduce = F.softmax(self.alphas_reduce, dim=-1)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
        return self.classifier(torch.flatten(self.global_pooling(s1), 1))

    def genotype(self) -> Genotype:
        return derive_genotype(F.softmax(self.alphas_normal, -1), F.softmax(self.alphas_reduce, -1), self.steps,
                               self.multiplier)


def derive_genotype(w_normal: torch.Tensor, w_reduce: torch.Tensor, steps: int = 4, multiplier: int = 4) -> Genotype:
    """Per node, the two inputs whose strongest non-``none`` operation is strongest, with that operation."""
    none = PRIMITIVES.index("none")

    def parse(weights):
        weights = weights.detach().cpu()
        gene, start, n = [], 0, 2
        for _ in range(steps):
            w = weights[start : start + n].clone()
            w[:, none] = -1.0
            best = w.max(dim=1)
            for j in sorted(range(n), key=lambda j: -best.values[j].item())[:2]:
                gene.append((PRIMITIVES[int(best.indices[j])], j))
            start += n
            n += 1
        return gene

    concat = list(range(2 + steps - multiplier, steps + 2))
    return Genotype(parse(w_normal), concat, parse(w_reduce), concat)


# --------------------------------------------------------------------------------------------
# Registry hooks (see dfnas.spaces)


def build_from_arch(arch: dict, in_channels: int, resolution: int, num_classes: int, sizes: dict) -> DartsNetwork:
    try:
        genotype = genotype_from_dict(arch["choices"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DfnasError(f"DARTS architecture: choices are not a genotype ({exc})") from None
    for kind, edges in (("normal", genotype.normal), ("reduce", genotype.reduce)):
        for k, edge in enumerate(edges):
            if len(edge) != 2:
                raise DfnasError(f"DARTS architecture: {kind} cell: edge {k} is {list(edge)}, not [operation, input]")
    for op, _ in genotype.normal + genotype.reduce:
        if op not in PRIMITIVES:
            raise DfnasError(f"DARTS architecture: unknown operation {op!r}")
    try:
        return DartsNetwork(genotype, in_channels=in_channels, resolution=resolution, num_classes=num_classes,
                            cells=sizes["cells"], channels=sizes["channels"], auxiliary=sizes.get("auxiliary", False))
    except GenotypeError as exc:
        raise DfnasError(f"DARTS architecture: {exc}") from None


def random_choices(seed: int, steps: int = 4, multiplier: int = 4) -> dict:
    """A genotype drawn uniformly: per node two distinct inputs and, for each, a non-``none`` operation."""
    gen = torch.Generator().manual_seed(seed)
    ops = [p for p in PRIMITIVES if p != "none"]

    def cell():
        gene = []
        for i in range(steps):
            inputs = torch.randperm(2 + i, generator=gen)[:2].tolist()
            for j in inputs:
                gene.append((ops[int(torch.randint(len(ops), (1,), generator=gen))], j))
        return gene

    concat = list(range(2 + steps - multiplier, steps + 2))
    return genotype_to_dict(Genotype(cell(), concat, cell(), concat))


def search_args(scfg: dict, input_shape, num_classes: int) -> dict:
    """The search network's arguments from ``search.darts`` and the data's shape."""
    return {"in_channels": input_shape[0], "resolution": input_shape[1], "num_classes": num_classes,
            "cells": scfg["cells"], "channels": scfg["channels"], "steps": scfg["steps"],
            "multiplier": scfg["multiplier"]}


def random_architecture(scfg: dict, seed: int, input_shape, num_classes: int) -> dict:
    """A genotype drawn uniformly (`random_choices`); the cell's shape is all the space has."""
    args = {"steps": scfg["steps"], "multiplier": scfg["multiplier"]}
    return {"space_args": args, "choices": random_choices(seed, **args), "found_by": {}}


def plot_choices(choices: dict, path) -> None:
    """A PNG of the normal and reduction cells: inputs, intermediate nodes, output, labelled edges."""
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
