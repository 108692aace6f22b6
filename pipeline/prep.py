"""`alexnet prep` as one function: scan and validate DATA, write the manifest, compute and
write the training-set statistics (paper, section 2: the mean activity; section 4.1: the RGB
covariance and its eigen decomposition for the PCA colour augmentation), and on request keep
the decoded patches (the patch cache). The manifest is written last, so that an interrupted
prep leaves the run it was (when the data is the same) or no run."""

from __future__ import annotations

from pathlib import Path

from . import dataset, stats
from .cache import check_cache_space, write_cache
from .dali import default_device
from .defaults import MAX_PIXELS, MIN_SIZE, PREP_BATCH, SPLIT_SEED, VAL_FRACTION
from .errors import AlexnetError
from .layout import RunPaths
from .lock import RunLock
from .manifest import Manifest, load_manifest, save_manifest, split_files
from .testpoints import reached


def prepare(
    data: str | Path,
    run: str | Path,
    *,
    val_fraction: float = VAL_FRACTION,
    seed: int = SPLIT_SEED,
    min_size: int = MIN_SIZE,
    max_pixels: int = MAX_PIXELS,
    val_labels: str | Path | None = None,
    class_names: str | Path | None = None,
    batch_size: int = PREP_BATCH,
    threads: int | None = None,
    workers: int | None = None,
    force: bool = False,
    cache: bool = False,
    reduced_decoding: bool = False,
    progress: bool = True,
) -> RunPaths:
    """DATA -> RUN's manifest and RUN/stats.npz; returns the run (a RunPaths, which is also a
    path: pass it to `fit`, `load`, or open its files: `.manifest`, `.stats`, ...).
    With `cache`, the same pass also writes every image's decoded 256x256 patch to RUN/cache
    (pipeline/cache.py: 196,608 bytes an image, checked against the free disk first).
    `reduced_decoding` (with `cache`) decodes JPEGs at least twice the 256 patch on both
    sides reduced (pipeline/images.py: a 12 MP photo about 5x faster), for the statistics and
    the patches training reads, and the run's queries then alike; by default every image is
    decoded in full (the paper's pixels).

    `threads` check the images (default: up to 8), `workers` are the statistics pass's DALI
    threads (default: all cores). `val_labels` and `class_names` name a labels file and a
    names file (pipeline/imagenet.py); without them ImageNet's own files are found by
    themselves. A run that already holds
    checkpoints or an index made from other data is refused unless `force`: its manifest and
    statistics would be replaced, and it could neither be resumed nor searched again.
    """
    if reduced_decoding and not cache:
        raise AlexnetError(
            "{reduced_decoding} needs {cache}: training reads the patches decoded so, and "
            "without them it would decode every image in full",
            param="reduced_decoding",
        )
    dataset.check_data(data)  # before the lock makes RUN
    with RunLock(run, "prep"):
        reached("prep started")
        manifest = dataset.scan(
            data,
            val_fraction=val_fraction,
            seed=seed,
            min_size=min_size,
            max_pixels=max_pixels,
            val_labels=val_labels,
            class_names=class_names,
            threads=threads,
            progress=progress,
        )
        reached("prep scanned")
        if not force:
            check_replaceable(RunPaths(run), manifest)
        if cache:  # before anything is written: the statistics pass is the long part
            check_cache_space(len(manifest.files), run)
        if not same_data(RunPaths(run), manifest):  # no run until the new manifest is written
            RunPaths(run).manifest.unlink(missing_ok=True)
        decoding = dict(
            batch_size=batch_size,
            device=default_device(),
            num_threads=workers,
            progress=progress,
        )
        if cache:
            result = write_cache(manifest, run, reduce=reduced_decoding, **decoding)
        else:
            files, _ = split_files(manifest, "train")
            result = stats.compute_stats(files, manifest.fingerprint, **decoding)
        stats.save_stats(result, run)
        # The manifest last: until it is written the folder is the run it was (the same data)
        # or no run, so an interrupted prep leaves nothing the next one must be forced over.
        save_manifest(manifest, run)
    return RunPaths(run)


def same_data(paths: RunPaths, manifest: Manifest) -> bool:
    """Whether RUN's current manifest lists the same data as `manifest` (False without one)."""
    if not paths.manifest.is_file():
        return False
    try:
        return load_manifest(paths.root, check_files=False).fingerprint == manifest.fingerprint
    except AlexnetError:  # damaged, or another version's: made from other data as far as we know
        return False


def check_replaceable(paths: RunPaths, manifest: Manifest) -> None:
    made = [p for p in (paths.last, paths.best, paths.index.meta) if p.exists()]
    if not made or not paths.manifest.is_file():
        return
    if not same_data(paths, manifest):
        raise AlexnetError(
            f"{paths.root} already holds {made[0].relative_to(paths.root)} made from other "
            "data: prep would replace its manifest and statistics, and the run could not be "
            "resumed or searched again. Use a new {run}, or pass {force} to replace them"
        )


def prep_report(run: str | Path) -> dict:
    """What prep made of RUN, for a face to show: counts, where labels and names came from,
    the skipped files and the statistics' summary, and the files written."""
    paths = RunPaths(run)
    manifest = load_manifest(run, check_files=False)
    return {
        "classes": len(manifest.classes),
        "train": len(manifest.files.positions("train")),
        "val": len(manifest.files.positions("val")),
        "layout": manifest.layout,
        "labels_from": manifest.labels_from,
        "names_from": manifest.names_from,
        "class_names": manifest.class_names,
        "skipped": manifest.skipped,
        "summary": stats.format_summary(stats.load_stats(run, manifest.fingerprint)),
        "manifest": paths.manifest,
        "stats": paths.stats,
        "stats_summary": paths.stats_summary,
        "cache": paths.cache_patches,
    }
