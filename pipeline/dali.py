"""The DALI pipelines: one preprocessing graph for prep, training, evaluation and queries.

Paper, section 4.1 and 3.1: every image is rescaled so that its shorter side is 256 and the
central 256x256 patch is kept; training takes random 224x224 patches and their mirrors, and
adds the PCA colour shift; testing averages the 10 patches (4 corners + centre, mirrored).

The graphs are plain functions on DataNodes with the device as a parameter, so the same code
runs on the CPU (device_id=None, CPU decoding) and on a GPU (mixed decoding, GPU operators).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali import math as dmath
from nvidia.dali.pipeline import Pipeline

SIZE = 256  # the side of the central patch every image is reduced to
CROP = 224  # the network's input, unless its run says otherwise (227 for Caffe's network)
MAX_OFFSET = SIZE - CROP  # 32: crops start at 0..32 on each axis
TEN_CROP_POSITIONS = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5)]
READER = "Reader"
QUERY_INPUT = "encoded"
ONES = np.ones(3, np.float32)  # no scaling: the network sees 0-255 pixel differences


def default_device() -> str:
    """ "gpu" when CUDA is usable, else "cpu"; every GPU-only speed-up keys off this."""
    return "gpu" if torch.cuda.is_available() else "cpu"


# --- graph pieces: each takes DataNodes and says what it returns -------------------------


def decode(encoded, device: str):
    """Encoded files -> uint8 HWC RGB images (greyscale, CMYK and alpha become RGB)."""
    return fn.decoders.image(
        encoded, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB
    )


def central_square(encoded):
    """Encoded files -> float32 (y, x) start and end of each image's central square (side = the
    shorter side), for resize's roi_start / roi_end. Read from the file header on the CPU, so
    the same node serves as an argument input whether the images decode on the CPU or GPU."""
    shape = fn.peek_image_shape(encoded, dtype=types.FLOAT)
    height, width = shape[0], shape[1]
    side = dmath.min(height, width)
    top, left = (height - side) * 0.5, (width - side) * 0.5
    return fn.stack(top, left), fn.stack(top + side, left + side)


def decode_centre_256(encoded, device: str):
    """Encoded files -> uint8 256x256x3: decode, shorter side to 256, central crop.

    One resampling of the central square straight to 256x256: the same geometry as resizing
    the whole image and cropping, without resampling the columns (or rows) the crop discards
    and without the extra copy of a crop (measured: about 10% faster on 500x375 photos).
    """
    start, end = central_square(encoded)
    return fn.resize(
        decode(encoded, device), size=(SIZE, SIZE), roi_start=start, roi_end=end, antialias=True
    )


def decode_squashed_256(encoded, device: str):
    """Encoded files -> uint8 256x256x3: the whole image resized to 256x256, its aspect ratio
    not kept (Caffe's test phase: its ILSVRC-2012 data were squashed so, as `squash` below)."""
    return fn.resize(decode(encoded, device), size=(SIZE, SIZE), antialias=True)


def decode_256(encoded, device: str, squash: bool = False):
    """The 256x256 patch evaluation crops from: the paper's central patch of the shorter-side
    resize, or with `squash`, Caffe's squashed whole image."""
    return (decode_squashed_256 if squash else decode_centre_256)(encoded, device)


def centre_position(crop: int, squash: bool = False) -> float:
    """crop_to_chw's relative position of the centre crop. The paper's: 0.5, which DALI rounds
    to (SIZE - crop) / 2 rounded up (15 for a 227 crop). Caffe's (data_transformer.cpp, test
    phase): (SIZE - crop) // 2, i.e. 14 for 227; the same 16 for a 224 crop."""
    if not squash or crop == SIZE:
        return 0.5
    return (SIZE - crop) // 2 / (SIZE - crop)


def subtract_mean_image(images, mean: np.ndarray, device: str):
    """uint8 256x256x3 -> float32 256x256x3 minus the training-set mean image."""
    return images - types.Constant(mean.astype(np.float32), device=device)


def lighting_shift(eigvecs: np.ndarray, eigvals: np.ndarray, alpha):
    """Per image, a float32 RGB shift eigvecs @ (alpha * eigvals) / 255 from its alpha (3).

    The statistics are in 0-255 pixel units; the paper's formula is not scale-free, and
    applied to intensities in [0, 1] (as the reference implementations do) it is this shift
    expressed in pixel units.
    """
    scaled = fn.reshape(alpha * types.Constant((eigvals / 255.0).astype(np.float32)), shape=[1, 3])
    shift = fn.coord_transform(scaled, M=eigvecs.astype(np.float32).flatten().tolist())
    return fn.reshape(shift, shape=[3])


def augmentation(
    seed: int, epoch: int, count: int, lighting_std: float = 0.1, crop: int = CROP
) -> dict:
    """The random choices of one training epoch for `count` images, by image index: crop
    offsets (int32 x, y in 0..SIZE - crop), mirror flags (int32 0/1, p = 1/2) and lighting alphas
    (float32, N(0, lighting_std), drawn afresh each epoch).

    They are a function of (seed, epoch, image index) alone, so an interrupted epoch resumes
    with the same augmentation, and neither thread count nor sharding changes it.
    """
    rng = np.random.default_rng([seed, epoch, 1])  # [seed, epoch] is the epoch's order
    return {
        "offset": rng.integers(0, SIZE - crop + 1, (count, 2), dtype=np.int32),
        "mirror": rng.integers(0, 2, count, dtype=np.int32),
        "alpha": (rng.standard_normal((count, 3)) * lighting_std).astype(np.float32),
    }


def _batches_of(augment: dict, batch_size: int):
    """An external_source callback: the choices for the pipeline's next batch of images, in
    reader order (which wraps around at the end of the list, as the reader does)."""
    n = len(augment["mirror"])

    def source(info):
        rows = np.arange(info.iteration * batch_size, (info.iteration + 1) * batch_size) % n
        return (
            list(augment["offset"][rows].astype(np.float32)),
            list(augment["mirror"][rows]),
            list(augment["alpha"][rows]),
        )

    return source


def crop_to_chw(images, *, pos_x=0.5, pos_y=0.5, mirror=0, mean=0.0, std=1.0, crop=CROP):
    """256x256x3 -> float32 3 x crop x crop: crop at relative position, optional mirror, then
    (pixel - mean) / std."""
    return fn.crop_mirror_normalize(
        images,
        crop=(crop, crop),
        crop_pos_x=pos_x,
        crop_pos_y=pos_y,
        mirror=mirror,
        mean=mean,
        std=std,
        dtype=types.FLOAT,
        output_layout="CHW",
    )


def centred(images, mean: np.ndarray, device: str):
    """256x256 images and the mean to pass on to crop_to_chw (fused there for a channel mean)."""
    if mean.ndim == 1:
        return images, mean.astype(np.float32)
    return subtract_mean_image(images, mean, device), np.zeros(3, np.float32)


# --- pipelines ---------------------------------------------------------------------------


def _reader(files, labels, shard_id, num_shards, pad):
    return fn.readers.file(
        files=list(files),
        labels=list(labels),
        random_shuffle=False,
        shard_id=shard_id,
        num_shards=num_shards,
        pad_last_batch=pad,
        stick_to_shard=True,
        name=READER,
    )


@pipeline_def(enable_conditionals=False)
def prep_pipeline(files: Sequence[str], device: str = "cpu"):
    """-> uint8 256x256x3 centre patches, for the training-set statistics."""
    encoded, _ = _reader(files, range(len(files)), 0, 1, True)
    return decode_centre_256(encoded, device)


@pipeline_def(enable_conditionals=False)
def fed_prep_pipeline(device: str = "cpu"):
    """prep_pipeline's patches of encoded images fed by name (QUERY_INPUT): prep's reduced
    decoding reads the files itself (pipeline/images.py)."""
    encoded = fn.external_source(name=QUERY_INPUT, dtype=types.UINT8, ndim=1)
    return decode_centre_256(encoded, device)


@pipeline_def(enable_conditionals=False)
def train_pipeline(
    files,
    labels,
    mean,
    eigvecs,
    eigvals,
    augment,
    *,
    std=ONES,
    device="cpu",
    debug=False,
    crop=CROP,
):
    """-> float32 3x224x224 crops at the given offsets, mirrored where asked, minus the mean,
    plus the PCA lighting shift of each image's alpha (`augment`: see `augmentation`, one row
    per file, in file order).

    With `debug`, also returns each image's crop offset (x, y in pixels of the 256 patch),
    mirror flag and lighting alpha, so tests can check every property on real batches.
    """
    encoded, label = _reader(files, labels, 0, 1, False)
    offset, mirror, alpha = fn.external_source(
        source=_batches_of(augment, Pipeline.current().max_batch_size),
        num_outputs=3,
        batch=True,
        batch_info=True,
        dtype=[types.FLOAT, types.INT32, types.FLOAT],
    )
    images = decode_centre_256(encoded, device)
    out = train_crops(images, offset, mirror, alpha, mean, eigvecs, eigvals, std, device, crop)
    if debug:
        return out, label, offset, mirror, alpha
    return out, label


@pipeline_def(enable_conditionals=False)
def cached_train_pipeline(
    patches,
    rows,
    labels,
    mean,
    eigvecs,
    eigvals,
    augment,
    *,
    std=ONES,
    device="cpu",
    debug=False,
    crop=CROP,
):
    """train_pipeline's outputs from decoded patches instead of files: `patches` is a uint8
    Nx256x256x3 array (the memory-mapped patch cache), `rows` the patches to read in order,
    `labels` and `augment` one entry per row. One pass reads each row once; feed it to a
    Loader with size=len(rows)."""
    source = PatchBatches(patches, rows, labels, Pipeline.current().max_batch_size, augment)
    images, label, offset, mirror, alpha = fn.external_source(
        source=source,
        num_outputs=5,
        batch=True,
        batch_info=True,
        dtype=[types.UINT8, types.INT32, types.FLOAT, types.INT32, types.FLOAT],
        layout=["HWC", "", "", "", ""],
    )
    images = images.gpu() if device == "gpu" else images
    out = train_crops(images, offset, mirror, alpha, mean, eigvecs, eigvals, std, device, crop)
    if debug:
        return out, label, offset, mirror, alpha
    return out, label


def train_crops(images, offset, mirror, alpha, mean, eigvecs, eigvals, std, device: str, crop=CROP):
    """uint8 256x256x3 patches -> float32 3x224x224 crops at `offset` (x, y pixels), mirrored
    where `mirror`, minus the mean, plus the PCA lighting shift of `alpha`, over `std`."""
    images, mean = centred(images, mean, device)
    return crop_to_chw(
        images,
        pos_x=offset[0] / (SIZE - crop),
        pos_y=offset[1] / (SIZE - crop),
        mirror=mirror,
        mean=types.Constant(mean) - lighting_shift(eigvecs, eigvals, alpha),
        std=std.astype(np.float32),
        crop=crop,
    )


class PatchBatches:
    """An external_source callback over decoded patches: per batch, the uint8 Bx256x256x3
    patches at the next `batch_size` entries of `rows`, their int32 labels, and, given
    `augment` (one row per entry of `rows`), their crop offsets (float32), mirror flags and
    lighting alphas. The last batch of a pass is partial, and the call after it raises
    StopIteration: that ends the pass, as a reader's epoch ends."""

    def __init__(self, patches, rows, labels, batch_size: int, augment: dict | None = None):
        self.patches, self.rows, self.batch_size = patches, np.asarray(rows, np.int64), batch_size
        self.labels = np.asarray(labels, np.int32).reshape(-1, 1)
        self.augment = augment
        if len(self.labels) != len(self.rows):
            raise ValueError(f"{len(self.rows)} rows but {len(self.labels)} labels")

    def __call__(self, info):
        start = info.iteration * self.batch_size
        if start >= len(self.rows):
            raise StopIteration
        take = slice(start, start + self.batch_size)
        batch = [self.patches[self.rows[take]], self.labels[take]]
        if self.augment is not None:
            a = self.augment
            batch += [a["offset"][take].astype(np.float32), a["mirror"][take], a["alpha"][take]]
        return batch


@pipeline_def(enable_conditionals=False)
def eval_pipeline(
    files,
    labels,
    mean,
    *,
    std=ONES,
    device="cpu",
    ten_crop=False,
    shard_id=0,
    num_shards=1,
    crop=CROP,
    squash=False,
):
    """-> float32 3x224x224 centre crops, or 10x3x224x224 (4 corners + centre, then mirrored);
    with `squash`, Caffe's test-time preprocessing (decode_256, centre_position)."""
    encoded, label = _reader(files, labels, shard_id, num_shards, True)
    images, mean = centred(decode_256(encoded, device, squash), mean, device)
    return eval_crops(images, mean, std.astype(np.float32), ten_crop, crop, squash), label


@pipeline_def(enable_conditionals=False)
def cached_eval_pipeline(
    patches, rows, labels, mean, *, std=ONES, device="cpu", ten_crop=False, crop=CROP, squash=False
):
    """eval_pipeline's outputs from decoded patches (see cached_train_pipeline): the patches
    at `rows`, in order, once per pass. Shards are chosen by the caller's `rows`. The patches
    are the paper's central ones: a `squash` evaluation reads the files instead."""
    if squash:
        raise ValueError("the patch cache holds central patches, not squashed images")
    source = PatchBatches(patches, rows, labels, Pipeline.current().max_batch_size)
    images, label = fn.external_source(
        source=source,
        num_outputs=2,
        batch=True,
        batch_info=True,
        dtype=[types.UINT8, types.INT32],
        layout=["HWC", ""],
    )
    images = images.gpu() if device == "gpu" else images
    images, mean = centred(images, mean, device)
    return eval_crops(images, mean, std.astype(np.float32), ten_crop, crop), label


def eval_crops(images, mean, std, ten_crop: bool, crop: int = CROP, squash: bool = False):
    """256x256 patches -> the centre crop, or the 10 crops (4 corners + centre, mirrored)."""
    c = centre_position(crop, squash)
    if not ten_crop:
        return crop_to_chw(images, pos_x=c, pos_y=c, mean=mean, std=std, crop=crop)
    positions = [(c, c) if (x, y) == (0.5, 0.5) else (x, y) for x, y in TEN_CROP_POSITIONS]
    crops = [
        crop_to_chw(images, pos_x=x, pos_y=y, mirror=m, mean=mean, std=std, crop=crop)
        for m in (0, 1)
        for x, y in positions
    ]
    return fn.stack(*crops)


@pipeline_def(enable_conditionals=False)
def query_pipeline(mean, *, std=ONES, device="cpu", ten_crop=False, crop=CROP, squash=False):
    """Encoded images fed by name (QUERY_INPUT: files read by the caller, or uploads) ->
    float32 3x224x224 centre crops, or 10x3x224x224, exactly as eval_pipeline makes them
    from files. QueryCrops builds one and feeds it."""
    encoded = fn.external_source(name=QUERY_INPUT, dtype=types.UINT8, ndim=1)
    images, mean = centred(decode_256(encoded, device, squash), mean, device)
    return eval_crops(images, mean, std.astype(np.float32), ten_crop, crop, squash)


# --- the PyTorch side --------------------------------------------------------------------


def pipe_options(device: str, batch_size: int, seed: int, num_threads: int | None = None) -> dict:
    device_id = torch.cuda.current_device() if device == "gpu" else None
    return dict(
        batch_size=batch_size,
        num_threads=num_threads or os.cpu_count() or 1,
        device_id=device_id,
        seed=seed % (2**31),
        prefetch_queue_depth=2,
    )
