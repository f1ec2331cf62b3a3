"""dlib's face recognition ResNet, read from its ``.dat`` file and run as NumPy matrix products.

The ``dlib-bin`` wheel is built without BLAS, so dlib's own forward pass of this network takes
about 73 ms a face here. The same arithmetic as im2col + ``matmul`` on NumPy's BLAS takes about
20 ms, releases the GIL while it multiplies, and gives dlib's descriptor to float rounding
(``tests/eyes/test_dlib_resnet.py`` compares the two). dlib still aligns the face: its 5-point
shape predictor and ``get_face_chip`` are fast; only the network moves here.

The file is dlib's ``serialize`` of ``anet_type`` from dlib's ``dnn_face_recognition_ex.cpp``:
a 7x7 stem, 14 residual units (32, 64, 128, 256, 256 filters; the first of each width after the
stem halves the size), a global average and a 256 -> 128 linear map. The reader below knows
just that network and refuses anything else, so a damaged or different file fails loudly at
start-up instead of giving wrong identities.

dlib's stream format, as far as this file uses it:

* integers: one byte holding the byte count (low nibble) and the sign (0x80), then the
  magnitude's bytes, little-endian;
* floats and doubles: two integers, mantissa and exponent (value = mantissa * 2**exponent);
* strings: an integer length, then the bytes; booleans: the character ``'0'`` or ``'1'``;
* tensors: version 2, four integer dimensions, then raw little-endian float32 values;
  an alias of a tensor (a view into a layer's parameters): version 1 and four dimensions.

A network is written from the loss layer inwards: every layer's version first (2 for a layer
with parameters, 1 for the tag and skip layers that wire the residual units, 3 for the first
layer, which holds the input), then each layer's own fields from the input outwards, each
followed by three flags and three (empty) training tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

#: The descriptor network's input: a 150x150 RGB face chip (dlib's ``get_face_chip``).
CHIP_SIZE = 150
DESCRIPTOR_SIZE = 128
_VERSION_PARAMETRIC, _VERSION_WIRING, _VERSION_INPUT = 2, 1, 3
_TRAINING_FIELDS_FLAGS, _TRAINING_FIELDS_TENSORS = 3, 3


class NotTheDescriptorNetwork(ValueError):
    """The file is not (an intact copy of) dlib_face_recognition_resnet_model_v1."""


# --- dlib's stream ---------------------------------------------------------------------------


class _Stream:
    """A cursor over the bytes of a dlib ``serialize`` stream."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.at = 0

    def integer(self) -> int:
        header = self._take(1)[0]
        size, negative = header & 0x0F, bool(header & 0x80)
        value = int.from_bytes(self._take(size), "little")
        return -value if negative else value

    def number(self) -> float:
        mantissa, exponent = self.integer(), self.integer()
        return float(np.ldexp(float(mantissa), exponent))

    def text(self) -> str:
        return self._take(self.integer()).decode("ascii", errors="replace")

    def flag(self) -> bool:
        value = self._take(1)
        if value not in (b"0", b"1"):
            raise NotTheDescriptorNetwork(f"expected a flag at byte {self.at - 1}")
        return value == b"1"

    def tensor(self) -> np.ndarray:
        self.expect(2, "tensor version")
        shape = tuple(self.integer() for _ in range(4))
        count = int(np.prod(shape))
        values = np.frombuffer(self._take(4 * count), "<f4")
        return values.reshape(shape).astype(np.float32)

    def alias(self) -> tuple[int, ...]:
        self.expect(1, "tensor view version")
        return tuple(self.integer() for _ in range(4))

    def expect(self, value: int, what: str) -> None:
        found = self.integer()
        if found != value:
            raise NotTheDescriptorNetwork(f"{what}: expected {value}, found {found}")

    def expect_text(self, value: str) -> None:
        found = self.text()
        if found != value:
            raise NotTheDescriptorNetwork(f"expected layer {value!r}, found {found!r}")

    def next_layer_is(self, name: str) -> bool:
        at = self.at
        try:
            return self.text() == name
        finally:
            self.at = at

    @property
    def finished(self) -> bool:
        return self.at == len(self._data)

    def _take(self, count: int) -> bytes:
        if count < 0 or self.at + count > len(self._data):
            raise NotTheDescriptorNetwork(f"the file ends early (byte {self.at})")
        chunk = self._data[self.at:self.at + count]
        self.at += count
        return chunk


# --- the layers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Convolution:
    """A convolution with dlib's channel-wise scale and shift (batch norm, frozen) folded in."""

    weights: np.ndarray  # (filters, channels * kernel * kernel), im2col order
    bias: np.ndarray  # (filters, 1)
    kernel: int
    stride: int
    padding: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.padding:
            pad = self.padding
            x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
        windows = sliding_window_view(x, (self.kernel, self.kernel), axis=(1, 2))
        windows = windows[:, ::self.stride, ::self.stride]
        height, width = windows.shape[1:3]
        columns = windows.transpose(0, 3, 4, 1, 2).reshape(-1, height * width)
        out = np.matmul(self.weights, columns)
        out += self.bias
        return out.reshape(-1, height, width)


@dataclass(frozen=True)
class _ResidualUnit:
    """relu(second(relu(first(x))) + skip(x)); ``downsample`` units halve the size, and their
    skip is a 2x2 average. dlib adds tensors of different shapes as if the smaller were padded
    with zeros at the end of each axis (the halved sizes differ by one when the input is odd)."""

    first: _Convolution
    second: _Convolution
    downsample: bool

    def __call__(self, x: np.ndarray) -> np.ndarray:
        branch = self.second(np.maximum(self.first(x), 0))
        skip = _average_pool_2x2(x) if self.downsample else x
        shape = tuple(max(a, b) for a, b in zip(branch.shape, skip.shape, strict=True))
        total = np.zeros(shape, np.float32)
        total[tuple(slice(0, n) for n in branch.shape)] += branch
        total[tuple(slice(0, n) for n in skip.shape)] += skip
        return np.maximum(total, 0, out=total)


def _average_pool_2x2(x: np.ndarray) -> np.ndarray:
    height, width = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    x = x[:, :height, :width]
    return (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]) * 0.25


def _max_pool_3x3_stride_2(x: np.ndarray) -> np.ndarray:
    # The maximum of nine strided views: NumPy reduces a window view's small trailing axes
    # one element at a time, 20 times slower (4 ms a face).
    height, width = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    out = x[:, :2 * height:2, :2 * width:2].copy()
    for dy in range(3):
        for dx in range(3):
            np.maximum(out, x[:, dy:dy + 2 * height:2, dx:dx + 2 * width:2], out=out)
    return out


# --- the network -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DlibResNet:
    """The network, ready to run: ``describe_chip`` gives what dlib's
    ``face_recognition_model_v1.compute_face_descriptor(chip)`` gives."""

    channel_means: np.ndarray  # RGB, subtracted before dividing by 256, as dlib's input layer
    stem: _Convolution
    units: tuple[_ResidualUnit, ...]
    projection: np.ndarray  # (256, 128)

    def describe_chip(self, chip: np.ndarray) -> np.ndarray:
        """The raw 128-D descriptor (not normalised) of a 150x150 RGB uint8 face chip."""
        if chip.shape != (CHIP_SIZE, CHIP_SIZE, 3) or chip.dtype != np.uint8:
            raise ValueError(f"expected a {CHIP_SIZE}x{CHIP_SIZE} RGB uint8 chip, "
                             f"got {chip.dtype} {chip.shape}")
        x = (chip.astype(np.float32) - self.channel_means) / np.float32(256)
        x = np.ascontiguousarray(x.transpose(2, 0, 1))
        x = _max_pool_3x3_stride_2(np.maximum(self.stem(x), 0))
        for unit in self.units:
            x = unit(x)
        return x.mean(axis=(1, 2)) @ self.projection


def read_dlib_resnet(path: Path) -> DlibResNet:
    """Read ``dlib_face_recognition_resnet_model_v1.dat``; raises NotTheDescriptorNetwork for
    any other file. One blank chip goes through it here, so sizes that parse but do not chain
    are refused at start-up, not in the middle of a job."""
    try:
        network = _read_network(_Stream(Path(path).read_bytes()))
        network.describe_chip(np.zeros((CHIP_SIZE, CHIP_SIZE, 3), np.uint8))
    except NotTheDescriptorNetwork:
        raise
    except (ValueError, IndexError) as exc:  # numpy's reshape and matmul size errors
        raise NotTheDescriptorNetwork(f"the layers' sizes do not fit together: {exc}") from exc
    return network


def _read_network(stream: _Stream) -> DlibResNet:
    _read_header(stream)
    means = _read_input_layer(stream)
    stem = _read_convolution(stream, first_layer=True)
    _read_fields(stream, "relu_")
    _read_pool(stream, "max_pool_2", kernel=3, stride=2)
    units = []
    while stream.next_layer_is("con_4"):
        units.append(_read_unit(stream))
    _read_pool(stream, "avg_pool_2", kernel=0, stride=1)  # dlib's avg_pool_everything
    projection = _read_projection(stream)
    if not stream.finished:
        raise NotTheDescriptorNetwork(f"unexpected data after the last layer (byte {stream.at})")
    if [u.first.weights.shape[0] for u in units] != [32] * 3 + [64] * 4 + [128] * 3 + [256] * 4:
        raise NotTheDescriptorNetwork("the residual units are not dlib's face descriptor's")
    return DlibResNet(means, stem, tuple(units), projection)


def _read_header(stream: _Stream) -> None:
    stream.expect(1, "loss layer version")
    stream.expect_text("loss_metric_2")
    stream.number(), stream.number()  # the training margin and distance threshold
    while (version := stream.integer()) != _VERSION_INPUT:
        if version not in (_VERSION_PARAMETRIC, _VERSION_WIRING):
            raise NotTheDescriptorNetwork(f"unexpected layer version {version}")


def _read_input_layer(stream: _Stream) -> np.ndarray:
    stream.expect_text("input_rgb_image_sized")
    means = np.array([stream.number() for _ in range(3)], np.float32)
    stream.expect(CHIP_SIZE, "input rows")
    stream.expect(CHIP_SIZE, "input columns")
    return means


def _read_training_fields(stream: _Stream) -> None:
    """Three flags and three tensors dlib keeps for training; a trained file has them empty."""
    for _ in range(_TRAINING_FIELDS_FLAGS):
        stream.flag()
    for _ in range(_TRAINING_FIELDS_TENSORS):
        stream.tensor()


def _read_fields(stream: _Stream, name: str) -> None:
    """A layer with no fields of its own (relu, add_prev)."""
    stream.expect_text(name)
    _read_training_fields(stream)


def _read_pool(stream: _Stream, name: str, kernel: int, stride: int) -> None:
    stream.expect_text(name)
    sizes = [stream.integer() for _ in range(6)]  # rows, columns, strides, paddings
    if sizes != [kernel, kernel, stride, stride, 0, 0]:
        raise NotTheDescriptorNetwork(f"{name}: unexpected geometry {sizes}")
    _read_training_fields(stream)


def _read_convolution(stream: _Stream, first_layer: bool = False) -> _Convolution:
    """A ``con_4`` layer and the ``affine_`` layer after it, folded into one convolution."""
    stream.expect_text("con_4")
    params = stream.tensor().ravel()
    filters, rows, columns = stream.integer(), stream.integer(), stream.integer()
    stride_y, stride_x = stream.integer(), stream.integer()
    padding_y, padding_x = stream.integer(), stream.integer()
    kernel_shape, bias_shape = stream.alias(), stream.alias()
    for _ in range(4):  # learning-rate and weight-decay multipliers
        stream.number()
    _read_training_fields(stream)
    if first_layer:
        stream.expect(1, "sample expansion factor")
    if rows != columns or stride_y != stride_x or padding_y != padding_x \
            or kernel_shape[0] != filters or bias_shape[1] != filters:
        raise NotTheDescriptorNetwork(f"con_4: unexpected geometry {kernel_shape}")
    size = int(np.prod(kernel_shape))
    kernels, bias = params[:size].reshape(filters, -1), params[size:size + filters]
    scale, shift = _read_affine(stream, filters)
    return _Convolution(weights=np.ascontiguousarray(kernels * scale[:, None]),
                        bias=(bias * scale + shift)[:, None].astype(np.float32),
                        kernel=rows, stride=stride_y, padding=padding_y)


def _read_affine(stream: _Stream, channels: int) -> tuple[np.ndarray, np.ndarray]:
    stream.expect_text("affine_")
    params = stream.tensor().ravel()
    stream.alias(), stream.alias()
    stream.expect(0, "affine mode (per channel)")
    _read_training_fields(stream)
    if params.size != 2 * channels:
        raise NotTheDescriptorNetwork("affine_: size does not match its convolution")
    return params[:channels], params[channels:]


def _read_unit(stream: _Stream) -> _ResidualUnit:
    first = _read_convolution(stream)
    _read_fields(stream, "relu_")
    second = _read_convolution(stream)
    downsample = stream.next_layer_is("avg_pool_2")
    if downsample:
        _read_pool(stream, "avg_pool_2", kernel=2, stride=2)
    _read_fields(stream, "add_prev_")
    _read_fields(stream, "relu_")
    if downsample != (first.stride == 2):
        raise NotTheDescriptorNetwork("a residual unit's skip does not match its stride")
    return _ResidualUnit(first, second, downsample)


def _read_projection(stream: _Stream) -> np.ndarray:
    stream.expect_text("fc_2")
    stream.expect(DESCRIPTOR_SIZE, "descriptor size")
    inputs = stream.integer()
    weights = stream.tensor().reshape(inputs, DESCRIPTOR_SIZE)
    stream.alias(), stream.alias()
    stream.expect(1, "fc without bias")
    for _ in range(4):
        stream.number()
    _read_training_fields(stream)
    return np.ascontiguousarray(weights)
