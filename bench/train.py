"""Training throughput: the model alone vs. end to end from the DALI pipeline.

    python bench/train.py [--data DIR] [--batch 32] [--images 256]

In one run, on the same device: (a) images/s of forward + backward + step on synthetic
tensors, (b) images/s of `train_one_epoch` fed by the DALI train pipeline over real photos
(prepped into a temporary run), and torchvision's AlexNet under (a)'s conditions. Prints b/a
and ours/torchvision. On a GPU the same script measures the GPU (bf16, channels-last).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from alexnet.model.alexnet import AlexNet, AlexNetConfig
from alexnet.model.config import TrainConfig
from alexnet.model.distributed import autocast, setup_world
from alexnet.model.loaders import train_loader
from alexnet.model.optim import PaperSGD
from alexnet.model.train import train_one_epoch
from alexnet.pipeline.prep import prepare

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-mini"


def model_alone(model, batch: int, steps: int, device: torch.device) -> float:
    """Images/s of training steps on random tensors (no data loading at all)."""
    opt = PaperSGD(model.parameters())
    x = torch.randn(batch, 3, 224, 224, device=device) * 60
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
        model = model.to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    model.train()

    def step():
        with autocast(device):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: allocator, kernels, autotuning
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=256, help="training images for (b)")
    args = parser.parse_args()

    world = setup_world()
    with tempfile.TemporaryDirectory() as run:
        manifest, st = prepare(args.data, run, progress=False)
    table = manifest["files"]
    train = table.positions("train")[: args.images]
    manifest = {**manifest, "files": table.take(np.r_[train, table.positions("val")])}
    config = TrainConfig(batch_size=args.batch)
    steps = max(2, args.images // args.batch)
    results = {}
    for name, make in (
        ("ours", lambda: AlexNet(AlexNetConfig(num_classes=10))),
        ("torchvision", lambda: torchvision.models.alexnet(num_classes=10)),
    ):
        torch.manual_seed(0)
        results[name] = model_alone(make().to(world.device), args.batch, steps, world.device)
    torch.manual_seed(0)
    model = AlexNet(AlexNetConfig(num_classes=10)).to(world.device)
    if world.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = PaperSGD(model.parameters())
    train_one_epoch(
        model, train_loader(manifest, st, config, 0, world), opt, world, progress=False
    )  # warm-up epoch
    end_to_end = train_one_epoch(
        model, train_loader(manifest, st, config, 1, world), opt, world, progress=False
    )
    print(
        f"device: {world.device}, batch {args.batch}, {len(train)} training images of {args.data}"
    )
    print(f"(a) model alone, synthetic tensors : {results['ours']:8.1f} img/s")
    print(
        f"(b) end to end from DALI           : {end_to_end['images_per_s']:8.1f} img/s "
        f"(waiting for data {100 * end_to_end['data_wait']:.1f}% of the time)"
    )
    print(f"    torchvision AlexNet, as (a)    : {results['torchvision']:8.1f} img/s")
    print(
        f"b/a = {end_to_end['images_per_s'] / results['ours']:.3f}   "
        f"ours/torchvision = {results['ours'] / results['torchvision']:.3f}"
    )


if __name__ == "__main__":
    main()
