"""fc7 features: the 4096-d last hidden layer (after ReLU, dropout off) of the trained network.

Paper, section 6.1 (figure 4): images whose fc7 vectors are close in Euclidean distance are
similar to the network, even when their pixels are not. Every image of a collection goes
through the evaluation pipeline's centre crop (pipeline.dali.eval_pipeline, ten_crop off) in
`extract_rows`, the one extractor, and its fc7 vector is written as float16 to a row of
FOLDER/features.f16.npy, a memory-mapped .npy file: memory stays one batch whatever the
collection's size. Query images are decoded by the same graph from their bytes
(`query_features`) and every vector comes from one function with one rounding rule
(TrainedRun.fc7), so an indexed image used as a query gets its own stored vector back; a
search keeps that query pipeline between calls (`query_crops`).

Completion protocol: rows are written in place past the rows already complete (the file grows
in place: numpy pads the .npy header for growth along the first axis, so the header is
rewritten where it stands); then the sidecar FOLDER/features.json (manifest fingerprint,
checkpoint file identity, count of complete rows) is written. A rebuild from scratch deletes
the sidecar first. An interrupted extraction therefore leaves the sidecar's count as it was,
and its rows are never taken as complete.
"""

from __future__ import annotations

import io
import logging
import mmap
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from alexnet.model.distributed import World
from alexnet.model.inference import FC7_DIM, TrainedRun, encoded, query_crops
from alexnet.pipeline.dali import SIZE, cached_eval_pipeline, eval_pipeline
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.files import file_identity, read_json, write_json
from alexnet.pipeline.images import read_images
from alexnet.pipeline.layout import IndexPaths
from alexnet.pipeline.loader import Loader, QueryCrops, shard

from .defaults import FEATURE_BATCH, QUERY_BATCH

log = logging.getLogger(__name__)

DIM = FC7_DIM
BLOCK = 8192  # rows per block when streaming features: 64 MB of float16 4096-d vectors
FEATURES_VERSION = 1
ROW_BYTES = DIM * 2  # one float16 fc7 vector


def source_identity(trained: TrainedRun) -> dict:
    """What every retrieval file of a run is derived from; a change means rebuild."""
    return {
        "manifest": trained.manifest.fingerprint,
        "checkpoint": file_identity(trained.checkpoint),
    }


def fc7_batches(trained: TrainedRun, batches: Iterable[torch.Tensor]) -> Iterator[np.ndarray]:
    """float32 (batch, 4096) fc7 vectors of each batch of crops, in order, rounded as stored
    (TrainedRun.fc7: one rule for every image)."""
    for x in batches:
        yield trained.fc7(x)


# --- the feature file: rows written in place, completed by a sidecar ----------------------


def _header(rows: int) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.dtype(np.float16).str, "fortran_order": False, "shape": (rows, DIM)}
    )
    return buf.getvalue()


def grow_features(path: Path, rows: int) -> None:
    """Make the .npy at `path` hold `rows` float16 rows (created when missing); rows before
    the end are kept as they are, so readers of the completed rows are never disturbed."""
    header = _header(rows)
    if not path.is_file():
        with open(path, "wb") as f:
            f.write(header)
            f.truncate(len(header) + rows * ROW_BYTES)
        return
    with open(path, "r+b") as f:
        try:
            ok = np.lib.format.read_magic(f) == (1, 0)
            ok = ok and np.lib.format.read_array_header_1_0(f)[1:] == (False, np.float16)
        except ValueError:
            ok = False
        if not ok or f.tell() != len(header):
            raise AlexnetError(
                f"{path} has an unexpected header: delete its folder and index it again"
            )
        f.truncate(len(header) + rows * ROW_BYTES)
        f.seek(0)
        f.write(header)  # same length: padded by numpy for growth of the first axis


def complete_rows(paths: IndexPaths, source: dict) -> int:
    """How many leading rows of the feature file hold fc7 vectors of `source` (the sidecar's
    count; 0 without a current sidecar)."""
    if not (paths.features.is_file() and paths.features_meta.is_file()):
        return 0
    try:
        meta = read_json(paths.features_meta, "feature sidecar", "")
        shape = np.load(paths.features, mmap_mode="r").shape
    except (AlexnetError, OSError, ValueError):
        return 0
    current = meta.get("version") == FEATURES_VERSION and meta.get("source") == source
    count = meta.get("count")
    if not current or not isinstance(count, int) or shape[1:] != (DIM,) or shape[0] < count:
        return 0
    return count


def mark_complete(paths: IndexPaths, source: dict, count: int) -> None:
    """Write the sidecar that says the first `count` rows of the feature file are fc7 vectors
    of `source`: the last step of an extraction (module docstring)."""
    meta = {"version": FEATURES_VERSION, "source": source, "count": count, "dim": DIM}
    write_json(paths.features_meta, {**meta, "dtype": "float16"})


def extract_rows(
    trained: TrainedRun,
    files: list[str],
    features: Path,
    first_row: int,
    world: World,
    *,
    batch_size: int = FEATURE_BATCH,
    patches: tuple[np.ndarray, np.ndarray] | None = None,
    reduce: bool = False,
    progress: bool = True,
) -> None:
    """fc7 of `files` into rows first_row.. of the .npy at `features` (grow_features made it
    long enough): the one extractor of every collection. Under torchrun each rank reads its
    contiguous shard of the files (DALI's reader split) and writes those rows only.

    `reduce` (a gallery's photos, as their queries): read through pipeline/images.py, large
    JPEGs decoded reduced, batches bounded by decoded pixels. Otherwise (the training set,
    decoded in full as it was trained): DALI's reader, or with `patches` (the run's prep cache
    and each file's row in it, pipeline/cache.py) the decoded 256x256 patches: the same
    crops, without decoding."""
    from tqdm import tqdm

    n = len(files)
    mine = shard(n, world.rank, world.size)
    begin, end = mine.start, mine.stop
    if end == begin:
        return
    bs = min(batch_size, end - begin)
    if reduce:
        vectors = (
            h for _, h in trained.outputs(files[begin:end], "fc7", batch_size=bs, skip=False)
        )
    else:
        vectors = fc7_batches(trained, _crops(trained, files, mine, world, bs, patches))
    out = np.load(features, mmap_mode="r+")
    row = first_row + begin
    with tqdm(total=end - begin, desc="fc7 features", unit="img", disable=not progress) as bar:
        for h in vectors:
            out[row : row + len(h)] = h
            row += len(h)
            bar.update(len(h))
    out.flush()
    del out
    if row != first_row + end:
        raise AlexnetError(
            f"the pipeline yielded {row - first_row - begin} of {end - begin} images"
        )


def _crops(trained, files, mine: slice, world: World, batch_size: int, patches):
    """The centre crops of the training set's files `mine`, decoded in full by DALI's reader
    (or read from the prep cache's patches), batch by batch."""
    graph = trained.preset.eval_graph(batch_size)
    if patches is None or trained.preset.squash:  # the cache holds central patches only
        n = len(files)
        pipe = eval_pipeline(files, [0] * n, shard_id=world.rank, num_shards=world.size, **graph)
        loader = Loader(pipe, torch_device=world.device)
    else:
        cache, rows = patches
        zeros = np.zeros(mine.stop - mine.start, np.int32)
        pipe = cached_eval_pipeline(cache, rows[mine], zeros, **graph)
        loader = Loader(pipe, torch_device=world.device, size=mine.stop - mine.start)
    for x, _ in loader:
        if len(x):  # not a shard's padding, cut off by the Loader
            yield x


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
    images: Sequence[str | bytes | np.ndarray],
    *,
    crops: QueryCrops | None = None,
    crop: int | None = None,
    batch_size: int = QUERY_BATCH,
    reduce: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """float32 (len(images), 4096) fc7 vectors through the evaluation centre crop, batched.

    Each image is a file path or the encoded bytes of one (JPEG, PNG, BMP; as bytes or as a
    uint8 array: Images.batches, pipeline/images.py, reads a user's images). `crops` is a kept
    query pipeline (query_crops); without one a pipeline of `batch_size` is built for this
    call. `crop` picks one of the ten evaluation crops instead of the centre one (5 positions,
    centre last, then their mirrors: 9 is the mirrored centre). `reduce`: the images are a
    gallery's files, read as its photos were (large JPEGs decoded reduced). Rounded as the
    stored features are (TrainedRun.fc7), so a training image queried against the database
    finds its own stored vector, bit for bit.
    """
    from tqdm import tqdm

    if not len(images):
        return np.zeros((0, DIM), np.float32)
    ten = crop is not None
    crops = crops or query_crops(trained, min(batch_size, len(images)), ten_crop=ten)
    step = crops.batch_size
    if reduce:
        read = read_images(list(images), skip=False).batches(step, reduce=SIZE)
        chunks = (batch for _, batch in read)
    else:
        chunks = (
            [encoded(item) for item in images[s : s + step]] for s in range(0, len(images), step)
        )

    def batch(chunk: list[np.ndarray]) -> torch.Tensor:
        x = crops(chunk)
        return x[:, crop] if ten else x

    out = list(
        tqdm(
            fc7_batches(trained, map(batch, chunks)),
            desc="query fc7",
            unit="batch",
            total=-(-len(images) // step),
            disable=not progress,
        )
    )
    return np.concatenate(out)
