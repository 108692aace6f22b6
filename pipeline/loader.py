"""The torch side of the DALI pipelines: `Preset` is a run's preprocessing settings, built
once (model/loaders.preset) and passed to every pipeline; `Loader` iterates a pipeline as
torch tensors (one epoch per pass, sized from the named reader), `QueryCrops` keeps one
query pipeline between calls, `shard` says which images a process reads, and
`check_batch_size` refuses a batch larger than its set."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from .dali import (
    CROP,
    ONES,
    QUERY_INPUT,
    READER,
    SIZE,
    fed_prep_pipeline,
    pipe_options,
    prep_pipeline,
    query_pipeline,
)
from .errors import AlexnetError


@dataclass(frozen=True)
class Preset:
    """A run's preprocessing (as torchvision references' presets, timm's data config): what
    every pipeline of the run takes besides its images and batch size. Built once from the
    run's statistics and settings (model/loaders.preset); training adds its augmentation."""

    mean: np.ndarray  # the mean image (256x256x3) or channel mean (3), 0-255 units
    std: np.ndarray = field(default_factory=ONES.copy)  # divides each channel after the mean
    crop: int = CROP  # the network's input side
    device: str = "cpu"  # where DALI runs: "cpu" or "gpu"
    seed: int = 0
    num_threads: int | None = None  # DALI threads (None: one per CPU)
    squash: bool = False  # evaluation squashes the whole image to 256x256 (Caffe's protocol)

    def graph(self, batch_size: int, **extra) -> dict:
        """Keyword arguments of a pipeline of `batch_size` images: the preset's, then `extra`
        (ten_crop, a shard, the training augmentation)."""
        return dict(
            mean=self.mean,
            std=self.std,
            device=self.device,
            crop=self.crop,
            **pipe_options(self.device, batch_size, self.seed, self.num_threads),
            **extra,
        )

    def eval_graph(self, batch_size: int, **extra) -> dict:
        """graph() of an evaluation pipeline (evaluation, fc7 extraction, queries), with the
        run's test-time protocol; training's crops never squash."""
        return self.graph(batch_size, squash=self.squash, **extra)


def shard(n: int, rank: int, size: int) -> slice:
    """The images [n * rank // size, n * (rank + 1) // size) of `n` that process `rank` of
    `size` reads: DALI's reader split, which every sharded pass follows."""
    return slice(n * rank // size, n * (rank + 1) // size)


class Loader:
    """Iterate a pipeline as (images, labels) torch tensors on `device`, one epoch per pass.

    Evaluation pipelines pad their shard's last batch; the padding is cut off here, so every
    image of the shard is seen exactly once. A pipeline without a reader (the cached ones)
    ends its pass itself and says its `size`, the images of one pass.
    """

    def __init__(
        self,
        pipe,
        outputs: Sequence[str] = ("images", "labels"),
        torch_device=None,
        size: int | None = None,
    ):
        self.pipe = pipe
        self.outputs = list(outputs)
        self.torch_device = torch.device(torch_device or "cpu")
        self._size = size
        self._it = DALIGenericIterator(
            [pipe],
            self.outputs,
            last_batch_policy=LastBatchPolicy.PARTIAL,
            reader_name=READER if size is None else None,
            auto_reset=True,
        )

    def __len__(self) -> int:
        return -(-self.size // self.pipe.max_batch_size)

    @property
    def size(self) -> int:
        """Images in this shard (what one pass yields)."""
        if self._size is not None:
            return self._size
        meta = self.pipe.reader_meta(READER)
        mine = shard(meta["epoch_size"], meta["shard_id"], meta["number_of_shards"])
        return mine.stop - mine.start

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        it = iter(self._it)
        while True:
            try:
                (batch,) = next(it)
            except StopIteration:
                return
            except RuntimeError as e:  # DALI's way to report a file it could not read
                raise ReadError(str(e).strip().splitlines()[0]) from e
            yield tuple(self._to_torch(name, batch[name]) for name in self.outputs)

    def _to_torch(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.torch_device, non_blocking=True)
        return tensor.view(-1).long() if name == "labels" else tensor


class ReadError(AlexnetError):
    """A file of the pass could not be read or decoded. The trainer adds how far the pass got
    (`batches`, and their `loss_sum` over `images`)."""

    batches, loss_sum, images = 0, 0.0, 0


class QueryCrops:
    """Encoded images -> torch centre crops, through one query pipeline kept between calls.

    Building a pipeline costs about 100 ms on a CPU and feeding it one photo about 2 ms, so a
    server that answers many single-image queries builds it once. A call that raised drops the
    pipeline (DALI may call it "no longer valid") and the next call builds a fresh one. Not
    thread-safe: callers that share one serialise their calls.
    """

    def __init__(
        self,
        preset: Preset,
        *,
        torch_device=None,
        batch_size: int,
        ten_crop: bool = False,
    ):
        self.batch_size = batch_size
        self.torch_device = torch.device(torch_device or "cpu")
        # Depth 1: with deeper queues DALI waits for batches not yet fed.
        graph = preset.eval_graph(batch_size, ten_crop=ten_crop) | {"prefetch_queue_depth": 1}
        self._make = lambda: query_pipeline(**graph)
        self._pipe = None

    def __call__(self, encoded: Sequence[np.ndarray]) -> torch.Tensor:
        """float32 (len(encoded), 3, 224, 224) on torch_device (with ten_crop: (len(encoded),
        10, 3, 224, 224)), for at most batch_size images
        (uint8 arrays of encoded JPEG, PNG or BMP bytes)."""
        if not 0 < len(encoded) <= self.batch_size:
            raise ValueError(f"feed 1 to {self.batch_size} images at a time, got {len(encoded)}")
        try:
            if self._pipe is None:
                self._pipe = self._make()
                self._pipe.build()
            self._pipe.feed_input(QUERY_INPUT, list(encoded))
            (crops,) = self._pipe.run()
            # A copy: the pipeline writes its next batch into the same buffer.
            return torch.from_dlpack(crops.as_tensor()).to(self.torch_device, copy=True)
        except BaseException:
            self._pipe = None
            raise


def check_batch_size(n_images: int, batch_size: int, what: str) -> None:
    if n_images == 0:
        raise AlexnetError(
            f"the {what} set is empty: check the data folder and rerun `alexnet prep`"
        )
    if batch_size > n_images:
        raise AlexnetError(
            f"{{batch_size}} {batch_size} is larger than the {what} set "
            f"({n_images} images): use {{batch_size}} {n_images} or less"
        )


def centre_patches(
    files: Sequence[str],
    *,
    batch_size: int,
    device: str = "cpu",
    num_threads: int | None = None,
    reduce: bool = False,
) -> Iterator[np.ndarray]:
    """`files` -> uint8 Bx256x256x3 numpy batches of their centre patches, in file order. The
    pipeline is built here, before the first batch is asked for. `reduce`: large JPEGs decoded
    reduced (pipeline/images.py), the files read here, batches bounded by decoded pixels."""
    options = pipe_options(device, min(batch_size, len(files)), 0, num_threads)
    if not reduce:
        loader = Loader(prep_pipeline(files, device=device, **options), outputs=("images",))
        return (images.cpu().numpy() for (images,) in loader)
    from .images import read_images

    pipe = fed_prep_pipeline(device=device, **options | {"prefetch_queue_depth": 1})
    pipe.build()
    source = read_images(list(files), skip=False).batches(options["batch_size"], reduce=SIZE)
    return (_run_fed(pipe, encoded) for _, encoded in source)


def _run_fed(pipe, encoded: list[np.ndarray]) -> np.ndarray:
    pipe.feed_input(QUERY_INPUT, encoded)
    (out,) = pipe.run()
    return out.as_cpu().as_array()  # a copy: the pipeline reuses its buffers
