"""What one fc7 rule costs a single query: AlexNet.fc7 runs the fully connected layers on a
multiple of 8 rows (so a row is the same bits in any batch), where a lone image used to run
them on 1 row. Times both on one image, interleaved, and prints their ratio; and checks that
the padded vector equals the image's row of a full batch while the unpadded one need not.

    python bench/fc7_rows.py [--repeats 15] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from alexnet.model.alexnet import AlexNet, AlexNetConfig, _cpu_layout


def unpadded(net: AlexNet, x: torch.Tensor) -> torch.Tensor:
    """fc7 as it was computed before: the fully connected layers on the batch as it is."""
    h = torch.flatten(net.features(_cpu_layout(x)), 1)
    for layer in net.classifier[:-1]:
        if not isinstance(layer, nn.Dropout):
            h = layer(h)
    return h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = AlexNet(AlexNetConfig(num_classes=1000)).eval()
    batch = torch.randn(16, 3, 224, 224) * 50
    one = batch[:1]
    times = {"1 row (before)": [], "8 rows (fc7 now)": []}
    ways = {"1 row (before)": lambda: unpadded(net, one), "8 rows (fc7 now)": lambda: net.fc7(one)}
    with torch.inference_mode():
        full = net.fc7(batch)[:1]
        same = {"1 row (before)": torch.equal(unpadded(net, one), full)}
        same["8 rows (fc7 now)"] = torch.equal(net.fc7(one), full)
        for _ in range(args.repeats):
            for name, way in ways.items():
                start = time.perf_counter()
                way()
                times[name].append(time.perf_counter() - start)
    median = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    for name, t in median.items():
        print(f"{name:18} {1000 * t:8.1f} ms a query image   same bits as in a batch: {same[name]}")
    print(f"ratio {median['8 rows (fc7 now)'] / median['1 row (before)']:.2f}")


if __name__ == "__main__":
    main()
