"""Evaluation on a labelled folder that is not the run's own validation set: DATA/<class id>/
<image> (or DATA/val/<class id>/...), each folder matched to the run's class of that id. This
is how an imported reference network is checked on ILSVRC-2012's validation images, sorted
into wnid folders, against the accuracy its authors report."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from alexnet.pipeline.dataset import scan
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.manifest import SPLITS, Manifest


def labelled_folder(
    data: str | Path, classes: list[str], *, workers: int | None = None, progress: bool = False
) -> Manifest:
    """A manifest of DATA's images as a validation split labelled with the run's classes:
    every image of class folders, or of DATA/val when DATA has train/ and val/."""
    found = scan(data, val_fraction=0.0, threads=workers, progress=progress)
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in found.classes if c not in index]
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise AlexnetError(
            f"{data} has class folders the run does not know: {shown} (the run's classes: "
            f"{', '.join(classes[:3])}, ...); name the folders by the run's class ids"
        )
    table = found.files
    val = SPLITS.index("val")
    keep = table.positions("val") if found.layout == "train/val folders" else np.arange(len(table))
    if not len(keep):
        raise AlexnetError(f"{data} holds no validation images")
    table = table.take(keep)
    table.labels = np.array([index[found.classes[i]] for i in table.labels], np.int32)
    table.splits = np.full(len(table), val, np.uint8)
    return replace(found, classes=classes, class_names=classes, files=table, fingerprint="")
