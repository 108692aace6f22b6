"""Training (paper, section 5): `train_one_epoch`, and `fit`, the whole run.

Batches of 128 from the DALI train pipeline, the paper's SGD rule, the learning rate divided
by 10 when the validation metric stops improving (plateau.py), top-1/top-5 error on centre
crops every epoch and the 10-crop average at the end. Everything a run writes lives under
RUN/; with torchrun, every rank reads its own shard and rank 0 alone writes.

The pieces live beside this file: config.py (the settings), evaluate.py (top-1/top-5),
distributed.py (devices, ranks, the stop flag), loaders.py (which images each rank reads),
plateau.py (when the rate drops), checkpoint.py (what is saved, resuming), stops.py (NaN and
Ctrl-C), metrics.py (metrics.jsonl and curves.png), inference.py (a trained run loaded for
use).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from alexnet.pipeline.cache import open_cache
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.layout import RunPaths
from alexnet.pipeline.loader import Loader, ReadError, check_batch_size
from alexnet.pipeline.lock import RunLock
from alexnet.pipeline.manifest import split_files
from alexnet.pipeline.testpoints import reached

from .checkpoint import (
    build_network,
    check_room,
    checkpoint_state,
    restore,
    save_checkpoint,
    start_from,
    training_config,
)
from .config import TrainConfig
from .distributed import StopFlag, World, all_sum, autocast, setup_world
from .evaluate import evaluate
from .finetune import freeze, fresh_layers, inherit_network
from .inference import load_run_data
from .init import resolve
from .loaders import eval_loader, train_loader, unreadable_training_file
from .metrics import TensorBoard, epoch_line, read_metrics, write_metrics
from .optim import optimizer_for, scaled_lr, set_rate, warmup_factor
from .plateau import plateau_schedule, watched
from .stops import Interrupted, NonFinite

log = logging.getLogger(__name__)


def train_one_epoch(
    model,
    loader: Loader,
    optimizer,
    world: World,
    *,
    rate: Callable[[int], float] | None = None,
    stop: StopFlag | None = None,
    progress: bool = True,
    desc: str = "train",
) -> dict:
    """One pass over `loader`; `rate(i)` gives the learning rate of the pass's i-th batch.

    Returns mean loss, images/s, the share of time spent waiting for data, the number of
    batches done, and whether a stop (on any rank) ended the pass early. A loss that is not
    finite on any rank raises NonFinite before the step that would spread it to the weights.
    """
    from tqdm import tqdm

    model.train()
    total_loss, images, batches, waited, stopped = 0.0, 0, 0, 0.0, False
    start = tick = time.perf_counter()
    bar = tqdm(loader, desc=desc, unit="batch", disable=not (progress and world.main), leave=False)
    try:
        for x, y in bar:
            waited += time.perf_counter() - tick
            if world.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(world.device):
                loss = F.cross_entropy(model(x), y)
            value = loss.item()
            if not math.isfinite(all_sum([value], world)[0]):
                raise NonFinite(batches)
            if rate is not None:
                set_rate(optimizer, rate(batches))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += value * len(y)
            images += len(y)
            batches += 1
            speed = images * world.size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{total_loss / images:.3f}", img_s=f"{speed:.0f}")
            tick = time.perf_counter()
            if stop is not None and stop.agreed(world):
                stopped = True
                break
    except ReadError as e:  # say how far the pass got
        e.batches, e.loss_sum, e.images = batches, total_loss, images
        raise
    bar.close()
    seconds = time.perf_counter() - start
    loss_sum, count = all_sum([total_loss, images], world)
    return {
        "loss": loss_sum / max(count, 1),
        "loss_sum": loss_sum,
        "images": count,
        "images_per_s": count / seconds,
        "data_wait": waited / seconds,
        "batches": batches,
        "stopped": stopped,
    }


# --- the whole run -----------------------------------------------------------------------


def fit(
    run: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: bool | str | Path = False,
    progress: bool = True,
    final_ten_crop: bool = True,
    **settings,
) -> dict:
    """Train on RUN's manifest and statistics; return the last epoch's metrics.

    Settings are TrainConfig's fields, as `config` or as keywords (`epochs=30, batch_size=32`;
    keywords win). `resume` True continues from RUN/checkpoints/last.pt, a path from that
    checkpoint, with the checkpoint's settings except those given again (`epochs=40`): the
    rule `alexnet train` with `resume` follows. The main process holds the run's lock throughout
    (pipeline/lock.py)."""
    paths = RunPaths(run)
    source = (paths.last if resume is True else Path(resume)) if resume else None
    config = resolve(training_config(config, source, settings))
    world = setup_world()
    with RunLock(run, "train") if world.main else contextlib.nullcontext():
        return _fit(paths, config, world, source, progress, final_ten_crop)


def _fit(
    paths: RunPaths,
    config: TrainConfig,
    world: World,
    resume: Path | None,
    progress: bool,
    final_ten_crop: bool,
) -> dict:
    run = paths.root
    manifest, stats = load_run_data(run)
    check_batch_size(len(split_files(manifest, "val")[0]), 1, "validation")
    cache = open_cache(run, manifest, warn=world.main)
    n_train = len(split_files(manifest, "train")[0])
    steps_per_epoch = -(-(n_train // world.size) // config.batch_size)
    global_batch = config.batch_size * world.size
    base_lr = scaled_lr(config.lr, global_batch)
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)

    config = config if resume else inherit_network(config)  # a resumed run's config has them
    torch.manual_seed(config.seed)
    model = build_network(config, len(manifest.classes), world.device)
    freeze(model, config.train_layers, say=world.main)
    optimizer = optimizer_for(model, config, fresh_layers(model, config))
    schedule = plateau_schedule(config)
    saved = {}
    if resume:
        saved = restore(resume, model, optimizer, schedule, config, manifest, world)
    elif paths.last.exists():
        raise AlexnetError(
            f"{paths.last} exists: pass {{resume}} to continue that run, or choose a new {{run}}"
        )
    elif config.init_checkpoint:
        start_from(model, config.init_checkpoint, world)
    epoch, skip = saved.get("epoch", 0), saved.get("step", 0)
    partial = saved.get("partial", {"loss_sum": 0.0, "images": 0})
    if world.main:
        check_room(paths, model)  # a writable folder with room for a save, before any work
        rule = f"lr {config.lr:g} x global batch {global_batch} / 128"
        warm = f", warm-up over {warmup_steps} steps" if warmup_steps else ""
        log.info("learning rate %g (%s)%s; init %s", base_lr, rule, warm, config.init)
    net = model
    if world.size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)

    def rate_at(step: int) -> float:
        return base_lr * warmup_factor(step, warmup_steps) * schedule.scale

    def checkpoint(epoch: int, step: int = 0, **extra) -> dict:
        state = checkpoint_state(
            net,
            config,
            manifest,
            optimizer=optimizer,
            schedule=schedule.state_dict(),
            epoch=epoch,
            step=step,
        )
        return {**state, **extra}

    def save_partway(step: int, loss_sum: float, images: int) -> None:
        """RUN/checkpoints/last.pt at a step inside an epoch: resuming continues there."""
        if world.main and step:
            done = {
                "loss_sum": partial["loss_sum"] + loss_sum,
                "images": partial["images"] + images,
            }
            save_checkpoint(paths.last, checkpoint(epoch, step, partial=done, history=history))

    # The checkpoint carries the learning curve, so metrics.jsonl always matches it.
    history = saved.get("history", read_metrics(run)[:epoch]) if resume else []
    metrics: dict = {}
    board, seconds = TensorBoard(run, config.tensorboard and world.main), []
    with StopFlag() as stop, contextlib.closing(board):
        while epoch < config.epochs:
            reached(f"train epoch {epoch + 1}")
            started = time.perf_counter()
            first = epoch * steps_per_epoch + skip  # global step of this pass's first batch
            try:
                result = train_one_epoch(
                    model,
                    train_loader(manifest, stats, config, epoch, world, skip, cache),
                    optimizer,
                    world,
                    rate=lambda i, first=first: rate_at(first + i),
                    stop=stop,
                    progress=progress,
                    desc=f"epoch {epoch + 1}/{config.epochs}",
                )
            except NonFinite as e:
                raise e.at(epoch, skip, paths.last if resume or epoch else None) from None
            except ReadError as e:  # save what was learnt, then name the file
                step = skip + e.batches
                save_partway(step, e.loss_sum, e.images)
                what = unreadable_training_file(manifest, config, epoch, world, step)
                kept = f"saved {paths.last}" if world.main and step else "nothing new was saved"
                raise AlexnetError(
                    f"{what}; {kept}. Restore the file (then add {{resume}}), or rerun "
                    "prep into a new {run}"
                ) from None
            if result["stopped"]:
                step = skip + result["batches"]
                save_partway(step, result["loss_sum"], result["images"])
                raise Interrupted(paths.last if paths.last.exists() else None, epoch, step)
            loss_sum = partial["loss_sum"] + result["loss_sum"]
            images = partial["images"] + result["images"]
            skip, partial = 0, {"loss_sum": 0.0, "images": 0}
            lr = rate_at(first + result["batches"] - 1)
            loader = eval_loader(manifest, stats, config, world, cache=cache)
            val = evaluate(model, loader, world, progress=progress)
            if not math.isfinite(val["loss"]):  # weights gone bad in the epoch's last step
                raise NonFinite(result["batches"] - 1).at(epoch, 0, paths.last if epoch else None)
            improved = val["top1_error"] < min((m["top1_error"] for m in history), default=2.0)
            epoch += 1
            metrics = {
                "epoch": epoch,
                "loss": loss_sum / max(images, 1),
                **{k: val[k] for k in ("top1_error", "top5_error", "images")},
                "val_loss": val["loss"],
                "val_loss_se": val["loss_se"],
                "lr": lr,
                "batch": global_batch,
                "images_per_s": result["images_per_s"],
                "data_wait": result["data_wait"],
            }
            dropped = schedule.step(*watched(config.plateau_on, metrics))
            history.append(metrics)
            if world.main:
                state = checkpoint(epoch, history=history)
                save_checkpoint(paths.last, state)
                if improved:
                    save_checkpoint(paths.best, state)
                write_metrics(run, history)
                if config.keep_every and epoch % config.keep_every == 0:
                    save_checkpoint(paths.epoch_checkpoint(epoch), state)
                board.add(metrics)
                seconds.append(time.perf_counter() - started)
                eta = sum(seconds) / len(seconds) * (config.epochs - epoch)
                log.info(epoch_line(metrics, eta, config.plateau_on if dropped else None))
        if stop.agreed(world):  # Ctrl-C after the last batch still ends as Ctrl-C does
            raise Interrupted(paths.last, epoch, 0, finished=True)
    if final_ten_crop:
        loader = eval_loader(manifest, stats, config, world, ten_crop=True, cache=cache)
        ten = evaluate(model, loader, world)
        top1, top5 = ten["top1_error"], ten["top5_error"]
        metrics = {**metrics, "ten_crop_top1_error": top1, "ten_crop_top5_error": top5}
        if world.main:
            log.info("ten-crop  top-1 %.2f%%  top-5 %.2f%%", 100 * top1, 100 * top5)
    return metrics
