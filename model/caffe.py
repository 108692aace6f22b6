"""Caffe's files read without Caffe: a .caffemodel (NetParameter) and a mean .binaryproto
(BlobProto), through a small reader of the protobuf wire format.

A NetParameter holds its layers in one of two encodings: the current `layer` field (100,
LayerParameter: type as a string, blob shapes as BlobShape.dim) and the legacy `layers`
field (2, V1LayerParameter: type as an enum, blob shapes as num/channels/height/width), which
is what the published bvlc_alexnet.caffemodel (2014) holds. Both are read.

The file is memory-mapped and walked field by field; the weights, packed float fields of
BlobProto.data, are only located while walking (offset and count) and read straight into
their arrays afterwards (`read_blob`), so a 233 MB file costs one copy of its weights.
Everything wrong with a file (truncated, not a protobuf, a field that runs past the end)
is a `Malformed` with what was found; the caller names the file.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5

# V1LayerParameter.LayerType values of the layers an AlexNet holds (caffe.proto).
V1_TYPES = {
    1: "Accuracy",
    4: "Convolution",
    5: "Data",
    6: "Dropout",
    8: "Flatten",
    12: "ImageData",
    14: "InnerProduct",
    15: "LRN",
    17: "Pooling",
    18: "ReLU",
    20: "Softmax",
    21: "SoftmaxWithLoss",
    22: "Split",
    29: "MemoryData",
}
# Field numbers of the parameter messages, current (LayerParameter) and V1.
PARAMS = {
    "current": {"name": 1, "type": 2, "blobs": 7, "conv": 106, "pool": 121, "lrn": 118},
    "v1": {"name": 4, "type": 5, "blobs": 6, "conv": 10, "pool": 19, "lrn": 18},
}


class Malformed(Exception):
    """The bytes are not the protobuf message expected; the text says what was found."""


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise Malformed(f"the data ends inside a number at byte {pos} (truncated?)")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise Malformed(f"a number longer than 10 bytes at byte {pos} (not a protobuf)")


def next_field(buf, pos: int, end: int) -> tuple[int, int, int | tuple[int, int], int]:
    """The field at `pos`: (number, wire type, value, position after it). A varint's value is
    the number, any other's the (start, end) of its bytes."""
    key, pos = _varint(buf, pos, end)
    number, wire = key >> 3, key & 7
    if number == 0:
        raise Malformed(f"field number 0 at byte {pos} (not a protobuf)")
    if wire == VARINT:
        value, pos = _varint(buf, pos, end)
        return number, wire, value, pos
    if wire == LENGTH:
        size, pos = _varint(buf, pos, end)
    elif wire in (FIXED64, FIXED32):
        size = 8 if wire == FIXED64 else 4
    else:
        raise Malformed(f"wire type {wire} at byte {pos} (not a protobuf)")
    if pos + size > end:
        raise Malformed(
            f"a field of {size:,} bytes at byte {pos:,} runs past the end of its message "
            f"(byte {end:,}): the file is truncated or not this kind of file"
        )
    return number, wire, (pos, pos + size), pos + size


def fields(buf, start: int, end: int) -> dict[int, list]:
    """The fields of the message in buf[start:end], by number, in order."""
    found: dict[int, list] = {}
    pos = start
    while pos < end:
        number, _, value, pos = next_field(buf, pos, end)
        found.setdefault(number, []).append(value)
    return found


def _text(buf, span) -> str:
    return bytes(buf[span[0] : span[1]]).decode("utf-8", "replace")


def _ints(buf, values: list) -> list[int]:
    """A repeated integer field's values, packed or not."""
    out = []
    for v in values:
        if isinstance(v, int):
            out.append(v)
        else:
            pos, end = v
            while pos < end:
                n, pos = _varint(buf, pos, end)
                out.append(n)
    return out


def _float(buf, values: list, default: float) -> float:
    if not values or isinstance(values[-1], int):
        return default
    s, e = values[-1]
    return struct.unpack("<f", bytes(buf[s:e]))[0]


@dataclass
class Blob:
    """One BlobProto: its shape and where its float32 values are (or the values themselves,
    when the file stores them another way than packed)."""

    shape: tuple[int, ...]
    offset: int = 0  # of the packed float32 data in the file
    count: int = 0
    values: np.ndarray | None = None


def parse_blob(buf, start: int, end: int) -> Blob:
    """A BlobProto: shape from BlobShape.dim (7) or num/channels/height/width (1-4); data (5)
    packed float32, unpacked float32 (one tag per value), or double_data (8)."""
    dims, legacy, pos = None, {}, start
    offset = count = 0
    values = None
    while pos < end:
        number, wire, value, after = next_field(buf, pos, end)
        if number == 7 and wire == LENGTH:
            dims = _ints(buf, fields(buf, *value).get(1, []))
        elif number in (1, 2, 3, 4) and wire == VARINT:
            legacy[number] = value
        elif number == 5 and wire == LENGTH:
            offset, count = value[0], (value[1] - value[0]) // 4
        elif number == 5 and wire == FIXED32:  # unpacked: a run of (tag 0x2d, 4 bytes)
            rows = np.frombuffer(buf, np.uint8, (end - pos) // 5 * 5, pos).reshape(-1, 5)
            run = int(np.argmin(rows[:, 0] == 0x2D)) if (rows[:, 0] != 0x2D).any() else len(rows)
            values = rows[:run, 1:].copy().view("<f4").ravel()
            after = pos + 5 * run
        elif number == 8 and wire == LENGTH:
            values = np.frombuffer(buf, "<f8", (value[1] - value[0]) // 8, value[0])
            values = values.astype(np.float32)
        pos = after
    if dims is None:
        dims = [legacy.get(i, 0) for i in (1, 2, 3, 4)] if legacy else []
    return Blob(tuple(dims), offset, count, values)


def blob_size(blob: Blob) -> int:
    return blob.count if blob.values is None else len(blob.values)


def read_blob(f, blob: Blob) -> np.ndarray:
    """A blob's float32 values from the open file, read into a new array (one copy)."""
    if blob.values is not None:
        return blob.values
    out = np.empty(blob.count, "<f4")
    f.seek(blob.offset)
    if f.readinto(memoryview(out).cast("B")) != out.nbytes:
        raise Malformed("the file ended while its weights were read (truncated?)")
    return out


@dataclass
class Layer:
    """One layer of a NetParameter: name, type (the current format's names), its blobs, and
    the few settings an AlexNet's layers have."""

    name: str
    type: str
    blobs: list[Blob] = field(default_factory=list)
    settings: dict = field(default_factory=dict)


def _conv_settings(buf, span) -> dict:
    f = fields(buf, *span)
    first = lambda n, d: (_ints(buf, f.get(n, [])) or [d])[0]  # noqa: E731
    return {
        "kernel": first(4, first(11, 0)),
        "stride": first(6, first(13, 1)),
        "pad": first(3, first(9, 0)),
        "group": first(5, 1),
    }


def _pool_settings(buf, span) -> dict:
    f = fields(buf, *span)
    first = lambda n, d: (_ints(buf, f.get(n, [])) or [d])[0]  # noqa: E731
    kinds = {0: "max", 1: "average", 2: "stochastic"}
    return {"pool": kinds.get(first(1, 0), "?"), "kernel": first(2, 0), "stride": first(3, 1)}


def _lrn_settings(buf, span) -> dict:
    f = fields(buf, *span)
    return {
        "size": (_ints(buf, f.get(1, [])) or [5])[0],
        "alpha": _float(buf, f.get(2, []), 1.0),
        "beta": _float(buf, f.get(3, []), 0.75),
        "across_channels": (_ints(buf, f.get(4, [])) or [0])[0] == 0,
        "k": _float(buf, f.get(5, []), 1.0),
    }


def parse_layer(buf, span, encoding: str) -> Layer:
    p = PARAMS[encoding]
    f = fields(buf, *span)
    name = _text(buf, f[p["name"]][-1]) if p["name"] in f else "?"
    if encoding == "v1":
        code = (_ints(buf, f.get(p["type"], [])) or [0])[0]
        kind = V1_TYPES.get(code, f"V1 type {code}")
    else:
        kind = _text(buf, f[p["type"]][-1]) if p["type"] in f else "?"
    layer = Layer(name, kind, [parse_blob(buf, *b) for b in f.get(p["blobs"], [])])
    for key, read in (("conv", _conv_settings), ("pool", _pool_settings), ("lrn", _lrn_settings)):
        if p[key] in f:
            layer.settings.update(read(buf, f[p[key]][-1]))
    return layer


class CaffeModel:
    """An open .caffemodel: its name, encoding and layers (`with CaffeModel(path) as net`).
    The file stays mapped until closed; `read_blob(self.file, blob)` reads weights."""

    def __init__(self, path: str | Path):
        self.file = open(path, "rb")  # noqa: SIM115 (closed by close())
        self._map = None
        try:
            size = Path(path).stat().st_size
            if size == 0:
                raise Malformed("the file is empty")
            self._map = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ)
            top = fields(self._map, 0, size)
            self.name = _text(self._map, top[1][-1]) if 1 in top else ""
            if 100 in top:
                self.encoding, spans = "current", top[100]
            elif 2 in top:
                self.encoding, spans = "v1", top[2]
            else:
                raise Malformed("no layers (neither a `layer` nor a legacy `layers` field)")
            self.layers = [parse_layer(self._map, s, self.encoding) for s in spans]
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        self.file.close()

    def __enter__(self) -> CaffeModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_mean_binaryproto(path: str | Path) -> np.ndarray:
    """A mean .binaryproto (one BlobProto, BGR, channels x height x width) as float64
    height x width x 3 RGB, 0-255."""
    data = Path(path).read_bytes()
    if not data:
        raise Malformed("the file is empty")
    blob = parse_blob(data, 0, len(data))
    values = blob.values
    if values is None:
        values = np.frombuffer(data, "<f4", blob.count, blob.offset)
    shape = [d for d in blob.shape if d != 1] if len(blob.shape) == 4 else list(blob.shape)
    if len(shape) != 3 or shape[0] != 3 or np.prod(shape) != len(values):
        raise Malformed(
            f"a blob of shape {tuple(blob.shape)} with {len(values)} values, not a 3-channel "
            "mean image"
        )
    return values.reshape(shape)[::-1].transpose(1, 2, 0).astype(np.float64)
