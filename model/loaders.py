"""The trainer's and evaluator's DALI loaders for one run: which files, in what order, which
augmentation seed, and how they are split over torchrun's processes. Given the run's patch
cache (pipeline/cache.py), they read the decoded patches instead of the files: same images,
same order, same augmentation, the same batches."""

from __future__ import annotations

import numpy as np

from alexnet.pipeline.dali import (
    augmentation,
    cached_eval_pipeline,
    cached_train_pipeline,
    eval_pipeline,
    train_pipeline,
)
from alexnet.pipeline.imagecheck import check_image
from alexnet.pipeline.loader import Loader, Preset, check_batch_size, shard
from alexnet.pipeline.manifest import Manifest, first_changed, split_files
from alexnet.pipeline.stats import Stats

from .config import TrainConfig
from .distributed import World


def preset(stats: Stats, config: TrainConfig, device: str) -> Preset:
    """The run's preprocessing, for every pipeline of it (DALI on `device`): the mean its
    settings choose (mean image or channel mean), the input scale, the crop, the seed and
    DALI threads."""
    return Preset(
        mean=stats.mean(config.mean),
        std=stats.std(config.input_scale),
        crop=config.crop,
        device=device,
        seed=config.seed,
        num_threads=config.num_threads,
        squash=config.squash,
    )


def train_loader(
    manifest: Manifest,
    stats: Stats,
    config: TrainConfig,
    epoch: int,
    world: World,
    skip_batches: int = 0,
    cache: np.ndarray | None = None,
) -> Loader:
    """This rank's batches of one epoch: a fresh permutation per (seed, epoch), equal shards.

    The order depends on (seed, epoch) and each image's crop, mirror and lighting on (seed,
    epoch, image index) alone, so a run resumed mid-epoch sees exactly the data of an
    uninterrupted one, whatever the number of processes or threads, with or without `cache`
    (the run's patches, from pipeline.cache.open_cache).
    """
    files, labels = split_files(manifest, "train")
    mine = epoch_order(len(files), config, epoch, world)[skip_batches * config.batch_size :]
    choices = augmentation(config.seed, epoch, len(files), config.lighting_std, config.crop)
    graph = preset(stats, config, world.dali_device).graph(
        config.batch_size,
        eigvecs=stats.eigvecs,
        eigvals=stats.eigvals,
        augment={name: values[mine] for name, values in choices.items()},
    )
    if cache is None:
        pipe = train_pipeline([files[i] for i in mine], [labels[i] for i in mine], **graph)
        return Loader(pipe, torch_device=world.device)
    rows = manifest.files.positions("train")[mine]
    pipe = cached_train_pipeline(cache, rows, np.asarray(labels)[mine], **graph)
    return Loader(pipe, torch_device=world.device, size=len(rows))


def epoch_order(count: int, config: TrainConfig, epoch: int, world: World) -> np.ndarray:
    """Indices into the training files of this rank's images in one epoch, in reading order:
    a fresh permutation per (seed, epoch), cut into equal shards."""
    per_rank = count // world.size
    check_batch_size(per_rank, config.batch_size, "training" + (" shard" if world.size > 1 else ""))
    order = np.random.default_rng([config.seed, epoch]).permutation(count)
    return order[world.rank * per_rank : (world.rank + 1) * per_rank]


def unreadable_training_file(
    manifest: Manifest, config: TrainConfig, epoch: int, world: World, start: int
) -> str:
    """Why the epoch's read failed, naming the file: the first training file that changed
    since prep, else the first one from batch `start` on that PIL cannot decode."""
    problem = first_changed(manifest)
    if problem:
        return problem
    files, _ = split_files(manifest, "train")
    for i in epoch_order(len(files), config, epoch, world)[start * config.batch_size :]:
        reason = check_image(files[i], min_size=1)
        if reason:
            return f"{files[i]}: {reason}"
    return "a training file could not be read (no single file could be named)"


def eval_loader(
    manifest: Manifest,
    stats: Stats,
    config: TrainConfig,
    world: World,
    *,
    split: str = "val",
    ten_crop: bool = False,
    cache: np.ndarray | None = None,
) -> Loader:
    """Every image of `split`, each once across the ranks: centre crops, or 10 crops; from
    the files, or from `cache` (the run's patches) with the same shards."""
    files, labels = split_files(manifest, split)
    check_batch_size(len(files), 1, "validation" if split == "val" else "training")
    batch = max(1, min(config.batch_size // (10 if ten_crop else 1), len(files) // world.size or 1))
    graph = preset(stats, config, world.dali_device).eval_graph(batch, ten_crop=ten_crop)
    if cache is None or config.squash:  # the cache holds central patches, not squashed images
        pipe = eval_pipeline(files, labels, shard_id=world.rank, num_shards=world.size, **graph)
        return Loader(pipe, torch_device=world.device)
    mine = shard(len(files), world.rank, world.size)  # the reader's shards
    rows = manifest.files.positions(split)[mine]
    pipe = cached_eval_pipeline(cache, rows, np.asarray(labels)[mine], **graph)
    return Loader(pipe, torch_device=world.device, size=len(rows))
