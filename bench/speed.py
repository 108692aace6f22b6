"""CPU speed of the network: what local response normalisation costs, and how close to matmul.

    python bench/speed.py [--batch 32] [--steps 2] [--rounds 5] [--threads N] [--clock cpu]
                          [--malloc trainer|default]

In one process, on the same harness (forward + backward + PaperSGD step on one random 224x224
batch, `torch.manual_seed(0)`, a warm-up step, then rounds that each measure everything once;
medians over rounds, and ratios taken within each round), the images/s of:

- ours, the paper's configuration (model/lrn.py's LocalResponseNorm);
- ours with `lrn=False`;
- ours with PyTorch's `nn.LocalResponseNorm` in the same places (the same maths);
- the same, run NCHW as the model did before it switched to channels-last on the CPU;
- torchvision's AlexNet (one column, no LRN, different widths), 10 classes like ours.

Also the rate of a 2048x2048 float32 matmul, the FLOP/s ours achieves (multiply-adds of every
conv and linear layer counted with hooks; a training step is taken as forward + input
gradient + weight gradient, i.e. 3x forward less conv1's input gradient; FLOPs = 2 x MACs) as a
share of it, and forward-only fc7 extraction (eval, inference_mode, batch 64) against training.

The process's malloc is set as the trainer sets it (model/distributed.py `reuse_freed_memory`)
unless --malloc default leaves glibc's own thresholds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from alexnet.model.alexnet import AlexNet, AlexNetConfig
from alexnet.model.distributed import autocast, reuse_freed_memory
from alexnet.model.lrn import LocalResponseNorm
from alexnet.model.optim import PaperSGD

CLASSES = 10
clock = time.perf_counter  # --clock cpu: time.process_time


def ours_with_torch_lrn() -> AlexNet:
    model = AlexNet(AlexNetConfig(num_classes=CLASSES))
    for i, layer in enumerate(model.features):
        if isinstance(layer, LocalResponseNorm):
            model.features[i] = nn.LocalResponseNorm(
                layer.size, layer.alpha * layer.size, layer.beta, layer.k
            )
    return model


class NCHW(nn.Module):
    """AlexNet's forward without its switch to channels-last on the CPU."""

    def __init__(self, model: AlexNet):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.classifier(torch.flatten(self.model.features(x), 1))


MODELS = {
    "ours, paper (model/lrn.py)": lambda: AlexNet(AlexNetConfig(num_classes=CLASSES)),
    "ours, lrn=False": lambda: AlexNet(AlexNetConfig(num_classes=CLASSES, lrn=False)),
    "ours, nn.LocalResponseNorm": ours_with_torch_lrn,
    "ours, nn.LRN, NCHW (before)": lambda: NCHW(ours_with_torch_lrn()),
    "torchvision alexnet": lambda: torchvision.models.alexnet(num_classes=CLASSES),
}


class Trainer:
    """One model, its optimiser and a fixed random batch; `run(n)` times n training steps."""

    def __init__(self, make, batch: int):
        torch.manual_seed(0)
        self.model = make().train()
        self.opt = PaperSGD(self.model.parameters())
        self.x = torch.randn(batch, 3, 224, 224) * 60
        self.y = torch.randint(0, CLASSES, (batch,))
        self.step()  # warm-up: allocator, oneDNN primitives

    def step(self) -> None:
        loss = F.cross_entropy(self.model(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def run(self, steps: int) -> float:
        start = clock()
        for _ in range(steps):
            self.step()
        return len(self.x) * steps / (clock() - start)


def forward_macs(model: nn.Module) -> tuple[int, int]:
    """(multiply-adds of one image's forward pass, those of the first conv) via hooks."""
    counts: list[int] = []

    def hook(layer, inputs, output):
        if isinstance(layer, nn.Conv2d):
            per_output = (
                layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
            )
            counts.append(output[0].numel() * per_output)
        else:
            counts.append(layer.in_features * layer.out_features)

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 224, 224))
    for h in handles:
        h.remove()
    return sum(counts), counts[0]


def matmul_gflops(n: int, seconds: float) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    reps, start = 0, clock()
    while reps == 0 or clock() - start < seconds:
        torch.mm(a, b)
        reps += 1
    return 2 * n**3 * reps / (clock() - start) / 1e9


class Inference:
    """fc7 extraction as retrieval runs it: eval mode, inference_mode, one fixed batch; on a
    GPU as retrieval/features.py runs it there (channels-last, bf16 autocast), timed to the
    end of the GPU's work."""

    def __init__(self, model: AlexNet, batch: int, device: torch.device | None = None):
        self.device = device or torch.device("cpu")
        self.model, self.x = model, torch.randn(batch, 3, 224, 224, device=self.device) * 60
        if self.device.type == "cuda":
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.run(1)  # warm-up

    def run(self, batches: int) -> float:
        self.model.eval()
        with torch.inference_mode(), autocast(self.device):
            start = clock()
            for _ in range(batches):
                out = self.model.fc7(self.x)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            rate = len(self.x) * batches / (clock() - start)
        if out.device.type != self.device.type:
            raise SystemExit(f"error: fc7 ran on {out.device}, not {self.device}")
        self.model.train()
        return rate


PAPER, NO_LRN, TORCH_LRN, BEFORE, TORCHVISION = MODELS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="training steps per model per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--infer-batch", type=int, default=64)
    parser.add_argument("--matmul", type=int, default=2048, help="square matmul size")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: rates per CPU-second of this process, steadier with --threads 1 on a box "
        "shared with other jobs (with more threads it counts their idle spinning too)",
    )
    parser.add_argument(
        "--malloc",
        choices=["trainer", "default"],
        default="trainer",
        help="trainer: glibc keeps freed memory for reuse, as training sets it; default: "
        "glibc's own thresholds",
    )
    args = parser.parse_args()
    malloc = (
        "reuse (as the trainer)"
        if args.malloc == "trainer" and reuse_freed_memory()
        else ("glibc default")
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    start = time.perf_counter()

    trainers = {name: Trainer(make, args.batch) for name, make in MODELS.items()}
    infer = Inference(trainers[PAPER].model, args.infer_batch)
    macs, conv1_macs = forward_macs(trainers[PAPER].model)
    step_flops = 2 * (3 * macs - conv1_macs)  # per image
    # Every round measures everything, so a ratio compares figures taken seconds apart; the
    # median round's ratio is reported (the box is shared: load drifts between rounds).
    rows: dict[str, list[float]] = {name: [] for name in [*MODELS, "fc7", "matmul"]}
    for _ in range(args.rounds):
        for name, trainer in trainers.items():
            rows[name].append(trainer.run(args.steps))
        rows["fc7"].append(infer.run(2))
        rows["matmul"].append(matmul_gflops(args.matmul, seconds=0.5))
    r = {name: torch.tensor(v, dtype=torch.float64) for name, v in rows.items()}
    ratios = [
        ("paper / lrn=False", r[PAPER] / r[NO_LRN], 0.9),
        ("paper / nn.LocalResponseNorm", r[PAPER] / r[TORCH_LRN], None),
        ("paper / before", r[PAPER] / r[BEFORE], None),
        ("paper / torchvision", r[PAPER] / r[TORCHVISION], 1.0),
        ("achieved / matmul", r[PAPER] * step_flops / 1e9 / r["matmul"], 0.7),
        ("fc7 inference / training", r["fc7"] / r[PAPER], 2.5),
    ]

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"{args.rounds} rounds x {args.steps} steps, {args.clock} clock, malloc {malloc}, "
        f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}"
    )
    print(f"{'img/s (median, min, max of rounds)':36s} {'median':>8s} {'min':>8s} {'max':>8s}")
    for name, v in rows.items():
        label = {"fc7": f"ours fc7 inference, batch {args.infer_batch}"}.get(name, name)
        if name == "matmul":
            label = f"matmul {args.matmul}^2 float32, GFLOP/s"
        print(f"{label:36s} {statistics.median(v):8.1f} {min(v):8.1f} {max(v):8.1f}")
    print(
        f"ours: {macs / 1e6:.1f} M forward MACs/image; a training image {step_flops / 1e9:.2f} "
        f"GFLOP (3x forward less conv1's input gradient), achieved "
        f"{statistics.median(rows[PAPER]) * step_flops / 1e9:.1f} GFLOP/s"
    )
    print(f"{'ratio (median of per-round ratios)':36s} {'median':>8s} {'min':>8s} {'max':>8s}")
    for name, v, target in ratios:
        goal = f"  target >= {target}" if target else ""
        print(f"{name:36s} {v.median():8.3f} {v.min():8.3f} {v.max():8.3f}{goal}")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
