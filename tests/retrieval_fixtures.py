"""A tiny run folder for the retrieval tests, made in code without training.

3 classes (CLASSES) x 6 JPEGs from fixtures.make_images (2 per class held out for validation),
the real manifest and statistics, and a checkpoint of an untrained AlexNet in the dict format
fit() writes. The paper's init (biases 1, weights N(0, 0.01)) makes fc7 almost the same for
every image, so the layers get PyTorch's default init instead: fc7 then differs between
images, which is all retrieval needs to be tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alexnet.model.alexnet import AlexNet, AlexNetConfig
from alexnet.model.checkpoint import checkpoint_state, save_checkpoint
from alexnet.model.config import TrainConfig
from alexnet.pipeline.layout import RunPaths
from alexnet.pipeline.manifest import Manifest, load_manifest
from alexnet.pipeline.prep import prepare
from alexnet.retrieval.autoencoder import AutoencoderConfig

CLASSES = ("red", "green", "blue")


@dataclass(frozen=True)
class QuickConfig(AutoencoderConfig):
    """An autoencoder trained for a few updates: enough to test the machinery around it."""

    epochs: int = 1
    min_steps: int = 3


def make_run(data: Path, run: Path, *, seed: int = 0) -> Path:
    """prep (manifest + statistics) and an untrained checkpoint as best.pt and last.pt."""
    prepare(data, run, val_fraction=1 / 3, threads=1, batch_size=8, workers=1, progress=False)
    save_untrained_checkpoint(run, load_manifest(run), seed=seed)
    return run


def indexed_run(root: Path) -> Path:
    """make_run of the generated images, with the training set's index built (an autoencoder
    of a few updates): the run the collection, gallery and serve tests share."""
    import pytest
    from fixtures import make_images

    from alexnet.retrieval import autoencoder
    from alexnet.retrieval.collection import collection

    run = make_run(make_images(root / "data", train=6, val=None, names=CLASSES), root / "run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(autoencoder, "AutoencoderConfig", QuickConfig)
        collection(run).update(progress=False)
    return run


def save_untrained_checkpoint(run: Path, manifest: Manifest, *, seed: int = 0) -> None:
    torch.manual_seed(seed)
    config = TrainConfig(num_threads=1)
    model = AlexNet(AlexNetConfig(num_classes=len(manifest.classes)))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
    state = checkpoint_state(
        model,
        config,
        manifest,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
        schedule={"best": None, "bad_epochs": 0, "drops": 0},
        epoch=1,
    )
    for path in (RunPaths(run).best, RunPaths(run).last):
        save_checkpoint(path, state)
