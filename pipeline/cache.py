"""The patch cache (prep's `cache`): every usable image's uint8 256x256x3 centre patch,
decoded once, in one memory-mapped file that training and evaluation read instead of the
images.

On the CPU, decoding and the antialiased resize to 256 (paper, section 2) cost most of a
training pass (BENCHMARKS.md, "Data pipeline"). Prep's statistics pass makes these patches
anyway; kept, they spare every later epoch that work (FFCV's idea, in a plain .npy file).
They are exactly the decode path's patches, so the cached loaders give the same batches, bit
for bit. The cost is disk: 196,608 bytes an image, 252 GB for ImageNet's 1.28M training
images, so it is for sets that fit on disk.

    RUN/cache/patches.u8.npy   uint8 (N, 256, 256, 3): the manifest's N usable files, training
                               and validation, in manifest order
    RUN/cache/patches.json     version, manifest fingerprint, shape, order, the decoder used,
                               and the patch file's size and mtime; written last

A cache without its record (an interrupted prep), of another manifest, or changed since its
record was written is ignored with one warning that says how to rebuild it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .dali import SIZE
from .errors import AlexnetError
from .files import atomic_write, check_space, file_identity, read_json, write_json
from .layout import RunPaths
from .loader import centre_patches
from .manifest import Manifest, split_files
from .stats import Stats, compute_stats

log = logging.getLogger(__name__)

CACHE_VERSION = 1
PATCH_BYTES = SIZE * SIZE * 3  # 196,608
HEADER_BYTES = 128  # an .npy header of this shape


def cache_bytes(count: int) -> int:
    """The size of the patch file for `count` images."""
    return HEADER_BYTES + count * PATCH_BYTES


def write_cache(
    manifest: Manifest,
    run: str | Path,
    *,
    batch_size: int,
    device: str = "cpu",
    num_threads: int | None = None,
    reduce: bool = False,
    progress: bool = True,
) -> Stats:
    """Decode every usable file of the manifest once into RUN/cache/patches.u8.npy and return
    the training-set statistics, computed from the same patches on the way (exactly as
    stats.compute_stats computes them without a cache). The record is written last.
    `reduce`: large JPEGs decoded reduced (pipeline/images.py), recorded as the cache's
    "decoding", so that the run's queries are decoded so too.

    The old cache is removed first. The new file's blocks are claimed before any decoding
    (a full disk fails then, as one AlexnetError); `check_cache_space` says so earlier, before
    prep writes anything.
    """
    from tqdm import tqdm

    paths = RunPaths(run)
    table = manifest.files
    count = len(table)
    paths.cache_record.unlink(missing_ok=True)  # from here on the old cache is invalid
    paths.cache_patches.unlink(missing_ok=True)
    splits = {s: (table.positions(s), split_files(manifest, s)[0]) for s in ("train", "val")}
    result: list[Stats] = []

    def write(tmp: str) -> None:
        out = np.lib.format.open_memmap(tmp, "w+", np.uint8, (count, SIZE, SIZE, 3))
        with open(tmp, "r+b") as f:  # a memory map that meets a full disk crashes the process
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        train_rows, train_files = splits["train"]
        filled = Rows(out, train_rows)
        result.append(
            compute_stats(
                train_files,
                manifest.fingerprint,
                batch_size=batch_size,
                device=device,
                num_threads=num_threads,
                progress=progress,
                sink=filled,
                reduce=reduce,
            )
        )
        val_rows, val_files = splits["val"]
        filled_val = Rows(out, val_rows)
        if val_files:
            batches = centre_patches(
                val_files,
                batch_size=batch_size,
                device=device,
                num_threads=num_threads,
                reduce=reduce,
            )
            bar = tqdm(
                total=len(val_files),
                desc="prep cache (validation)",
                unit="img",
                disable=not progress,
            )
            with bar:
                for images in batches:
                    filled_val(images)
                    bar.update(len(images))
        if filled.done != len(train_rows) or filled_val.done != len(val_rows):
            raise AlexnetError(f"the prep pipeline did not return every image of {tmp}")
        out.flush()
        del out

    atomic_write(paths.cache_patches, write)
    write_json(
        paths.cache_record,
        {
            "version": CACHE_VERSION,
            "fingerprint": manifest.fingerprint,
            "shape": [count, SIZE, SIZE, 3],
            "dtype": "uint8",
            "order": "manifest",
            "decoder": device,
            "decoding": "reduced" if reduce else "full",
            "patches": file_identity(paths.cache_patches),
        },
    )
    return result[0]


def reduced_decoding(run: str | Path) -> bool:
    """Whether RUN was prepared with reduced decoding (its cache's record says so): its
    training images, and so its queries, had large JPEGs decoded reduced."""
    try:
        record = read_json(RunPaths(run).cache_record, "cache record", "")
    except AlexnetError:
        return False
    return record.get("decoding") == "reduced"


def check_cache_space(count: int, run: str | Path) -> None:
    """Say how big the cache of `count` images will be, and refuse when it cannot fit (the
    old cache it replaces counts as free): prep calls it before it writes anything."""
    paths = RunPaths(run)
    size = cache_bytes(count)
    old = paths.cache_patches.stat().st_size if paths.cache_patches.is_file() else 0
    amount = f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"
    log.info(
        "patch cache: %s images x %s bytes = %s in %s",
        f"{count:,}",
        f"{PATCH_BYTES:,}",
        amount,
        paths.cache_patches,
    )
    check_space(paths.cache_patches.parent, size - old, f"the patch cache ({count} images)")


class Rows:
    """Writes consecutive batches of patches to the given rows of the cache, in order."""

    def __init__(self, out: np.ndarray, rows: np.ndarray):
        self.out, self.rows, self.done = out, rows, 0

    def __call__(self, images: np.ndarray) -> None:
        self.out[self.rows[self.done : self.done + len(images)]] = images
        self.done += len(images)


def open_cache(run: str | Path, manifest: Manifest, *, warn: bool = True) -> np.ndarray | None:
    """RUN's patch cache as a read-only memory-mapped uint8 (N, 256, 256, 3) array in manifest
    order, or None when there is none; a cache that is incomplete, of other data or changed
    since prep is not used, and (with `warn`) one warning line says how to rebuild it (and
    one info line says when the cache is used)."""
    paths = RunPaths(run)
    if not paths.cache_patches.exists() and not paths.cache_record.exists():
        return None
    problem = cache_problem(paths, manifest)
    if problem is None:
        try:
            patches = np.load(paths.cache_patches, mmap_mode="r")
        except (OSError, ValueError) as e:
            problem = f"is unreadable ({e})"
        else:
            if patches.shape == (len(manifest.files), SIZE, SIZE, 3) and patches.dtype == np.uint8:
                if warn:
                    log.info("reading decoded patches from %s", paths.cache_patches)
                return patches
            problem = f"holds {patches.dtype} {patches.shape}, not the manifest's patches"
    if warn:
        log.warning(
            "%s %s: reading the images instead. Rebuild it by running prep on %s into %s "
            "with the cache on",
            paths.cache_patches,
            problem,
            manifest.root,
            paths.root,
        )
    return None


def cache_problem(paths: RunPaths, manifest: Manifest) -> str | None:
    """Why RUN's patch cache cannot be used with `manifest`, or None when it can."""
    if not paths.cache_patches.is_file():
        return "is missing"
    if not paths.cache_record.is_file():
        return "is incomplete (prep was interrupted while writing it)"
    try:
        record = read_json(paths.cache_record, "patch cache record", "")
        version, fingerprint = record["version"], record["fingerprint"]
        identity = record["patches"]
    except (AlexnetError, KeyError, TypeError):
        return f"has an unreadable record, {paths.cache_record.name}"
    if version != CACHE_VERSION:
        return "was written by another version of alexnet"
    if fingerprint != manifest.fingerprint:
        return f"was made for other data (fingerprint {fingerprint}, not {manifest.fingerprint})"
    if identity != file_identity(paths.cache_patches):
        return "changed since prep wrote it"
    return None
