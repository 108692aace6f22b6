"""Why the network does or does not leave chance: initialisation presets under the microscope.

    python bench/init_study.py [--data DIR] [--images 6400] [--presets paper caffe kaiming]

For each preset (at its input scale) and each batch size (32 and 128), train from scratch on
the same photos for the same number of images, at the batch-scaled paper rate
(0.01 x batch / 128), with the toolkit's own DALI loaders, network, parameter groups and SGD
rule. At a few points (equal numbers of images seen for both batch sizes) it records:

- loss: the mean training loss of the last 10 steps;
- per layer, the activation std (after ReLU; logits for fc8) and the dead-ReLU fraction
  (units, i.e. channels or neurons, that are zero for every image and position of the batch);
- per layer, the weight-gradient norm and the update/weight ratio ||dW|| / ||W|| of the step.

Prints one table per run and a summary (images seen until the loss first falls 5% below
ln(classes), and the final loss). Results are also written as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.model.checkpoint import build_network
from alexnet.model.config import TrainConfig, with_settings
from alexnet.model.distributed import World
from alexnet.model.inference import load_run_data
from alexnet.model.init import resolve
from alexnet.model.loaders import train_loader
from alexnet.model.optim import optimizer_for, scaled_lr, set_rate
from alexnet.pipeline.prep import prepare

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-mini"
SCALES = {"paper": "pixels", "caffe": "pixels", "kaiming": "unit"}


class Probe:
    """Forward hooks on each learned layer's output (after its ReLU where it has one)."""

    def __init__(self, model: nn.Module):
        self.stats: dict[str, tuple[float, float]] = {}
        self.names = list(model.layers())
        modules = list(model.features) + list(model.classifier)
        for name, layer in model.layers().items():
            i = modules.index(layer)
            after = modules[i + 1] if i + 1 < len(modules) else layer
            target = after if isinstance(after, nn.ReLU) else layer
            target.register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(module, inputs, out):
            x = out.detach()
            dims = [0] + list(range(2, x.dim()))  # everything but the unit axis
            dead = (x.abs().amax(dim=dims) == 0).float().mean().item()
            self.stats[name] = (x.float().std().item(), dead)

        return hook


def run(manifest, stats, preset: str, batch: int, images: int, points: list[int], seed: int):
    config = resolve(
        with_settings(
            TrainConfig(),
            init=preset,
            input_scale=SCALES[preset],
            batch_size=batch,
            seed=seed,
            epochs=10**6,
        )
    )
    world = World()
    torch.manual_seed(seed)
    model = build_network(config, len(manifest.classes), world.device)
    probe = Probe(model)
    optimizer = optimizer_for(model, config)
    lr = scaled_lr(config.lr, batch)
    set_rate(optimizer, lr)
    layers = model.layers()
    steps = images // batch
    marks = {max(1, p // batch) for p in points if p // batch <= steps}
    rows, losses, epoch, step = [], [], 0, 0
    start = time.perf_counter()
    while step < steps:
        for x, y in train_loader(manifest, stats, config, epoch, world):
            before = {n: m.weight.detach().clone() for n, m in layers.items()}
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads = {n: m.weight.grad.norm().item() for n, m in layers.items()}
            optimizer.step()
            step += 1
            losses.append(loss.item())
            if step in marks or not math.isfinite(losses[-1]):
                rows.append(
                    {
                        "step": step,
                        "images": step * batch,
                        "loss": sum(losses[-10:]) / len(losses[-10:]),
                        "layers": {
                            n: {
                                "act_std": probe.stats[n][0],
                                "dead": probe.stats[n][1],
                                "grad_norm": grads[n],
                                "update_ratio": (
                                    (m.weight.detach() - before[n]).norm() / before[n].norm()
                                ).item(),
                            }
                            for n, m in layers.items()
                        },
                    }
                )
            if step >= steps or not math.isfinite(losses[-1]):
                break
        if not math.isfinite(losses[-1]):
            break
        epoch += 1
    chance = math.log(len(manifest.classes))
    smooth = [
        sum(losses[max(0, i - 9) : i + 1]) / len(losses[max(0, i - 9) : i + 1])
        for i in range(len(losses))
    ]
    left = next((i + 1 for i, v in enumerate(smooth) if v < 0.95 * chance), None)
    return {
        "preset": preset,
        "input_scale": config.input_scale,
        "batch": batch,
        "lr": lr,
        "seconds": time.perf_counter() - start,
        "left_chance_at_images": left * batch if left else None,
        "final_loss": smooth[-1] if smooth else None,
        "rows": rows,
    }


def print_run(r: dict) -> None:
    print(
        f"\n## {r['preset']} (input {r['input_scale']}), batch {r['batch']}, lr {r['lr']:g}: "
        f"left chance after {r['left_chance_at_images'] or 'never'} images, "
        f"final loss {r['final_loss']:.3f} ({r['seconds']:.0f} s)"
    )
    names = list(r["rows"][0]["layers"])
    print(f"{'images':>7} {'loss':>6}  what  " + " ".join(f"{n:>8}" for n in names))
    for row in r["rows"]:
        for key, label, fmt in (
            ("act_std", "act std", "{:8.3g}"),
            ("dead", "dead", "{:8.2f}"),
            ("grad_norm", "|grad|", "{:8.2g}"),
            ("update_ratio", "upd/w", "{:8.1e}"),
        ):
            head = f"{row['images']:7d} {row['loss']:6.3f}" if key == "act_std" else " " * 14
            cells = " ".join(fmt.format(row["layers"][n][key]) for n in names)
            print(f"{head}  {label:7} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--images", type=int, default=6400, help="images seen per run")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--presets", nargs="+", default=list(SCALES))
    parser.add_argument("--points", type=int, nargs="+", default=[128, 640, 1280, 3200, 6400])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("init_study.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest, stats = load_run_data(prepare(args.data, tmp, progress=False))
    results = []
    for batch in args.batches:
        for preset in args.presets:
            results.append(run(manifest, stats, preset, batch, args.images, args.points, args.seed))
            print_run(results[-1])
            args.out.write_text(json.dumps(results, indent=1))
    print("\n## summary")
    print(
        f"{'preset':8} {'input':6} {'batch':>5} {'lr':>7} {'left chance at':>15} {'final loss':>10}"
    )
    for r in results:
        left = r["left_chance_at_images"]
        print(
            f"{r['preset']:8} {r['input_scale']:6} {r['batch']:5d} {r['lr']:7.4f} "
            f"{(str(left) + ' img') if left else 'never':>15} {r['final_loss']:10.3f}"
        )


if __name__ == "__main__":
    main()
