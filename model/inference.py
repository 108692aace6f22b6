"""A trained run, loaded for inference: manifest, statistics, checkpoint, the rebuilt network
in eval mode on this machine's device. Evaluation, fc7 features and search all start here, so
they share one set of checks (the data still matches the manifest, the statistics and the
checkpoint belong to it) and one set of messages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from alexnet.pipeline.dataset import load_manifest
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.layout import RunPaths
from alexnet.pipeline.stats import Stats, load_stats

from .checkpoint import build_network, load_checkpoint
from .config import TrainConfig, config_from_dict
from .distributed import World, local_device


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
) -> TrainedRun:
    """RUN's manifest, statistics and checkpoint (default: best.pt) as a network in eval mode.

    `check_files` says which data files must still be as they were at prep: all (True), one
    split ("train", "val"), or none (False: for a caller that checks what it reads itself)."""
    paths = RunPaths(run)
    path = Path(checkpoint) if checkpoint else paths.best
    world = world or World(device=local_device())
    manifest, stats = load_run_data(run, check_files)
    saved = load_checkpoint(path, mmap=True)  # the momentum, half the file, is never read
    check_classes(saved, manifest, path, paths)
    config = config_from_dict(saved["config"])
    model = build_network(config, len(manifest["classes"]), world.device)
    model.load_state_dict(saved["model"])
    model.eval()
    return TrainedRun(paths, model, config, manifest, stats, path, saved["epoch"], world)
