"""Training throughput: the model alone vs. end to end from the DALI pipeline.

    python bench/train.py [--data DIR] [--batch 32] [--images 256] [--require-gpu] [--json PATH]

In one run, on the same device: (a) images/s of forward + backward + step on synthetic
tensors, (b) images/s of `train_one_epoch` fed by the DALI train pipeline over real photos
(prepped into a temporary run, with its patch cache), (b2) the same fed from the patch cache,
and torchvision's AlexNet under (a)'s conditions. Prints b/a and ours/torchvision. On a GPU
the same script measures the GPU (bf16, channels-last); --require-gpu stops with one line
unless the model and the batches are on a GPU. --json writes the figures for
bench/gpu_check.py.
"""

from __future__ import annotations

import argparse
import json
import sys
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
from alexnet.model.inference import load_run_data
from alexnet.model.loaders import train_loader
from alexnet.model.optim import PaperSGD
from alexnet.model.train import train_one_epoch
from alexnet.pipeline.cache import open_cache
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=256, help="training images for (b)")
    parser.add_argument("--require-gpu", action="store_true", help="fail unless on a GPU")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    world = setup_world()
    if args.require_gpu and world.device.type != "cuda":
        sys.exit("error: --require-gpu, but CUDA is not available (torch.cuda.is_available())")
    with tempfile.TemporaryDirectory() as run:
        manifest, st = load_run_data(prepare(args.data, run, cache=True, progress=False))
        table = manifest.files
        train = table.positions("train")[: args.images]
        kept = np.r_[train, table.positions("val")]
        cache = np.ascontiguousarray(open_cache(run, manifest)[kept])  # rows of the kept files
    manifest = {**manifest, "files": table.take(kept)}
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
    if args.require_gpu:  # the weights, the batches and the DALI graph's last operator
        loader = train_loader(manifest, st, config, 0, world)
        x, _ = next(iter(loader))
        where = {p.device.type for p in model.parameters()} | {x.device.type}
        where.add("cuda" if loader.pipe._graph_out[0].device == "gpu" else "cpu (DALI)")
        if where != {"cuda"}:
            sys.exit(f"error: training runs on {sorted(where)}, not only on the GPU")
    train_one_epoch(
        model, train_loader(manifest, st, config, 0, world), opt, world, progress=False
    )  # warm-up epoch
    end_to_end = train_one_epoch(
        model, train_loader(manifest, st, config, 1, world), opt, world, progress=False
    )
    cached = train_one_epoch(
        model, train_loader(manifest, st, config, 2, world, cache=cache), opt, world, progress=False
    )
    print(
        f"device: {world.device}, batch {args.batch}, {len(train)} training images of {args.data}"
    )
    print(f"(a) model alone, synthetic tensors : {results['ours']:8.1f} img/s")
    print(
        f"(b) end to end from DALI           : {end_to_end['images_per_s']:8.1f} img/s "
        f"(waiting for data {100 * end_to_end['data_wait']:.1f}% of the time)"
    )
    print(
        f"(b2) end to end, patch cache       : {cached['images_per_s']:8.1f} img/s "
        f"(waiting for data {100 * cached['data_wait']:.1f}% of the time)"
    )
    print(f"    torchvision AlexNet, as (a)    : {results['torchvision']:8.1f} img/s")
    print(
        f"b/a = {end_to_end['images_per_s'] / results['ours']:.3f}   "
        f"b2/a = {cached['images_per_s'] / results['ours']:.3f}   "
        f"ours/torchvision = {results['ours'] / results['torchvision']:.3f}"
    )
    if args.json:
        figures = {
            "device": str(world.device),
            "batch": args.batch,
            "images": len(train),
            "model_alone": results["ours"],
            "end_to_end": end_to_end["images_per_s"],
            "end_to_end_data_wait": end_to_end["data_wait"],
            "end_to_end_cached": cached["images_per_s"],
            "end_to_end_cached_data_wait": cached["data_wait"],
            "torchvision_model_alone": results["torchvision"],
        }
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
