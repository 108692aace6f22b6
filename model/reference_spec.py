"""What a file must hold to be AlexNet: the learned layers' shapes, the layer order (AlexNet's
or CaffeNet's), the LRN forms, and the network settings a file's parameters imply. The readers
of Caffe's format (model/caffe_net.py) and ONNX's (model/onnx_io.py) check what they find
against these and return a `Reference`, which model/reference.py turns into a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from alexnet.pipeline.errors import AlexnetError

from .alexnet import test_width

# Weight shapes of AlexNet's learned layers (fc8's rows are the classes); biases: the rows.
SHAPES = {
    "conv1": (96, 3, 11, 11),
    "conv2": (256, 48, 5, 5),
    "conv3": (384, 256, 3, 3),
    "conv4": (384, 192, 3, 3),
    "conv5": (256, 192, 3, 3),
    "fc6": (4096, 9216),
    "fc7": (4096, 4096),
    "fc8": (None, 4096),
}
# The dimensions that are channel counts the test suite's narrow network divides (fc7 keeps its
# 4096 outputs, fc8 its 4096 inputs: model/alexnet.py TEST_WIDTH).
NARROWED = {"conv1": (0,), "fc6": (0, 1), "fc7": (1,), "fc8": ()}
GROUPS = {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2}
PADS = {"conv2": 2, "conv3": 1, "conv4": 1, "conv5": 1}
ALEXNET = (
    "conv relu lrn pool conv relu lrn pool conv relu conv relu conv relu pool fc relu fc relu fc"
)
CAFFENET = ALEXNET.replace("lrn pool", "pool lrn")


@dataclass
class Reference:
    """A network read from a file: weights and biases (float32, the file's channel order) by
    layer name, the model settings it needs, and where it came from."""

    weights: dict[str, tuple[np.ndarray, np.ndarray]]
    settings: dict
    source: dict = field(default_factory=dict)
    bgr: bool = True  # the network takes BGR images (Caffe's); conv1 is flipped at import

    @property
    def num_classes(self) -> int:
        return len(self.weights["fc8"][1])


def shapes() -> dict[str, tuple]:
    """SHAPES of the network this process builds: the paper's, or the test suite's narrow one,
    so that its tests import small files through the same code (model/alexnet.py TEST_WIDTH)."""
    w = test_width()
    return {
        name: tuple(d // w if i in NARROWED.get(name, (0, 1)) else d for i, d in enumerate(shape))
        for name, shape in SHAPES.items()
    }


def order_settings(kinds: list[str], what: str) -> dict:
    """AlexNet's layer order (or CaffeNet's) -> pool_before_norm; anything else refused."""
    found = " ".join(kinds)
    if found == ALEXNET:
        return {"pool_before_norm": False}
    if found == CAFFENET:
        return {"pool_before_norm": True}
    raise AlexnetError(
        f"{what} is not AlexNet: its layers run {found or 'none'}; expected {ALEXNET} "
        "(or CaffeNet's order, pooling before LRN)"
    )


def lrn_form(size: int, alpha: float, beta: float, k: float, what: str) -> str:
    """Which LRN form (model/alexnet.py) an LRN with alpha divided by `size` (Caffe's and
    ONNX's convention) is: Caffe's (k=1, alpha 1e-4) or the paper's (k=2, alpha 1e-4 * 5)."""
    close = lambda a, b: abs(a - b) <= 1e-6 * max(abs(b), 1e-12)  # noqa: E731
    if size == 5 and close(beta, 0.75) and close(k, 1.0) and close(alpha, 1e-4):
        return "caffe"
    if size == 5 and close(beta, 0.75) and close(k, 2.0) and close(alpha, 5e-4):
        return "paper"
    raise AlexnetError(
        f"{what} has an LRN of size {size}, alpha {alpha:g}, beta {beta:g}, k {k:g}: "
        "neither Caffe's (5, 1e-4, 0.75, 1) nor the paper's (5, 5e-4 / 5, 0.75, 2)"
    )


def check_blob(name: str, shape: tuple, count: int, expected: tuple, what: str) -> tuple:
    """The shape a blob must have; refuses another shape or an element count that does not
    match its own shape. Leading 1s (Caffe's legacy 4-d shapes of fc weights) are dropped."""
    shape = tuple(int(d) for d in shape)
    while len(shape) > len(expected) and shape[0] == 1:
        shape = shape[1:]
    want = tuple(s if e is None else e for s, e in zip(shape, expected, strict=False))
    if len(shape) != len(expected) or shape != want:
        shown = "x".join(str(e or "N") for e in expected)
        raise AlexnetError(
            f"{what}: {name} is {'x'.join(map(str, shape)) or 'empty'}, AlexNet's is {shown}"
            " (another network?)"
        )
    if int(np.prod(shape)) != count:
        raise AlexnetError(
            f"{what}: {name} has {count:,} values for its shape "
            f"{'x'.join(map(str, shape))} ({int(np.prod(shape)):,}): the file is damaged"
        )
    return shape


def _pool(side: int, ceil: bool) -> int:
    return (-(-(side - 3) // 2) if ceil else (side - 3) // 2) + 1


def feature_side(settings: dict) -> int:
    """The side of conv5's pooled maps for these settings (AlexNet: 6)."""
    side = (settings["crop"] + 2 * settings["conv1_padding"] - 11) // 4 + 1
    for _ in range(3):  # pool1, pool2 (conv2-5 keep the size), pool5
        side = _pool(side, settings["pool_ceil"])
    return side


def check_feature_side(settings: dict, what: str) -> None:
    side = feature_side(settings)
    if side != 6:
        raise AlexnetError(
            f"{what}: {settings['crop']}x{settings['crop']} inputs with conv1 padding "
            f"{settings['conv1_padding']} give {side}x{side} maps before fc6, not AlexNet's 6x6"
        )
