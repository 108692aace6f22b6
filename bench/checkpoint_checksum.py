"""What checkpoint checksums cost: a checkpoint of the full network (1000 classes, 61M
parameters, weights and momenta: ~455 MB) written and loaded with `load()`, against the time of
the checksums taken on save and checked on load. Prints figures measured in one run.

    python bench/checkpoint_checksum.py [--scratch /tmp] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from alexnet.model import checkpoint
from alexnet.model.alexnet import AlexNet, AlexNetConfig
from alexnet.model.checkpoint import (
    checkpoint_state,
    checksums,
    load_checkpoint,
    save_checkpoint,
    save_state,
)
from alexnet.model.config import TrainConfig
from alexnet.model.inference import load
from alexnet.model.reference import reference_manifest
from alexnet.pipeline.layout import RunPaths
from alexnet.pipeline.manifest import save_manifest
from alexnet.pipeline.stats import Stats, save_stats

IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-mini"


IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-mini"


def make_run(run: Path) -> dict:
    """A run of 1000 classes (no images) whose best.pt holds weights and momenta."""
    classes = [f"class_{i}" for i in range(1000)]
    manifest = reference_manifest(classes, {}, None)
    save_manifest(manifest, run)
    image = np.full((256, 256, 3), 117.0)
    save_stats(
        Stats(
            image, image[0, 0], np.zeros((3, 3)), np.zeros(3), np.eye(3), 0, manifest.fingerprint
        ),
        run,
    )
    model = AlexNet(AlexNetConfig(num_classes=1000))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()  # momentum buffers, as a training checkpoint holds
    schedule = {"best": None, "bad_epochs": 0, "drops": 0}
    config = TrainConfig(num_threads=1)
    return checkpoint_state(
        model, config, manifest, optimizer=optimizer, schedule=schedule, epoch=1
    )


@contextlib.contextmanager
def unchecked():
    """Loads as before checkpoints carried checksums, for the comparison only."""
    check = checkpoint.check_checksums
    checkpoint.check_checksums = lambda *a, **k: None
    try:
        yield
    finally:
        checkpoint.check_checksums = check


def timed(f, repeats: int) -> float:
    """Median seconds of `f()` over `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scratch", default=tempfile.gettempdir())
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        run = Path(tmp) / "run"
        state = make_run(run)
        best = RunPaths(run).best
        save_checkpoint(best, state)
        size = best.stat().st_size
        params = sum(t.numel() for t in state["model"].values())
        print(f"checkpoint: {size / 1e6:.0f} MB, {params:,} parameters (weights and momenta)")

        save_plain = timed(lambda: save_state(best.with_name("plain.pt"), state), args.repeats)
        save_checked = timed(lambda: save_checkpoint(best, state), args.repeats)
        both = timed(lambda: checksums(state), args.repeats)
        print(
            f"save: {save_plain:.3f} s without checksums, {save_checked:.3f} s with; the "
            f"checksums alone {both:.3f} s ({100 * both / save_plain:.1f}% of a save)"
        )

        load(run)  # the file in the page cache, as for any load but the first after a boot
        saved = load_checkpoint(best, mmap=True)
        weights = timed(lambda: checksums(saved, ("weights",)), args.repeats)
        print(f"the weights' checksum alone (what every load checks; page cache): {weights:.3f} s")
        image = str(sorted(IMAGES.rglob("*.JPEG"))[0])

        def first_forward() -> None:
            with torch.inference_mode():
                load(run).net(torch.zeros(1, 3, 224, 224))

        uses = {
            "load() alone (maps the file, reads no weight yet)": lambda: load(run),
            "load() + a first forward pass (reads every weight)": first_forward,
            "load() + a first predict([one photo])": lambda: load(run).predict([image]),
        }
        for what, use in uses.items():
            with_check = timed(use, args.repeats)
            with unchecked():
                without = timed(use, args.repeats)
            print(
                f"{what}: {without:.3f} s unchecked, {with_check:.3f} s checked: "
                f"+{100 * (with_check - without) / without:.1f}%"
            )
        optim = timed(
            lambda: checksums(load_checkpoint(best, mmap=True), ("optimizer",)), args.repeats
        )
        print(f"resume and verify also check the optimizer's state: +{optim:.3f} s")


if __name__ == "__main__":
    main()
