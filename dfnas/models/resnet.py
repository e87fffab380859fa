"""ResNets for small images (the CIFAR-style family of He et al. 2016, with BatchNorm everywhere).

Depth 6n+2: a 3x3 stem, three stages of n BasicBlocks at widths w, 2w, 4w (stride 1, 2, 2),
global average pooling and a linear classifier. Parameter names follow torchvision's ResNet
(conv1, bn1, layerK.J.conv1/bn1/conv2/bn2/downsample, fc), so that the common public CIFAR
ResNet checkpoints load as bare state dicts. Used as the stand-in teacher.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetCifar(nn.Module):
    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1, got {depth}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        widths = [width, 2 * width, 4 * width]
        c = width
        for k, (w, s) in enumerate(zip(widths, (1, 2, 2)), start=1):
            blocks = [BasicBlock(c if j == 0 else w, w, s if j == 0 else 1) for j in range(n)]
            setattr(self, f"layer{k}", nn.Sequential(*blocks))
            c = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        self.num_features = c
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate (pooled) features."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def resnet_cifar(depth: int = 20, width: int = 16, num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    return ResNetCifar(depth=depth, width=width, num_classes=num_classes, in_channels=in_channels)
