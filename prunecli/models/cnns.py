"""The built-in CNN architectures (``model.arch``): ``small_cnn`` (Fashion-MNIST: conv+BN+ReLU,
a depthwise-separable and a residual block, a Linear head over a 2x2 pooled map),
``resnet_tiny`` (ResNet-18-shaped BasicBlocks) and ``vgg11`` (VGG-11-BN). Each is
``cls(in_channels, num_classes, widths)``; :data:`ARCHITECTURES` gives its default widths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    """``relu(x + bn(conv(relu(bn(conv(x))))))``: the channels of ``x`` and of the output are one set."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class SmallCNN(nn.Module):
    """28x28 -> stem (28) -> down (14) -> depthwise-separable (7) -> residual (7) -> 2x2 pool -> Linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 40)):
        super().__init__()
        w1, w2, w3 = widths
        self.stem = conv_bn(in_channels, w1)
        self.down = conv_bn(w1, w2, stride=2)
        self.dw = conv_bn(w2, w2, stride=2, groups=w2)  # depthwise
        self.pw = conv_bn(w2, w3, kernel=1)  # pointwise
        self.res = Residual(w3)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(w3 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res(self.pw(self.dw(self.down(self.stem(x)))))
        return self.head(torch.flatten(self.pool(x), 1))


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: ``out += identity`` (a 1x1 conv + BN shortcut when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    """A ResNet-18-shaped toy: stem, two blocks per stage, a projection shortcut per new stage, global pool, fc."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, ...] = (16, 32)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], widths[0]
        for index, width in enumerate(widths):
            stages.append(nn.Sequential(BasicBlock(cin, width, 1 if index == 0 else 2), BasicBlock(width, width)))
            cin = width
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VGG(nn.Module):
    """VGG-11 with BatchNorm (Simonyan & Zisserman 2015, config "A"): 1, 1, 2, 2, 2 conv3x3+BN+ReLU per stage,
    2x2 max-pool after each, 7x7 adaptive pool, classifier ``512*49 -> 4096 -> 4096 -> classes`` (dropout 0.5).
    Built here so that no torchvision is needed; with ``widths=[64, 128, 256, 512, 512]`` and 224x224 RGB
    input it has torchvision ``vgg11_bn``'s shapes (132.9M parameters, 7.6 GMAC)."""

    STAGE_CONVS = (1, 1, 2, 2, 2)

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, widths: tuple[int, ...] = (64, 128, 256, 512, 512), hidden: int = 4096):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for width, convs in zip(widths, self.STAGE_CONVS, strict=True):
            for _ in range(convs):
                layers += [nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                cin = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(cin * 49, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


ARCHITECTURES = {"small_cnn": (SmallCNN, [16, 32, 40]), "resnet_tiny": (TinyResNet, [16, 32]), "vgg11": (VGG, [64, 128, 256, 512, 512])}
