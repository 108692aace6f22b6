"""Training-set statistics for mean subtraction and PCA lighting (paper, sections 2 and 4.1).

Every training image goes through the prep pipeline (decode, shorter side 256, centre crop
256) once; float64 running sums give the per-pixel mean image, the per-channel mean and the
3x3 RGB covariance over all pixels. Memory is one 256x256x3 float64 array, whatever the
number of images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dali import SIZE
from .errors import AlexnetError
from .files import atomic_write, write_json
from .layout import RunPaths
from .loader import centre_patches

STATS_VERSION = 1
INPUT_SCALES = ("pixels", "unit")


@dataclass(frozen=True)
class Stats:
    """Statistics of `count` images of the manifest `fingerprint`, in 0-255 pixel units: mean
    image (256x256x3), channel mean (3), covariance (3x3), eigenvalues (descending) and
    eigenvectors (columns)."""

    mean_image: np.ndarray
    channel_mean: np.ndarray
    cov: np.ndarray
    eigvals: np.ndarray
    eigvecs: np.ndarray
    count: int
    fingerprint: str

    def mean(self, mode: str = "image") -> np.ndarray:
        """What to subtract: the paper's mean image, or the per-channel mean."""
        if mode not in ("image", "channel"):
            raise AlexnetError(f"mean mode must be 'image' or 'channel', got {mode!r}")
        return self.mean_image if mode == "image" else self.channel_mean

    def std(self, input_scale: str = "pixels") -> np.ndarray:
        """What the mean-subtracted crops are divided by: 1 (the paper: the network sees 0-255
        pixel differences), or the per-channel std ("unit": about unit-variance inputs)."""
        if input_scale not in INPUT_SCALES:
            raise AlexnetError(f"input scale must be 'pixels' or 'unit', got {input_scale!r}")
        if input_scale == "pixels":
            return np.ones(3, np.float32)
        return np.sqrt(np.diag(self.cov)).astype(np.float32)

    def summary(self) -> dict:
        return {
            "images": self.count,
            "fingerprint": self.fingerprint,
            "channel_mean_rgb": np.round(self.channel_mean, 3).tolist(),
            "channel_std_rgb": np.round(np.sqrt(np.diag(self.cov)), 3).tolist(),
            "eigenvalues": np.round(self.eigvals, 3).tolist(),
            "eigenvectors_columns": np.round(self.eigvecs, 4).tolist(),
            "units": "0-255 pixel values of the 256x256 centre patch",
        }


class Accumulator:
    """Float64 running sums over batches of uint8 NHWC patches."""

    def __init__(self, size: int = SIZE):
        self.pixel_sum = np.zeros((size, size, 3))
        self.outer_sum = np.zeros((3, 3))
        self.count = 0

    def add(self, batch: np.ndarray) -> None:
        x = batch.astype(np.float64)
        self.pixel_sum += x.sum(axis=0)
        flat = x.reshape(-1, 3)
        self.outer_sum += flat.T @ flat
        self.count += len(batch)

    def result(self, fingerprint: str) -> Stats:
        mean_image = self.pixel_sum / self.count
        channel_mean = mean_image.reshape(-1, 3).mean(axis=0)
        pixels = self.count * mean_image.shape[0] * mean_image.shape[1]
        cov = self.outer_sum / pixels - np.outer(channel_mean, channel_mean)
        eigvals, eigvecs = np.linalg.eigh(cov)
        order = np.argsort(eigvals)[::-1]
        eigvals = np.maximum(eigvals[order], 0.0)  # a covariance has none below 0 but rounding
        eigvecs = eigvecs[:, order]
        largest = eigvecs[np.abs(eigvecs).argmax(axis=0), range(3)]
        eigvecs = eigvecs * np.sign(largest)  # a stable sign: largest component positive
        return Stats(mean_image, channel_mean, cov, eigvals, eigvecs, self.count, fingerprint)


def compute_stats(
    files: list[str],
    fingerprint: str,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    num_threads: int | None = None,
    progress: bool = True,
    sink: Callable[[np.ndarray], None] | None = None,
    reduce: bool = False,
) -> Stats:
    """Stream `files` through the prep pipeline and return their statistics; `sink`, if
    given, also receives every uint8 batch of patches, in file order (the patch cache).
    `reduce`: large JPEGs decoded reduced (loader.centre_patches)."""
    from tqdm import tqdm

    if not files:
        raise AlexnetError("no training images to compute statistics from")
    acc = Accumulator()
    batches = centre_patches(
        files, batch_size=batch_size, device=device, num_threads=num_threads, reduce=reduce
    )
    with tqdm(total=len(files), desc="prep statistics", unit="img", disable=not progress) as bar:
        for images in batches:
            acc.add(images)
            if sink is not None:
                sink(images)
            bar.update(len(images))
    return acc.result(fingerprint)


def save_stats(stats: Stats, run: str | Path) -> Path:
    paths = RunPaths(run)
    arrays = {
        k: getattr(stats, k) for k in ("mean_image", "channel_mean", "cov", "eigvals", "eigvecs")
    }

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(
                f, **arrays, count=stats.count, fingerprint=stats.fingerprint, version=STATS_VERSION
            )

    write_json(paths.stats_summary, stats.summary())
    return atomic_write(paths.stats, write)


def load_stats(run: str | Path, fingerprint: str) -> Stats:
    """Read RUN/stats.npz, refusing statistics of another dataset than the manifest's."""
    path = RunPaths(run).stats
    if not path.is_file():
        raise AlexnetError(f"{path} is missing: run prep into {run} first (`alexnet prep DATA`)")
    try:
        with np.load(path) as z:
            if int(z["version"]) != STATS_VERSION:
                raise AlexnetError(f"{path} comes from another version: rerun `alexnet prep`")
            stats = Stats(
                z["mean_image"],
                z["channel_mean"],
                z["cov"],
                z["eigvals"],
                z["eigvecs"],
                int(z["count"]),
                str(z["fingerprint"]),
            )
    except (OSError, KeyError, ValueError) as e:
        raise AlexnetError(f"{path} is unreadable ({e}): rerun `alexnet prep`") from e
    if stats.fingerprint != fingerprint:
        raise AlexnetError(
            f"{path} was computed for other data (fingerprint {stats.fingerprint}, "
            f"manifest {fingerprint}): rerun `alexnet prep` for this run"
        )
    return stats


def format_summary(stats: Stats) -> str:
    s = stats.summary()
    lines = [
        f"images            {s['images']}",
        f"channel mean RGB  {s['channel_mean_rgb']}",
        f"channel std RGB   {s['channel_std_rgb']}",
        f"eigenvalues       {s['eigenvalues']}",
    ]
    lines += [
        f"eigenvector {i + 1}     {[row[i] for row in s['eigenvectors_columns']]}" for i in range(3)
    ]
    return "\n".join(lines)
