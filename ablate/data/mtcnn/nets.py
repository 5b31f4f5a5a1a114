"""MTCNN's three networks (Zhang et al. 2016), shaped so facenet-pytorch 2.6.0's weights load.

Why the odd details: the weights were trained in Caffe/TensorFlow and converted by
facenet-pytorch, so the layer names (the state-dict keys), the ceil-mode pooling and the
(W, H, C) flattening before the dense layers must stay exactly as its converter left them,
or the same weights compute something else.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file
from torch import nn

from ablate.core.errors import AblateError


def _flatten_whc(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, W*H*C): the order of the TensorFlow weights' dense layers."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class PNet(nn.Module):
    """Proposal net: fully convolutional, one 12 x 12 window every 2 pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)  # face / not-face logits
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)  # box offsets

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) in [-1, 1] -> offsets (N, 4, h, w), probabilities (N, 2, h, w)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))  # (N, 32, h, w)
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """Refinement net: rescores and nudges each P-Net box from a 24 x 24 crop."""

    def __init__(self) -> None:
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
        self.dense5_1 = nn.Linear(128, 2)  # face / not-face logits
        self.dense5_2 = nn.Linear(128, 4)  # box offsets

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, 24, 24) in [-1, 1] -> offsets (N, 4), probabilities (N, 2)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))  # (N, 64, 3, 3)
        x = self.prelu4(self.dense4(_flatten_whc(x)))  # (N, 128)
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output net: final score, box offsets and five landmarks from a 48 x 48 crop."""

    def __init__(self) -> None:
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
        self.dense6_1 = nn.Linear(256, 2)  # face / not-face logits
        self.dense6_2 = nn.Linear(256, 4)  # box offsets
        self.dense6_3 = nn.Linear(256, 10)  # landmarks: 5 x, then 5 y, as box fractions

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 3, 48, 48) in [-1, 1] -> offsets (N, 4), landmarks (N, 10), probabilities (N, 2)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))  # (N, 128, 3, 3)
        x = self.prelu5(self.dense5(_flatten_whc(x)))  # (N, 256)
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


class Nets(NamedTuple):
    pnet: PNet
    rnet: RNet
    onet: ONet


def check_weights(weights: Path) -> Path:
    """`weights`, or a one-line error when the installed ablate lacks it."""
    if not weights.is_file():
        raise AblateError(f"MTCNN's weights {weights} are missing from the installed ablate; "
                          "reinstall it (pip install --force-reinstall ablate)")
    return weights


def load_nets(weights: Path) -> Nets:
    """The three nets from one safetensors file (keys `pnet.`, `rnet.`, `onet.`), frozen, CPU."""
    state = load_file(str(check_weights(weights)))
    nets = Nets(PNet(), RNet(), ONet())
    for name, net in zip(Nets._fields, nets, strict=True):
        prefix = f"{name}."
        net.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                             if k.startswith(prefix)})  # strict: a missing key is an error
        net.eval().requires_grad_(False)
    return nets
