"""A trained run, loaded for inference: manifest, statistics, checkpoint, the rebuilt network
in eval mode on this machine's device. Evaluation, fc7 features and search all start here, so
they share one set of checks (the data still matches the manifest, the statistics and the
checkpoint belong to it) and one set of messages."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from alexnet.pipeline.dali import SIZE
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.images import read_images
from alexnet.pipeline.layout import RunPaths
from alexnet.pipeline.loader import Preset, QueryCrops
from alexnet.pipeline.manifest import Manifest, load_manifest
from alexnet.pipeline.stats import Stats, load_stats
from alexnet.pipeline.testpoints import reached

from .checkpoint import build_network, load_checkpoint
from .config import TrainConfig, config_from_dict
from .distributed import World, autocast, local_device, reuse_freed_memory
from .loaders import preset


@dataclass
class TrainedRun:
    """A run's trained network and everything needed to feed it images."""

    paths: RunPaths
    model: torch.nn.Module  # in eval mode
    config: TrainConfig
    manifest: Manifest
    stats: Stats
    checkpoint: Path
    epoch: int
    world: World

    @property
    def classes(self) -> list[str]:
        """Class ids (folder names), in label order."""
        return self.manifest.classes

    @property
    def class_names(self) -> list[str]:
        """Display names, in label order."""
        return self.manifest.class_names

    @property
    def preset(self) -> Preset:
        """The run's preprocessing, for every pipeline that feeds this network."""
        return preset(self.stats, self.config, self.world.dali_device)

    @property
    def net(self) -> torch.nn.Module:
        """The network (torch), in eval mode on this machine's device."""
        return self.model

    def outputs(
        self,
        images,
        head: str,
        *,
        ten_crop: bool = False,
        batch_size: int = 16,
        progress=False,
        skip: bool = True,
        reduce: bool = True,
    ) -> Iterator[tuple[list[str], torch.Tensor | np.ndarray]]:
        """The network's `head` for each batch of the images with their names, through the
        evaluation preprocessing: "logits" (N x crops x classes: the centre crop, or with
        `ten_crop` the ten), or "fc7" (fc7_vectors of the centre crops). `images`, `skip`,
        `reduce` (large JPEGs decoded reduced; off: in full, as the training set's):
        see pipeline/images.py."""
        from tqdm import tqdm

        source = read_images(images, skip=skip)
        crops = query_crops(self, max(1, min(batch_size, len(source))), ten_crop=ten_crop)
        with torch.inference_mode():
            for names, encoded in tqdm(
                source.batches(crops.batch_size, reduce=SIZE if reduce else None),
                desc=head,
                unit="batch",
                total=-(-len(source) // crops.batch_size),
                disable=not progress,
            ):
                x = crops(encoded)
                if head == "fc7":
                    yield names, self.fc7(x)
                    continue
                with autocast(self.world.device):
                    out = self.model(x.flatten(0, 1) if ten_crop else x)
                yield names, out.float().view(len(x), -1, out.shape[-1])

    def fc7(self, x: torch.Tensor) -> np.ndarray:
        """fc7 vectors of a batch of crops (fc7_vectors): the one fc7 of every image."""
        return fc7_vectors(self.model, x, self.world.device)

    def predict(self, images, *, top: int = 5, ten_crop: bool = False, **options) -> list[dict]:
        """What the classifier says each image is: [{"image", "top": [{"class" (display name),
        "class_id", "probability"}]}], through the evaluation preprocessing (the centre crop,
        or the average of the ten crops' softmax outputs). `images`: see pipeline/images.py;
        one that cannot be used among several is skipped, with a warning."""
        top = min(top, len(self.classes))
        records = []
        for names, logits in self.outputs(images, "logits", ten_crop=ten_crop, **options):
            p, labels = logits.softmax(-1).mean(1).topk(top, dim=1)
            for name, q, c in zip(names, p.tolist(), labels.tolist(), strict=True):
                best = [
                    {"class": self.class_names[k], "class_id": self.classes[k], "probability": v}
                    for v, k in zip(q, c, strict=True)
                ]
                records.append({"image": name, "top": best})
        return records

    def features(self, images, **options) -> np.ndarray:
        """float32 (N, 4096) fc7 vectors (after ReLU, dropout off) of the centre crops, the
        vectors retrieval compares (paper, section 6.1), one row per image: an image that
        cannot be used is an error. Rounded as the stored ones are (fc7_vectors): an indexed
        image gets its own row of the index back."""
        out = [h for _, h in self.outputs(images, "fc7", skip=False, **options)]
        return np.concatenate(out) if out else np.zeros((0, FC7_DIM), np.float32)


FC7_DIM = 4096
FLOAT16_MAX = float(np.finfo(np.float16).max)


def to_float16(x: np.ndarray) -> np.ndarray:
    """The stored precision of fc7 (clipped to float16's range)."""
    return np.clip(x, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)


def fc7_vectors(model: torch.nn.Module, x: torch.Tensor, device) -> np.ndarray:
    """float32 (len(x), 4096) fc7 vectors of a batch of crops (model.fc7: the same bits in any
    batch), rounded through float16: the one rule for queries, training sets, galleries and
    `features`, so that an image's vector is the same whichever of them computed it."""
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device):
        h = model.fc7(x)
    return to_float16(h.float().cpu().numpy()).astype(np.float32)


def load_run_data(run: str | Path, check_files: bool | str = True) -> tuple[Manifest, Stats]:
    """RUN's manifest (its files checked against the disk: all, one split, or none; see
    load_manifest) and its statistics."""
    manifest = load_manifest(run, check_files=check_files)
    return manifest, load_stats(run, manifest.fingerprint)


def check_classes(saved: dict, manifest: Manifest, path: Path, run: RunPaths) -> None:
    """Refuse a checkpoint trained on other classes, or on other data (the fingerprint of the
    manifest it was trained with: the data was prepared again since)."""
    if saved.get("num_classes") != len(manifest.classes) or (
        saved.get("classes") != manifest.classes
    ):
        raise AlexnetError(
            f"{path} was trained on other classes than {run.manifest}: "
            "pass a checkpoint of this run"
        )
    if saved.get("fingerprint") != manifest.fingerprint:
        raise AlexnetError(
            f"{path} was trained on other data than {run.manifest} lists (it was prepared "
            "again since): train this run again, or pass a checkpoint trained on this data"
        )


def load_trained(
    run: str | Path,
    checkpoint: str | Path | None = None,
    world: World | None = None,
    *,
    check_files: bool | str = True,
    workers: int | None = None,
) -> TrainedRun:
    """RUN's manifest, statistics and checkpoint (default: best.pt) as a network in eval mode.

    `check_files` says which data files must still be as they were at prep: all (True), one
    split ("train", "val"), or none (False: for a caller that checks what it reads itself).
    `workers` sets the DALI threads of this use (default: those the run was trained with)."""
    paths = RunPaths(run)
    path = Path(checkpoint) if checkpoint else paths.best
    reuse_freed_memory()  # fc7 extraction's batches, like training's
    world = world or World(device=local_device())
    manifest, stats = load_run_data(run, check_files)
    saved = load_checkpoint(path, mmap=True)  # the momentum, half the file, is never read
    check_classes(saved, manifest, path, paths)
    config = config_from_dict(saved["config"])
    if workers:
        config = replace(config, num_threads=workers)
    model = build_network(config, len(manifest.classes), world.device, saved["model"])
    model.eval()
    reached("run loaded")
    return TrainedRun(paths, model, config, manifest, stats, path, saved["epoch"], world)


def query_crops(trained: TrainedRun, batch_size: int, *, ten_crop: bool = False) -> QueryCrops:
    """The query pipeline with `trained`'s preprocessing; keep it to reuse it."""
    return QueryCrops(
        trained.preset,
        torch_device=trained.world.device,
        batch_size=batch_size,
        ten_crop=ten_crop,
    )


def crop_probabilities(model: torch.nn.Module, x: torch.Tensor, device) -> torch.Tensor:
    """float32 (N, classes) softmax outputs of N centre crops (N, 3, 224, 224), or of N
    images' C crops each (N, C, 3, 224, 224), averaged over the crops (paper, section 4.1)."""
    crops = x.shape[1] if x.dim() == 5 else 1
    with autocast(device):
        logits = model(x.flatten(0, 1) if crops > 1 else x)
    return logits.float().softmax(-1).view(len(x), crops, -1).mean(1)


def encoded(item: str | bytes | np.ndarray) -> np.ndarray:
    """An image file's bytes (or encoded bytes, as bytes or a uint8 array) as the uint8 array
    DALI decodes."""
    if isinstance(item, np.ndarray):
        return item
    return np.frombuffer(item, np.uint8) if isinstance(item, bytes) else np.fromfile(item, np.uint8)


def load(
    run: str | Path, checkpoint: str | Path = "best", *, workers: int | None = None
) -> TrainedRun:
    """A trained run ready for use: `.predict(images)`, `.features(images)`, `.classes`,
    `.net` (the torch module, in eval mode). `checkpoint` is "best", "last" or a file.

    Only the manifest's integrity is checked, not the data files: a model needs none of them.
    """
    paths = RunPaths(run)
    named = {"best": paths.best, "last": paths.last}
    path = named.get(str(checkpoint), Path(checkpoint))
    return load_trained(run, path, check_files=False, workers=workers)
