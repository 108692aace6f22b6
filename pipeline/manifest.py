"""The manifest: what prep found in DATA, read and written here and nowhere else.

RUN/manifest.json holds classes, display names, counts, skipped files and the fingerprint;
RUN/manifest.files.npz the usable files as columns (paths, labels, splits, sizes, mtimes), so
that ImageNet's 1.28 million files load in a second (BENCHMARKS.md, "Scale"). The fingerprint
hashes the class ids and those columns: loading checks the manifest's integrity without
touching the data, and `verify_files` checks that the files are still as they were at prep,
for every file (training) or for those a command reads (evaluation, search).

Every other module reads a `Manifest`'s attributes; a manifest.json that lacks a field or
holds one of the wrong type is refused on load with one message that says to rerun prep.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from .errors import AlexnetError
from .files import atomic_write, read_json, write_json
from .layout import RunPaths

MANIFEST_VERSION = 2
SPLITS = ("train", "val")
REMAKE = "rerun `alexnet prep DATA` into this run (or alexnet.prepare)"


@dataclass(eq=False)
class FileTable:
    """The usable files in manifest order, one column per field. Paths are relative to the
    manifest's root; splits index SPLITS."""

    paths: list[str]
    labels: np.ndarray  # int32 class index
    splits: np.ndarray  # uint8
    sizes: np.ndarray  # int64 bytes
    mtimes: np.ndarray  # int64 modification time, ns

    def __len__(self) -> int:
        return len(self.paths)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FileTable):
            return NotImplemented
        arrays, theirs = self.arrays(), other.arrays()
        return all(np.array_equal(arrays[k], theirs[k]) for k in arrays)

    def positions(self, split: str) -> np.ndarray:
        """Manifest positions of one split's files, in order."""
        return np.flatnonzero(self.splits == SPLITS.index(split))

    def records(self) -> list[dict]:
        """The files as dicts {"path", "label", "split", "bytes", "mtime_ns"}: for reading a
        manifest, not for the million-file paths of the toolkit."""
        return [
            {"path": p, "label": int(lab), "split": SPLITS[s], "bytes": int(b), "mtime_ns": int(t)}
            for p, lab, s, b, t in zip(
                self.paths, self.labels, self.splits, self.sizes, self.mtimes, strict=True
            )
        ]

    def take(self, positions) -> FileTable:
        positions = np.asarray(positions, np.int64)
        return FileTable(
            [self.paths[i] for i in positions],
            self.labels[positions],
            self.splits[positions],
            self.sizes[positions],
            self.mtimes[positions],
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """The columns as little-endian arrays; paths as one NUL-separated UTF-8 byte string
        (NUL is the one byte no path holds)."""
        blob = "\0".join(self.paths).encode("utf-8", "surrogateescape")
        return {
            "paths": np.frombuffer(blob, np.uint8),
            "labels": self.labels.astype("<i4"),
            "splits": self.splits.astype("u1"),
            "sizes": self.sizes.astype("<i8"),
            "mtimes": self.mtimes.astype("<i8"),
        }

    @classmethod
    def from_arrays(cls, a) -> FileTable:
        text = a["paths"].tobytes().decode("utf-8", "surrogateescape")
        paths = text.split("\0") if len(a["labels"]) else []
        return cls(paths, a["labels"], a["splits"], a["sizes"], a["mtimes"])


@dataclass
class Manifest:
    """What prep found: the classes (folder names, in label order) and their display names,
    the usable files, the skipped ones with reasons, and the fingerprint of it all."""

    root: str  # DATA, resolved; file paths are relative to it
    layout: str  # "class folders" or "train/val folders"
    val_fraction: float | None  # None: DATA had its own validation folder
    seed: int  # of the train/val split
    classes: list[str]
    class_names: list[str]
    labels_from: str | None  # the labels file of a flat validation folder
    names_from: str | None  # the file the display names came from
    counts: dict[str, dict[str, int]]  # class -> {"train": n, "val": n}
    files: FileTable
    skipped: list[dict]  # {"path" (relative to root), "reason"}
    fingerprint: str = ""
    version: int = MANIFEST_VERSION

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = fingerprint(self)


# The type each field must have in manifest.json (None: may be null).
_JSON_TYPES = {
    "root": (str,),
    "layout": (str,),
    "val_fraction": (float, int, type(None)),
    "seed": (int,),
    "classes": (list,),
    "class_names": (list,),
    "labels_from": (str, type(None)),
    "names_from": (str, type(None)),
    "counts": (dict,),
    "files": (dict,),
    "skipped": (list,),
    "fingerprint": (str,),
}


def _digest(classes: list[str], arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(json.dumps(classes).encode())
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()[:16]


def fingerprint(manifest: Manifest) -> str:
    """A hash of the class ids and of every usable file's path, label, split, size and mtime
    (display names are left out: renaming a class changes no result)."""
    return _digest(manifest.classes, manifest.files.arrays())


def save_manifest(manifest: Manifest, run: str | Path) -> Path:
    """RUN/manifest.files.npz (the file columns), then RUN/manifest.json (the rest)."""
    paths = RunPaths(run)
    table = manifest.files

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **table.arrays())

    atomic_write(paths.manifest_files, write)
    doc = {f.name: getattr(manifest, f.name) for f in fields(Manifest) if f.name != "files"}
    doc["files"] = {"count": len(table), "file": paths.manifest_files.name}
    return write_json(paths.manifest, {"version": doc.pop("version"), **doc})


def load_manifest(run: str | Path, *, check_files: bool | str = True) -> Manifest:
    """Read RUN's manifest, refusing an edited or damaged one. `check_files`: True checks that
    every listed file is as it was at prep, "train" or "val" those of one split, False none."""
    paths = RunPaths(run)
    doc = read_json(
        paths.manifest, "manifest", "run prep first (`alexnet prep`, or alexnet.prepare)"
    )
    if not isinstance(doc, dict) or doc.get("version") != MANIFEST_VERSION:
        other = f"{paths.manifest} was written by another version of alexnet"
        raise AlexnetError(f"{other}: {REMAKE}")
    for key, types in _JSON_TYPES.items():
        if not isinstance(doc.get(key, ...), types):
            what = "lacks" if key not in doc else "has a damaged"
            raise AlexnetError(f"{paths.manifest} {what} field {key!r}: {REMAKE}")
    try:
        with np.load(paths.manifest_files) as z:
            arrays = {k: z[k] for k in ("paths", "labels", "splits", "sizes", "mtimes")}
        intact = _digest(doc["classes"], arrays) == doc["fingerprint"]
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile):
        intact = False
    if not intact:
        raise AlexnetError(
            f"{paths.manifest} (or {paths.manifest_files.name}) was edited or damaged: {REMAKE}"
        )
    known = {f.name for f in fields(Manifest)}
    manifest = Manifest(
        **{k: v for k, v in doc.items() if k in known and k != "files"},
        files=FileTable.from_arrays(arrays),
    )
    if check_files:
        table = manifest.files
        verify_files(manifest, None if check_files is True else table.positions(check_files))
    return manifest


def first_changed(manifest: Manifest, positions=None) -> str | None:
    """What is wrong with the first listed file (of all, or of those at `positions`) that is
    gone or changed since prep (size or modification time); None when each is as listed."""
    table, root = manifest.files, manifest.root
    for i in range(len(table)) if positions is None else positions:
        path = f"{root}/{table.paths[i]}"
        try:
            st = os.stat(path)
        except OSError as e:
            gone = isinstance(e, FileNotFoundError)
            return f"{path} listed in the manifest is {'gone' if gone else e.strerror}"
        if st.st_size != table.sizes[i] or st.st_mtime_ns != table.mtimes[i]:
            return f"{path} changed since prep (size or modification time)"
    return None


def verify_files(manifest: Manifest, positions=None) -> None:
    """Refuse when a listed file (all, or those at `positions`) is gone or changed."""
    problem = first_changed(manifest, positions)
    if problem:
        raise AlexnetError(f"{problem}: rerun prep")


def split_files(manifest: Manifest, split: str) -> tuple[list[str], list[int]]:
    """Absolute paths and labels of one split, in manifest order."""
    table, root = manifest.files, manifest.root
    chosen = table.positions(split)
    return [f"{root}/{table.paths[i]}" for i in chosen], table.labels[chosen].tolist()
