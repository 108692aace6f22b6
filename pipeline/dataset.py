"""Scan an ImageFolder tree, validate every image, and write RUN/manifest.json.

Two layouts are accepted: DATA/<class>/<image> (split into train/val by a seeded
`val_fraction`) and DATA/train/<class>/<image> + DATA/val/<class>/<image>. Images may sit in
nested folders below their class folder. Every file is fully decoded once (at reduced
resolution where the codec allows it) so that corrupt, truncated and non-image files are
listed with a reason instead of crashing a pipeline hours later.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .defaults import MIN_SIZE, SPLIT_SEED, VAL_FRACTION
from .errors import AlexnetError
from .files import read_json, write_json
from .layout import RunPaths

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp"}
FORMATS = {"JPEG", "MPO", "PNG", "BMP"}  # what both PIL and DALI's decoders read
MANIFEST_VERSION = 1


def check_image(image: str | Path | bytes, min_size: int = MIN_SIZE) -> str | None:
    """Decode a file, or the encoded bytes of one (an upload), fully; return None if usable,
    else the reason it is not."""
    try:
        if (len(image) if isinstance(image, bytes) else os.path.getsize(image)) == 0:
            return "empty file"
        with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as im:
            if im.format not in FORMATS:
                return f"unsupported format {im.format}"
            w, h = im.size
            im.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale, still reads every byte
            im.load()
    except Image.DecompressionBombError:
        return "image too large to decode safely"
    except UnidentifiedImageError:
        return "not an image (unrecognised content)"
    except (OSError, SyntaxError, ValueError) as e:
        return f"corrupt or truncated ({e})"
    if min(w, h) < min_size:
        return f"too small ({w}x{h}, shorter side under {min_size} px)"
    return None


def _class_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _layout(data: Path) -> tuple[str, dict[str, Path]]:
    if not data.is_dir():
        raise AlexnetError(
            f"{data} is not a folder: pass an ImageFolder tree (DATA/<class>/<image>)"
        )
    if (data / "train").is_dir():
        splits = {"train": data / "train"}
        for name in ("val", "validation"):
            if (data / name).is_dir():
                splits["val"] = data / name
        return "train/val folders", splits
    return "class folders", {"all": data}


def scan(
    data: str | Path,
    *,
    val_fraction: float = VAL_FRACTION,
    seed: int = SPLIT_SEED,
    min_size: int = MIN_SIZE,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Build the manifest of `data`: classes, usable files with labels and split, skipped files."""
    from tqdm import tqdm

    data = Path(data).resolve()
    layout, splits = _layout(data)
    classes = sorted(d.name for d in splits.get("train", data).iterdir() if d.is_dir())
    if not classes:
        raise AlexnetError(
            f"{splits.get('train', data)} has no class folders: expected <class>/<image> below it"
        )
    index = {c: i for i, c in enumerate(classes)}

    candidates: list[tuple[str, int, str]] = []  # (path, label, split or "all")
    skipped: list[dict] = []
    for split, root in splits.items():
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            if d.name not in index:
                raise AlexnetError(
                    f"class folder {d} has no counterpart in {splits['train']}: rename or remove it"
                )
            for f in _class_files(d):
                rel = str(f.relative_to(data))
                if f.suffix.lower() in EXTENSIONS:
                    candidates.append((rel, index[d.name], split))
                else:
                    skipped.append(
                        {"path": rel, "reason": f"unsupported extension {f.suffix or '(none)'}"}
                    )
        for f in sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")):
            skipped.append(
                {"path": str(f.relative_to(data)), "reason": "not inside a class folder"}
            )

    paths = [str(data / rel) for rel, _, _ in candidates]
    workers = workers or min(8, os.cpu_count() or 1)
    with ProcessPoolExecutor(workers) as pool:
        reasons = list(
            tqdm(
                pool.map(check_image, paths, [min_size] * len(paths), chunksize=16),
                total=len(paths),
                desc="checking images",
                unit="img",
                disable=not progress,
            )
        )

    files: list[dict] = []
    for (rel, label, split), reason, path in zip(candidates, reasons, paths, strict=True):
        if reason:
            skipped.append({"path": rel, "reason": reason})
        else:
            st = os.stat(path)
            files.append(
                {
                    "path": rel,
                    "label": label,
                    "split": split,
                    "bytes": st.st_size,
                    "mtime_ns": st.st_mtime_ns,
                }
            )
    split_needed = "all" in splits
    if split_needed:
        _split_train_val(files, val_fraction, seed)

    counts = {c: {"train": 0, "val": 0} for c in classes}
    for f in files:
        counts[classes[f["label"]]][f["split"]] += 1
    if not files:
        raise AlexnetError(
            f"no usable images in {data} ({len(skipped)} files skipped): "
            "expected .jpg/.jpeg/.png/.bmp files in <class> folders"
        )
    empty = [c for c in classes if counts[c]["train"] == 0]
    if empty:
        raise AlexnetError(
            f"class folder(s) with no usable training images: {', '.join(empty)} in "
            f"{splits.get('train', data)}; add images or remove the folder(s)"
        )
    manifest = {
        "version": MANIFEST_VERSION,
        "root": str(data),
        "layout": layout,
        "val_fraction": val_fraction if split_needed else None,
        "seed": seed,
        "classes": classes,
        "counts": counts,
        "files": files,
        "skipped": sorted(skipped, key=lambda s: s["path"]),
    }
    manifest["fingerprint"] = fingerprint(manifest)
    return manifest


def _split_train_val(files: list[dict], val_fraction: float, seed: int) -> None:
    """Assign each class's files to train/val: the same seed gives the same split."""
    if not 0 <= val_fraction < 1:
        raise AlexnetError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    by_class: dict[int, list[dict]] = {}
    for f in files:
        by_class.setdefault(f["label"], []).append(f)
    for label, group in by_class.items():
        order = np.random.default_rng([seed, label]).permutation(len(group))
        n_val = min(int(round(val_fraction * len(group))), len(group) - 1)  # keep one to train
        for rank, i in enumerate(order):
            group[i]["split"] = "val" if rank < n_val else "train"


def fingerprint(manifest: dict) -> str:
    """A hash of the classes and of every usable file's path, label, split, size and mtime."""
    h = hashlib.sha256(json.dumps(manifest["classes"]).encode())
    for f in manifest["files"]:
        h.update(
            f"{f['path']}\t{f['label']}\t{f['split']}\t{f['bytes']}\t{f['mtime_ns']}\n".encode()
        )
    return h.hexdigest()[:16]


def save_manifest(manifest: dict, run: str | Path) -> Path:
    return write_json(RunPaths(run).manifest, manifest)


def load_manifest(run: str | Path, *, check_files: bool = True) -> dict:
    """Read RUN/manifest.json; with `check_files`, refuse it when the data changed since prep."""
    path = RunPaths(run).manifest
    manifest = read_json(path, "manifest", "run `alexnet prep DATA --run RUN` first")
    try:
        intact = (
            manifest["version"] == MANIFEST_VERSION
            and fingerprint(manifest) == manifest["fingerprint"]
        )
    except (KeyError, TypeError):
        intact = False
    if not intact:
        raise AlexnetError(
            f"{path} was edited or comes from another version: rerun `alexnet prep DATA --run RUN`"
        )
    problem = first_changed(manifest) if check_files else None
    if problem:
        raise AlexnetError(f"{problem}: rerun `alexnet prep`")
    return manifest


def first_changed(manifest: dict) -> str | None:
    """What is wrong with the first listed file that is gone or changed since prep (size or
    modification time); None when every file is as listed."""
    root = Path(manifest["root"])
    for f in manifest["files"]:
        p = root / f["path"]
        try:
            st = p.stat()
        except OSError as e:
            gone = isinstance(e, FileNotFoundError)
            return f"{p} listed in the manifest is {'gone' if gone else e.strerror}"
        if (st.st_size, st.st_mtime_ns) != (f["bytes"], f["mtime_ns"]):
            return f"{p} changed since prep (size or modification time)"
    return None


def split_files(manifest: dict, split: str) -> tuple[list[str], list[int]]:
    """Absolute paths and labels of one split, in manifest order."""
    root = Path(manifest["root"])
    chosen = [f for f in manifest["files"] if f["split"] == split]
    return [str(root / f["path"]) for f in chosen], [f["label"] for f in chosen]
