"""The embedded demo data: a small ImageFolder tree made from Debian's Fashion-MNIST.

Fashion-MNIST (Zalando, MIT licence) ships as gzipped idx files in the Debian package
`dataset-fashion-mnist`; this writes a balanced subset of its 28x28 product photos as JPEGs
in DATA/train/<class> and DATA/val/<class>, so `alexnet demo` runs without any download.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import AlexnetError

SOURCE = Path("/usr/share/datasets/fashion-mnist")
TRAIN_PER_CLASS, VAL_PER_CLASS = 100, 20  # the demo's photos: enough for a visible curve
CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]


def read_idx(path: Path) -> np.ndarray:
    """An idx file (the MNIST format: magic, dimensions, big-endian uint8 data) as an array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = np.frombuffer(data, ">u4", count=ndim, offset=4)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def build(
    out: str | Path,
    *,
    train_per_class: int = TRAIN_PER_CLASS,
    val_per_class: int = VAL_PER_CLASS,
    source: Path = SOURCE,
) -> Path:
    """Write the subset to `out` (skipped when it is already complete) and return it."""
    out = Path(out)
    marker = out / ".complete"
    counts = f"{train_per_class} train + {val_per_class} val per class\n"
    if marker.is_file() and marker.read_text() == counts:
        return out
    images_file = source / "train-images-idx3-ubyte.gz"
    if not images_file.is_file():
        raise AlexnetError(
            f"{images_file} is missing: install the demo photos with "
            "`apt-get install dataset-fashion-mnist`, or pass {data} DIR"
        )
    for split in ("train", "val"):  # another subset from an earlier version: start afresh
        shutil.rmtree(out / split, ignore_errors=True)
    images = read_idx(images_file)
    labels = read_idx(source / "train-labels-idx1-ubyte.gz")
    for label, name in enumerate(CLASSES):
        index = np.flatnonzero(labels == label)[: train_per_class + val_per_class]
        for rank, i in enumerate(index):
            split = "train" if rank < train_per_class else "val"
            path = out / split / name / f"{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").convert("RGB").save(path, quality=95)
    marker.write_text(counts)
    return out
