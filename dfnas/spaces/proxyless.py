"""The ProxylessNAS space (Cai, Zhu, Han, ICLR 2019): a MobileNetV2-style chain of MBConv blocks.

    stem        conv 3x3 (stride ``stem_stride``) + BN + ReLU6, ``stem`` channels
    first       a fixed MBConv, expansion 1, kernel 3, stride 1, ``first`` channels, no shortcut
    blocks      stages of ``stage_blocks`` searchable blocks with ``widths``; the first block of a
                stage has stride ``strides[stage]``, the others stride 1
    head        conv 1x1 to ``feature_mix`` channels + BN + ReLU6, global average pooling, dropout,
                linear classifier (with bias)

An MBConv is: conv 1x1 expansion to round(c_in * e) channels + BN + ReLU6 (left out when e == 1),
depthwise k x k (the block's stride) + BN + ReLU6, conv 1x1 projection + BN (no activation).

Every searchable block chooses one of the operations ``OPS`` by index:

    0  3x3_e3    2  5x5_e3    4  7x7_e3    6  zero
    1  3x3_e6    3  5x5_e6    5  7x7_e6

``zero`` is allowed only where the block keeps the shape (stride 1 and c_in == c_out). Exactly those
blocks carry an identity shortcut, as in the published models: their output is x + op(x), and with
``zero`` it is x, so the block vanishes (the network gets shallower). The other blocks (the first
of a stage, or a stride-1 block that changes the width, as the 80 -> 96 and 192 -> 320 ones on
ImageNet) have no shortcut and output op(x). On the ImageNet space 15 of the 21 blocks allow zero.

``ProxylessNet`` builds the supernet (``choices=None``: every allowed operation of every block,
``forward(x, path)`` runs one operation per block) and the fixed network (``choices`` given: one
operation per block, nothing else is built). Stem, widths, depths, strides and head are arguments,
so the ImageNet space and a small-image one (e.g. stem stride 1 for 28x28 or 32x32) come from the
same builder.

Published models, per-layer choices read from the net configs released with the paper
(mit-han-lab/proxylessnas, ``proxyless_nas/model_zoo.py`` loads ``proxyless_gpu.config`` and
``proxyless_mobile.config`` from the han-cai/files repository): see ``PUBLISHED``.
"""

from __future__ import annotations

import torch
from torch import nn

from dfnas.errors import DfnasError
from dfnas.flops import CostTable
from dfnas.flops import flops_table as flops_table_of
from dfnas.plots import pyplot, save_figure

OPS = ("3x3_e3", "3x3_e6", "5x5_e3", "5x5_e6", "7x7_e3", "7x7_e6", "zero")
ZERO = OPS.index("zero")
MBCONV = tuple(range(ZERO))  # the six MBConv operations
KERNEL = {i: int(name[0]) for i, name in enumerate(OPS[:ZERO])}
EXPANSION = {i: int(name.split("_e")[1]) for i, name in enumerate(OPS[:ZERO])}

BN_EPS = 1e-3  # the BatchNorm epsilon of the published models and of the search code

# The ImageNet search space of the paper (and the defaults of search.proxyless in the config schema).
IMAGENET_SPACE = {"stem": 32, "stem_stride": 2, "first": 16, "stage_blocks": (4, 4, 4, 4, 4, 1),
                  "widths": (24, 40, 80, 96, 192, 320), "strides": (2, 2, 2, 1, 2, 1), "feature_mix": 1280}

# The published models, as builder arguments plus one operation (index into OPS) per searchable block.
# Source: mit-han-lab/proxylessnas published net configs (han-cai/files: proxylessnas/proxyless_gpu.config
# and proxylessnas/proxyless_mobile.config). Each has its own widths: GPU stem 40, first block 24, stages
# 32, 56, 112, 128, 256, 432, feature mix 1728; Mobile stem 32, first block 16, stages 32, 40, 80, 96,
# 192, 320, feature mix 1280 (its first stage is 32 wide, not the 24 of the search space).
PROXYLESS_GPU_ARGS = {"stem": 40, "stem_stride": 2, "first": 24, "stage_blocks": (4, 4, 4, 4, 4, 1),
                      "widths": (32, 56, 112, 128, 256, 432), "strides": (2, 2, 2, 1, 2, 1), "feature_mix": 1728}
PROXYLESS_GPU = (2, 6, 6, 6,  4, 6, 6, 0,  5, 6, 6, 2,  3, 6, 0, 2,  5, 5, 5, 3,  5)  # noqa: E241
PROXYLESS_MOBILE_ARGS = {"stem": 32, "stem_stride": 2, "first": 16, "stage_blocks": (4, 4, 4, 4, 4, 1),
                         "widths": (32, 40, 80, 96, 192, 320), "strides": (2, 2, 2, 1, 2, 1), "feature_mix": 1280}
PROXYLESS_MOBILE = (2, 0, 6, 6,  4, 0, 2, 2,  5, 2, 2, 2,  3, 2, 2, 2,  5, 5, 4, 4,  5)  # noqa: E241
PUBLISHED = {"gpu": (PROXYLESS_GPU_ARGS, PROXYLESS_GPU), "mobile": (PROXYLESS_MOBILE_ARGS, PROXYLESS_MOBILE)}

NETWORK_KEYS = ("stem", "stem_stride", "first", "stage_blocks", "widths", "strides", "feature_mix")


def block_layout(stem: int = 32, first: int = 16, stage_blocks=(4, 4, 4, 4, 4, 1), widths=(24, 40, 80, 96, 192, 320),
                 strides=(2, 2, 2, 1, 2, 1), **_) -> list[tuple[int, int, int]]:
    """(c_in, c_out, stride) of every searchable block."""
    if not len(stage_blocks) == len(widths) == len(strides):
        raise ValueError(f"stage_blocks, widths and strides differ in length ({len(stage_blocks)}, {len(widths)}, "
                         f"{len(strides)})")
    layout, c = [], first
    for depth, width, stride in zip(stage_blocks, widths, strides):
        for j in range(depth):
            layout.append((c, width, stride if j == 0 else 1))
            c = width
    return layout


def allowed_ops(layout, candidates=MBCONV, allow_zero: bool = True) -> list[tuple[int, ...]]:
    """The operations (indices into OPS) each block may choose: ``candidates``, plus zero where shapes allow."""
    return [tuple(candidates) + ((ZERO,) if allow_zero and s == 1 and ci == co else ()) for ci, co, s in layout]


class MBConv(nn.Sequential):
    """Inverted residual convolution (without its shortcut, which belongs to the block)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expansion: int):
        mid = round(c_in * expansion)
        layers = []
        if expansion != 1:
            layers += [nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid, eps=BN_EPS), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False),
                   nn.BatchNorm2d(mid, eps=BN_EPS), nn.ReLU6(inplace=True),
                   nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out, eps=BN_EPS)]
        super().__init__(*layers)


class ProxylessBlock(nn.Module):
    """One searchable block holding the modules of its allowed operations (``zero`` has none)."""

    def __init__(self, c_in: int, c_out: int, stride: int, choices):
        super().__init__()
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.residual = stride == 1 and c_in == c_out
        self.choices = tuple(int(c) for c in choices)
        if ZERO in self.choices and not self.residual:
            raise ValueError(f"zero is not allowed in a block {c_in}->{c_out} with stride {stride}")
        self.ops = nn.ModuleDict({OPS[c]: MBConv(c_in, c_out, KERNEL[c], stride, EXPANSION[c])
                                  for c in self.choices if c != ZERO})

    def candidate(self, choice: int) -> nn.Module | None:
        """The module of operation ``choice`` (None for zero)."""
        if choice not in self.choices:
            raise ValueError(f"operation {choice} is not among this block's {self.choices}")
        return None if choice == ZERO else self.ops[OPS[choice]]

    def forward(self, x, choice: int | None = None):
        op = self.candidate(self.choices[0] if choice is None else choice)
        if op is None:
            return x
        return x + op(x) if self.residual else op(x)


class ProxylessNet(nn.Module):
    """The ProxylessNAS network: the supernet when ``choices`` is None, else the fixed network.

    ``candidates`` and ``allow_zero`` narrow the supernet's operations (e.g. one operation per
    block, to compare with); a fixed network ignores them.
    """

    def __init__(self, choices=None, in_channels: int = 3, num_classes: int = 1000, stem: int = 32,
                 stem_stride: int = 2, first: int = 16, stage_blocks=(4, 4, 4, 4, 4, 1),
                 widths=(24, 40, 80, 96, 192, 320), strides=(2, 2, 2, 1, 2, 1), feature_mix: int = 1280,
                 dropout: float = 0.0, candidates=MBCONV, allow_zero: bool = True):
        super().__init__()
        layout = block_layout(stem, first, stage_blocks, widths, strides)
        self.layout = layout
        if choices is None:
            per_block = allowed_ops(layout, candidates, allow_zero)
            self.choices = None
        else:
            choices = tuple(int(c) for c in choices)
            if len(choices) != len(layout):
                raise ValueError(f"{len(choices)} choices for {len(layout)} searchable blocks")
            for b, (c, (ci, co, s)) in enumerate(zip(choices, layout)):
                if not 0 <= c < len(OPS):
                    raise ValueError(f"block {b}: operation {c} is not one of 0..{len(OPS) - 1} ({', '.join(OPS)})")
                if c == ZERO and not (s == 1 and ci == co):
                    raise ValueError(f"block {b}: zero is only allowed where stride is 1 and the width is kept "
                                     f"(this block is {ci}->{co}, stride {s})")
            per_block = [(c,) for c in choices]
            self.choices = choices
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, stem_stride, 1, bias=False),
                                  nn.BatchNorm2d(stem, eps=BN_EPS), nn.ReLU6(inplace=True))
        self.first = MBConv(stem, first, 3, 1, 1)
        self.blocks = nn.ModuleList(ProxylessBlock(ci, co, s, ops) for (ci, co, s), ops in zip(layout, per_block))
        c_last = layout[-1][1] if layout else first
        self.feature_mix = nn.Sequential(nn.Conv2d(c_last, feature_mix, 1, bias=False),
                                         nn.BatchNorm2d(feature_mix, eps=BN_EPS), nn.ReLU6(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(feature_mix, num_classes)

    @property
    def allowed(self) -> list[tuple[int, ...]]:
        return [b.choices for b in self.blocks]

    def features_in(self, x):
        """Stem and the fixed first block."""
        return self.first(self.stem(x))

    def head(self, x):
        """Feature mix, pooling, dropout, classifier."""
        return self.classifier(self.dropout(self.pool(self.feature_mix(x)).flatten(1)))

    def forward(self, x, path=None):
        """``path`` picks an operation per block in the supernet (default: each block's first);
        a fixed network ignores it."""
        x = self.features_in(x)
        for k, block in enumerate(self.blocks):
            x = block(x, None if self.choices is not None or path is None else path[k])
        return self.head(x)


# --------------------------------------------------------------------------------------------
# Multiply-adds per (block, operation)


def flops_table(net_kwargs: dict, input_shape) -> CostTable:
    """Multiply-adds of every operation (index into OPS) of every block, plus the fixed parts (stem,
    first block, head); zero and the operations a block does not allow cost 0. ``cost(path)`` equals
    the count of the built network (tested)."""
    kw = {k: v for k, v in net_kwargs.items() if k not in ("choices", "candidates", "allow_zero", "dropout")}
    layout = block_layout(**kw)
    n = len(layout)
    return flops_table_of(lambda op: ProxylessNet((op,) * n, **kw), MBCONV, len(OPS), input_shape,
                          allowed_ops(layout))


# --------------------------------------------------------------------------------------------
# Registry hooks (see dfnas.spaces)


def network_args(space_args: dict) -> dict:
    return {k: space_args[k] for k in NETWORK_KEYS if k in space_args}


def build_from_arch(arch: dict, in_channels: int, resolution: int, num_classes: int, sizes: dict) -> ProxylessNet:
    """The fixed network of ``arch["choices"]["ops"]``: one operation per searchable block, as an index
    into OPS (0..6, 6 = zero); ``arch["space_args"]`` holds the builder arguments (NETWORK_KEYS)."""
    try:
        ops = arch["choices"]["ops"]
        if isinstance(ops, (str, bytes)) or any(isinstance(c, (bool, float, str)) for c in ops):
            raise TypeError("operations must be integers")
        ops = [int(c) for c in ops]
    except (KeyError, TypeError, ValueError) as exc:
        raise DfnasError(f"ProxylessNAS architecture: choices need 'ops', one operation index (0..{len(OPS) - 1}: "
                         f"{', '.join(OPS)}) per searchable block ({exc})") from None
    args = network_args(arch.get("space_args", {}))
    try:
        n_blocks = len(block_layout(**args))
        if len(ops) != n_blocks:
            raise ValueError(f"{len(ops)} operations for {n_blocks} searchable blocks")
        return ProxylessNet(ops, in_channels=in_channels, num_classes=num_classes,
                            dropout=sizes.get("dropout", 0.0), **args)
    except (TypeError, ValueError) as exc:
        raise DfnasError(f"ProxylessNAS architecture: {exc}") from None


def space_args(scfg: dict, input_shape, num_classes: int) -> dict:
    """The supernet's arguments from ``search.proxyless`` and the data's shape."""
    return {"in_channels": input_shape[0], "num_classes": num_classes, "stem": scfg["stem"],
            "stem_stride": scfg["stem_stride"], "first": scfg["first"], "stage_blocks": list(scfg["stage_blocks"]),
            "widths": list(scfg["widths"]), "strides": list(scfg["strides"]), "feature_mix": scfg["feature_mix"]}


def random_choices(seed: int, **space_args) -> dict:
    """One operation per block, uniform over the operations that block allows (zero only where allowed)."""
    return {"ops": _uniform_ops(torch.Generator().manual_seed(seed), allowed_ops(block_layout(**network_args(space_args))))}


def _uniform_ops(gen: torch.Generator, allowed) -> list[int]:
    return [ops[int(torch.randint(len(ops), (1,), generator=gen))] for ops in allowed]


def random_target(scfg: dict, table: CostTable) -> float:
    """The multiply-adds a random baseline is matched to: the search's FLOPs target
    (``hardware.target`` under the flops metric), else the expected multiply-adds of the supernet with
    uniform probabilities (where a search starts, and the normalizer of its cost term)."""
    hw = scfg["hardware"]
    if hw["metric"] == "flops" and hw["target"] is not None:
        return float(hw["target"])
    mask = torch.zeros(table.n_blocks, table.n_choices, dtype=torch.float64)
    for b, ops in enumerate(table.allowed):
        mask[b, list(ops)] = 1.0 / len(ops)
    return float(table.expected(mask))


def random_architecture(scfg: dict, seed: int, input_shape, num_classes: int, max_tries: int = 100000) -> dict:
    """One operation per block, uniform over those it allows, drawn again until the network's
    multiply-adds are within ``random_tolerance`` of `random_target`: a random baseline of the size
    the search aims at."""
    args = space_args(scfg, input_shape, num_classes)
    table = flops_table(args, input_shape)
    target, tolerance = random_target(scfg, table), scfg["random_tolerance"]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(max_tries):
        ops = _uniform_ops(gen, table.allowed)
        if abs(table.cost(ops) - target) <= tolerance * target:
            return {"space_args": args, "choices": {"ops": ops},
                    "found_by": {"multiply_adds": table.cost(ops), "cost_target": target, "tolerance": tolerance}}
    lo, hi = table.bounds()
    raise DfnasError(f"search.proxyless.random_tolerance: no architecture within {tolerance:.0%} of "
                     f"{target / 1e6:.2f}M multiply-adds in {max_tries} draws (the space spans "
                     f"{lo / 1e6:.2f}M to {hi / 1e6:.2f}M)")


def plot_choices(choices: dict, out) -> None:
    """A PNG strip: one cell per searchable block, its height the expansion, labelled with the kernel."""
    plt = pyplot()
    ops = choices["ops"]
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
