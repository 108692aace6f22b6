"""Data-loading benchmark: DALI (CPU) against torchvision DataLoaders on the same images and cores.

    python bench/pipeline.py [--data DIR] [--images N] [--batch 128] [--seconds S] [--rounds R]

Measures images/s of
  a   JPEG decode only, DALI CPU decoder (the floor set by the decoder)
  b   the DALI train pipeline (alexnet.pipeline.dali.train_pipeline) through alexnet's Loader
  c1  torchvision DataLoader, PIL decode + transforms (num_workers=2)
  c2  torchvision DataLoader, torchvision.io.decode_jpeg + transforms.v2 (num_workers=2)
on two image sets: the files under --data as they are, and the same photos re-encoded by PIL
at ImageNet-like sizes (500x375 landscape, 375x500 portrait for every 4th, quality 90) in a
temporary folder. Every loader does the same work per image: shorter side to 256, centre crop
256, a random 224 crop, a mirror with p=1/2, float32 CHW output minus the training-set mean image
(from alexnet.pipeline.stats.compute_stats on that set), plus the PCA lighting shift.

Every loader is warmed up for one full epoch, then the loaders are timed in turn for --seconds
each, --rounds times (the order rotates every round); the table gives the median rate and the
spread (min-max) over the rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms import v2

from alexnet.pipeline.dali import (
    CROP,
    SIZE,
    Loader,
    augmentation,
    pipe_options,
    train_pipeline,
)
from alexnet.pipeline.stats import Stats, compute_stats

DEFAULT_DATA = str(
    Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-mini" / "train"
)
LIGHTING_STD = 0.1
CPU_THREADS = 2  # the machine's cores: DALI threads and DataLoader workers alike
TORCH_PREFETCH = 2  # DataLoader's default prefetch_factor, batches per worker


# --- image sets ---------------------------------------------------------------------------


def list_images(root: str, limit: int | None) -> tuple[list[str], list[int]]:
    """Sorted <class>/<image> files under `root` with class-index labels, every class kept."""
    classes = sorted(d.name for d in Path(root).iterdir() if d.is_dir())
    pairs = [
        (str(f), label)
        for label, c in enumerate(classes)
        for f in sorted((Path(root) / c).iterdir())
        if f.is_file()
    ]
    if limit:
        pairs = pairs[:: max(1, len(pairs) // limit)][:limit]
    return [f for f, _ in pairs], [label for _, label in pairs]


def _reencode(job: tuple[str, str, tuple[int, int]]) -> None:
    src, dst, size = job
    with Image.open(src) as im:
        im.convert("RGB").resize(size, Image.BICUBIC).save(dst, "JPEG", quality=90)


def imagenet_sized(files: list[str], folder: str) -> list[str]:
    """Re-encode `files` into `folder` at 500x375 (every 4th 375x500), quality 90."""
    jobs = []
    for i, src in enumerate(files):
        size = (375, 500) if i % 4 == 3 else (500, 375)
        jobs.append((src, os.path.join(folder, f"{i:05d}.jpg"), size))
    with ProcessPoolExecutor(CPU_THREADS) as pool:
        list(pool.map(_reencode, jobs, chunksize=32))
    return [dst for _, dst, _ in jobs]


# --- (a) decode only ----------------------------------------------------------------------


@pipeline_def(enable_conditionals=False)
def decode_only_pipeline(files):
    """Encoded files -> uint8 HWC RGB images, the whole image, DALI's CPU decoder."""
    encoded, _ = fn.readers.file(files=list(files), random_shuffle=False, name="Reader")
    return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)


def dali_decode_batches(files: list[str], batch: int) -> Iterator[int]:
    pipe = decode_only_pipeline(files, **pipe_options("cpu", batch, 0, CPU_THREADS))
    pipe.build()
    while True:
        (images,) = pipe.run()
        yield len(images)


# --- (b) the DALI train pipeline ----------------------------------------------------------


def dali_train_batches(
    files: list[str], labels: list[int], stats: Stats, batch: int
) -> Iterator[int]:
    pipe = train_pipeline(
        files,
        labels,
        stats.mean_image,
        stats.eigvecs,
        stats.eigvals,
        augmentation(0, 0, len(files), LIGHTING_STD),
        device="cpu",
        **pipe_options("cpu", batch, 0, CPU_THREADS),
    )
    loader = Loader(pipe)
    while True:
        for images, _ in loader:
            yield len(images)


# --- (c) torchvision DataLoaders ----------------------------------------------------------


class MeanImageCropLighting:
    """uint8 CHW 256x256 tensor -> float32 3x224x224: random crop, mirror p=1/2, minus the mean
    image cropped and mirrored alike, plus the per-image PCA lighting shift (as in dali.py)."""

    def __init__(self, stats: Stats, std: float = LIGHTING_STD):
        mean = torch.from_numpy(stats.mean_image.astype(np.float32))
        self.mean = mean.permute(2, 0, 1).contiguous()
        self.eigvecs = torch.from_numpy(stats.eigvecs.astype(np.float32))
        self.eigvals = torch.from_numpy((stats.eigvals / 255.0).astype(np.float32))
        self.std = std

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        top, left, h, w = T.RandomCrop.get_params(image, (CROP, CROP))
        x = (
            image[:, top : top + h, left : left + w].float()
            - self.mean[:, top : top + h, left : left + w]
        )
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        alpha = torch.randn(3) * self.std
        return x.add_((self.eigvecs @ (alpha * self.eigvals)).view(3, 1, 1))


class PilTrain(Dataset):
    """c1: PIL decode, Resize(256) + CenterCrop(256) on PIL images, then MeanImageCropLighting."""

    def __init__(self, files, labels, stats: Stats):
        self.files, self.labels = files, labels
        self.resize = T.Compose([T.Resize(SIZE), T.CenterCrop(SIZE), T.PILToTensor()])
        self.augment = MeanImageCropLighting(stats)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as im:
            image = im.convert("RGB")
        return self.augment(self.resize(image)), self.labels[i]


class TorchvisionTrain(PilTrain):
    """c2: torchvision.io.decode_jpeg, transforms.v2 Resize(256) + CenterCrop(256) on tensors."""

    def __init__(self, files, labels, stats: Stats):
        super().__init__(files, labels, stats)
        self.resize = v2.Compose([v2.Resize(SIZE, antialias=True), v2.CenterCrop(SIZE)])

    def __getitem__(self, i):
        image = decode_jpeg(read_file(self.files[i]), mode=ImageReadMode.RGB)
        return self.augment(self.resize(image)), self.labels[i]


def torch_batches(dataset: Dataset, batch: int) -> Iterator[int]:
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=False,
        num_workers=CPU_THREADS,
        prefetch_factor=TORCH_PREFETCH,
        persistent_workers=True,
    )
    while True:
        for images, _ in loader:
            yield len(images)


# --- timing -------------------------------------------------------------------------------


def own_cpu_seconds() -> float:
    """CPU seconds used so far by this process and its children (the DataLoader workers)."""
    me, total = os.getpid(), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == me or int(fields[1]) == me:
            total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def settle(max_wait: float = 60.0, interval: float = 0.25) -> None:
    """Wait until no loader is still filling its prefetch queue (this process tree idle)."""
    deadline = time.perf_counter() + max_wait
    while time.perf_counter() < deadline:
        before = own_cpu_seconds()
        time.sleep(interval)
        if (own_cpu_seconds() - before) / interval < 0.1:
            return


def timed(batches: Iterator[int], prefetched: int, seconds: float) -> tuple[float, float]:
    """Steady-state images/s pulled from `batches` over at least `seconds`, and cores busy.

    Starts from an idle machine; the `prefetched` batches that were ready in the queue are
    taken first and not counted, so the rate is what the loader produces, not what it stored.
    """
    settle()
    for _ in range(prefetched):
        next(batches)
    n, cpu, start = 0, own_cpu_seconds(), time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        n += next(batches)
    return n / elapsed, (own_cpu_seconds() - cpu) / elapsed


def warm_up(batches: Iterator[int], n_images: int) -> None:
    """One full epoch: fills the prefetch queues, starts workers, touches every file once."""
    seen = 0
    while seen < n_images:
        seen += next(batches)


def bench_set(name: str, files: list[str], labels: list[int], args) -> dict[str, list]:
    """{loader: [(images/s, cores busy) per round]} for one image set."""
    print(
        f"\n[{name}] {len(files)} images: computing mean image and PCA statistics ...", flush=True
    )
    stats = compute_stats(
        files, name, batch_size=min(64, len(files)), num_threads=CPU_THREADS, progress=False
    )
    dali_queue = pipe_options("cpu", args.batch, 0)["prefetch_queue_depth"]
    torch_queue = CPU_THREADS * TORCH_PREFETCH
    makers: dict[str, Callable[[], tuple[Iterator[int], int]]] = {
        "a  DALI decode only": lambda: (dali_decode_batches(files, args.batch), dali_queue),
        "b  DALI train pipeline": lambda: (
            dali_train_batches(files, labels, stats, args.batch),
            dali_queue,
        ),
        "c1 DataLoader PIL": lambda: (
            torch_batches(PilTrain(files, labels, stats), args.batch),
            torch_queue,
        ),
        "c2 DataLoader decode_jpeg+v2": lambda: (
            torch_batches(TorchvisionTrain(files, labels, stats), args.batch),
            torch_queue,
        ),
    }
    loaders = {}
    for key, make in makers.items():
        loaders[key] = make()
        warm_up(loaders[key][0], len(files))
    results: dict[str, list] = {key: [] for key in loaders}
    keys = list(loaders)
    for r in range(args.rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            results[key].append(timed(*loaders[key], args.seconds))
        print(
            f"  round {r + 1}: "
            + ", ".join(f"{k.split()[0]} {results[k][-1][0]:.0f}/s" for k in keys),
            flush=True,
        )
    for it, _ in loaders.values():
        it.close()
    return results


def report(results: dict[str, dict[str, list]]) -> str:
    lines = [
        "| image set | loader | images/s (median) | min - max | cores busy |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    ratios = ["| image set | b / max(c1, c2) | b / a |", "| --- | ---: | ---: |"]
    for set_name, runs in results.items():
        med = {}
        for key, v in runs.items():
            rates = [rate for rate, _ in v]
            med[key.split()[0]] = statistics.median(rates)
            lines.append(
                f"| {set_name} | {key} | {statistics.median(rates):.0f} | "
                f"{min(rates):.0f} - {max(rates):.0f} | "
                f"{statistics.median(c for _, c in v):.2f} |"
            )
        vs_torch = med["b"] / max(med["c1"], med["c2"])
        vs_decode = med["b"] / med["a"]
        ratios.append(
            f"| {set_name} | {vs_torch:.2f} ({'met' if vs_torch >= 1.2 else 'NOT met'}, "
            f"target 1.2) | {vs_decode:.2f} ({'met' if vs_decode >= 0.8 else 'NOT met'}, "
            f"target 0.8) |"
        )
    return "\n".join(lines + [""] + ratios)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="an ImageFolder split: DIR/<class>/<image>")
    p.add_argument("--images", type=int, default=None, help="use N images (default: all)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per loader per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--sets",
        default="original,imagenet-sized",
        help="comma-separated: original, imagenet-sized",
    )
    args = p.parse_args(argv)

    files, labels = list_images(args.data, args.images)
    if len(files) < args.batch:
        sys.exit(f"{len(files)} images is fewer than one batch of {args.batch}")
    sizes = {Image.open(f).size for f in files}
    print(
        f"{len(files)} images from {args.data} ({len(sizes)} distinct sizes, "
        f"e.g. {sorted(sizes)[0]}); "
        f"batch {args.batch}; {os.cpu_count()} CPU cores; CUDA: {torch.cuda.is_available()}"
    )
    results = {}
    wanted = args.sets.split(",")
    with tempfile.TemporaryDirectory(prefix="alexnet-bench-") as tmp:
        if "original" in wanted:
            results[f"original {sorted(sizes)[0][0]}x{sorted(sizes)[0][1]}"] = bench_set(
                "original", files, labels, args
            )
        if "imagenet-sized" in wanted:
            big = imagenet_sized(files, tmp)
            results["ImageNet-sized 500x375"] = bench_set("imagenet-sized", big, labels, args)
    print()
    print(report(results))


if __name__ == "__main__":
    main()
