"""The ShuffleNetV2 one-shot space of SPOS (Guo et al., ECCV 2020).

A chain of choice blocks in stages; every block picks one of four operations:

    0  ShuffleNetV2 block, 3x3 depthwise      2  ShuffleNetV2 block, 7x7 depthwise
    1  ShuffleNetV2 block, 5x5 depthwise      3  Xception-style block (three 3x3 depthwise)

A stride-1 block splits its input channels in half (after a channel shuffle): one half passes
through, the other goes through the chosen branch. The first block of a stage has stride 2 and
a projection branch beside the chosen one (depthwise stride 2 with the choice's kernel + pointwise),
one per choice as in the official supernets. Stem, stage
depths and widths and the last convolution are arguments, so that the ImageNet supernet (stem 16;
4, 4, 8, 4 blocks; widths 64, 160, 320, 640; last conv 1024; 224x224) and a small-image one come
from the same builder.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from dfnas.errors import DfnasError
from dfnas.flops import CostTable
from dfnas.flops import flops_table as flops_table_of
from dfnas.plots import pyplot, save_figure

CHOICES = ("shuffle_3x3", "shuffle_5x5", "shuffle_7x7", "xception_3x3")
KERNELS = (3, 5, 7, 3)  # the depthwise kernel of each choice

# The architecture found by SPOS on ImageNet (block search only), as published with its code.
SPOS_IMAGENET = (2, 1, 0, 1, 2, 0, 2, 0, 2, 0, 2, 3, 0, 0, 0, 0, 3, 2, 3, 3)


def channel_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel shuffle of two groups, then split: even channels, odd channels."""
    n, c, h, w = x.shape
    x = x.reshape(n, c // 2, 2, h, w)
    return x[:, :, 0], x[:, :, 1]


def _pw(c_in, c_out, relu=True):
    layers = [nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
    return layers + ([nn.ReLU(inplace=True)] if relu else [])


def _dw(c, k, stride):
    return [nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False), nn.BatchNorm2d(c)]


def branch(choice: int, c_in: int, mid: int, c_out: int, stride: int) -> nn.Sequential:
    if choice in (0, 1, 2):
        k = KERNELS[choice]
        return nn.Sequential(*_pw(c_in, mid), *_dw(mid, k, stride), *_pw(mid, c_out))
    if choice == 3:
        return nn.Sequential(*_dw(c_in, 3, stride), *_pw(c_in, mid), *_dw(mid, 3, 1), *_pw(mid, mid),
                             *_dw(mid, 3, 1), *_pw(mid, c_out))
    raise ValueError(f"SPOS choice must be 0..3, got {choice}")


def projection(choice: int, c: int) -> nn.Sequential:
    """The projection branch of a stride-2 block: depthwise with the choice's kernel (3x3 for the
    Xception choice), stride 2, then pointwise."""
    return nn.Sequential(*_dw(c, KERNELS[choice], 2), *_pw(c, c))


class ChoiceBlock(nn.Module):
    """One block with all four choices (``choices=None``, the supernet) or a fixed one."""

    def __init__(self, c_in: int, c_out: int, stride: int, choices=(0, 1, 2, 3)):
        super().__init__()
        self.stride = stride
        side = c_in if stride == 2 else c_in // 2  # channels kept by the projection / pass-through
        mid = c_out // 2
        main_in = c_in if stride == 2 else c_in // 2
        self.choices = tuple(choices)
        self.branches = nn.ModuleList(branch(c, main_in, mid, c_out - side, stride) for c in self.choices)
        # Every choice of a stride-2 block has its own projection, with the choice's kernel (as the
        # official supernets: a choice is a whole block there).
        self.projs = nn.ModuleList(projection(c, c_in) for c in self.choices) if stride == 2 else None

    def forward(self, x, choice: int | None = None):
        k = 0 if choice is None else self.choices.index(choice)
        if self.stride == 1:
            keep, x = channel_split(x)
            return torch.cat([keep, self.branches[k](x)], 1)
        return torch.cat([self.projs[k](x), self.branches[k](x)], 1)


class ShuffleNetOneShot(nn.Module):
    """The SPOS network: the supernet when ``architecture`` is None, else the fixed network."""

    def __init__(self, architecture=None, in_channels: int = 3, num_classes: int = 1000, stem: int = 16,
                 stem_stride: int = 2, stage_blocks=(4, 4, 8, 4), widths=(64, 160, 320, 640), last_conv: int = 1024,
                 dropout: float = 0.1):
        super().__init__()
        n_blocks = sum(stage_blocks)
        if architecture is not None and len(architecture) != n_blocks:
            raise ValueError(f"architecture has {len(architecture)} choices for {n_blocks} blocks")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(stem),
                                  nn.ReLU(inplace=True))
        blocks, c, i = [], stem, 0
        for depth, width in zip(stage_blocks, widths):
            for j in range(depth):
                choices = (0, 1, 2, 3) if architecture is None else (architecture[i],)
                blocks.append(ChoiceBlock(c, width, 2 if j == 0 else 1, choices))
                c, i = width, i + 1
        self.blocks = nn.ModuleList(blocks)
        self.architecture = None if architecture is None else tuple(architecture)
        self.last = nn.Sequential(*_pw(c, last_conv))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(last_conv, num_classes, bias=False)

    def forward(self, x, path=None):
        """``path`` picks a choice per block in the supernet; a fixed network ignores it."""
        x = self.stem(x)
        for k, block in enumerate(self.blocks):
            choice = None if self.architecture is not None else (path[k] if path is not None else 0)
            x = block(x, choice)
        x = self.pool(self.last(x)).flatten(1)
        return self.classifier(self.dropout(x))


# --------------------------------------------------------------------------------------------
# Multiply-adds per choice, and sampling under a FLOPs budget


def flops_table(net_kwargs: dict, input_shape) -> CostTable:
    """Multiply-adds of every choice of every block, plus the fixed parts (stem, last conv, classifier).

    ``cost(path)`` is then a sum over blocks; it equals the count of the built network (tested).
    """
    kw = {k: v for k, v in net_kwargs.items() if k != "architecture"}
    n_blocks = sum(kw.get("stage_blocks", (4, 4, 8, 4)))
    return flops_table_of(lambda choice: ShuffleNetOneShot((choice,) * n_blocks, **kw), range(len(CHOICES)),
                          len(CHOICES), input_shape)


def sample_path(table: CostTable, generator: torch.Generator, low: float | None = None, high: float | None = None,
                bins: int = 1, max_tries: int = 10000) -> tuple[int, ...]:
    """A path drawn uniformly among those with multiply-adds in [low, high].

    With ``bins`` > 1 the range is cut into equal bins, a bin is drawn uniformly first, then a path
    inside it (SPOS's sampling within FLOPs bins), so that small and large paths train equally often.
    """
    lo_all, hi_all = table.bounds()
    low = lo_all if low is None else low
    high = hi_all if high is None else high
    if bins > 1:
        k = int(torch.randint(bins, (1,), generator=generator))
        width = (high - low) / bins
        low, high = low + k * width, low + (k + 1) * width
    for _ in range(max_tries):
        path = tuple(int(c) for c in torch.randint(len(CHOICES), (table.n_blocks,), generator=generator))
        if low <= table.cost(path) <= high:
            return path
    raise DfnasError(f"no path found with multiply-adds in [{low / 1e6:.1f}M, {high / 1e6:.1f}M] after "
                     f"{max_tries} draws; the space spans [{lo_all / 1e6:.1f}M, {hi_all / 1e6:.1f}M]")


# --------------------------------------------------------------------------------------------
# Registry hooks (see dfnas.spaces)

NETWORK_KEYS = ("stem", "stem_stride", "stage_blocks", "widths", "last_conv")


def build_from_arch(arch: dict, in_channels: int, resolution: int, num_classes: int, sizes: dict) -> ShuffleNetOneShot:
    given = arch["choices"].get("path") if isinstance(arch["choices"], dict) else None
    if not isinstance(given, (list, tuple)) or any(isinstance(c, bool) or not isinstance(c, numbers.Integral)
                                                   for c in given):
        raise DfnasError(f"SPOS architecture: choices need a 'path', a list of integer block choices; got {given!r}")
    path = tuple(int(c) for c in given)
    if any(not 0 <= c < len(CHOICES) for c in path):
        raise DfnasError(f"SPOS architecture: choices must be 0..{len(CHOICES) - 1}, got {list(path)}")
    args = {k: arch.get("space_args", {})[k] for k in NETWORK_KEYS if k in arch.get("space_args", {})}
    try:
        return ShuffleNetOneShot(path, in_channels=in_channels, num_classes=num_classes,
                                 dropout=sizes.get("dropout", 0.1), **args)
    except ValueError as exc:
        raise DfnasError(f"SPOS architecture: {exc}") from None


def space_args(scfg: dict, input_shape, num_classes: int) -> dict:
    """The supernet's arguments from ``search.spos`` and the data's shape."""
    return {"in_channels": input_shape[0], "num_classes": num_classes, "stem": scfg["stem"],
            "stem_stride": scfg["stem_stride"], "stage_blocks": list(scfg["stage_blocks"]),
            "widths": list(scfg["widths"]), "last_conv": scfg["last_conv"]}


def random_architecture(scfg: dict, seed: int, input_shape, num_classes: int) -> dict:
    """A path drawn uniformly under the search's FLOPs bound (``flops_bound``; none: the whole space)."""
    args = space_args(scfg, input_shape, num_classes)
    table = flops_table(args, input_shape)
    bound = scfg["flops_bound"]
    path = sample_path(table, torch.Generator().manual_seed(seed), None, bound)
    return {"space_args": args, "choices": {"path": list(path)},
            "found_by": {"multiply_adds": table.cost(path), "flops_bound": bound}}


def plot_choices(choices: dict, out) -> None:
    """A PNG strip: one coloured cell per block, labelled with its choice."""
    plt = pyplot()
    path = choices["path"]
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
