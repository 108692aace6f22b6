"""The process a model runs in: its device, its rank among torchrun's processes, and the
Ctrl-C/SIGTERM flag that all ranks agree on before they stop.

One process, or one of torchrun's: gloo on the CPU, nccl on GPUs, one GPU per local rank.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist

from alexnet.pipeline.dali import default_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def dali_device(self) -> str:
        """Where the DALI pipelines run: "gpu" beside a CUDA device, else "cpu"."""
        return "gpu" if self.device.type == "cuda" else "cpu"


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
KEEP_FREED = 1 << 30


def reuse_freed_memory() -> bool:
    """Have glibc's malloc serve large tensors from memory it keeps, instead of fresh pages.

    On the CPU a training step allocates and frees activations of tens of MB (conv1's at
    batch 32: 37 MB); above glibc's mmap threshold (at most 32 MB by default) each is mapped
    fresh and page-faults on first touch. Raising the threshold and the trim threshold to
    1 GB lets freed blocks be reused: ~10% of a CPU training step (bench/speed.py). Returns
    whether malloc accepted it (False where it is not glibc's)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_FREED) and mallopt(M_TRIM_THRESHOLD, KEEP_FREED))


def local_device() -> torch.device:
    """This process's GPU when CUDA is usable, else the CPU."""
    if default_device() == "gpu":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def setup_world() -> World:
    """The world of this process, joining torchrun's process group when there is one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    reuse_freed_memory()
    if default_device() == "gpu":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    device = local_device()
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(int(os.environ.get("RANK", "0")), size, device)


def all_sum(values: list[float], world: World) -> list[float]:
    if world.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return t.tolist()


def autocast(device: torch.device):
    """bf16 autocast on GPUs; a no-op context on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


class StopFlag:
    """Set by SIGINT/SIGTERM; the trainer saves a checkpoint at the next batch and exits."""

    def __init__(self):
        self.set = False

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.set:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.set = True
        log.warning("stopping after this batch and saving a checkpoint (Ctrl-C again to abort)")

    def agreed(self, world: World) -> bool:
        """Whether any rank was asked to stop: all ranks leave after the same batch."""
        return all_sum([float(self.set)], world)[0] > 0 if world.size > 1 else self.set

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)
