"""Reader for dlib's binary ``serialize()`` format, as used by its DNN ``.dat`` model files.

We parse the file ourselves (instead of loading it with dlib) so the face embedder can run in
PyTorch, batched and on a GPU, with no dlib at run time. The format, from dlib's
``serialize.h``, ``dnn/core.h``, ``dnn/layers.h``, ``dnn/input.h`` and ``dnn/tensor.h``:

- integers: one control byte (bit 7 = negative, low 4 bits = byte count) then the magnitude,
  little-endian; floats: a ``float_details`` pair, an int64 mantissa then an int16 exponent,
  both as integers, meaning ``mantissa * 2**exponent``; strings: an integer length then bytes;
  bools: the ASCII byte ``'1'`` or ``'0'``; tensors: version 2, four dimensions, then raw
  little-endian float32 values.
- a network is nested: each wrapper writes its version and then its subnetwork *before* its own
  layer details. The file therefore opens with one version integer per wrapper (top to
  bottom), then the input layer, then each layer's details from the bottom up. Which wrapper is
  a tag or skip (they write nothing after the subnetwork) is known only from the C++ type, so
  the caller passes the wrapper sequence, just as dlib's ``deserialize`` relies on its type.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NoReturn

import numpy as np

from consentry.policies import codes
from consentry.policies.errors import ConfigurationError

Wrapper = Literal["layer", "tag", "skip"]
"""Kinds of network wrapper, top to bottom; the last ``layer`` is the one over the input."""


@dataclass(frozen=True)
class InputRGB:
    """``input_rgb_image_sized``: inputs become ``(pixel - mean) / 256``, channel order RGB."""

    mean_rgb: tuple[float, float, float]
    size: tuple[int, int]


@dataclass(frozen=True)
class Conv:
    """``con_``: weight ``(out, in, kh, kw)`` (cross-correlation, as in torch) and bias."""

    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class Affine:
    """``affine_`` (or a ``bn_con`` folded to one): ``y = x * scale[c] + shift[c]``."""

    scale: np.ndarray
    shift: np.ndarray


@dataclass(frozen=True)
class Relu:
    """``relu_``."""


@dataclass(frozen=True)
class Pool:
    """``max_pool_`` / ``avg_pool_``; a ``(0, 0)`` window means the whole input."""

    kind: Literal["max", "avg"]
    window: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class AddPrev:
    """``add_prev_``: adds a tagged earlier output; which tag is fixed by the C++ type."""


@dataclass(frozen=True)
class FullyConnected:
    """``fc_``: weight ``(out, in)`` (transposed from dlib's ``(in, out)``), optional bias."""

    weight: np.ndarray
    bias: np.ndarray | None


Layer = Conv | Affine | Relu | Pool | AddPrev | FullyConnected


@dataclass(frozen=True)
class DlibNetwork:
    """A parsed ``loss<...<input>>`` network: ``layers`` in forward order (input first)."""

    loss: str
    input: InputRGB
    layers: tuple[Layer, ...]


def load_dlib_network(path: Path, wrappers: Sequence[Wrapper]) -> DlibNetwork:
    """Read and parse a dlib DNN ``.dat`` file whose wrapper structure is ``wrappers``."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read dlib model weights at {path}: {exc.strerror or exc}",
            code=codes.MODEL_WEIGHTS_MISSING,
        ) from exc
    return parse_dlib_network(data, wrappers)


def parse_dlib_network(data: bytes, wrappers: Sequence[Wrapper]) -> DlibNetwork:
    """Parse a serialized ``add_loss_layer`` (see the module docstring for the layout)."""
    if not wrappers or wrappers[-1] != "layer":
        raise ValueError("the bottom wrapper must be the add_layer over the input layer")
    r = _Reader(data)
    r.expect_int(1, "add_loss_layer version")
    loss = r.string()
    if loss != "loss_metric_2":
        r.fail(f"unsupported loss layer {loss!r}")
    r.float_()  # margin, used only in training
    r.float_()  # distance threshold, used only in training
    versions = []
    for i, kind in enumerate(wrappers):
        allowed = {2, 3} if i == len(wrappers) - 1 else {1, 2} if kind == "layer" else {1}
        version = r.int_()
        if version not in allowed:
            r.fail(f"{kind} wrapper #{i} has version {version}, expected one of {allowed}")
        versions.append(version)
    input_layer = _read_input(r)
    layers: list[Layer] = []
    for i in reversed(range(len(wrappers))):
        if wrappers[i] != "layer":
            continue  # tags and skips write nothing after their subnetwork
        layers.append(_read_layer(r))
        for _ in range(3):  # setup called, gradient stale, getters disabled
            r.bool_()
        r.tensor()  # x_grad
        r.tensor()  # cached_output
        if i == len(wrappers) - 1:
            r.tensor()  # grad_final
            if versions[i] == 3:
                r.int_()  # sample_expansion_factor
        elif versions[i] == 2:
            r.tensor()  # params_grad
    if r.pos != len(data):
        r.fail(f"{len(data) - r.pos} unexpected trailing bytes")
    return DlibNetwork(loss=loss, input=input_layer, layers=tuple(layers))


def _read_input(r: _Reader) -> InputRGB:
    name = r.string()
    if name != "input_rgb_image_sized":
        r.fail(f"unsupported input layer {name!r}")
    mean = (r.float_(), r.float_(), r.float_())
    size = (r.int_(), r.int_())
    return InputRGB(mean_rgb=mean, size=size)


def _read_layer(r: _Reader) -> Layer:
    name = r.string()
    if name == "con_4":
        params = r.tensor().ravel()
        n_out, kh, kw, sy, sx, py, px = (r.int_() for _ in range(7))
        filters, biases = r.alias(), r.alias()
        for _ in range(4):  # learning-rate and weight-decay multipliers
            r.float_()
        if filters[0] != n_out or filters[2:] != (kh, kw) or biases != (1, n_out, 1, 1):
            r.fail(f"con_4 alias shapes {filters}/{biases} disagree with {n_out}x{kh}x{kw}")
        n_w = math.prod(filters)
        if params.size != n_w + n_out:
            r.fail(f"con_4 has {params.size} parameters, expected {n_w + n_out}")
        return Conv(params[:n_w].reshape(filters), params[n_w:], (sy, sx), (py, px))
    if name == "affine_":
        params = r.tensor().ravel()
        gamma, beta = r.alias(), r.alias()
        r.int_()  # layer mode (conv or fc); the file shapes tell us the same
        n = math.prod(gamma)
        if gamma != beta or params.size != 2 * n:
            r.fail(f"affine_ has {params.size} parameters for gamma {gamma}, beta {beta}")
        return Affine(scale=params[:n], shift=params[n:])
    if name == "bn_con2":
        return _read_bn(r)
    if name == "relu_":
        return Relu()
    if name in ("max_pool_2", "avg_pool_2"):
        nr, nc, sy, sx, py, px = (r.int_() for _ in range(6))
        kind: Literal["max", "avg"] = "max" if name.startswith("max") else "avg"
        return Pool(kind=kind, window=(nr, nc), stride=(sy, sx), padding=(py, px))
    if name == "add_prev_":
        return AddPrev()
    if name == "fc_2":
        n_out, n_in = r.int_(), r.int_()
        params = r.tensor().ravel()
        weights, biases = r.alias(), r.alias()
        has_bias = r.int_() == 0  # FC_HAS_BIAS = 0, FC_NO_BIAS = 1
        for _ in range(4):
            r.float_()
        n_b = n_out if has_bias else 0
        if weights != (n_in, n_out, 1, 1) or params.size != n_in * n_out + n_b:
            r.fail(f"fc_2 shapes disagree: {n_in}->{n_out}, weights {weights}, {params.size}")
        weight = params[: n_in * n_out].reshape(n_in, n_out).T.copy()
        return FullyConnected(weight=weight, bias=params[n_in * n_out :] if has_bias else None)
    r.fail(f"unsupported layer {name!r}")


def _read_bn(r: _Reader) -> Affine:
    """``bn_con2`` at inference is an affine map; fold it the way dlib's ``affine_`` does."""
    params = r.tensor().ravel()
    gamma, beta = r.alias(), r.alias()
    r.tensor()  # batch means
    r.tensor()  # batch inverse std devs
    running_means, running_vars = r.tensor().ravel(), r.tensor().ravel()
    r.int_()  # num_updates
    r.int_()  # running_stats_window_size
    for _ in range(4):
        r.float_()
    eps = r.float_()
    n = math.prod(gamma)
    sizes = (params.size, running_means.size, running_vars.size)
    if gamma != beta or sizes != (2 * n, n, n):
        r.fail(f"bn_con2 shapes disagree: gamma {gamma}, {params.size} parameters")
    scale = params[:n] / np.sqrt(running_vars + np.float32(eps))
    return Affine(scale=scale, shift=params[n:] - scale * running_means)


class _Reader:
    """Cursor over the bytes; every failure is a ``model.weights_invalid`` with the offset."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def fail(self, why: str) -> NoReturn:
        raise ConfigurationError(
            f"dlib model weights are malformed at byte {self.pos}: {why}",
            code=codes.MODEL_WEIGHTS_INVALID,
        )

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            self.fail(f"file ends early (wanted {n} more bytes)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int_(self) -> int:
        control = self.take(1)[0]
        size = control & 0x0F  # bits 4-6 are reserved; dlib ignores them
        if size > 8:
            self.fail(f"integer of {size} bytes")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def expect_int(self, expected: int, what: str) -> None:
        if (value := self.int_()) != expected:
            self.fail(f"{what} is {value}, expected {expected}")

    def float_(self) -> float:
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            self.fail("old text float encoding is not supported")
        mantissa, exponent = self.int_(), self.int_()
        special = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        return special[exponent] if exponent in special else math.ldexp(mantissa, exponent)

    def string(self) -> str:
        n = self.int_()
        if n > 256:
            self.fail(f"implausible string length {n}")
        return bytes(self.take(n)).decode("ascii", errors="replace")

    def bool_(self) -> bool:
        byte = bytes(self.take(1))
        if byte not in (b"0", b"1"):
            self.fail(f"bad bool byte {byte!r}")
        return byte == b"1"

    def tensor(self) -> np.ndarray:
        self.expect_int(2, "tensor version")
        shape = tuple(self.int_() for _ in range(4))
        if min(shape) < 0:
            self.fail(f"negative tensor shape {shape}")
        raw = self.take(4 * math.prod(shape))
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self) -> tuple[int, int, int, int]:
        self.expect_int(1, "alias_tensor version")
        shape = (self.int_(), self.int_(), self.int_(), self.int_())
        if min(shape) < 0:
            self.fail(f"negative alias shape {shape}")
        return shape
