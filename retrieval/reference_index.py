"""The index of a run without training images (an imported reference network,
model/reference.py): its training set is empty, so the autoencoder that makes every gallery's
codes is trained on the fc7 features of the first folder of photos indexed with it. Later
galleries reuse that autoencoder, as a trained run's galleries reuse the one its training set
made; to train it afresh on another folder, delete RUN/index."""

from __future__ import annotations

import logging
from pathlib import Path

from alexnet.model.inference import load_trained
from alexnet.pipeline.manifest import load_manifest, split_files
from alexnet.pipeline.walk import images_below

from .features import source_identity
from .store import problem, read_record
from .update import update_training_set

log = logging.getLogger(__name__)


def has_training_images(run: str | Path) -> bool:
    return bool(split_files(load_manifest(run, check_files=False), "train")[0])


def index_from_photos(
    run: str | Path, images: str | Path, *, progress: bool = True, workers: int | None = None
) -> None:
    """Build RUN/index (no training images) with its autoencoder trained on the fc7 features
    of the photos below `images`; nothing when RUN has training images or a current index."""
    if has_training_images(run):
        return
    trained = load_trained(run, check_files=False, workers=workers)
    paths = trained.paths.index
    if problem(paths, read_record(paths), source_identity(trained)) is None:
        return
    found, _ = images_below(images, progress=progress)
    files = [path for path, _, _ in found]
    log.info(
        "%s has no training images: training its autoencoder on the fc7 features of the %d "
        "photos in %s",
        run,
        len(files),
        images,
    )
    features = trained.features(files, progress=progress)  # read as a gallery's photos
    update_training_set(
        trained,
        paths,
        trained.world,
        "index, training the autoencoder",
        progress=progress,
        train_on=features,
    )
