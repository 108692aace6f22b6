"""Reference-network files written in code, in their real formats: a protobuf writer for Caffe's
NetParameter (both encodings) and BlobProto, an ONNX file with the model zoo's structure, random
AlexNet weights, and Caffe's forward pass written independently with torch.nn.functional.

Nothing here imports the code under test. Under $ALEXNET_TEST_WIDTH (tests/conftest.py: every
test not marked `full_size`) the files are of the narrow network the toolkit then builds: every
channel count but the colours, fc7's 4096 outputs and fc8's divided by it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SHAPES = {
    "conv1": (96, 3, 11, 11),
    "conv2": (256, 48, 5, 5),
    "conv3": (384, 256, 3, 3),
    "conv4": (384, 192, 3, 3),
    "conv5": (256, 192, 3, 3),
    "fc6": (4096, 9216),
    "fc7": (4096, 4096),
}
NARROWED = {"conv1": (0,), "fc6": (0, 1), "fc7": (1,)}  # conv2-5: both channel counts


def width() -> int:
    """The divisor of the network's channel counts the toolkit builds now (1: the paper's)."""
    return int(os.environ.get("ALEXNET_TEST_WIDTH", "1"))


def shapes() -> dict[str, tuple]:
    w = width()
    return {
        name: tuple(d // w if i in NARROWED.get(name, (0, 1)) else d for i, d in enumerate(shape))
        for name, shape in SHAPES.items()
    }


V1 = {"Data": 5, "Convolution": 4, "ReLU": 18, "LRN": 15, "Pooling": 17, "InnerProduct": 14}
V1 |= {"Dropout": 6, "SoftmaxWithLoss": 21, "Accuracy": 1}


def random_weights(classes: int = 1000, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """He-scaled weights, so that activations stay in the range where LRN matters."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in {**shapes(), "fc8": (classes, 4096)}.items():
        fan_in = int(np.prod(shape[1:]))
        w = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        out[name] = (w, rng.standard_normal(shape[0], dtype=np.float32) * np.float32(0.1))
    return out


# --- protobuf wire format -----------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def f_int(number: int, n: int) -> bytes:
    return tag(number, 0) + varint(n)


def f_bytes(number: int, data: bytes) -> bytes:
    return tag(number, 2) + varint(len(data)) + data


def f_float(number: int, x: float) -> bytes:
    return tag(number, 5) + struct.pack("<f", x)


def floats(number: int, values: np.ndarray, packed: bool = True) -> bytes:
    data = np.ascontiguousarray(values, "<f4").ravel()
    if packed:
        return f_bytes(number, data.tobytes())
    rows = np.empty((len(data), 5), np.uint8)  # one tag per value
    rows[:, 0] = tag(number, 5)[0]
    rows[:, 1:] = data.view(np.uint8).reshape(-1, 4)
    return rows.tobytes()


def blob(values: np.ndarray, *, v1: bool, packed: bool = True, shape=None) -> bytes:
    shape = tuple(values.shape if shape is None else shape)
    if v1:  # num, channels, height, width: Caffe's legacy 4-d shapes
        dims = (1,) * (4 - len(shape)) + shape
        head = b"".join(f_int(i + 1, d) for i, d in enumerate(dims))
        return head + floats(5, values, packed)
    dims = f_bytes(1, b"".join(varint(d) for d in shape))  # BlobShape.dim, packed
    return floats(5, values, packed) + f_bytes(7, dims)


def mean_binaryproto(mean_bgr_chw: np.ndarray) -> bytes:
    return blob(mean_bgr_chw.astype(np.float32), v1=True, shape=(1, *mean_bgr_chw.shape))


def layer_list(caffenet: bool = False, lrn=(5, 1e-4, 0.75, 1.0)) -> list[tuple[str, str, dict]]:
    """bvlc_alexnet's train_val layers: (name, type, params); CaffeNet pools before LRN."""
    w = width()
    conv = lambda n, k, s=1, p=0, g=1: {"conv": (n // w, k, s, p, g)}  # noqa: E731
    norm_pool = [("norm{}", "LRN", {"lrn": lrn}), ("pool{}", "Pooling", {"pool": (3, 2)})]
    if caffenet:
        norm_pool.reverse()
    layers = [
        ("data", "Data", {}),
        ("conv1", "Convolution", conv(96, 11, 4)),
        ("relu1", "ReLU", {}),
    ]
    layers += [(n.format(1), t, p) for n, t, p in norm_pool]
    layers += [("conv2", "Convolution", conv(256, 5, p=2, g=2)), ("relu2", "ReLU", {})]
    layers += [(n.format(2), t, p) for n, t, p in norm_pool]
    layers += [
        ("conv3", "Convolution", conv(384, 3, p=1)),
        ("relu3", "ReLU", {}),
        ("conv4", "Convolution", conv(384, 3, p=1, g=2)),
        ("relu4", "ReLU", {}),
        ("conv5", "Convolution", conv(256, 3, p=1, g=2)),
        ("relu5", "ReLU", {}),
        ("pool5", "Pooling", {"pool": (3, 2)}),
        ("fc6", "InnerProduct", {"fc": 4096 // w}),
        ("relu6", "ReLU", {}),
        ("drop6", "Dropout", {}),
        ("fc7", "InnerProduct", {"fc": 4096}),
        ("relu7", "ReLU", {}),
        ("drop7", "Dropout", {}),
        ("fc8", "InnerProduct", {"fc": 0}),
        ("loss", "SoftmaxWithLoss", {}),
    ]
    return layers


def layer_message(name, kind, params, blobs, *, v1: bool, packed: bool, shapes=()) -> bytes:
    fields = {"name": 4, "type": 5, "blobs": 6, "conv": 10, "fc": 17, "lrn": 18, "pool": 19}
    if not v1:
        fields = {"name": 1, "type": 2, "blobs": 7, "conv": 106, "fc": 117, "lrn": 118, "pool": 121}
    out = f_bytes(fields["name"], name.encode())
    out += f_int(5, V1[kind]) if v1 else f_bytes(2, kind.encode())
    for b, shape in zip(blobs, list(shapes) + [None] * len(blobs), strict=False):
        out += f_bytes(fields["blobs"], blob(b, v1=v1, packed=packed, shape=shape))
    if "conv" in params:
        n, k, s, p, g = params["conv"]
        body = f_int(1, n) + f_int(3, p) + f_int(4, k) + f_int(5, g) + f_int(6, s)
        out += f_bytes(fields["conv"], body)
    if "lrn" in params:
        size, alpha, beta, k = params["lrn"]
        body = f_int(1, size) + f_float(2, alpha) + f_float(3, beta) + f_float(5, k)
        out += f_bytes(fields["lrn"], body)
    if "pool" in params:
        k, s = params["pool"]
        out += f_bytes(fields["pool"], f_int(1, 0) + f_int(2, k) + f_int(3, s))
    if "fc" in params:
        out += f_bytes(fields["fc"], f_int(1, params["fc"] or (len(blobs[1]) if blobs else 0)))
    return out


def write_caffemodel(
    path: Path,
    weights: dict,
    *,
    v1: bool = False,
    packed: bool = True,
    caffenet: bool = False,
    layers: list | None = None,
    shapes: dict | None = None,
) -> Path:
    """A NetParameter: name, then the layers (field 2, V1LayerParameter, or field 100,
    LayerParameter), each learned one with its weight and bias blobs, whose declared shapes
    `shapes` {layer: (weight shape, bias shape)} may override. Written layer by layer."""
    with open(path, "wb") as f:
        f.write(f_bytes(1, b"AlexNet"))
        for name, kind, params in layers or layer_list(caffenet):
            blobs = list(weights[name]) if name in weights else []
            declared = (shapes or {}).get(name, ())
            msg = layer_message(name, kind, params, blobs, v1=v1, packed=packed, shapes=declared)
            f.write(f_bytes(2 if v1 else 100, msg))
    return path


# --- ONNX, as the model zoo's bvlcalexnet is laid out -------------------------------------


def write_zoo_onnx(path: Path, weights: dict, *, fc7_output: bool = False) -> Path:
    """Caffe -> Caffe2 -> ONNX: input data_0 (1x3x224x224, BGR), unpadded conv1, MaxPools
    padded at the end (Caffe's rounding up), Reshape before fc6, Gemm with transB, softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes = [], []

    def param(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    x = "data_0"

    def add(op, inputs, **attrs):
        nonlocal x
        out = f"{op.lower()}_{len(nodes)}"
        nodes.append(helper.make_node(op, [x, *inputs], [out], **attrs))
        x = out
        return out

    def conv(name, pad, group, stride=1):
        w, b = weights[name]
        add(
            "Conv",
            [param(f"{name}_w_0", w), param(f"{name}_b_0", b)],
            strides=[stride] * 2,
            pads=[pad] * 4,
            kernel_shape=list(w.shape[2:]),
            group=group,
        )
        add("Relu", [])

    pool = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])
    conv("conv1", 0, 1, 4)
    add("LRN", [], size=5, alpha=1e-4, beta=0.75, bias=1.0)
    add("MaxPool", [], **pool)
    conv("conv2", 2, 2)
    add("LRN", [], size=5, alpha=1e-4, beta=0.75, bias=1.0)
    add("MaxPool", [], **pool)
    conv("conv3", 1, 1)
    conv("conv4", 1, 2)
    conv("conv5", 1, 2)
    add("MaxPool", [], **pool)
    fc6_inputs = weights["fc6"][0].shape[1]  # 9216: 256 maps of 6x6
    add("Reshape", [param("OC2_DUMMY_1", np.array([1, fc6_inputs], np.int64))])
    outputs = []
    for name in ("fc6", "fc7", "fc8"):
        w, b = weights[name]
        add("Gemm", [param(f"{name}_w_0", w), param(f"{name}_b_0", b)], transB=1)
        if name != "fc8":
            relu = add("Relu", [])
            if name == "fc7" and fc7_output:
                outputs.append(helper.make_tensor_value_info(relu, TensorProto.FLOAT, [1, 4096]))
            add("Dropout", [])
    add("Softmax", [])
    nodes[-1].output[0] = "prob_1"
    n = len(weights["fc8"][1])
    graph = helper.make_graph(
        nodes,
        "bvlcalexnet",
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("prob_1", TensorProto.FLOAT, [1, n]), *outputs],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


# --- Caffe's forward pass, independently ----------------------------------------------------


def caffe_lrn(x: torch.Tensor, size=5, alpha=1e-4, beta=0.75, k=1.0) -> torch.Tensor:
    """Caffe's across-channel LRN: x / (k + alpha / size * sum of x^2 over the window)^beta."""
    sq = F.pad(x * x, (0, 0, 0, 0, size // 2, (size - 1) // 2))
    window = sum(sq[:, i : i + x.shape[1]] for i in range(size))
    return x / (k + alpha / size * window) ** beta


def caffe_forward(
    weights: dict, x_bgr: torch.Tensor, *, conv1_pad=0, caffenet=False, lrn=caffe_lrn
) -> tuple[torch.Tensor, ...]:
    """(fc7, logits) of Caffe's AlexNet in float64 on BGR mean-subtracted crops; pooling rounds
    up, as Caffe's does. CaffeNet pools before its LRN."""
    t = {
        k: (torch.from_numpy(w).double(), torch.from_numpy(b).double())
        for k, (w, b) in weights.items()
    }
    pool = lambda h: F.max_pool2d(h, 3, 2, ceil_mode=True)  # noqa: E731
    norm_pool = (lambda h: lrn(pool(h))) if caffenet else (lambda h: pool(lrn(h)))
    h = x_bgr.double()
    h = norm_pool(F.relu(F.conv2d(h, *t["conv1"], stride=4, padding=conv1_pad)))
    h = norm_pool(F.relu(F.conv2d(h, *t["conv2"], padding=2, groups=2)))
    h = F.relu(F.conv2d(h, *t["conv3"], padding=1))
    h = F.relu(F.conv2d(h, *t["conv4"], padding=1, groups=2))
    h = pool(F.relu(F.conv2d(h, *t["conv5"], padding=1, groups=2)))
    h = F.relu(F.linear(h.flatten(1), *t["fc6"]))
    fc7 = F.relu(F.linear(h, *t["fc7"]))
    return fc7, F.linear(fc7, *t["fc8"])


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).abs().max() / want.abs().max())
