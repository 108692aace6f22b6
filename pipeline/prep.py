"""`alexnet prep` as one function: scan and validate DATA, write the manifest, compute and
write the training-set statistics (paper, section 2: the mean activity; section 4.1: the RGB
covariance and its eigen decomposition for the PCA colour augmentation)."""

from __future__ import annotations

from pathlib import Path

from . import dataset, stats
from .dali import default_device
from .defaults import MIN_SIZE, PREP_BATCH, SPLIT_SEED, VAL_FRACTION


def prepare(
    data: str | Path,
    run: str | Path,
    *,
    val_fraction: float = VAL_FRACTION,
    seed: int = SPLIT_SEED,
    min_size: int = MIN_SIZE,
    batch_size: int = PREP_BATCH,
    workers: int | None = None,
    num_threads: int | None = None,
    progress: bool = True,
) -> tuple[dict, stats.Stats]:
    """DATA -> RUN/manifest.json and RUN/stats.npz; returns the manifest and the statistics."""
    manifest = dataset.scan(
        data,
        val_fraction=val_fraction,
        seed=seed,
        min_size=min_size,
        workers=workers,
        progress=progress,
    )
    dataset.save_manifest(manifest, run)
    files, _ = dataset.split_files(manifest, "train")
    result = stats.compute_stats(
        files,
        manifest["fingerprint"],
        batch_size=batch_size,
        device=default_device(),
        num_threads=num_threads,
        progress=progress,
    )
    stats.save_stats(result, run)
    return manifest, result
