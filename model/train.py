"""Training and evaluation (paper, section 5): `train_one_epoch`, `evaluate`, `fit`.

Batches of 128 from the DALI train pipeline, the paper's SGD rule, the learning rate divided
by 10 when validation top-1 error stops improving, top-1/top-5 error on centre crops every
epoch and the 10-crop average at the end. Everything a run writes lives under RUN/; with
torchrun, every rank reads its own shard and rank 0 alone writes.

The pieces live beside this file: config.py (the settings), distributed.py (devices, ranks,
the stop flag), loaders.py (which images each rank reads), checkpoint.py (what is saved),
metrics.py (metrics.jsonl and curves.png), inference.py (a trained run loaded for use).
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
from alexnet.pipeline.dali import Loader, ReadError, check_batch_size
from alexnet.pipeline.dataset import split_files
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.files import check_space, make_folder, write_json
from alexnet.pipeline.layout import RunPaths
from alexnet.pipeline.lock import RunLock

from .checkpoint import (
    build_network,
    check_resumable,
    checkpoint_state,
    load_checkpoint,
    save_checkpoint,
    start_from,
)
from .config import TrainConfig
from .distributed import StopFlag, World, all_sum, autocast, setup_world
from .finetune import freeze, fresh_layers, inherit_network
from .inference import load_run_data, load_trained
from .init import resolve
from .labelled import labelled_folder
from .loaders import eval_loader, train_loader, unreadable_training_file
from .metrics import TensorBoard, epoch_line, read_metrics, write_metrics
from .optim import (
    PlateauSchedule,
    optimizer_for,
    scaled_lr,
    set_rate,
    warmup_factor,
)

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


@torch.no_grad()
def evaluate(
    model, loader: Loader, world: World, *, progress: bool = False, per_class: bool = False
) -> dict:
    """Top-1 and top-5 error and the cross-entropy loss over every image of the split, counted
    once across ranks. A 10-crop loader yields N x 10 x 3 x 224 x 224; the 10 softmax outputs
    are averaged. With `per_class`, also "per_class": images, top-1 and top-5 hits by label."""
    from tqdm import tqdm

    model.eval()
    top1 = top5 = count = loss = 0.0
    by_class = None  # (3, classes): images, top-1 hits, top-5 hits
    for x, y in tqdm(
        loader, desc="eval", unit="batch", leave=False, disable=not (progress and world.main)
    ):
        crops = x.shape[1] if x.dim() == 5 else 1
        with autocast(world.device):
            logits = model(x.flatten(0, 1) if crops > 1 else x)
        probs = logits.float().softmax(-1).view(len(y), crops, -1).mean(1)
        loss += F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum").item()
        best5 = probs.topk(min(5, probs.shape[1]), dim=1).indices
        hit1, hit5 = best5[:, 0] == y, (best5 == y[:, None]).any(1)
        top1 += hit1.sum().item()
        top5 += hit5.sum().item()
        count += len(y)
        if per_class:
            n = probs.shape[1]
            counts = torch.stack([t.bincount(minlength=n) for t in (y, y[hit1], y[hit5])]).cpu()
            by_class = counts if by_class is None else by_class + counts
    top1, top5, count, loss = all_sum([top1, top5, count, loss], world)
    result = {
        "top1_error": 1 - top1 / count,
        "top5_error": 1 - top5 / count,
        "loss": loss / count,
        "images": int(count),
    }
    if per_class:
        summed = all_sum(by_class.flatten().tolist(), world)
        result["per_class"] = torch.tensor(summed).view(3, -1).long().tolist()
    return result


# --- the whole run -----------------------------------------------------------------------


def fit(
    run: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: bool | str | Path = False,
    progress: bool = True,
    final_ten_crop: bool = True,
) -> dict:
    """Train on RUN's manifest and statistics; return the last epoch's metrics.

    `resume` True continues from RUN/checkpoints/last.pt, a path from that checkpoint. The
    main process holds the run's lock throughout (pipeline/lock.py)."""
    config = resolve(config or TrainConfig())
    world = setup_world()
    with RunLock(run, "train") if world.main else contextlib.nullcontext():
        return _fit(RunPaths(run), config, world, resume, progress, final_ten_crop)


def _fit(
    paths: RunPaths,
    config: TrainConfig,
    world: World,
    resume: bool | str | Path,
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
    model = build_network(config, len(manifest["classes"]), world.device)
    trained_layers = freeze(model, config.train_layers)
    fresh = fresh_layers(model, config) if config.pretrained_lr_mult != 1.0 else None
    optimizer = optimizer_for(model, config, fresh)
    schedule = PlateauSchedule(
        config.patience, max_drops=config.max_drops, min_delta=config.min_delta
    )
    epoch, skip, partial = 0, 0, {"loss_sum": 0.0, "images": 0}
    if resume:
        source = paths.last if resume is True else Path(resume)
        saved = load_checkpoint(source)
        check_resumable(saved, config, manifest, source)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        epoch, skip = saved["epoch"], saved["step"]
        partial = saved.get("partial", partial)
        torch.set_rng_state(saved["rng"]["torch"])
        if world.main:
            at = f", batch {skip}" if skip else ""
            log.info("resuming %s at epoch %d%s", source, epoch + 1, at)
    elif paths.last.exists():
        raise AlexnetError(
            f"{paths.last} exists: pass --resume to continue that run, or choose a new --run"
        )
    elif config.init_checkpoint:
        start_from(model, config.init_checkpoint, world)
        if world.main and config.train_layers:
            log.info("training %s only; the other layers stay as loaded", ", ".join(trained_layers))
    if world.main:  # a writable folder with room for a save, before any work is done
        make_folder(paths.checkpoints)
        one = 2 * sum(p.numel() * p.element_size() for p in model.parameters())  # and momenta
        old = sum(p.stat().st_size for p in (paths.last, paths.best) if p.exists())
        check_space(paths.checkpoints, 3 * one - old, "training's checkpoints")
        log.info(
            "learning rate %g (--lr %g x global batch %d / 128)%s; init %s",
            base_lr,
            config.lr,
            global_batch,
            f", warm-up over {warmup_steps} steps" if warmup_steps else "",
            config.init,
        )
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

    # The checkpoint carries the learning curve, so metrics.jsonl always matches it.
    history = saved.get("history", read_metrics(run)[:epoch]) if resume else []
    metrics: dict = {}
    board, seconds = TensorBoard(run, config.tensorboard and world.main), []
    with StopFlag() as stop, contextlib.closing(board):
        while epoch < config.epochs:
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
                if world.main and step:
                    done = {
                        "loss_sum": partial["loss_sum"] + e.loss_sum,
                        "images": partial["images"] + e.images,
                    }
                    state = checkpoint(epoch, step, partial=done, history=history)
                    save_checkpoint(paths.last, state)
                what = unreadable_training_file(manifest, config, epoch, world, step)
                kept = f"saved {paths.last}" if world.main and step else "nothing new was saved"
                raise AlexnetError(
                    f"{what}; {kept}. Restore the file (then add --resume), or rerun "
                    "`alexnet prep` into a new --run"
                ) from None
            loss_sum = partial["loss_sum"] + result["loss_sum"]
            images = partial["images"] + result["images"]
            if result["stopped"]:
                step = skip + result["batches"]
                if world.main:
                    done = {"loss_sum": loss_sum, "images": images}
                    state = checkpoint(epoch, step, partial=done, history=history)
                    save_checkpoint(paths.last, state)
                raise Interrupted(paths.last, epoch, step)
            skip, partial = 0, {"loss_sum": 0.0, "images": 0}
            lr = rate_at(first + result["batches"] - 1)
            val = evaluate(
                model,
                eval_loader(manifest, stats, config, world, cache=cache),
                world,
                progress=progress,
            )
            if not math.isfinite(val["loss"]):  # weights gone bad in the epoch's last step
                raise NonFinite(result["batches"] - 1).at(epoch, 0, paths.last if epoch else None)
            watched = val["top1_error"] if config.plateau_on == "error" else val["loss"]
            improved = val["top1_error"] < min((m["top1_error"] for m in history), default=2.0)
            dropped = schedule.step(watched)
            epoch += 1
            metrics = {
                "epoch": epoch,
                "loss": loss_sum / max(images, 1),
                **{k: val[k] for k in ("top1_error", "top5_error", "images")},
                "val_loss": val["loss"],
                "lr": lr,
                "batch": global_batch,
                "images_per_s": result["images_per_s"],
                "data_wait": result["data_wait"],
            }
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
    if final_ten_crop:
        ten = evaluate(
            model, eval_loader(manifest, stats, config, world, ten_crop=True, cache=cache), world
        )
        metrics = {
            **metrics,
            "ten_crop_top1_error": ten["top1_error"],
            "ten_crop_top5_error": ten["top5_error"],
        }
        if world.main:
            log.info(
                "ten-crop  top-1 %.2f%%  top-5 %.2f%%",
                100 * ten["top1_error"],
                100 * ten["top5_error"],
            )
    return metrics


class NonFinite(AlexnetError):
    """The training loss became NaN or infinite; nothing of that step was saved."""

    def __init__(self, batch: int, message: str = ""):
        self.batch = batch
        super().__init__(message or f"the training loss is not finite at batch {batch + 1}")

    def at(self, epoch: int, skip: int, kept: Path | None) -> NonFinite:
        where = f"epoch {epoch + 1}, step {skip + self.batch + 1}"
        keep = f"the last good checkpoint, {kept}, is kept" if kept else "no checkpoint was saved"
        return NonFinite(
            self.batch,
            f"the training loss became NaN or infinite at {where}; {keep}. "
            "Lower --lr or add --warmup-epochs, and train into a new --run",
        )


class Interrupted(AlexnetError):
    exit_code = 130  # what a shell reports for Ctrl-C

    def __init__(self, path: Path, epoch: int, step: int):
        super().__init__(
            f"stopped in epoch {epoch + 1} after batch {step}; saved {path}. "
            "Continue with the same command plus --resume"
        )


def evaluate_checkpoint(
    run: str | Path,
    checkpoint: str | Path | None = None,
    *,
    ten_crop: bool = True,
    progress: bool = False,
    workers: int | None = None,
    data: str | Path | None = None,
) -> dict:
    """Top-1/top-5 error of a checkpoint (default best.pt) on RUN's validation set (or on the
    labelled folder `data`, model/labelled.py), centre
    crop and 10-crop, and per class (of the last of the two), hardest first: {"class" (the
    display name), "class_id", "images", "top1_error", "top5_error"}; written to
    RUN/eval.json. Only the validation files are checked against the manifest: they are all
    this reads."""
    world = setup_world()
    checked = "val" if data is None else False
    trained = load_trained(run, checkpoint, world, check_files=checked, workers=workers)
    manifest, cache = trained.manifest, None
    if data is None:
        cache = open_cache(run, trained.manifest, warn=world.main)
    else:
        manifest = labelled_folder(data, trained.classes, workers=workers, progress=progress)

    def run_eval(ten: bool, per_class: bool) -> dict:
        loader = eval_loader(
            manifest, trained.stats, trained.config, world, ten_crop=ten, cache=cache
        )
        return evaluate(trained.model, loader, world, per_class=per_class, progress=progress)

    n = len(trained.classes)
    result = {
        "checkpoint": str(trained.checkpoint),
        "epoch": trained.epoch,
        "data": str(data) if data else None,
        "chance": {"top1_error": 1 - 1 / n, "top5_error": 1 - min(5, n) / n},
    }
    result["centre"] = run_eval(False, per_class=not ten_crop)
    if ten_crop:
        result["ten_crop"] = run_eval(True, per_class=True)
    images, hit1, hit5 = result["ten_crop" if ten_crop else "centre"].pop("per_class")
    rows = [
        {
            "class": name,
            "class_id": class_id,
            "images": n,
            "top1_error": 1 - h1 / n,
            "top5_error": 1 - h5 / n,
        }
        for name, class_id, n, h1, h5 in zip(
            trained.class_names, trained.classes, images, hit1, hit5, strict=True
        )
        if n
    ]
    result["classes"] = sorted(rows, key=lambda r: (-r["top1_error"], -r["top5_error"]))
    if world.main:
        write_json(trained.paths.eval, result)
    return result
