"""Plateau rules on seeded splits of imagenette-mini: does the default recipe hold on photos it
was not tuned on?

    python bench/plateau.py [--out DIR] [--seeds 1 2 3] [--epochs 30] [--rules previous default]
                            [--rule NAME:setting=value,...] [--json PATH]

imagenette-mini's 1,600 photos (its train and val folders together, linked under OUT/photos)
are split per seed into 1,200 training and 400 validation photos (`prep --val-fraction 0.25
--seed S --cache`), and each split is trained with the default recipe (`train --epochs 30
--batch-size 32`) under each rule: `previous` (`--plateau-rule paper` on the loss with
patience 2, the default before the noise rule) and `default` (today's defaults); `--rule`
defines another, e.g. `--rule wide:patience=5,plateau_margin=2`.

Two rules' runs are identical up to the first epoch after which the rules decide differently
(the rate is all a rule changes, and training is deterministic), so every rule after the first
starts from the first rule's checkpoint of that epoch (the first keeps one per epoch until the
others have started), with its own settings and its state replayed from the metrics of the
epochs before: what a run from scratch would do, for a fraction of the time. Everything
resumes: run the same command again after a stop.

Per split and rule it prints the final and best centre-crop top-1 error, the ten-crop top-1
error at the end and the epochs after which the rate dropped, each with how much the validation
loss had gained over the 4 epochs before, in standard errors (below 1: it had stopped improving
beyond its noise), then the means over the splits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
from dataclasses import asdict, replace
from itertools import pairwise
from pathlib import Path

from alexnet.model.checkpoint import load_checkpoint, save_checkpoint
from alexnet.model.config import TrainConfig, config_from_dict
from alexnet.model.metrics import read_metrics, write_metrics
from alexnet.model.plateau import plateau_schedule, watched
from alexnet.model.train import fit
from alexnet.pipeline.layout import RunPaths
from alexnet.pipeline.prep import prepare

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-mini"
RULE_FIELDS = ("plateau_rule", "plateau_on", "plateau_margin", "min_delta", "patience")
RECIPE = {"batch_size": 32}
RULES = {
    "previous": {"plateau_rule": "paper", "plateau_on": "loss", "patience": 2, "min_delta": 0.0},
    "default": {},
}
PREP_FILES = {"manifest.json", "manifest.files.npz", "stats.json", "stats.npz", "cache"}


def rule_of(config: TrainConfig) -> dict:
    """The plateau settings of `config`."""
    return {f: getattr(config, f) for f in RULE_FIELDS}


def parse_rule(text: str) -> tuple[str, dict]:
    """'name:patience=5,plateau_margin=2' as (name, settings)."""
    name, _, pairs = text.partition(":")
    settings = {}
    for pair in filter(None, pairs.split(",")):
        key, value = pair.split("=")
        default = getattr(TrainConfig(), key)
        settings[key] = value if isinstance(default, str) else type(default or 0)(float(value))
    return name, settings


def pooled_photos(data: Path, out: Path) -> Path:
    """OUT/photos/CLASS/: links to every photo of DATA/train/CLASS and DATA/val/CLASS."""
    photos = out / "photos"
    if not photos.is_dir():
        tmp = out / "photos.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for split in ("train", "val"):
            for image in sorted((data / split).glob("*/*")):
                link = tmp / image.parent.name / f"{split}-{image.name}"
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(image)
        tmp.rename(photos)
    return photos


def share_prep(source: Path, target: Path) -> None:
    """`target` gets `source`'s manifest, statistics and patch cache, as hard links."""
    target.mkdir(parents=True, exist_ok=True)
    for name in PREP_FILES:
        if not (target / name).exists():
            if (source / name).is_dir():
                shutil.copytree(source / name, target / name, copy_function=os.link)
            else:
                os.link(source / name, target / name)


def replay(history: list[dict], first: dict, other: dict) -> tuple[int, dict]:
    """The first epoch after which rule `other` decides otherwise than `first`, with `other`'s
    state after it (or the last epoch, if they agree throughout)."""
    mine, theirs = (plateau_schedule(replace(TrainConfig(), **r)) for r in (first, other))
    for epoch, metrics in enumerate(history, 1):
        a = mine.step(*watched(first["plateau_on"], metrics))
        if a != theirs.step(*watched(other["plateau_on"], metrics)):
            return epoch, theirs.state_dict()
    return len(history), theirs.state_dict()


def fork(trunk: Path, run: Path, rule: dict) -> None:
    """Start `run` under `rule` from `trunk`'s checkpoint of the epoch where their rules part."""
    if RunPaths(run).last.exists():
        return
    history = read_metrics(trunk)
    trunk_config = config_from_dict(load_checkpoint(RunPaths(trunk).last)["config"])
    epoch, schedule = replay(history, rule_of(trunk_config), rule)
    state = load_checkpoint(RunPaths(trunk).epoch_checkpoint(epoch))
    config = replace(config_from_dict(state["config"]), keep_every=0, **rule)
    state.update(config=asdict(config), schedule=schedule, history=history[:epoch])
    share_prep(trunk, run)
    write_metrics(run, history[:epoch])
    save_checkpoint(RunPaths(run).last, state)
    logging.info("%s starts from %s after epoch %d", run, trunk, epoch)


def train(run: Path, rule: dict, epochs: int, keep: bool) -> None:
    """Train `run` (or resume it) to `epochs`, then record its ten-crop error."""
    done = run / "ten_crop.json"
    if done.exists():
        return
    if RunPaths(run).last.exists():
        result = fit(run, resume=True, epochs=epochs, progress=False)
    else:
        keep_every = 1 if keep else 0
        result = fit(run, epochs=epochs, keep_every=keep_every, progress=False, **RECIPE, **rule)
    done.write_text(json.dumps({"ten_crop_top1_error": result["ten_crop_top1_error"]}))


def loss_gain(history: list[dict], epoch: int, window: int = 4) -> float:
    """How much the best validation loss of the `window` epochs up to `epoch` beat the best
    before them, in standard errors of that best: below 1, the loss had stopped improving
    beyond its noise."""
    losses = [m["val_loss"] for m in history[:epoch]]
    before = losses[: epoch - window]
    best = min(range(len(before)), key=before.__getitem__)
    return (before[best] - min(losses[epoch - window :])) / history[best]["val_loss_se"]


def summary(run: Path) -> dict:
    history = read_metrics(run)
    best = min(history, key=lambda m: m["top1_error"])
    dropped = [m["epoch"] for m, n in pairwise(history) if n["lr"] < m["lr"]]
    return {
        "final_top1": history[-1]["top1_error"],
        "best_top1": best["top1_error"],
        "best_epoch": best["epoch"],
        "ten_crop_top1": json.loads((run / "ten_crop.json").read_text())["ten_crop_top1_error"],
        "dropped_after": dropped,
        "loss_gain_se": [round(loss_gain(history, epoch), 2) for epoch in dropped],
        "val_loss": [round(m["val_loss"], 4) for m in history],
        "val_loss_se": [round(m.get("val_loss_se", 0.0), 4) for m in history],
        "top1": [m["top1_error"] for m in history],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=Path("runs/plateau"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rules", nargs="+", default=["previous", "default"])
    parser.add_argument("--rule", action="append", default=[], type=parse_rule)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    defaults = rule_of(TrainConfig())
    rules = {name: {**defaults, **s} for name, s in {**RULES, **dict(args.rule)}.items()}
    photos = pooled_photos(args.data, args.out)
    results = {}
    for seed in args.seeds:
        split = args.out / f"split{seed}"
        trunk, *others = (split / name for name in args.rules)
        if not (trunk / "stats.json").exists():
            prepare(photos, run=trunk, val_fraction=0.25, seed=seed, cache=True, progress=False)
        train(trunk, rules[args.rules[0]], args.epochs, keep=True)
        for name, run in zip(args.rules[1:], others, strict=True):
            fork(trunk, run, rules[name])
            train(run, rules[name], args.epochs, keep=False)
        if others:  # every rule has started: the trunk's epoch checkpoints are no longer needed
            for path in RunPaths(trunk).checkpoints.glob("epoch_*.pt"):
                path.unlink()
        results[seed] = {name: summary(split / name) for name in args.rules}
        report({seed: results[seed]})
    print("\nall splits")
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def report(results: dict) -> None:
    names = list(next(iter(results.values())))

    def drops(r: dict) -> str:
        pairs = zip(r["dropped_after"], r["loss_gain_se"], strict=True)
        return ", ".join(f"{epoch} ({gain:.1f})" for epoch, gain in pairs)

    print(f"{'split':>5} {'rule':>10} {'final':>7} {'best':>7} {'10-crop':>8}  drops after epoch")
    print(f"{'':>43}(the loss's gain over the 4 epochs before, in standard errors)")
    for seed, by_rule in results.items():
        for name, r in by_rule.items():
            print(
                f"{seed:>5} {name:>10} {100 * r['final_top1']:6.2f}% {100 * r['best_top1']:6.2f}% "
                f"{100 * r['ten_crop_top1']:7.2f}%  {drops(r)}"
            )
    if len(results) > 1:
        for name in names:
            rows = [by_rule[name] for by_rule in results.values()]
            mean = {k: statistics.mean(r[k] for r in rows) for k in ("final_top1", "best_top1")}
            worst = max(r["final_top1"] for r in rows)
            ten = statistics.mean(r["ten_crop_top1"] for r in rows)
            print(
                f"{'mean':>5} {name:>10} {100 * mean['final_top1']:6.2f}% "
                f"{100 * mean['best_top1']:6.2f}% {100 * ten:7.2f}%  worst final {100 * worst:.2f}%"
            )


if __name__ == "__main__":
    main()
