"""AlexNet to and from ONNX: `read_onnx` takes the ONNX model zoo's bvlcalexnet-*.onnx (a
conversion of Caffe's bvlc_alexnet: BGR input, 224 crops, unpadded conv1, pooling padded at
the end so that sizes round up) apart; `export_onnx` writes a run's network as a plain ONNX
graph for other runtimes.

The weights are found by walking the graph's nodes in order (Conv, LRN, MaxPool, Gemm), each
node naming its own weight tensors, so nothing depends on the file's tensor names. The
network's settings are read from the same nodes' attributes.

ONNX's LRN divides alpha by the window size, as Caffe's does: the paper's LRN (k=2, alpha
1e-4 not divided) is LRN(size=5, alpha=5e-4, bias=2), Caffe's is LRN(size=5, alpha=1e-4,
bias=1). The model's own LocalResponseNorm holds the undivided alpha (model/lrn.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alexnet.pipeline.errors import AlexnetError

from .init import LAYERS
from .reference_spec import (
    GROUPS,
    PADS,
    Reference,
    check_blob,
    check_feature_side,
    lrn_form,
    order_settings,
    shapes,
)

OPSET = 13
KINDS = {"Conv": "conv", "Relu": "relu", "LRN": "lrn", "MaxPool": "pool", "Gemm": "fc"}
IGNORED = {"Dropout", "Reshape", "Flatten", "Softmax", "Identity", "Constant", "Shape"}
IGNORED |= {"Gather", "Unsqueeze", "Concat", "Cast"}  # a Reshape's shape, computed
CHANNELS_KEY = "alexnet.input_channels"  # "RGB" in files written here; the zoo's are BGR


def _attributes(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def read_onnx(path: Path) -> Reference:
    import onnx
    from onnx import numpy_helper

    what = str(path)
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf's DecodeError, a missing external-data file, ...
        raise AlexnetError(
            f"{what} is not a readable ONNX model ({type(e).__name__}: {str(e)[:80]})"
        ) from None
    graph = model.graph
    tensors = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            value = _attributes(node).get("value")
            if value is not None:
                tensors[node.output[0]] = value

    def array(name: str, node) -> np.ndarray:
        if name not in tensors:
            raise AlexnetError(f"{what}: {node.op_type} node {node.name!r} has no stored {name!r}")
        return numpy_helper.to_array(tensors[name]).astype(np.float32, copy=False)

    used = [n for n in graph.node if n.op_type not in IGNORED]
    other = sorted({n.op_type for n in used if n.op_type not in KINDS})
    if other:
        raise AlexnetError(f"{what} is not AlexNet: it has {', '.join(other)} nodes")
    settings = order_settings([KINDS[n.op_type] for n in used], what)
    weights = {}
    convs = [n for n in used if n.op_type == "Conv"]
    fcs = [n for n in used if n.op_type == "Gemm"]
    for name, node in zip(LAYERS, convs + fcs, strict=True):
        a = _attributes(node)
        if len(node.input) < 3:
            raise AlexnetError(f"{what}: {name} ({node.name!r}) has no bias")
        w, b = array(node.input[1], node), array(node.input[2], node)
        if node.op_type == "Gemm":
            if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0):
                raise AlexnetError(f"{what}: {name} is a scaled or transposed Gemm: {a}")
            w = w if a.get("transB", 0) else np.ascontiguousarray(w.T)
        else:
            pads = list(a.get("pads", [0, 0, 0, 0]))
            want_pad = PADS.get(name, pads[0])
            if a.get("group", 1) != GROUPS[name] or pads != [want_pad] * 4:
                raise AlexnetError(
                    f"{what}: {name} has groups {a.get('group', 1)} and pads {pads}, AlexNet's "
                    f"{GROUPS[name]} and {[want_pad] * 4}"
                )
            if name == "conv1":
                settings["conv1_padding"] = pads[0]
        shape = check_blob(f"{name} weight", w.shape, w.size, shapes()[name], what)
        check_blob(f"{name} bias", b.shape, b.size, (shape[0],), what)
        weights[name] = (w.reshape(shape), b.reshape(-1))
    pools = [_attributes(n) for n in used if n.op_type == "MaxPool"]
    for a in pools:
        if list(a.get("kernel_shape", [])) != [3, 3] or list(a.get("strides", [1, 1])) != [2, 2]:
            raise AlexnetError(f"{what}: a MaxPool is not 3x3 with stride 2: {a}")
    settings["pool_ceil"] = any(
        a.get("ceil_mode", 0) or any(a.get("pads", [0] * 4)[2:]) for a in pools
    )
    forms = {
        lrn_form(a["size"], a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0), what)
        for a in (_attributes(n) for n in used if n.op_type == "LRN")
    }
    settings["lrn_form"] = forms.pop() if len(forms) == 1 else "caffe"
    settings["crop"] = _input_side(graph) or 224
    check_feature_side(settings, what)
    meta = {p.key: p.value for p in model.metadata_props}
    bgr = meta.get(CHANNELS_KEY, "BGR") != "RGB"
    return Reference(weights, settings, {"format": "onnx", "name": graph.name}, bgr=bgr)


def _input_side(graph) -> int | None:
    stored = {t.name for t in graph.initializer}
    for i in graph.input:
        if i.name not in stored:
            dims = i.type.tensor_type.shape.dim
            return dims[2].dim_value if len(dims) == 4 and dims[2].dim_value else None
    return None


def network_graph(model, crop: int, output: str = "logits"):
    """An eval-mode AlexNet as an ONNX ModelProto: input "images" (batch x 3 x crop x crop,
    mean-subtracted RGB), output "logits" or "fc7" (after its ReLU); the batch is dynamic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from torch import nn

    from .lrn import LocalResponseNorm

    nodes, weights, x = [], [], "images"
    layers = list(model.features) + [nn.Flatten()] + list(model.classifier)
    if output == "fc7":
        layers = layers[:-1]
    for i, m in enumerate(layers):
        y, inputs, attrs = f"t{i}", [x], {}
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            for p in ("weight", "bias"):
                name = f"{i}.{p}"
                weights.append(numpy_helper.from_array(getattr(m, p).detach().cpu().numpy(), name))
                inputs.append(name)
        if isinstance(m, nn.Conv2d):
            op = "Conv"
            attrs = dict(
                kernel_shape=list(m.kernel_size),
                strides=list(m.stride),
                pads=[m.padding[0], m.padding[1]] * 2,
                group=m.groups,
            )
        elif isinstance(m, nn.Linear):
            op, attrs = "Gemm", dict(transB=1)
        elif isinstance(m, nn.ReLU):
            op = "Relu"
        elif isinstance(m, LocalResponseNorm):  # ONNX divides alpha by the size; ours not
            op = "LRN"
            attrs = dict(size=m.size, alpha=m.alpha * m.size, beta=m.beta, bias=m.k)
        elif isinstance(m, nn.MaxPool2d):
            op = "MaxPool"
            attrs = dict(kernel_shape=[m.kernel_size] * 2, strides=[m.stride] * 2)
            attrs["ceil_mode"] = int(m.ceil_mode)
        elif isinstance(m, nn.Flatten):
            op, attrs = "Flatten", dict(axis=1)
        else:  # dropout and identity: nothing at inference
            continue
        nodes.append(helper.make_node(op, inputs, [y], name=f"{op.lower()}{i}", **attrs))
        x = y
    nodes[-1].output[0] = output
    width = model.classifier[-1].out_features if output == "logits" else 4096
    graph = helper.make_graph(
        nodes,
        "alexnet",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, crop, crop])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", width])],
        initializer=weights,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = 8  # readable by onnxruntime releases since 1.10
    helper.set_model_props(proto, {CHANNELS_KEY: "RGB"})
    onnx.checker.check_model(proto)
    return proto


def export_onnx(
    run: str | Path,
    out: str | Path,
    *,
    output: str = "logits",
    checkpoint: str | Path | None = None,
) -> dict:
    """Write RUN's network (default checkpoint best.pt) to `out` as ONNX (opset 13): input
    "images", N x 3 x crop x crop RGB minus the run's mean (RUN/stats.npz), output "logits"
    or "fc7". Returns {"path", "output", "crop", "mean"}."""
    import onnx

    from alexnet.pipeline.files import atomic_write

    from .inference import load_trained

    if output not in ("logits", "fc7"):
        raise AlexnetError(f"{{output}} must be 'logits' or 'fc7', got {output!r}", param="output")
    trained = load_trained(run, checkpoint, check_files=False)
    proto = network_graph(trained.model, trained.config.crop, output)
    path = atomic_write(out, lambda tmp: onnx.save(proto, tmp))
    return {
        "path": str(path),
        "output": output,
        "crop": trained.config.crop,
        "mean": trained.config.mean,
    }
