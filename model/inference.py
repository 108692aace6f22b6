"""A trained run, loaded for inference: manifest, statistics, checkpoint, the rebuilt network
in eval mode on this machine's device. Evaluation, fc7 features and search all start here, so
they share one set of checks (the data still matches the manifest, the statistics and the
checkpoint belong to it) and one set of messages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from alexnet.pipeline.dali import QueryCrops
from alexnet.pipeline.dataset import load_manifest
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.layout import RunPaths
from alexnet.pipeline.stats import Stats, load_stats

from .checkpoint import build_network, load_checkpoint
from .config import TrainConfig, config_from_dict
from .distributed import World, autocast, local_device, reuse_freed_memory


@dataclass
class TrainedRun:
    """A run's trained network and everything needed to feed it images."""

    paths: RunPaths
    model: torch.nn.Module  # in eval mode
    config: TrainConfig
    manifest: dict
    stats: Stats
    checkpoint: Path
    epoch: int
    world: World

    @property
    def classes(self) -> list[str]:
        """Class ids (folder names), in label order."""
        return self.manifest["classes"]

    @property
    def class_names(self) -> list[str]:
        """Display names, in label order."""
        return self.manifest["class_names"]


def load_run_data(run: str | Path, check_files: bool | str = True) -> tuple[dict, Stats]:
    """RUN's manifest (its files checked against the disk: all, one split, or none; see
    load_manifest) and its statistics."""
    manifest = load_manifest(run, check_files=check_files)
    return manifest, load_stats(run, manifest["fingerprint"])


def check_classes(saved: dict, manifest: dict, path: Path, run: RunPaths) -> None:
    if saved.get("num_classes") != len(manifest["classes"]) or (
        saved.get("classes") != manifest["classes"]
    ):
        raise AlexnetError(
            f"{path} was trained on other classes than {run.manifest}: "
            "pass a checkpoint of this run"
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
    model = build_network(config, len(manifest["classes"]), world.device, saved["model"])
    model.eval()
    return TrainedRun(paths, model, config, manifest, stats, path, saved["epoch"], world)


def query_crops(trained: TrainedRun, batch_size: int, *, ten_crop: bool = False) -> QueryCrops:
    """The query pipeline with `trained`'s statistics and settings; keep it to reuse it."""
    return QueryCrops(
        trained.stats.mean(trained.config.mean),
        std=trained.stats.std(trained.config.input_scale),
        device=trained.world.dali_device,
        torch_device=trained.world.device,
        batch_size=batch_size,
        seed=trained.config.seed,
        num_threads=trained.config.num_threads,
        ten_crop=ten_crop,
        crop=trained.config.crop,
    )


def encoded(item: str | bytes) -> np.ndarray:
    """An image file's bytes (or bytes as they are) as the uint8 array DALI decodes."""
    return np.frombuffer(item, np.uint8) if isinstance(item, bytes) else np.fromfile(item, np.uint8)


def predict(
    trained: TrainedRun,
    images: Sequence[str | bytes],
    *,
    top: int = 5,
    ten_crop: bool = False,
    names: Sequence[str] | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> list[dict]:
    """What the classifier says each image is: [{"image", "top": [{"class" (display name),
    "class_id", "probability"}]}], through the evaluation preprocessing (the centre crop, or
    the average of the ten crops' softmax outputs)."""
    from tqdm import tqdm

    names = names or [str(i) for i in images]
    top = min(top, len(trained.classes))
    crops = query_crops(trained, min(batch_size, len(images)), ten_crop=ten_crop)
    records = []
    with torch.inference_mode():
        starts = range(0, len(images), crops.batch_size)
        for s in tqdm(starts, desc="predict", unit="batch", disable=not progress):
            x = crops([encoded(item) for item in images[s : s + crops.batch_size]])
            n = len(x)
            with autocast(trained.world.device):
                logits = trained.model(x.flatten(0, 1) if ten_crop else x)
            probs = logits.float().softmax(-1).view(n, -1, logits.shape[-1]).mean(1)
            p, labels = probs.topk(top, dim=1)
            for i in range(n):
                best = [
                    {
                        "class": trained.class_names[c],
                        "class_id": trained.classes[c],
                        "probability": float(q),
                    }
                    for q, c in zip(p[i].tolist(), labels[i].tolist(), strict=True)
                ]
                records.append({"image": names[s + i], "top": best})
    return records
