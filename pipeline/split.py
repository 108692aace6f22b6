"""The seeded train/val split of a dataset that has no validation folder of its own."""

from __future__ import annotations

import numpy as np

from .errors import AlexnetError
from .manifest import SPLITS, FileTable


def split_train_val(table: FileTable, val_fraction: float, seed: int) -> None:
    """Assign each class's files to train/val in place: the same seed gives the same split,
    and every class keeps at least one training file."""
    if not 0 <= val_fraction < 1:
        raise AlexnetError(f"{{val_fraction}} must be in [0, 1), got {val_fraction}")
    by_label = np.argsort(table.labels, kind="stable")  # each class's files, in manifest order
    starts = np.flatnonzero(np.r_[True, np.diff(table.labels[by_label]) != 0])
    for group in np.split(by_label, starts[1:]):
        label = int(table.labels[group[0]])
        order = np.random.default_rng([seed, label]).permutation(len(group))
        n_val = min(int(round(val_fraction * len(group))), len(group) - 1)  # keep one to train
        table.splits[group] = SPLITS.index("train")
        table.splits[group[order[:n_val]]] = SPLITS.index("val")
