"""Scan an ImageFolder tree into a Manifest: classes, labels, the train/val split, and every
file that cannot be used, with its reason.

Layouts: DATA/<class>/<image> (split into train/val by a seeded `val_fraction`), and
DATA/train/<class>/<image> with DATA/val/<class>/<image> or a flat DATA/val/<image> whose
labels come from a labels file (ILSVRC-2012's, found by itself: pipeline/imagenet.py). Images
may sit in nested folders below their class folder; the folders are listed by pipeline/walk.py
and each file is checked once by pipeline/imagecheck.py (in threads). The statistics
pass reads each training file once more; nothing else reads them in prep.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import imagenet
from .defaults import MAX_PIXELS, MIN_SIZE, SPLIT_SEED, VAL_FRACTION
from .errors import AlexnetError
from .imagecheck import inspect_all
from .manifest import FileTable, Manifest
from .split import split_train_val
from .walk import Walk

SPLIT_CODE = {"train": 0, "val": 1, "all": 0}  # "all": train until the seeded split


def check_data(data: str | Path) -> None:
    """Refuse DATA that is no folder (before prep writes anything, its run folder included)."""
    if not Path(data).is_dir():
        raise AlexnetError(
            f"{data} is not a folder: pass an ImageFolder tree (DATA/<class>/<image>)"
        )


def _layout(data: Path) -> tuple[str, dict[str, Path]]:
    check_data(data)
    if (data / "train").is_dir():
        splits = {"train": data / "train"}
        for name in ("val", "validation"):
            if (data / name).is_dir():
                splits["val"] = data / name
        return "train/val folders", splits
    return "class folders", {"all": data}


def _loose_reason(split: str, notes: imagenet.Annotations, label: str | None) -> str:
    """Why a file directly in a split folder (not in a class folder) is not used."""
    if split != "val":
        return "not inside a class folder"
    if not notes.labels_from:
        return (
            "no label: a file directly in the validation folder needs a labels file "
            "(prep's val_labels, or ImageNet's LOC_val_solution.csv or devkit beside the data)"
        )
    if label is None:
        return f"no label in {Path(notes.labels_from).name}"
    return f"label {label} (from {Path(notes.labels_from).name}) is not a training class"


def scan(
    data: str | Path,
    *,
    val_fraction: float = VAL_FRACTION,
    seed: int = SPLIT_SEED,
    min_size: int = MIN_SIZE,
    max_pixels: int = MAX_PIXELS,
    val_labels: str | Path | None = None,
    class_names: str | Path | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> Manifest:
    """Build the manifest of `data`: classes and their display names, usable files with
    labels and split, skipped files with reasons."""
    data = Path(data).resolve()
    layout, splits = _layout(data)
    notes = imagenet.find_annotations(data, val_labels=val_labels, class_names=class_names)
    walk = Walk(data)
    classes, candidates = _candidates(walk, splits, notes)
    kept = set(walk.images([path for path, _, _ in candidates]))
    images = [c for c in candidates if c[0] in kept]
    results = inspect_all([p for p, _, _ in images], min_size, max_pixels, threads, progress)
    for (path, _, _), (reason, _, _) in zip(images, results, strict=True):
        if reason:
            walk.skip(path, reason)
    keep = [i for i, (reason, _, _) in enumerate(results) if reason is None]
    table = FileTable(
        [walk.rel(images[i][0]) for i in keep],
        np.array([images[i][1] for i in keep], np.int32),
        np.array([SPLIT_CODE[images[i][2]] for i in keep], np.uint8),
        np.array([results[i][1] for i in keep], np.int64),
        np.array([results[i][2] for i in keep], np.int64),
    )
    if not len(table):
        raise AlexnetError(
            f"no usable images in {data} ({len(walk.skipped)} files skipped): "
            "expected .jpg/.jpeg/.png/.bmp files in <class> folders"
        )
    split_needed = "all" in splits
    if split_needed:
        split_train_val(table, val_fraction, seed)
    per_split = [
        np.bincount(table.labels[table.splits == s], minlength=len(classes)) for s in (0, 1)
    ]
    counts = {
        c: {"train": int(per_split[0][i]), "val": int(per_split[1][i])}
        for i, c in enumerate(classes)
    }
    empty = [c for c in classes if counts[c]["train"] == 0]
    if empty:
        raise AlexnetError(
            f"class folder(s) with no usable training images: {', '.join(empty)} in "
            f"{splits.get('train', data)}; add images or remove the folder(s)"
        )
    return Manifest(
        root=str(data),
        layout=layout,
        val_fraction=val_fraction if split_needed else None,
        seed=seed,
        classes=classes,
        class_names=imagenet.display_names(classes, notes.names),
        labels_from=notes.labels_from,
        names_from=notes.names_from,
        counts=counts,
        files=table,
        skipped=sorted(walk.skipped, key=lambda s: s["path"]),
    )


def _candidates(
    walk: Walk, splits: dict[str, Path], notes: imagenet.Annotations
) -> tuple[list[str], list[tuple[str, int, str]]]:
    """The classes (the training root's folders that can be listed) and every file that may
    be an image of one, as (path, label, split or "all"); the rest is reported to `walk`."""
    train_root = str(splits.get("train", splits.get("all")))
    top = walk.listing(train_root)
    if top is None:
        raise AlexnetError(f"{train_root} cannot be read: {walk.skipped[-1]['reason']}")
    by_class = {Path(d).name: walk.files_below(d) for d in top[0]}
    classes = sorted(c for c, files in by_class.items() if files is not None)
    if not classes:
        raise AlexnetError(f"{train_root} has no class folders: expected <class>/<image> below it")
    index = {c: i for i, c in enumerate(classes)}

    candidates = []
    for split, root in splits.items():
        folders, loose = (top if split != "val" else walk.listing(str(root))) or ([], [])
        for d in folders:
            name = Path(d).name
            if split != "val":
                files = by_class[name] or []  # None: could not be listed (reported)
            elif name in index:
                files = walk.files_below(d) or []
            else:
                raise AlexnetError(
                    f"class folder {d} has no counterpart in {train_root}: rename or remove it"
                )
            candidates += [(f, index[name], split) for f in files]
        for f in loose:
            label = notes.label_of(Path(f).name) if split == "val" else None
            if label in index:
                candidates.append((f, index[label], split))
            elif not (split == "all" and Path(f).name == imagenet.CLASSES_JSON):
                walk.skip(f, _loose_reason(split, notes, label))
    return classes, candidates
