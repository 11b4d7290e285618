"The CIFAR ResNet18: a 3x3 stride-1 stem, no max-pool, four stages `layer1`..`layer4`"
import torch
from torch import nn
import torch.nn.functional as F

__all__ = ['BasicBlock', 'CifarResNet', 'resnet18']


class BasicBlock(nn.Module):
    "Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut"
    expansion = 1

    def __init__(self, n_in: int, n_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(n_out)
        self.conv2 = nn.Conv2d(n_out, n_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(n_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or n_in != n_out:
            self.shortcut = nn.Sequential(nn.Conv2d(n_in, n_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    "ResNet for 32x32 inputs (He et al. 2016, CIFAR stem): stages `layer1`..`layer4`, pooled linear head"

    def __init__(self, n_blocks=(2, 2, 2, 2), n_out: int = 10, widths=(64, 128, 256, 512)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        n_in, stages = widths[0], []
        for i, (n, width) in enumerate(zip(n_blocks, widths)):
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            blocks = []
            for stride in strides:
                blocks.append(BasicBlock(n_in, width, stride))
                n_in = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)  # any input size the stages can halve, not a fixed 4x4
        self.linear = nn.Linear(n_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.pool(out), 1))


def resnet18(n_out: int = 10) -> CifarResNet:
    "The CIFAR ResNet18 (11,173,962 parameters for 10 classes)"
    return CifarResNet((2, 2, 2, 2), n_out=n_out)
