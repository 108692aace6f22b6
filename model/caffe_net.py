"""AlexNet read from a Caffe NetParameter (model/caffe.py reads the format): the layers that
matter at inference in the file's order, each learned layer's weight and bias checked against
AlexNet's shapes, and the model settings their parameters imply (model/reference_spec.py)."""

from __future__ import annotations

from pathlib import Path

from alexnet.pipeline.errors import AlexnetError

from .caffe import CaffeModel, Layer, Malformed, blob_size, read_blob
from .init import LAYERS
from .reference_spec import (
    GROUPS,
    PADS,
    SHAPES,
    Reference,
    check_blob,
    check_feature_side,
    lrn_form,
    order_settings,
    shapes,
)

# Caffe layer types: what each is in AlexNet's order; the rest play no part in inference.
KINDS = {
    "Convolution": "conv",
    "ReLU": "relu",
    "LRN": "lrn",
    "Pooling": "pool",
    "InnerProduct": "fc",
}
IGNORED = {
    "Data",
    "ImageData",
    "MemoryData",
    "Input",
    "Dropout",
    "Softmax",
    "SoftmaxWithLoss",
    "Accuracy",
    "Split",
    "Silence",
    "Flatten",
}


def read_caffe(path: Path) -> Reference:
    what = str(path)
    try:
        with CaffeModel(path) as net:
            used = [layer for layer in net.layers if layer.type not in IGNORED]
            other = [layer for layer in used if layer.type not in KINDS]
            if other:
                listed = ", ".join(f"{x.name} ({x.type})" for x in other[:3])
                raise AlexnetError(
                    f"{what} is not AlexNet: it has layers AlexNet has not: {listed}"
                )
            settings = order_settings([KINDS[layer.type] for layer in used], what)
            settings.update(caffe_settings(used, what))
            learned = [x for x in used if x.type in ("Convolution", "InnerProduct")]
            weights = {
                name: caffe_blobs(net, name, layer, what)
                for name, layer in zip(LAYERS, learned, strict=True)
            }
            source = {"format": f"caffe ({net.encoding} layers)", "name": net.name}
    except Malformed as e:
        raise AlexnetError(f"{what} is not a readable Caffe model: {e}") from None
    except OSError as e:
        raise AlexnetError(f"{what} cannot be read ({e.strerror})") from None
    check_feature_side(settings, what)
    return Reference(weights, settings, source)


def caffe_settings(layers: list[Layer], what: str) -> dict:
    """Model settings from the layers' parameters, each checked against AlexNet's."""
    convs = [x for x in layers if x.type == "Convolution"]
    for name, layer in zip(LAYERS, convs, strict=False):
        s = layer.settings
        kernel, stride = SHAPES[name][-1], 4 if name == "conv1" else 1
        pad = s.get("pad", 0) if name == "conv1" else PADS[name]
        want = {"kernel": kernel, "stride": stride, "pad": pad, "group": GROUPS[name]}
        got = {k: s.get(k) for k in want}
        if got != want:
            raise AlexnetError(f"{what}: {name} ({layer.name}) has {got}, AlexNet's has {want}")
    conv1_pad = convs[0].settings.get("pad", 0)
    if conv1_pad not in (0, 2):
        raise AlexnetError(f"{what}: conv1 has padding {conv1_pad}, AlexNet's 0 (Caffe) or 2")
    for layer in (x for x in layers if x.type == "Pooling"):
        s = layer.settings
        if (s.get("pool"), s.get("kernel"), s.get("stride")) != ("max", 3, 2):
            raise AlexnetError(f"{what}: {layer.name} is not a 3x3 stride-2 max-pooling: {s}")
    forms = set()
    for layer in (x for x in layers if x.type == "LRN"):
        s = layer.settings
        if not s.get("across_channels", True):
            raise AlexnetError(f"{what}: {layer.name} normalises within channels, not across")
        forms.add(lrn_form(s["size"], s["alpha"], s["beta"], s["k"], what))
    return {
        "lrn_form": forms.pop() if len(forms) == 1 else "caffe",
        "crop": 227 if conv1_pad == 0 else 224,
        "conv1_padding": conv1_pad,
        "pool_ceil": True,  # Caffe rounds pooled sizes up (the same sizes at 227)
    }


def caffe_blobs(net: CaffeModel, name: str, layer: Layer, what: str) -> tuple:
    if len(layer.blobs) != 2:
        raise AlexnetError(
            f"{what}: {name} ({layer.name}) holds {len(layer.blobs)} blobs, not a weight and a bias"
        )
    weight, bias = layer.blobs
    shape = check_blob(f"{name} weight", weight.shape, blob_size(weight), shapes()[name], what)
    check_blob(f"{name} bias", bias.shape, blob_size(bias), (shape[0],), what)
    return read_blob(net.file, weight).reshape(shape), read_blob(net.file, bias)
