"""fc7 features: the 4096-d last hidden layer (after ReLU, dropout off) of the trained network.

Paper, section 6.1 (figure 4): images whose fc7 vectors are close in Euclidean distance are
similar to the network, even when their pixels are not. Every training image goes through the
evaluation pipeline's centre crop (pipeline.dali.eval_pipeline, ten_crop off), in manifest
order, and its fc7 vector is written as float16 to INDEX/features.f16.npy, a memory-mapped
.npy file: memory stays one batch whatever the dataset's size. Query images are decoded by
the same graph from their bytes (`query_features`), so a training image used as a query gets
its own vector back; a search keeps that query pipeline between calls (`query_crops`).

Completion protocol: the sidecar INDEX/features.json (manifest fingerprint, checkpoint
file identity, count) is deleted before extraction starts, the array is written under a
temporary name and moved into place, and only then is the sidecar written. An interrupted
extraction therefore leaves no sidecar and is redone from scratch, never taken as complete.
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from alexnet.model.distributed import autocast
from alexnet.model.inference import TrainedRun, encoded, query_crops
from alexnet.model.loaders import eval_loader
from alexnet.pipeline.cache import open_cache
from alexnet.pipeline.dali import QueryCrops
from alexnet.pipeline.dataset import split_files
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.files import (
    atomic_write,
    check_space,
    file_identity,
    read_json,
    write_json,
)
from alexnet.pipeline.layout import IndexPaths

from .defaults import FEATURE_BATCH, QUERY_BATCH

log = logging.getLogger(__name__)

DIM = 4096
BLOCK = 8192  # rows per block when streaming features: 64 MB of float16 4096-d vectors
FEATURES_VERSION = 1
FLOAT16_MAX = float(np.finfo(np.float16).max)


def source_identity(trained: TrainedRun) -> dict:
    """What every retrieval file of a run is derived from; a change means rebuild."""
    return {
        "manifest": trained.manifest["fingerprint"],
        "checkpoint": file_identity(trained.checkpoint),
    }


def fc7_batches(trained: TrainedRun, batches: Iterable[torch.Tensor]) -> Iterator[np.ndarray]:
    """float32 (batch, 4096) fc7 vectors of each batch of 224x224 crops, in order."""
    device = trained.world.device
    with torch.inference_mode():
        for x in batches:
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device):
                h = trained.model.fc7(x)
            yield h.float().cpu().numpy()


def to_float16(x: np.ndarray) -> np.ndarray:
    """The stored precision; queries are rounded the same way so that they match the database."""
    return np.clip(x, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)


# --- the training set --------------------------------------------------------------------


def features_current(paths: IndexPaths, source: dict) -> bool:
    if not (paths.features.is_file() and paths.features_meta.is_file()):
        return False
    try:
        meta = read_json(paths.features_meta, "feature sidecar", "")
        shape = np.load(paths.features, mmap_mode="r").shape
    except (AlexnetError, OSError, ValueError):
        return False
    return (
        meta.get("version") == FEATURES_VERSION
        and meta.get("source") == source
        and shape == (meta.get("count"), DIM)
    )


def extract_features(
    trained: TrainedRun,
    paths: IndexPaths,
    *,
    batch_size: int = FEATURE_BATCH,
    progress: bool = True,
):
    """fc7 of every training image, in manifest order -> INDEX/features.f16.npy."""
    files, _ = split_files(trained.manifest, "train")
    check_space(paths.folder, len(files) * DIM * 2, "the fc7 features")  # float16
    config = replace(trained.config, batch_size=batch_size)
    batches = iter(())  # a run without training images (imported weights) has none
    if files:
        cache = open_cache(trained.paths.root, trained.manifest)  # decoded patches, if kept
        loader = eval_loader(
            trained.manifest, trained.stats, config, trained.world, split="train", cache=cache
        )
        batches = fc7_batches(trained, (x for x, _ in loader))
    save_features(paths, source_identity(trained), batches, len(files), progress=progress)
    log.info("fc7 features of %d training images: %s", len(files), paths.features)
    return paths.features


def save_features(
    paths: IndexPaths,
    source: dict,
    batches: Iterable[np.ndarray],
    count: int,
    *,
    progress: bool = True,
) -> Path:
    """Write `count` fc7 vectors, arriving in (batch, 4096) arrays, as INDEX/features.f16.npy
    and then its sidecar (the completion protocol above); `source` is what they were made
    from (source_identity)."""
    from tqdm import tqdm

    paths.features_meta.unlink(missing_ok=True)  # from here on, the old array is not complete

    def write(tmp: str) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(count, DIM))
        done = 0
        with tqdm(total=count, desc="fc7 features", unit="img", disable=not progress) as bar:
            for h in batches:
                out[done : done + len(h)] = to_float16(h)
                done += len(h)
                bar.update(len(h))
        if done != count:
            raise RuntimeError(f"the pipeline yielded {done} of {count} images")
        out.flush()
        del out

    atomic_write(paths.features, write)
    mark_complete(paths, source, count)
    return paths.features


def mark_complete(paths: IndexPaths, source: dict, count: int) -> None:
    """Write the sidecar that says INDEX/features.f16.npy holds all `count` vectors of
    `source`: the last step of an extraction (module docstring)."""
    meta = {"version": FEATURES_VERSION, "source": source, "count": count, "dim": DIM}
    write_json(paths.features_meta, {**meta, "dtype": "float16"})


def load_features(paths: IndexPaths) -> np.ndarray:
    """The collection's float16 (N, 4096) features, memory-mapped read-only."""
    return np.load(paths.features, mmap_mode="r")


def _whole_file(features: np.ndarray) -> bool:
    """Whether `features` is a whole memory-mapped .npy file (load_features), not a view."""
    return bool(
        isinstance(features, np.memmap)
        and isinstance(features.base, mmap.mmap)
        and features.flags.c_contiguous
        and features.filename
    )


def feature_blocks(features: np.ndarray, *, block: int = BLOCK) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 rows) of `features`, `block` rows at a time, in order.

    A whole memory-mapped .npy file (load_features) is read with plain file reads, not
    through the map: pages read through a map stay in the process's resident memory until
    it is unmapped, so one pass over 10^6 vectors (8 GB) would leave them all counted as
    resident; read from the file they live only in the page cache. Memory: one block.
    """
    n = len(features)
    if not _whole_file(features):
        for start in range(0, n, block):
            yield start, np.array(features[start : start + block], np.float32)  # a copy
        return
    dim = int(np.prod(features.shape[1:]))
    with open(features.filename, "rb") as f:
        f.seek(features.offset)
        for start in range(0, n, block):
            rows = min(block, n - start)
            x = np.fromfile(f, features.dtype, count=rows * dim).reshape(rows, dim)
            yield start, x.astype(np.float32)


def read_rows(features: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """float32 rows `ids` of `features`. From a whole memory-mapped file, one file read per
    row, as feature_blocks reads (through the map, the kernel maps ~64 KB around each row
    read, and a re-rank's scattered rows soon hold much of the file resident)."""
    if not _whole_file(features):
        return np.asarray(features[ids], np.float32)
    size = features.dtype.itemsize * int(np.prod(features.shape[1:]))
    out = np.empty((len(ids), *features.shape[1:]), features.dtype)
    fd = os.open(features.filename, os.O_RDONLY)
    try:
        for j, i in enumerate(ids):
            out[j] = np.frombuffer(os.pread(fd, size, features.offset + int(i) * size), out.dtype)
    finally:
        os.close(fd)
    return out.astype(np.float32)


# --- query images ------------------------------------------------------------------------


def query_features(
    trained: TrainedRun,
    images: Sequence[str | bytes],
    *,
    crops: QueryCrops | None = None,
    batch_size: int = QUERY_BATCH,
    progress: bool = False,
) -> np.ndarray:
    """float32 (len(images), 4096) fc7 vectors through the evaluation centre crop, batched.

    Each image is a file path or the encoded bytes of one (JPEG, PNG, BMP). `crops` is a kept
    query pipeline (query_crops); without one a pipeline of `batch_size` is built for this
    call. Rounded through float16 like the stored features, so a training image queried
    against the database finds its own vector exactly (up to the batch's arithmetic).
    """
    from tqdm import tqdm

    if not len(images):
        return np.zeros((0, DIM), np.float32)
    crops = crops or query_crops(trained, min(batch_size, len(images)))
    step = crops.batch_size

    batches = (
        crops([encoded(item) for item in images[s : s + step]]) for s in range(0, len(images), step)
    )
    out = [
        to_float16(h)
        for h in tqdm(
            fc7_batches(trained, batches),
            desc="query fc7",
            unit="batch",
            total=-(-len(images) // step),
            disable=not progress,
        )
    ]
    return np.concatenate(out).astype(np.float32)
