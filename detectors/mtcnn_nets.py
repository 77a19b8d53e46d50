"""MTCNN's three networks (P-Net, R-Net, O-Net): the trained modules and a fast inference form.

The modules' layer names and shapes follow the state dicts that ship inside the facenet-pytorch
wheel (``facenet_pytorch/data/{pnet,rnet,onet}.pt``), so those weights load as they are;
nothing is downloaded.

``CascadeNet`` is what the detector runs: the same layers with the weights rearranged once,
which changes no result beyond float rounding:

- the input normalisation ``(x - 127.5) / 128`` is folded into the first convolution (no layer
  pads, so this is exact), so nets take raw 0-255 pixel values;
- the two-class softmax becomes one logit difference (``softmax(z)[1] == sigmoid(z1 - z0)``),
  and the heads of a net become one layer: output column 0 is the face logit, then the box
  regression (4), then for O-Net the landmarks (10);
- the dense layers take the plain (C, H, W) flattening (their columns are permuted once from
  Caffe's (W, H, C) order);
- on a CPU with oneDNN the weights are reordered once into oneDNN's layout and activations
  stay in it from the first layer to the last (no reorder between layers, pooling without the
  index output eager PyTorch computes); small inputs, and CUDA, run the same layers as
  ordinary tensor ops (fp16 on CUDA when asked).

Everything runs in fp32 on the CPU. bfloat16 (native on this Xeon, 2-3x faster per net) was
measured and rejected: it moved box IoU below 0.95 for over 25% of faces (P-Net's proposals
shift, and the cascade amplifies it) and flipped a stock detection that O-Net scores 0.70022
against its 0.7 threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

_MEAN = 127.5
_SCALE = 0.0078125  # 1 / 128


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


# -- inference form ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layer:
    """One step of a net: "conv" / "dense" (weight, bias), "prelu" (weight), "pool" (size,
    stride), "flatten"."""

    kind: str
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    size: int = 0
    stride: int = 0


def _params(m: nn.Conv2d | nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    assert m.bias is not None  # every MTCNN layer has one
    return m.weight.detach(), m.bias.detach()


def _head(*layers: nn.Conv2d | nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """The class layer (2 outputs) and the regression layers as one: row 0 = logit(face) -
    logit(background), then the regression rows in order."""
    (w, b), *rest = (_params(m) for m in layers)
    weights = [w[1:2] - w[0:1]] + [rw for rw, _ in rest]
    biases = [b[1:2] - b[0:1]] + [rb for _, rb in rest]
    return torch.cat(weights), torch.cat(biases)


def _caffe_to_chw(weight: torch.Tensor, channels: int, side: int) -> torch.Tensor:
    # Columns in Caffe's (W, H, C) flattening -> PyTorch's (C, H, W) flattening.
    out = weight.shape[0]
    return weight.reshape(out, side, side, channels).permute(0, 3, 2, 1).reshape(out, -1)


def _layers(net: nn.Module, mean: float = _MEAN) -> list[_Layer]:
    def conv(m: nn.Conv2d, fold: bool = False) -> _Layer:
        w, b = _params(m)
        if fold:  # conv(x * s - m * s) == conv'(x) with w' = w * s, b' = b - m * s * sum(w)
            b = b - mean * _SCALE * w.sum(dim=(1, 2, 3))
            w = w * _SCALE
        return _Layer("conv", w, b)

    def prelu(m: nn.PReLU) -> _Layer:
        return _Layer("prelu", m.weight.detach())

    def pool(size: int, stride: int) -> _Layer:
        return _Layer("pool", size=size, stride=stride)

    if isinstance(net, PNet):
        w, b = _head(net.conv4_1, net.conv4_2)
        return [
            conv(net.conv1, fold=True), prelu(net.prelu1), pool(2, 2),
            conv(net.conv2), prelu(net.prelu2),
            conv(net.conv3), prelu(net.prelu3),
            _Layer("conv", w, b),
        ]  # fmt: skip
    if isinstance(net, RNet):
        w, b = _head(net.dense5_1, net.dense5_2)
        return [
            conv(net.conv1, fold=True), prelu(net.prelu1), pool(3, 2),
            conv(net.conv2), prelu(net.prelu2), pool(3, 2),
            conv(net.conv3), prelu(net.prelu3), _Layer("flatten"),
            _Layer("dense", _caffe_to_chw(net.dense4.weight.detach(), 64, 3), net.dense4.bias.detach()),
            prelu(net.prelu4),
            _Layer("dense", w, b),
        ]  # fmt: skip
    if isinstance(net, ONet):
        w, b = _head(net.dense6_1, net.dense6_2, net.dense6_3)
        return [
            conv(net.conv1, fold=True), prelu(net.prelu1), pool(3, 2),
            conv(net.conv2), prelu(net.prelu2), pool(3, 2),
            conv(net.conv3), prelu(net.prelu3), pool(2, 2),
            conv(net.conv4), prelu(net.prelu4), _Layer("flatten"),
            _Layer("dense", _caffe_to_chw(net.dense5.weight.detach(), 128, 3), net.dense5.bias.detach()),
            prelu(net.prelu5),
            _Layer("dense", w, b),
        ]  # fmt: skip
    raise TypeError(f"not an MTCNN net: {type(net).__name__}")


_ZERO2 = [0, 0]
_ONE2 = [1, 1]


def _onednn_step(layer: _Layer) -> Callable[[torch.Tensor], torch.Tensor]:
    """One layer on oneDNN tensors, its weights reordered once."""
    if layer.kind == "conv":
        assert layer.weight is not None and layer.bias is not None
        w = torch._C._nn.mkldnn_reorder_conv2d_weight(layer.weight.to_mkldnn(), _ZERO2, _ONE2, _ONE2, 1)
        b = layer.bias.to_mkldnn()
        return lambda x: torch.mkldnn_convolution(x, w, b, _ZERO2, _ONE2, _ONE2, 1)
    if layer.kind == "dense":
        assert layer.weight is not None and layer.bias is not None
        wd, bd = layer.weight.to_mkldnn(), layer.bias.to_mkldnn()
        return lambda x: torch._C._nn.mkldnn_linear(x, wd, bd)
    if layer.kind == "prelu":
        assert layer.weight is not None
        a = layer.weight.to_mkldnn()
        return lambda x: torch.prelu(x, a)
    if layer.kind == "pool":
        k, s = layer.size, layer.stride
        return lambda x: F.max_pool2d(x, k, s, ceil_mode=True)
    return lambda x: x.reshape(x.shape[0], -1)


def _dense_step(
    layer: _Layer, device: torch.device, dtype: torch.dtype
) -> Callable[[torch.Tensor], torch.Tensor]:
    """One layer as ordinary tensor ops (CUDA, or a CPU without oneDNN)."""
    if layer.kind in ("conv", "dense"):
        assert layer.weight is not None and layer.bias is not None
        w, b = layer.weight.to(device, dtype), layer.bias.to(device, dtype)
        op = F.conv2d if layer.kind == "conv" else F.linear
        return lambda x: op(x, w, b)
    if layer.kind == "prelu":
        assert layer.weight is not None
        a = layer.weight.to(device, dtype)
        return lambda x: F.prelu(x, a)
    if layer.kind == "pool":
        k, s = layer.size, layer.stride
        return lambda x: F.max_pool2d(x, k, s, ceil_mode=True)
    return lambda x: x.reshape(x.shape[0], -1)


class CascadeNet:
    """One MTCNN net in inference form (see the module docstring).

    Called with raw pixel values, float (N, 3, H, W); returns float32: for P-Net (N, 5, h, w),
    for R-Net (N, 5), for O-Net (N, 15), column / channel 0 the face logit. Stateless: may be
    shared by threads.

    On the CPU, a call of at least ``onednn_min_pixels`` input pixels runs on oneDNN, in chunks
    of at most ``max_pixels`` input pixels: past that the activations leave the core's cache
    and every image costs more (measured 2x at 16 images of 154x154 against 4); smaller calls
    run as ordinary NCHW tensor ops, whose fixed cost per call is a fifth of oneDNN's.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        max_pixels: int = 100_000,
        onednn_min_pixels: int = 4_000,
    ) -> None:
        layers = _layers(net)
        self.dtype = dtype if device.type == "cuda" else torch.float32
        self._dense = [_dense_step(layer, device, self.dtype) for layer in layers]
        self._onednn = None
        if device.type == "cpu" and torch.backends.mkldnn.is_available():
            self._onednn = [_onednn_step(layer) for layer in layers]
        self.max_pixels = max_pixels
        self.onednn_min_pixels = onednn_min_pixels

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        if self._onednn is None or n * height * width < self.onednn_min_pixels or n == 0:
            x = x.to(self.dtype)
            for step in self._dense:
                x = step(x)
            return x.float()
        chunk = max(1, self.max_pixels // (height * width))
        outs = []
        for i in range(0, n, chunk):
            y = x[i : i + chunk].to_mkldnn()
            for step in self._onednn:
                y = step(y)
            outs.append(y.to_dense())
        return outs[0] if len(outs) == 1 else torch.cat(outs)
