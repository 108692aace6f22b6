"""Tiny generated datasets and prepped runs shared by the tests."""

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from alexnet.pipeline.dataset import scan
from alexnet.pipeline.manifest import Manifest
from alexnet.pipeline.prep import prepare


def class_image(label: int, seed: int, size: tuple[int, int] = (96, 80)) -> np.ndarray:
    """uint8 HxWx3 (size is W, H): a class colour plus stripes of a class-specific frequency,
    and noise, so that classes differ to a network even untrained."""
    rng = np.random.default_rng(seed)
    w, h = size
    v, u = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    img = np.full((h, w, 3), 40.0)
    img[..., label % 3] = 200
    img += 50 * np.sin(2 * np.pi * (2 + 3 * label) * (u + rng.uniform(0, 1) * v))[..., None]
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_images(
    root: Path,
    classes: int = 2,
    train: int = 8,
    val: int | None = 3,
    *,
    names: Sequence[str] | None = None,
) -> Path:
    """The tests' one generated dataset: `classes` classes (folders `names`, default class0,
    class1, ...) of JPEGs of varied sizes, `train` and `val` images each under root/train and
    root/val; with `val` None, `train` images each directly in root/<class> (prep then
    splits them)."""
    names = list(names or [f"class{c}" for c in range(classes)])
    splits = (("", train),) if val is None else (("train", train), ("val", val))
    for label, name in enumerate(names):
        for split, n in splits:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = class_image(label, 1000 * label + 100 * len(split) + i, (80, 60 + 7 * i))
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


def prep_run(data: Path, run: Path) -> Path:
    prepare(data, run, threads=1, progress=False)
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


# --- small trees for the scan, the walk and the manifest ------------------------------


def img(path: Path, size=(24, 20), colour=(200, 60, 30), mode="RGB", seed=None, **save) -> Path:
    """Write an image: a solid colour, or seeded noise when `seed` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if seed is None:
        im = Image.new("RGB", size, colour)
    else:
        rng = np.random.default_rng(seed)
        im = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "P":
        im = im.convert("P", palette=Image.Palette.ADAPTIVE)  # exact colours, no dithering
    elif mode != "RGB":
        im = im.convert(mode)
    im.save(path, **save)
    return path


def run_scan(data: Path, **kw) -> Manifest:
    return scan(data, threads=2, progress=False, **kw)


def by_path(manifest: Manifest) -> dict[str, dict]:
    return {f["path"]: f for f in manifest.files.records()}


def split_of(manifest: Manifest) -> dict[str, str]:
    return {f["path"]: f["split"] for f in manifest.files.records()}


def make_class_tree(tmp_path: Path) -> Path:
    """DATA/<class>/<img>: a with 10 images, b with 7, c with 4 (tiny seeded-noise PNGs)."""
    data = tmp_path / "data"
    for name, n in (("b", 7), ("a", 10), ("c", 4)):
        for i in range(n):
            img(data / name / f"{i:02d}.png", seed=ord(name) * 100 + i)
    return data


def corrupt_in_place(path, offset: int | None = None) -> None:
    """Flip one byte (by default near the end, past any header), keeping the size and the
    modification time: a bad disk, a partial copy, an in-place rsync."""
    st = os.stat(path)
    offset = st.st_size - 5 if offset is None else offset
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
