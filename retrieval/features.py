"""fc7 features: the 4096-d last hidden layer (after ReLU, dropout off) of the trained network.

Paper, section 6.1 (figure 4): images whose fc7 vectors are close in Euclidean distance are
similar to the network, even when their pixels are not. Every training image goes through the
evaluation pipeline's centre crop (pipeline.dali.eval_pipeline, ten_crop off), in manifest
order, and its fc7 vector is written as float16 to RUN/index/features.f16.npy, a memory-mapped
.npy file: memory stays one batch whatever the dataset's size. Query images take exactly the
same path (`query_features`), so a training image used as a query gets its own vector back.

Completion protocol: the sidecar RUN/index/features.json (manifest fingerprint, checkpoint
file identity, count) is deleted before extraction starts, the array is written under a
temporary name and moved into place, and only then is the sidecar written. An interrupted
extraction therefore leaves no sidecar and is redone from scratch, never taken as complete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from alexnet.model.checkpoint import load_checkpoint
from alexnet.model.train import (
    TrainConfig,
    World,
    autocast,
    build_model,
    config_from_dict,
    eval_loader,
)
from alexnet.pipeline.dali import Loader, default_device, eval_pipeline, pipe_options
from alexnet.pipeline.dataset import EXTENSIONS, check_image, load_manifest, split_files
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.files import atomic_write, read_json, write_json
from alexnet.pipeline.stats import Stats, load_stats

log = logging.getLogger(__name__)

DIM = 4096
FEATURES_VERSION = 1
FLOAT16_MAX = float(np.finfo(np.float16).max)


def index_dir(run: str | Path) -> Path:
    return Path(run) / "index"


def features_path(run: str | Path) -> Path:
    return index_dir(run) / "features.f16.npy"


def sidecar_path(run: str | Path) -> Path:
    return index_dir(run) / "features.json"


@dataclass
class Network:
    """A run's trained network, ready to turn images into fc7 vectors."""

    model: torch.nn.Module
    config: TrainConfig
    manifest: dict
    stats: Stats
    checkpoint: Path
    world: World

    @property
    def source(self) -> dict:
        """What every retrieval file of the run is derived from; a change means rebuild."""
        return source_identity(self.manifest, self.checkpoint)


def file_identity(path: str | Path) -> dict:
    """Name, size and modification time: changes whenever training rewrites the file."""
    st = Path(path).stat()
    return {"file": Path(path).name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def source_identity(manifest: dict, checkpoint: str | Path) -> dict:
    return {"manifest": manifest["fingerprint"], "checkpoint": file_identity(checkpoint)}


def load_network(run: str | Path, checkpoint: str | Path | None = None) -> Network:
    """RUN's manifest, statistics and checkpoint (default: best.pt) as a model in eval mode."""
    run = Path(run)
    path = Path(checkpoint) if checkpoint else run / "checkpoints" / "best.pt"
    manifest = load_manifest(run)
    stats = load_stats(run, manifest["fingerprint"])
    saved = load_checkpoint(path)
    classes = manifest["classes"]
    if saved.get("num_classes") != len(classes) or saved.get("classes") != classes:
        raise AlexnetError(
            f"{path} was trained on other classes than {run}/manifest.json: "
            "pass a checkpoint of this run"
        )
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if default_device() == "gpu"
        else torch.device("cpu")
    )
    world = World(device=device)
    config = config_from_dict(saved["config"])
    model = build_model(config, len(manifest["classes"]), world)
    model.load_state_dict(saved["model"])
    model.eval()
    return Network(model, config, manifest, stats, path, world)


def fc7_batches(net: Network, loader: Loader) -> Iterator[np.ndarray]:
    """float32 (batch, 4096) fc7 vectors of each batch of `loader`, in its order."""
    model = net.model.module if hasattr(net.model, "module") else net.model
    for x, _ in loader:
        if net.world.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(net.world.device):
            h = model.fc7(x)
        yield h.float().cpu().numpy()


def to_float16(x: np.ndarray) -> np.ndarray:
    """The stored precision; queries are rounded the same way so that they match the database."""
    return np.clip(x, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)


# --- the training set --------------------------------------------------------------------


def features_current(run: str | Path, source: dict) -> bool:
    path, sidecar = features_path(run), sidecar_path(run)
    if not (path.is_file() and sidecar.is_file()):
        return False
    try:
        meta = read_json(sidecar, "feature sidecar", "")
        shape = np.load(path, mmap_mode="r").shape
    except (AlexnetError, OSError, ValueError):
        return False
    return (
        meta.get("version") == FEATURES_VERSION
        and meta.get("source") == source
        and shape == (meta.get("count"), DIM)
    )


def extract_features(
    net: Network, run: str | Path, *, batch_size: int = 64, progress: bool = True
) -> Path:
    """fc7 of every training image, in manifest order -> RUN/index/features.f16.npy."""
    from tqdm import tqdm

    path, sidecar = features_path(run), sidecar_path(run)
    sidecar.unlink(missing_ok=True)  # from here on, the old array is not complete
    files, _ = split_files(net.manifest, "train")
    config = replace(net.config, batch_size=batch_size)
    loader = eval_loader(net.manifest, net.stats, config, net.world, split="train")

    def write(tmp: str) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(files), DIM))
        done = 0
        with tqdm(total=len(files), desc="fc7 features", unit="img", disable=not progress) as bar:
            for h in fc7_batches(net, loader):
                out[done : done + len(h)] = to_float16(h)
                done += len(h)
                bar.update(len(h))
        if done != len(files):
            raise RuntimeError(f"the pipeline yielded {done} of {len(files)} training images")
        out.flush()
        del out

    atomic_write(path, write)
    write_json(
        sidecar,
        {
            "version": FEATURES_VERSION,
            "source": net.source,
            "count": len(files),
            "dim": DIM,
            "dtype": "float16",
        },
    )
    log.info("fc7 features of %d training images: %s", len(files), path)
    return path


def load_features(run: str | Path) -> np.ndarray:
    """The training set's float16 (N, 4096) features, memory-mapped read-only."""
    return np.load(features_path(run), mmap_mode="r")


# --- query images ------------------------------------------------------------------------


def image_files(paths: Sequence[str | Path]) -> list[str]:
    """Expand folders to the images below them (sorted) and check that every file decodes."""
    files: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                str(f)
                for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in EXTENSIONS and not f.name.startswith(".")
            )
            if not found:
                raise AlexnetError(f"{p} holds no images ({', '.join(sorted(EXTENSIONS))})")
            files += found
        elif not p.exists():
            raise AlexnetError(f"{p} does not exist")
        else:
            files.append(str(p))
    for f in files:
        if not os.access(f, os.R_OK):
            raise AlexnetError(f"{f} is not readable (permission denied)")
        reason = check_image(f, min_size=1)
        if reason:
            raise AlexnetError(f"{f} cannot be used as a query: {reason}")
    return files


def query_features(
    net: Network, files: Sequence[str], *, batch_size: int = 32, progress: bool = False
) -> np.ndarray:
    """float32 (len(files), 4096) fc7 vectors through the evaluation centre crop, batched.

    Rounded through float16 like the stored features, so a training image queried against
    the database finds its own vector exactly (up to the batch's arithmetic).
    """
    from tqdm import tqdm

    if not files:
        return np.zeros((0, DIM), np.float32)
    device = net.world.dali_device
    pipe = eval_pipeline(
        list(files),
        [0] * len(files),
        net.stats.mean(net.config.mean),
        device=device,
        ten_crop=False,
        **pipe_options(
            device, min(batch_size, len(files)), net.config.seed, net.config.num_threads
        ),
    )
    loader = Loader(pipe, torch_device=net.world.device)
    out = [
        to_float16(h)
        for h in tqdm(
            fc7_batches(net, loader), desc="query fc7", unit="batch", disable=not progress
        )
    ]
    return np.concatenate(out).astype(np.float32)
