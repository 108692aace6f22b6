"""Data-loading benchmark: DALI (CPU) against torchvision DataLoaders on the same images and cores.

    python bench/pipeline.py [--data DIR] [--images N] [--batch 128] [--seconds S] [--rounds R]
                             [--device cpu|gpu] [--json PATH]

Measures images/s of
  a   JPEG decode only, DALI CPU decoder (the floor set by the decoder)
  b   the DALI train pipeline (alexnet.pipeline.dali.train_pipeline) through alexnet's Loader
  b2  the same graph over the patch cache (cached_train_pipeline, `alexnet prep --cache`):
      the decoded 256x256 patches, memory-mapped, in a random order as training reads them
  c1  torchvision DataLoader, PIL decode + transforms (num_workers=2)
  c2  torchvision DataLoader, torchvision.io.decode_jpeg + transforms.v2 (num_workers=2)
  c3  (--device gpu only) torchvision.io.decode_jpeg on the GPU, a batch of files at a time,
      and the same transforms on the GPU tensors, in this process
on two image sets: the files under --data as they are, and the same photos re-encoded by PIL
at ImageNet-like sizes (500x375 landscape, 375x500 portrait for every 4th, quality 90) in a
temporary folder. Every loader does the same work per image: shorter side to 256, centre crop
256, a random 224 crop, a mirror with p=1/2, float32 CHW output minus the training-set mean image
(from alexnet.pipeline.stats.compute_stats on that set), plus the PCA lighting shift.

Every loader is warmed up for one full epoch, then the loaders are timed in turn for --seconds
each, --rounds times (the order rotates every round); the table gives the median rate and the
spread (min-max) over the rounds. b2's patches are written while the statistics are computed,
as prep does (its rate is printed: the one-off cost of the cache), so b2 measures the epochs
after the first.

With --device gpu, the DALI loaders decode with nvJPEG ("mixed") and run on the GPU, the
DataLoaders' batches are copied to the GPU (pinned, non-blocking), every loader's first batch
is checked to be on the GPU (the script stops with one line if any is not), and each timing
window ends with a CUDA synchronisation. --json writes the table's figures for
bench/gpu_check.py.
"""

from __future__ import annotations

import argparse
import json
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

from alexnet.pipeline.cache import Rows
from alexnet.pipeline.dali import (
    CROP,
    SIZE,
    augmentation,
    cached_train_pipeline,
    pipe_options,
    train_pipeline,
)
from alexnet.pipeline.loader import Loader
from alexnet.pipeline.stats import Stats, compute_stats

DEFAULT_DATA = str(
    Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-mini" / "train"
)
LIGHTING_STD = 0.1
CPU_THREADS = 2  # the machine's cores: DALI threads and DataLoader workers alike
TORCH_PREFETCH = 2  # DataLoader's default prefetch_factor, batches per worker
DEVICE = "cpu"  # --device: where the DALI graphs and the torch batches go


def on_device(batch, name: str):
    """Stop loudly when a loader meant for the GPU hands its batch over on the CPU."""
    gpu = batch.is_cuda if isinstance(batch, torch.Tensor) else "GPU" in type(batch).__name__
    if DEVICE == "gpu" and not gpu:
        raise SystemExit(f"error: {name} ran on the CPU although --device gpu was asked for")
    return batch


def dali_on_device(loader: Loader, name: str) -> Loader:
    """The same for a DALI graph whose images a Loader copies to the GPU: their last operator
    must run there (a CPU graph's batches would reach the GPU too, by a copy)."""
    device = loader.pipe._graph_out[0].device  # the images' node, once the pipeline is built
    if DEVICE == "gpu" and device != "gpu":
        raise SystemExit(f"error: {name}'s DALI graph ends on the {device}, not the GPU")
    return loader


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
def decode_only_pipeline(files, device="cpu"):
    """Encoded files -> uint8 HWC RGB images, the whole image, DALI's CPU (or nvJPEG) decoder."""
    encoded, _ = fn.readers.file(files=list(files), random_shuffle=False, name="Reader")
    return fn.decoders.image(
        encoded, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB
    )


def dali_decode_batches(files: list[str], batch: int) -> Iterator[int]:
    pipe = decode_only_pipeline(files, device=DEVICE, **pipe_options(DEVICE, batch, 0, CPU_THREADS))
    pipe.build()
    while True:
        (images,) = pipe.run()
        yield len(on_device(images, "a  DALI decode only"))


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
        device=DEVICE,
        **pipe_options(DEVICE, batch, 0, CPU_THREADS),
    )
    loader = Loader(pipe, torch_device="cuda" if DEVICE == "gpu" else "cpu")
    dali_on_device(loader, "b  DALI train pipeline")
    while True:
        for images, _ in loader:
            yield len(on_device(images, "b  DALI train pipeline"))


def dali_cached_batches(patches: np.ndarray, labels: list[int], stats: Stats, batch: int):
    """(b2): the train graph over memory-mapped patches, read in a random order (one pipeline
    for every pass, as (b) keeps one reader)."""
    rows = np.random.default_rng(0).permutation(len(patches))
    pipe = cached_train_pipeline(
        patches,
        rows,
        np.asarray(labels)[rows],
        stats.mean_image,
        stats.eigvecs,
        stats.eigvals,
        augmentation(0, 0, len(rows), LIGHTING_STD),
        device=DEVICE,
        **pipe_options(DEVICE, batch, 0, CPU_THREADS),
    )
    loader = Loader(pipe, torch_device="cuda" if DEVICE == "gpu" else "cpu", size=len(rows))
    dali_on_device(loader, "b2 DALI train, patch cache")
    while True:
        for images, _ in loader:
            yield len(on_device(images, "b2 DALI train, patch cache"))


def cached_patches(files: list[str], name: str, folder: str) -> tuple[Stats, np.ndarray, float]:
    """The statistics and, on the way, the patch cache of `files` in `folder` (as `alexnet
    prep --cache` writes it); returns them with the images/s of that pass."""
    path = os.path.join(folder, f"{name}.patches.u8.npy")
    out = np.lib.format.open_memmap(path, "w+", np.uint8, (len(files), SIZE, SIZE, 3))
    start = time.perf_counter()
    stats = compute_stats(
        files,
        name,
        batch_size=min(64, len(files)),
        num_threads=CPU_THREADS,
        progress=False,
        sink=Rows(out, np.arange(len(files))),
    )
    out.flush()
    rate = len(files) / (time.perf_counter() - start)
    del out
    return stats, np.load(path, mmap_mode="r"), rate


# --- (c) torchvision DataLoaders ----------------------------------------------------------


class MeanImageCropLighting:
    """uint8 CHW 256x256 tensor -> float32 3x224x224: random crop, mirror p=1/2, minus the mean
    image cropped and mirrored alike, plus the per-image PCA lighting shift (as in dali.py)."""

    def __init__(self, stats: Stats, std: float = LIGHTING_STD, device: str = "cpu"):
        mean = torch.from_numpy(stats.mean_image.astype(np.float32))
        self.mean = mean.permute(2, 0, 1).contiguous().to(device)
        self.eigvecs = torch.from_numpy(stats.eigvecs.astype(np.float32)).to(device)
        self.eigvals = torch.from_numpy((stats.eigvals / 255.0).astype(np.float32)).to(device)
        self.std = std

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        top, left, h, w = T.RandomCrop.get_params(image, (CROP, CROP))
        x = (
            image[:, top : top + h, left : left + w].float()
            - self.mean[:, top : top + h, left : left + w]
        )
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        alpha = torch.randn(3, device=self.mean.device) * self.std
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


def torch_batches(dataset: Dataset, batch: int, name: str) -> Iterator[int]:
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=False,
        num_workers=CPU_THREADS,
        prefetch_factor=TORCH_PREFETCH,
        persistent_workers=True,
        pin_memory=DEVICE == "gpu",
    )
    while True:
        for images, _ in loader:
            if DEVICE == "gpu":
                images = images.to("cuda", non_blocking=True)
            yield len(on_device(images, name))


def torch_gpu_batches(files: list[str], stats: Stats, batch: int) -> Iterator[int]:
    """c3: torchvision's GPU decoder on a batch of files, then c2's transforms on the GPU."""
    resize = v2.Compose([v2.Resize(SIZE, antialias=True), v2.CenterCrop(SIZE)])
    augment = MeanImageCropLighting(stats, device="cuda")
    while True:
        for start in range(0, len(files) - batch + 1, batch):
            data = [read_file(f) for f in files[start : start + batch]]
            images = decode_jpeg(data, mode=ImageReadMode.RGB, device="cuda")
            out = torch.stack([augment(resize(image)) for image in images])
            yield len(on_device(out, "c3 torchvision GPU decode"))


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
    sync()
    n, cpu, start = 0, own_cpu_seconds(), time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += next(batches)
    sync()
    elapsed = time.perf_counter() - start
    return n / elapsed, (own_cpu_seconds() - cpu) / elapsed


def sync() -> None:
    """On the GPU, a rate counts work done, not work queued."""
    if DEVICE == "gpu":
        torch.cuda.synchronize()


def warm_up(batches: Iterator[int], n_images: int) -> None:
    """One full epoch: fills the prefetch queues, starts workers, touches every file once."""
    seen = 0
    while seen < n_images:
        seen += next(batches)


def bench_set(name: str, files: list[str], labels: list[int], args, folder: str) -> dict[str, list]:
    """{loader: [(images/s, cores busy) per round]} for one image set."""
    print(
        f"\n[{name}] {len(files)} images: computing mean image and PCA statistics, writing the "
        "patch cache ...",
        flush=True,
    )
    stats, patches, rate = cached_patches(files, name, folder)
    print(f"  statistics + patch cache: {rate:.0f} images/s (once, in prep)", flush=True)
    dali_queue = pipe_options(DEVICE, args.batch, 0)["prefetch_queue_depth"]
    torch_queue = CPU_THREADS * TORCH_PREFETCH
    makers: dict[str, Callable[[], tuple[Iterator[int], int]]] = {
        "a  DALI decode only": lambda: (dali_decode_batches(files, args.batch), dali_queue),
        "b  DALI train pipeline": lambda: (
            dali_train_batches(files, labels, stats, args.batch),
            dali_queue,
        ),
        "b2 DALI train, patch cache": lambda: (
            dali_cached_batches(patches, labels, stats, args.batch),
            dali_queue,
        ),
        "c1 DataLoader PIL": lambda: (
            torch_batches(PilTrain(files, labels, stats), args.batch, "c1 DataLoader PIL"),
            torch_queue,
        ),
        "c2 DataLoader decode_jpeg+v2": lambda: (
            torch_batches(
                TorchvisionTrain(files, labels, stats), args.batch, "c2 DataLoader decode_jpeg+v2"
            ),
            torch_queue,
        ),
    }
    if DEVICE == "gpu":
        makers["c3 torchvision GPU decode"] = lambda: (
            torch_gpu_batches(files, stats, args.batch),
            0,
        )
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


def report(results: dict[str, dict[str, list]]) -> tuple[str, dict]:
    """The tables in markdown, and their figures (for --json)."""
    lines = [
        "| image set | loader | images/s (median) | min - max | cores busy |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    ratios = [
        "| image set | b / best c | b / a | b2 / best c | b2 / b |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    figures = {}
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
        best = max((k for k in med if k.startswith("c")), key=med.get)
        vs_torch = med["b"] / med[best]
        vs_decode = med["b"] / med["a"]
        cached = med["b2"] / med[best]
        ratios.append(
            f"| {set_name} | {vs_torch:.2f} ({'met' if vs_torch >= 1.2 else 'NOT met'}, "
            f"target 1.2) | {vs_decode:.2f} ({'met' if vs_decode >= 0.8 else 'NOT met'}, "
            f"target 0.8) | {cached:.2f} ({'met' if cached >= 1.5 else 'NOT met'}, "
            f"target 1.5) | {med['b2'] / med['b']:.2f} |"
        )
        figures[set_name] = {
            "images_per_s": med,
            "best_torch": best,
            "b_over_best_torch": vs_torch,
            "b2_over_best_torch": cached,
            "b2_over_b": med["b2"] / med["b"],
        }
    fastest = ", ".join(sorted({f["best_torch"] for f in figures.values()}))
    ratios.append(f"\nbest c: the faster torchvision loader of each set ({fastest})")
    return "\n".join(lines + [""] + ratios), figures


def main(argv=None) -> None:
    global DEVICE, CPU_THREADS
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
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="see above")
    p.add_argument(
        "--threads",
        type=int,
        default=CPU_THREADS,
        help="DALI CPU threads, and DataLoader workers alike",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    DEVICE, CPU_THREADS = args.device, args.threads
    if DEVICE == "gpu" and not torch.cuda.is_available():
        sys.exit("error: --device gpu, but CUDA is not available (torch.cuda.is_available())")

    files, labels = list_images(args.data, args.images)
    if len(files) < args.batch:
        sys.exit(f"{len(files)} images is fewer than one batch of {args.batch}")
    sizes = {Image.open(f).size for f in files}
    print(
        f"{len(files)} images from {args.data} ({len(sizes)} distinct sizes, "
        f"e.g. {sorted(sizes)[0]}); "
        f"batch {args.batch}; {os.cpu_count()} CPU cores, {CPU_THREADS} used; "
        f"device {DEVICE}; CUDA: {torch.cuda.is_available()}"
    )
    results = {}
    wanted = args.sets.split(",")
    with tempfile.TemporaryDirectory(prefix="alexnet-bench-") as tmp:
        if "original" in wanted:
            results[f"original {sorted(sizes)[0][0]}x{sorted(sizes)[0][1]}"] = bench_set(
                "original", files, labels, args, tmp
            )
        if "imagenet-sized" in wanted:
            big = imagenet_sized(files, tmp)
            results["ImageNet-sized 500x375"] = bench_set("imagenet-sized", big, labels, args, tmp)
    text, figures = report(results)
    print()
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"device": DEVICE, "sets": figures}, indent=1))


if __name__ == "__main__":
    main()
