"""Training and evaluation (paper, section 5): `train_one_epoch`, `evaluate`, `fit`.

Batches of 128 from the DALI train pipeline, the paper's SGD rule, the learning rate divided
by 10 when validation top-1 error stops improving, top-1/top-5 error on centre crops every
epoch and the 10-crop average at the end. Everything a run writes lives under RUN/; with
torchrun, every rank reads its own shard and rank 0 alone writes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from alexnet.pipeline.dali import (
    Loader,
    check_batch_size,
    default_device,
    eval_pipeline,
    pipe_options,
    train_pipeline,
)
from alexnet.pipeline.dataset import load_manifest, split_files
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.files import atomic_write
from alexnet.pipeline.stats import Stats, load_stats

from .alexnet import AlexNet, AlexNetConfig
from .checkpoint import load_checkpoint, save_checkpoint
from .optim import PlateauSchedule, make_optimizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 90
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "paper"  # or "torch": PyTorch's SGD form
    patience: int = 2  # epochs without a better validation top-1 before the rate drops
    max_drops: int = 3
    mean: str = "image"  # or "channel"
    lighting_std: float = 0.1
    columns: int = 2
    lrn: bool = True
    dropout: float = 0.5
    seed: int = 0
    num_threads: int | None = None  # DALI CPU threads; None: all cores


# Settings that may differ between a run and its resumption.
RESUMABLE = {"epochs", "num_threads"}


def model_config(config: TrainConfig, num_classes: int) -> AlexNetConfig:
    return AlexNetConfig(
        num_classes=num_classes, columns=config.columns, lrn=config.lrn, dropout=config.dropout
    )


def config_from_dict(d: dict) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in names})


# --- distributed -------------------------------------------------------------------------


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


def setup_world() -> World:
    """One process, or one of torchrun's: gloo on CPU, nccl on GPUs, one GPU per local rank."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    gpu = default_device() == "gpu"
    if gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if gpu else "gloo")
    return World(int(os.environ.get("RANK", "0")), size, device)


def all_sum(values: list[float], world: World) -> list[float]:
    if world.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return t.tolist()


# --- data --------------------------------------------------------------------------------


def train_loader(
    manifest: dict,
    stats: Stats,
    config: TrainConfig,
    epoch: int,
    world: World,
    skip_batches: int = 0,
) -> Loader:
    """This rank's batches of one epoch: a fresh permutation per (seed, epoch), equal shards.

    The order and the augmentation depend on (seed, epoch, rank) alone, so a resumed run sees
    the same data as an uninterrupted one.
    """
    files, labels = split_files(manifest, "train")
    per_rank = len(files) // world.size
    check_batch_size(per_rank, config.batch_size, "training" + (" shard" if world.size > 1 else ""))
    order = np.random.default_rng([config.seed, epoch]).permutation(len(files))
    mine = order[world.rank * per_rank : (world.rank + 1) * per_rank][
        skip_batches * config.batch_size :
    ]
    device = world.dali_device
    pipe = train_pipeline(
        [files[i] for i in mine],
        [labels[i] for i in mine],
        stats.mean(config.mean),
        stats.eigvecs,
        stats.eigvals,
        device=device,
        lighting_std=config.lighting_std,
        **pipe_options(
            device,
            config.batch_size,
            seed_for(config.seed, epoch, world.rank, skip_batches),
            config.num_threads,
        ),
    )
    return Loader(pipe, torch_device=world.device)


def seed_for(*keys: int) -> int:
    """A DALI seed that depends on `keys` alone."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0] % 2**31)


def eval_loader(
    manifest: dict,
    stats: Stats,
    config: TrainConfig,
    world: World,
    *,
    split: str = "val",
    ten_crop: bool = False,
) -> Loader:
    files, labels = split_files(manifest, split)
    check_batch_size(len(files), 1, "validation")
    device = world.dali_device
    batch = max(1, min(config.batch_size // (10 if ten_crop else 1), len(files) // world.size or 1))
    pipe = eval_pipeline(
        files,
        labels,
        stats.mean(config.mean),
        device=device,
        ten_crop=ten_crop,
        shard_id=world.rank,
        num_shards=world.size,
        **pipe_options(device, batch, config.seed, config.num_threads),
    )
    return Loader(pipe, torch_device=world.device)


# --- one epoch, one evaluation -----------------------------------------------------------


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


def autocast(device: torch.device):
    """bf16 autocast on GPUs; a no-op context on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_one_epoch(
    model,
    loader: Loader,
    optimizer,
    world: World,
    *,
    stop: StopFlag | None = None,
    progress: bool = True,
    desc: str = "train",
) -> dict:
    """One pass over `loader`. Returns mean loss, images/s, the share of time spent waiting for
    data, the number of batches done, and whether a stop (on any rank) ended the pass early."""
    from tqdm import tqdm

    model.train()
    total_loss, images, batches, waited, stopped = 0.0, 0, 0, 0.0, False
    start = tick = time.perf_counter()
    bar = tqdm(loader, desc=desc, unit="batch", disable=not (progress and world.main), leave=False)
    for x, y in bar:
        waited += time.perf_counter() - tick
        if world.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(world.device):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(y)
        images += len(y)
        batches += 1
        rate = images * world.size / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{total_loss / images:.3f}", img_s=f"{rate:.0f}")
        tick = time.perf_counter()
        if stop is not None and stop.agreed(world):
            stopped = True
            break
    bar.close()
    seconds = time.perf_counter() - start
    loss_sum, count = all_sum([total_loss, images], world)
    return {
        "loss": loss_sum / max(count, 1),
        "images_per_s": count / seconds,
        "data_wait": waited / seconds,
        "batches": batches,
        "stopped": stopped,
    }


@torch.no_grad()
def evaluate(model, loader: Loader, world: World, *, progress: bool = False) -> dict:
    """Top-1 and top-5 error over every image of the split, counted once across ranks. A
    10-crop loader yields N x 10 x 3 x 224 x 224; the 10 softmax outputs are averaged."""
    from tqdm import tqdm

    model.eval()
    top1 = top5 = count = 0.0
    for x, y in tqdm(
        loader, desc="eval", unit="batch", leave=False, disable=not (progress and world.main)
    ):
        crops = x.shape[1] if x.dim() == 5 else 1
        with autocast(world.device):
            logits = model(x.flatten(0, 1) if crops > 1 else x)
        probs = logits.float().softmax(-1).view(len(y), crops, -1).mean(1)
        best5 = probs.topk(min(5, probs.shape[1]), dim=1).indices
        top1 += (best5[:, 0] == y).sum().item()
        top5 += (best5 == y[:, None]).any(1).sum().item()
        count += len(y)
    top1, top5, count = all_sum([top1, top5, count], world)
    return {"top1_error": 1 - top1 / count, "top5_error": 1 - top5 / count, "images": int(count)}


# --- the whole run -----------------------------------------------------------------------


def load_run_data(run: Path) -> tuple[dict, Stats]:
    manifest = load_manifest(run)
    return manifest, load_stats(run, manifest["fingerprint"])


def build_model(config: TrainConfig, num_classes: int, world: World):
    model = AlexNet(model_config(config, num_classes)).to(world.device)
    if world.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def check_resumable(saved: dict, config: TrainConfig, manifest: dict, path: Path) -> None:
    old = config_from_dict(saved["config"])
    changed = [
        f"{f.name} {getattr(old, f.name)} -> {getattr(config, f.name)}"
        for f in fields(config)
        if f.name not in RESUMABLE and getattr(old, f.name) != getattr(config, f.name)
    ]
    if changed:
        raise AlexnetError(
            f"{path} was trained with other settings ({'; '.join(changed)}): "
            "resume with the same settings, or train into a new --run"
        )
    if saved["fingerprint"] != manifest["fingerprint"]:
        raise AlexnetError(
            f"{path} was trained on other data than the current manifest "
            f"({len(saved['classes'])} classes, fingerprint {saved['fingerprint']}): "
            "train into a new --run"
        )


def fit(
    run: str | Path,
    config: TrainConfig = TrainConfig(),
    *,
    resume: bool = False,
    progress: bool = True,
    final_ten_crop: bool = True,
) -> dict:
    """Train on RUN's manifest and statistics; return the last epoch's metrics."""
    run = Path(run)
    world = setup_world()
    manifest, stats = load_run_data(run)
    num_classes = len(manifest["classes"])
    check_batch_size(len(split_files(manifest, "val")[0]), 1, "validation")
    ckpt_dir = run / "checkpoints"
    last_path = ckpt_dir / "last.pt"

    torch.manual_seed(config.seed)
    model = build_model(config, num_classes, world)
    optimizer = make_optimizer(
        config.optimizer, model.parameters(), config.lr, config.momentum, config.weight_decay
    )
    schedule = PlateauSchedule(optimizer, config.patience, max_drops=config.max_drops)
    epoch, skip = 0, 0
    if resume:
        saved = load_checkpoint(last_path)
        check_resumable(saved, config, manifest, last_path)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        epoch, skip = saved["epoch"], saved["step"]
        torch.set_rng_state(saved["rng"]["torch"])
        if world.main:
            log.info(
                "resuming %s at epoch %d%s", last_path, epoch + 1, f", batch {skip}" if skip else ""
            )
    elif last_path.exists():
        raise AlexnetError(
            f"{last_path} exists: pass --resume to continue that run, or choose a new --run"
        )
    if world.size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    net = model.module if world.size > 1 else model

    def checkpoint(epoch: int, step: int) -> dict:
        return {
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "epoch": epoch,
            "step": step,
            "config": asdict(config),
            "num_classes": num_classes,
            "classes": manifest["classes"],
            "fingerprint": manifest["fingerprint"],
            "rng": {"torch": torch.get_rng_state()},
        }

    history = read_metrics(run) if resume else []
    metrics: dict = {}
    with StopFlag() as stop:
        while epoch < config.epochs:
            loader = train_loader(manifest, stats, config, epoch, world, skip)
            result = train_one_epoch(
                model,
                loader,
                optimizer,
                world,
                stop=stop,
                progress=progress,
                desc=f"epoch {epoch + 1}/{config.epochs}",
            )
            if result["stopped"]:
                step = skip + result["batches"]
                if world.main:
                    save_checkpoint(last_path, checkpoint(epoch, step))
                raise Interrupted(last_path, epoch, step)
            skip = 0
            val = evaluate(model, eval_loader(manifest, stats, config, world), world)
            lr = schedule.lr
            improved = val["top1_error"] < schedule.best
            schedule.step(val["top1_error"])
            epoch += 1
            metrics = {
                "epoch": epoch,
                "loss": result["loss"],
                **val,
                "lr": lr,
                "images_per_s": result["images_per_s"],
                "data_wait": result["data_wait"],
            }
            history.append(metrics)
            if world.main:
                write_metrics(run, history)
                state = checkpoint(epoch, 0)
                save_checkpoint(last_path, state)
                if improved:
                    save_checkpoint(ckpt_dir / "best.pt", state)
                log.info(
                    "epoch %d  loss %.4f  top-1 %.2f%%  top-5 %.2f%%  lr %g  %.0f img/s  "
                    "wait %.0f%%",
                    epoch,
                    metrics["loss"],
                    100 * val["top1_error"],
                    100 * val["top5_error"],
                    lr,
                    metrics["images_per_s"],
                    100 * metrics["data_wait"],
                )
    if final_ten_crop:
        ten = evaluate(model, eval_loader(manifest, stats, config, world, ten_crop=True), world)
        metrics = {
            **metrics,
            "ten_crop_top1_error": ten["top1_error"],
            "ten_crop_top5_error": ten["top5_error"],
        }
        if world.main:
            log.info(
                "10-crop  top-1 %.2f%%  top-5 %.2f%%",
                100 * ten["top1_error"],
                100 * ten["top5_error"],
            )
    return metrics


class Interrupted(AlexnetError):
    exit_code = 130  # what a shell reports for Ctrl-C

    def __init__(self, path: Path, epoch: int, step: int):
        super().__init__(
            f"stopped in epoch {epoch + 1} after batch {step}; saved {path}. "
            "Continue with the same command plus --resume"
        )


# --- metrics and curves ------------------------------------------------------------------


def read_metrics(run: Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(run: Path, history: list[dict]) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text("".join(json.dumps(m) + "\n" for m in history))

    atomic_write(run / "metrics.jsonl", write)
    plot_curves(history, run / "curves.png")


def plot_curves(history: list[dict], path: Path) -> None:
    """Training loss and validation top-1/top-5 error against epochs, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] for m in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [m["loss"] for m in history], "o-")
    ax1.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax2.plot(epochs, [100 * m["top1_error"] for m in history], "o-", label="top-1")
    ax2.plot(epochs, [100 * m["top5_error"] for m in history], "s-", label="top-5")
    ax2.set(xlabel="epoch", ylabel="validation error (%)", title="error", ylim=(0, 100))
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def evaluate_checkpoint(
    run: str | Path, checkpoint: str | Path | None = None, *, ten_crop: bool = True
) -> dict:
    """Top-1/top-5 error of a checkpoint on RUN's validation set (centre crop, and 10-crop)."""
    run = Path(run)
    path = Path(checkpoint) if checkpoint else run / "checkpoints" / "best.pt"
    world = setup_world()
    manifest, stats = load_run_data(run)
    saved = load_checkpoint(path)
    config = config_from_dict(saved["config"])
    if (
        saved.get("num_classes") != len(manifest["classes"])
        or saved.get("classes") != manifest["classes"]
    ):
        raise AlexnetError(
            f"{path} was trained on other classes than {run}/manifest.json: "
            "pass a checkpoint of this run"
        )
    model = build_model(config, len(manifest["classes"]), world)
    model.load_state_dict(saved["model"])
    result = {
        "checkpoint": str(path),
        "epoch": saved["epoch"],
        "centre": evaluate(model, eval_loader(manifest, stats, config, world), world),
    }
    if ten_crop:
        result["ten_crop"] = evaluate(
            model, eval_loader(manifest, stats, config, world, ten_crop=True), world
        )
    return result
