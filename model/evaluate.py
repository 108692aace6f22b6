"""Evaluation (paper, section 4.1 and 6): top-1 and top-5 error on centre crops, and the
average of the ten crops' softmax outputs (4 corners and the centre, and their mirrors).

`evaluate` runs a loader through a network (every epoch of training calls it);
`evaluate_checkpoint` is `alexnet eval`: a checkpoint on RUN's validation set, per class too.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from alexnet.pipeline.cache import open_cache
from alexnet.pipeline.files import write_json
from alexnet.pipeline.loader import Loader

from .distributed import World, all_sum, setup_world
from .inference import crop_probabilities, load_trained
from .labelled import labelled_folder
from .loaders import eval_loader


@torch.no_grad()
def evaluate(
    model, loader: Loader, world: World, *, progress: bool = False, per_class: bool = False
) -> dict:
    """Top-1 and top-5 error and the cross-entropy loss (with its standard error, "loss_se")
    over every image of the split, counted once across ranks. A 10-crop loader yields
    N x 10 x 3 x 224 x 224; the 10 softmax outputs are averaged. With `per_class`, also
    "per_class": images, top-1 and top-5 hits by label."""
    from tqdm import tqdm

    model.eval()
    top1 = top5 = count = loss = loss_sq = 0.0
    by_class = None  # (3, classes): images, top-1 hits, top-5 hits
    for x, y in tqdm(
        loader, desc="eval", unit="batch", leave=False, disable=not (progress and world.main)
    ):
        probs = crop_probabilities(model, x, world.device)
        losses = F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="none")
        loss += losses.sum().item()
        loss_sq += losses.square().sum().item()
        best5 = probs.topk(min(5, probs.shape[1]), dim=1).indices
        hit1, hit5 = best5[:, 0] == y, (best5 == y[:, None]).any(1)
        top1 += hit1.sum().item()
        top5 += hit5.sum().item()
        count += len(y)
        if per_class:
            n = probs.shape[1]
            counts = torch.stack([t.bincount(minlength=n) for t in (y, y[hit1], y[hit5])]).cpu()
            by_class = counts if by_class is None else by_class + counts
    top1, top5, count, loss, loss_sq = all_sum([top1, top5, count, loss, loss_sq], world)
    mean = loss / count
    variance = max(loss_sq / count - mean**2, 0.0) * count / max(count - 1, 1)
    result = {
        "top1_error": 1 - top1 / count,
        "top5_error": 1 - top5 / count,
        "loss": mean,
        "loss_se": math.sqrt(variance / count),  # the standard error of the mean loss
        "images": int(count),
    }
    if per_class:
        summed = all_sum(by_class.flatten().tolist(), world)
        result["per_class"] = torch.tensor(summed).view(3, -1).long().tolist()
    return result


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
    else:  # a labelled folder instead of the run's validation set
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
