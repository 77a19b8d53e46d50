"""dlib's ResNet face-recognition network (``dlib_face_recognition_resnet_model_v1``) in PyTorch.

The layer graph is dlib's ``anet_type`` from ``dnn_face_recognition_ex.cpp``::

    loss_metric<fc_no_bias<128, avg_pool_everything<
        alevel0<alevel1<alevel2<alevel3<alevel4<
        max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>>>>>

where a residual block is ``relu(add_prev(block(x), x))`` with ``block = affine(con3x3(relu(
affine(con3x3(x)))))``; a down block strides its first convolution by 2 and adds a 2x2
average-pooled copy of its input. Details that matter for parity with dlib:

- dlib pads a convolution or pool by ``k // 2`` only when its stride is 1, otherwise by 0;
- ``add_prev`` of tensors of different shapes zero-extends both to the larger size (channels
  and the bottom/right edges) before adding: every down block widens the channels, and in the
  last two the strided convolution yields 3x3 (1x1) while the pooled shortcut is 4x4 (2x2);
- each ``affine`` follows a convolution, so we fold it into that convolution's weights.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from consentry.detectors.dlib_dat import (
    AddPrev,
    Affine,
    Conv,
    DlibNetwork,
    FullyConnected,
    Layer,
    Pool,
    Relu,
    Wrapper,
    load_dlib_network,
)
from consentry.policies import codes
from consentry.policies.errors import ConfigurationError

# (filters, is_down) for every residual block, input side first (alevel4 ... alevel0).
_BLOCKS: tuple[tuple[int, bool], ...] = (
    *[(32, False)] * 3,
    (64, True),
    *[(64, False)] * 3,
    (128, True),
    *[(128, False)] * 2,
    (256, True),
    *[(256, False)] * 2,
    (256, True),
)
EMBEDDING_DIM = 128


def _anet_ops() -> list[tuple[str | int, ...]]:
    """The network as dlib's wrappers in forward order: (kind, *template arguments)."""
    ops: list[tuple[str | int, ...]] = [("con", 32, 7, 2), ("affine",), ("relu",), ("max", 3, 2)]
    for filters, down in _BLOCKS:
        stride = 2 if down else 1
        ops += [("tag",), ("con", filters, 3, stride), ("affine",), ("relu",)]
        ops += [("con", filters, 3, 1), ("affine",)]
        if down:
            ops += [("tag",), ("skip",), ("avg", 2, 2)]
        ops += [("add_prev",), ("relu",)]
    return [*ops, ("avg", 0, 1), ("fc", EMBEDDING_DIM)]


def anet_wrappers() -> list[Wrapper]:
    """The serialized wrapper sequence, top (next to the loss) to bottom (over the input)."""
    kinds: dict[str, Wrapper] = {"tag": "tag", "skip": "skip"}
    return [kinds.get(str(op[0]), "layer") for op in reversed(_anet_ops())]


def _padded_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``tt::add`` of differently shaped tensors: zero-extend both, then add."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:], strict=True))

    def grow(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return grow(a) + grow(b)


class _Residual(nn.Module):
    """``ares`` / ``ares_down`` with each affine folded into the convolution before it."""

    def __init__(self, c_in: int, c_out: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_padded_add(y, shortcut))


class DlibResNet(nn.Module):
    """Maps uint8 RGB chips ``(N, 150, 150, 3)`` to dlib's raw 128-D descriptors ``(N, 128)``.

    Build it with :func:`load_dlib_resnet`; a fresh instance has untrained weights.
    """

    mean: torch.Tensor  # registered buffer, (1, 3, 1, 1)

    def __init__(self, mean_rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean_rgb, dtype=torch.float32).view(1, 3, 1, 1))
        self.stem = nn.Conv2d(3, 32, 7, stride=2, padding=0)
        blocks, c_in = [], 32
        for filters, down in _BLOCKS:
            blocks.append(_Residual(c_in, filters, down))
            c_in = filters
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, EMBEDDING_DIM, bias=False)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        # input_rgb_image_sized: (pixel - mean) / 256, planes in R, G, B order.
        # channels_last input and weights measured ~25% faster on CPU at batch 1 and 16.
        x = (chips.permute(0, 3, 1, 2).float() - self.mean) / 256.0
        x = x.contiguous(memory_format=torch.channels_last)
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))

    def convs(self) -> list[nn.Conv2d]:
        """Convolutions in forward order, the order their weights appear in the file."""
        residuals = [b for b in self.blocks if isinstance(b, _Residual)]  # all of them
        return [self.stem] + [c for b in residuals for c in (b.conv1, b.conv2)]


def face_recognition_models_file(name: str) -> Path:
    """Path of a model shipped by ``face_recognition_models``, found without importing it.

    Its ``__init__`` imports ``pkg_resources``, which modern setuptools no longer provides, so
    we only ask the import system where the package lives (``find_spec`` on a top-level package
    does not execute it).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        candidate = Path(folder) / "models" / name
        if candidate.is_file():
            return candidate
    raise ConfigurationError(
        f"model file {name!r} not found: install the face_recognition_models package "
        "(pip install face_recognition_models) or pass the weights path explicitly",
        code=codes.MODEL_WEIGHTS_MISSING,
    )


def default_dlib_weights() -> Path:
    """Path of ``dlib_face_recognition_resnet_model_v1.dat`` from face_recognition_models."""
    return face_recognition_models_file("dlib_face_recognition_resnet_model_v1.dat")


def load_dlib_resnet(path: Path | None = None) -> DlibResNet:
    """Parse dlib's ``.dat`` (default: the copy in face_recognition_models) into the module."""
    net = load_dlib_network(path or default_dlib_weights(), anet_wrappers())
    return build_dlib_resnet(net)


def build_dlib_resnet(net: DlibNetwork) -> DlibResNet:
    """Check a parsed network against ``anet_type`` and copy its weights into a module."""
    if net.input.size != (150, 150):
        _invalid(f"input size {net.input.size}, expected (150, 150)")
    model = DlibResNet(net.input.mean_rgb)
    ops = [op for op in _anet_ops() if op[0] not in ("tag", "skip")]
    if len(ops) != len(net.layers):
        _invalid(f"{len(net.layers)} layers, expected {len(ops)}")
    convs, pending = iter(model.convs()), None
    channels = 3
    for i, (op, layer) in enumerate(zip(ops, net.layers, strict=True)):
        _check(i, op, layer, channels)
        if isinstance(layer, Conv):
            channels, pending = layer.weight.shape[0], layer
        elif isinstance(layer, Affine):
            _fold_into(next(convs), pending, layer)
            pending = None
        elif isinstance(layer, FullyConnected):
            with torch.no_grad():
                model.fc.weight.copy_(torch.from_numpy(layer.weight))
    return model.to(memory_format=torch.channels_last).eval()


def _check(i: int, op: tuple[str | int, ...], layer: Layer, channels: int) -> None:
    kind, args = op[0], op[1:]
    ok = False
    if kind == "con" and isinstance(layer, Conv):
        filters, k, stride = (int(a) for a in args)
        pad = k // 2 if stride == 1 else 0  # dlib's default padding rule
        ok = layer.weight.shape == (filters, channels, k, k) and layer.stride == (stride,) * 2
        ok = ok and layer.padding == (pad, pad)
    elif kind == "affine" and isinstance(layer, Affine):
        ok = layer.scale.shape == (channels,) == layer.shift.shape
    elif kind in ("max", "avg") and isinstance(layer, Pool):
        window, stride = (int(a) for a in args)
        ok = (layer.kind, layer.window, layer.stride) == (kind, (window,) * 2, (stride,) * 2)
        ok = ok and layer.padding == (0, 0)
    elif kind == "fc" and isinstance(layer, FullyConnected):
        ok = layer.weight.shape == (args[0], channels) and layer.bias is None
    else:
        ok = (kind, type(layer)) in (("relu", Relu), ("add_prev", AddPrev))
    if not ok:
        _invalid(f"layer {i} is {layer.__class__.__name__}, expected {kind}{list(args)}")


def _fold_into(conv: nn.Conv2d, source: Conv | None, affine: Affine) -> None:
    """conv then affine == one conv with per-filter scaled weights and shifted bias."""
    if source is None:
        _invalid("an affine layer does not follow a convolution")
    scale = affine.scale.astype(np.float64)
    weight = source.weight.astype(np.float64) * scale[:, None, None, None]
    bias = source.bias.astype(np.float64) * scale + affine.shift
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
        assert conv.bias is not None  # every convolution of DlibResNet has a bias
        conv.bias.copy_(torch.from_numpy(bias.astype(np.float32)))


def _invalid(why: str) -> NoReturn:
    raise ConfigurationError(
        f"dlib model weights do not match the ResNet face-recognition network: {why}",
        code=codes.MODEL_WEIGHTS_INVALID,
    )
