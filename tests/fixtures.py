"""Tiny generated datasets and prepped runs shared by the tests."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from alexnet.pipeline.prep import prepare


def make_images(root: Path, classes: int = 2, train: int = 8, val: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        for split, n in (("train", train), ("val", val)):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                base = np.array([200, 40, 40]) if c == 0 else np.array([40, 40, 200])
                pixels = np.clip(base + rng.normal(0, 30, (60 + 7 * i, 80, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.jpg")
    return root


def prep_run(data: Path, run: Path) -> Path:
    prepare(data, run, processes=1, progress=False)
    return run


def alexnet_cmd(*args: str) -> list[str]:
    """The installed `alexnet` command with `args`."""
    return [str(Path(sys.executable).with_name("alexnet")), *args]


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    """`alexnet ARGS` under torchrun with `processes` CPU processes (gloo), one thread each."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(processes),
        "--no-python",
        "--",
        *alexnet_cmd(*args),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
