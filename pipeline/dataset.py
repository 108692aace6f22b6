"""Scan an ImageFolder tree, validate every image, and write the run's manifest.

Layouts: DATA/<class>/<image> (split into train/val by a seeded `val_fraction`), and
DATA/train/<class>/<image> with DATA/val/<class>/<image> or a flat DATA/val/<image> whose
labels come from a labels file (ILSVRC-2012's, found by itself: pipeline/imagenet.py). Images
may sit in nested folders below their class folder.

The walk enters every folder once: symlinked folders are followed, but one that leads back
to a folder already entered is reported as a loop; broken links, unreadable folders and files,
and anything that is not a regular file are listed under "skipped" with their reason, as are
files without a class. Hidden files and folders are left out, and alexnet's own run folders
(a manifest.json it wrote) are never entered.

Each file is read once here: opened, its size and modification time taken from the open file,
and decoded by PIL at reduced scale (`draft`: JPEGs decode at 1/8 size, which still reads and
entropy-decodes the whole stream, so truncation is caught), so corrupt, truncated, tiny,
oversized and non-image files are listed with a reason instead of crashing a pipeline hours
later. The statistics pass reads each training file once more; nothing else reads them in
prep.

At ImageNet's size (1.28 million files) the manifest keeps the file list as columns:
RUN/manifest.json holds classes, names, counts, skipped files and the fingerprint, and
RUN/manifest.files.npz the paths, labels, splits, sizes and modification times (BENCHMARKS.md,
"Scale"). The fingerprint hashes those columns, so loading checks the manifest's integrity
without touching the data; whether the files are still as they were at prep is checked by
`verify_files`, for every file (training) or for those a command reads (evaluation, search).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import imagenet
from .defaults import MAX_PIXELS, MIN_SIZE, SPLIT_SEED, VAL_FRACTION
from .errors import AlexnetError
from .files import atomic_write, read_json, write_json
from .layout import RunPaths

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp"}
FORMATS = {"JPEG", "MPO", "PNG", "BMP"}  # what both PIL and DALI's decoders read
MANIFEST_VERSION = 2
SPLITS = ("train", "val")
SPLIT_CODE = {"train": 0, "val": 1, "all": 0}  # "all": train until the seeded split


# --- one file ------------------------------------------------------------------------------


def _decode_problem(f, size: int, min_size: int, max_pixels: int) -> str | None:
    if size == 0:
        return "empty file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            with Image.open(f) as im:
                if im.format not in FORMATS:
                    return f"unsupported format {im.format}"
                w, h = im.size  # from the header: nothing is decoded yet
                if w * h > max_pixels:
                    return f"too large ({w}x{h}, over --max-pixels {max_pixels:,})"
                im.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale, still reads every byte
                im.load()
    except Image.DecompressionBombError as e:  # PIL's own limit, where ours is not in force
        return f"too large ({e})"
    except UnidentifiedImageError:
        return "not an image (unrecognised content)"
    except (OSError, SyntaxError, ValueError) as e:
        return f"corrupt or truncated ({e})"
    if min(w, h) < min_size:
        return f"too small ({w}x{h}, shorter side under {min_size} px)"
    return None


def inspect_file(
    path: str, min_size: int = MIN_SIZE, max_pixels: int = MAX_PIXELS
) -> tuple[str | None, int, int]:
    """(None if usable else the reason it is not, size in bytes, mtime_ns) from one open."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            return _decode_problem(f, st.st_size, min_size, max_pixels), st.st_size, st.st_mtime_ns
    except PermissionError:
        return "permission denied", 0, 0
    except OSError as e:
        return f"unreadable ({e.strerror})", 0, 0


def check_image(
    image: str | Path | bytes, min_size: int = MIN_SIZE, max_pixels: int = MAX_PIXELS
) -> str | None:
    """Decode a file, or the encoded bytes of one (an upload); None if usable, else the reason
    it is not."""
    if isinstance(image, bytes):
        return _decode_problem(io.BytesIO(image), len(image), min_size, max_pixels)
    return inspect_file(str(image), min_size, max_pixels)[0]


def _own_pixel_limit() -> None:
    # In the scan's worker processes --max-pixels, checked from each header before decoding,
    # replaces PIL's limit (which would refuse at twice its own value, whatever ours is).
    Image.MAX_IMAGE_PIXELS = None


# --- the usable files, as columns ----------------------------------------------------------


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


def _digest(classes: list[str], arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(json.dumps(classes).encode())
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()[:16]


def fingerprint(manifest: dict) -> str:
    """A hash of the class ids and of every usable file's path, label, split, size and mtime
    (display names are left out: renaming a class changes no result)."""
    return _digest(manifest["classes"], manifest["files"].arrays())


# --- the walk ------------------------------------------------------------------------------


def is_run_folder(folder: str | Path) -> bool:
    """Whether `folder` holds a manifest.json written by alexnet (any version)."""
    try:
        doc = json.loads(RunPaths(folder).manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and {"version", "fingerprint", "classes"} <= doc.keys()


class _Walk:
    """Lists folders below `data`, each at most once, reporting what it cannot list."""

    def __init__(self, data: Path):
        self.root = str(data)
        self.skipped: list[dict] = []
        self.entered: dict[tuple[int, int], str] = {}

    def rel(self, path: str) -> str:
        return path[len(self.root) + 1 :]

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append({"path": self.rel(path), "reason": reason})

    def listing(self, folder: str) -> tuple[list[str], list[str]] | None:
        """(sub-folders, files) of `folder`, sorted by name; None when it cannot or must not
        be listed (reported)."""
        try:
            st = os.stat(folder)
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError:
            self.skip(folder, "permission denied")
            return None
        except OSError as e:
            self.skip(folder, f"unreadable folder ({e.strerror})")
            return None
        first = self.entered.setdefault((st.st_dev, st.st_ino), folder)
        if first != folder:
            inside = folder.startswith(first + os.sep)
            self.skip(folder, "symlink loop" if inside else f"same folder as {self.rel(first)}")
            return None
        folders, files = [], []
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_symlink():
                try:
                    os.stat(e.path)  # follows the link: a broken one or a loop fails here
                except OSError as err:
                    self.skip(e.path, _link_problem(err))
                    continue
            if e.is_dir():
                if is_run_folder(e.path):
                    self.skip(e.path, "an alexnet run folder (not scanned)")
                else:
                    folders.append(e.path)
            elif e.is_file():
                files.append(e.path)
            else:
                self.skip(e.path, "not a regular file")  # a FIFO would block the check
        return folders, files

    def files_below(self, folder: str) -> list[str] | None:
        """Every file below `folder`, sorted by path; None when `folder` cannot be listed."""
        listing = self.listing(folder)
        if listing is None:
            return None
        folders, files = listing
        for sub in folders:
            files += self.files_below(sub) or []
        return sorted(files)


def _link_problem(err: OSError) -> str:
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        return "broken symlink"
    if err.errno == errno.ELOOP:
        return "symlink loop"
    if err.errno == errno.EACCES:
        return "permission denied"
    return f"unreadable symlink ({err.strerror})"


# --- the scan ------------------------------------------------------------------------------


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


def _loose_reason(split: str, notes: imagenet.Annotations, label: str | None) -> str:
    """Why a file directly in a split folder (not in a class folder) is not used."""
    if split != "val":
        return "not inside a class folder"
    if not notes.labels_from:
        return (
            "no label: a file directly in the validation folder needs a labels file "
            "(--val-labels, or ImageNet's LOC_val_solution.csv or devkit beside the data)"
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
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Build the manifest of `data`: classes and their display names, usable files with
    labels and split, skipped files with reasons."""
    data = Path(data).resolve()
    layout, splits = _layout(data)
    notes = imagenet.find_annotations(data, val_labels=val_labels, class_names=class_names)
    walk = _Walk(data)
    classes, candidates = _candidates(walk, splits, notes)
    images = []
    for c in candidates:
        if Path(c[0]).suffix.lower() in EXTENSIONS:
            images.append(c)
        else:
            walk.skip(c[0], f"unsupported extension {Path(c[0]).suffix or '(none)'}")
    results = _inspect_all([p for p, _, _ in images], min_size, max_pixels, workers, progress)
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
        _split_train_val(table, val_fraction, seed)
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
    manifest = {
        "version": MANIFEST_VERSION,
        "root": str(data),
        "layout": layout,
        "val_fraction": val_fraction if split_needed else None,
        "seed": seed,
        "classes": classes,
        "class_names": imagenet.display_names(classes, notes.names),
        "labels_from": notes.labels_from,
        "names_from": notes.names_from,
        "counts": counts,
        "files": table,
        "skipped": sorted(walk.skipped, key=lambda s: s["path"]),
    }
    manifest["fingerprint"] = fingerprint(manifest)
    return manifest


def _candidates(
    walk: _Walk, splits: dict[str, Path], notes: imagenet.Annotations
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


def images_below(
    folder: str | Path,
    *,
    min_size: int = MIN_SIZE,
    max_pixels: int = MAX_PIXELS,
    known: dict[str, tuple[int, int]] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[list[tuple[str, int, int]], list[dict]]:
    """The usable images below `folder`, at any depth and with any names, walked as `scan`
    walks a class folder, and the skipped entries {"path" (relative), "reason"}.

    Returns (path, bytes, mtime_ns) per usable image, sorted by path. A file listed in `known`
    {path: (bytes, mtime_ns)} with that size and modification time is taken as it was, without
    decoding it again: an update checks only new and changed files.
    """
    root = Path(folder).resolve()
    if not root.is_dir():
        raise AlexnetError(f"{folder} is not a folder: pass the folder of images to index")
    walk = _Walk(root)
    below = walk.files_below(str(root))
    if below is None:
        raise AlexnetError(f"{root} cannot be read: {walk.skipped[-1]['reason']}")
    usable, check = [], []
    for path in below:
        if Path(path).suffix.lower() not in EXTENSIONS:
            walk.skip(path, f"unsupported extension {Path(path).suffix or '(none)'}")
            continue
        try:
            st = os.stat(path)
        except OSError as e:
            walk.skip(path, f"unreadable ({e.strerror})")
            continue
        if known is not None and known.get(path) == (st.st_size, st.st_mtime_ns):
            usable.append((path, st.st_size, st.st_mtime_ns))
        else:
            check.append(path)
    results = _inspect_all(check, min_size, max_pixels, workers, progress) if check else []
    for path, (reason, size, mtime) in zip(check, results, strict=True):
        if reason:
            walk.skip(path, reason)
        else:
            usable.append((path, size, mtime))
    return sorted(usable), sorted(walk.skipped, key=lambda s: s["path"])


def _inspect_all(
    paths: list[str], min_size: int, max_pixels: int, workers: int | None, progress: bool
) -> list[tuple[str | None, int, int]]:
    """inspect_file of every path, in parallel processes, in order."""
    from tqdm import tqdm

    workers = workers or min(8, os.cpu_count() or 1)
    with ProcessPoolExecutor(workers, initializer=_own_pixel_limit) as pool:
        sizes, pixels = [min_size] * len(paths), [max_pixels] * len(paths)
        return list(
            tqdm(
                pool.map(inspect_file, paths, sizes, pixels, chunksize=64),
                total=len(paths),
                desc="checking images",
                unit="img",
                disable=not progress,
            )
        )


def _split_train_val(table: FileTable, val_fraction: float, seed: int) -> None:
    """Assign each class's files to train/val: the same seed gives the same split."""
    if not 0 <= val_fraction < 1:
        raise AlexnetError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    by_label = np.argsort(table.labels, kind="stable")  # each class's files, in manifest order
    starts = np.flatnonzero(np.r_[True, np.diff(table.labels[by_label]) != 0])
    for group in np.split(by_label, starts[1:]):
        label = int(table.labels[group[0]])
        order = np.random.default_rng([seed, label]).permutation(len(group))
        n_val = min(int(round(val_fraction * len(group))), len(group) - 1)  # keep one to train
        table.splits[group] = SPLITS.index("train")
        table.splits[group[order[:n_val]]] = SPLITS.index("val")


# --- the manifest on disk ------------------------------------------------------------------


def save_manifest(manifest: dict, run: str | Path) -> Path:
    """RUN/manifest.files.npz (the file columns), then RUN/manifest.json (the rest)."""
    paths = RunPaths(run)
    table = manifest["files"]

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **table.arrays())

    atomic_write(paths.manifest_files, write)
    doc = {**manifest, "files": {"count": len(table), "file": paths.manifest_files.name}}
    return write_json(paths.manifest, doc)


def load_manifest(run: str | Path, *, check_files: bool | str = True) -> dict:
    """Read RUN's manifest, refusing an edited one. `check_files`: True checks that every
    listed file is as it was at prep, "train" or "val" those of one split, False none."""
    paths = RunPaths(run)
    fix = "rerun `alexnet prep DATA --run RUN`"
    manifest = read_json(paths.manifest, "manifest", "run `alexnet prep DATA --run RUN` first")
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        raise AlexnetError(
            f"{paths.manifest} was written by another version of alexnet: {fix} to remake it"
        )
    try:
        with np.load(paths.manifest_files) as z:
            arrays = {k: z[k] for k in ("paths", "labels", "splits", "sizes", "mtimes")}
        intact = _digest(manifest["classes"], arrays) == manifest["fingerprint"]
    except (OSError, KeyError, ValueError, TypeError):
        intact = False
    if not intact:
        raise AlexnetError(f"{paths.manifest} (or {paths.manifest_files.name}) was edited: {fix}")
    manifest["files"] = FileTable.from_arrays(arrays)
    if check_files:
        table = manifest["files"]
        verify_files(manifest, None if check_files is True else table.positions(check_files))
    return manifest


def first_changed(manifest: dict, positions=None) -> str | None:
    """What is wrong with the first listed file (of all, or of those at `positions`) that is
    gone or changed since prep (size or modification time); None when each is as listed."""
    table, root = manifest["files"], manifest["root"]
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


def verify_files(manifest: dict, positions=None) -> None:
    """Refuse when a listed file (all, or those at `positions`) is gone or changed."""
    problem = first_changed(manifest, positions)
    if problem:
        raise AlexnetError(f"{problem}: rerun `alexnet prep`")


def split_files(manifest: dict, split: str) -> tuple[list[str], list[int]]:
    """Absolute paths and labels of one split, in manifest order."""
    table, root = manifest["files"], manifest["root"]
    chosen = table.positions(split)
    return [f"{root}/{table.paths[i]}" for i in chosen], table.labels[chosen].tolist()


def image_files(
    paths: Sequence[str | Path], *, check: bool = True
) -> tuple[list[str], list[tuple[str, str]]]:
    """Expand folders to the images below them (sorted) and check that every file decodes.

    Returns the usable files and the (path, reason) of those skipped, so that one bad file in
    a folder of queries does not stop the others; no usable file at all is an error. With
    `check` False files are only listed (a caller checks them as it goes: `usable_images`).
    """
    files: list[str] = []
    skipped: list[tuple[str, str]] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                str(f)
                for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in EXTENSIONS and not f.name.startswith(".")
            )
            if not found:
                skipped.append((str(p), f"holds no images ({', '.join(sorted(EXTENSIONS))})"))
            files += found
        elif not p.exists():
            skipped.append((str(p), "does not exist"))
        else:
            files.append(str(p))
    usable, bad = usable_images(files) if check else (files, [])
    skipped += bad
    if not usable:
        raise AlexnetError("; ".join(f"{p} {why}" for p, why in skipped) or "no query images")
    return usable, skipped


def usable_images(files: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The files that decode, and the (path, reason) of those that do not."""
    usable, skipped = [], []
    for f in files:
        reason = (
            "is not readable (permission denied)"
            if not os.access(f, os.R_OK)
            else check_image(f, min_size=1)
        )
        if reason:
            skipped.append((f, f"cannot be used as a query: {reason}"))
        else:
            usable.append(f)
    return usable, skipped
