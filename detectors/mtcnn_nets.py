"""MTCNN's three networks (P-Net, R-Net, O-Net) as plain torch modules.

The layer names and shapes follow the state dicts that ship inside the facenet-pytorch wheel
(``facenet_pytorch/data/{pnet,rnet,onet}.pt``), so those weights load as they are; nothing is
downloaded. Each forward returns raw regressions and the face probability (softmax column 1)
only, which is all the batched detector needs.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import torch
from torch import nn


def weights_dir() -> Path:
    """The folder holding facenet-pytorch's ``pnet.pt``, ``rnet.pt`` and ``onet.pt``."""
    return Path(str(files("facenet_pytorch") / "data"))


def _load(module: nn.Module, name: str) -> None:
    state = torch.load(weights_dir() / f"{name}.pt", map_location="cpu", weights_only=True)
    module.load_state_dict(state)


def _dense_input(x: torch.Tensor) -> torch.Tensor:
    # The dense layers were trained (in Caffe) on a (width, height, channel) flattening.
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class PNet(nn.Module):
    """Fully convolutional proposal net: stride 2, 12 px receptive field."""

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)
        if pretrained:
            _load(self, "pnet")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) normalised -> regression (B, 4, h, w), face probability (B, h, w)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        prob = torch.softmax(self.conv4_1(x), dim=1)[:, 1]
        return self.conv4_2(x), prob


class RNet(nn.Module):
    """Refinement net on 24x24 crops."""

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)
        if pretrained:
            _load(self, "rnet")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, 24, 24) normalised -> regression (N, 4), face probability (N,)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_dense_input(x)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(nn.Module):
    """Output net on 48x48 crops: box regression, five landmarks, probability."""

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)
        if pretrained:
            _load(self, "onet")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 3, 48, 48) -> regression (N, 4), landmarks (N, 10: 5 x then 5 y), probability (N,)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(_dense_input(x)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)[:, 1]
