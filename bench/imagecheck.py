"""The file check of prep and gallery updates (pipeline/imagecheck.py) in threads against
worker processes: files per second of wall time, as ratios to one thread, in one run.

    python bench/imagecheck.py [--images DIR] [--files 600] [--threads 1 2 4] [--repeat 3]

Without --images it writes --files grainy 500x375 JPEGs (ImageNet's typical size, ~110 KB
each) to a temporary folder. Each way is timed --repeat times, interleaved, and the best time
kept: `threads N` is `inspect_all` as prep calls it; `processes N` is the same check in N
fork-server worker processes, 256 files a task (how it ran before it moved to threads).
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from alexnet.pipeline.defaults import MAX_PIXELS, MIN_SIZE
from alexnet.pipeline.imagecheck import CHUNK, inspect_all, inspect_file


def grainy_jpegs(folder: Path, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 500)[None, :, None] * np.ones((375, 1, 3))
    paths = []
    for i in range(count):
        pixels = np.clip(ramp + rng.normal(0, 25, ramp.shape), 0, 255).astype(np.uint8)
        paths.append(str(folder / f"{i}.jpg"))
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


def in_threads(paths: list[str], threads: int) -> list:
    return inspect_all(paths, MIN_SIZE, MAX_PIXELS, threads, progress=False)


def check_chunk(chunk: list[str]) -> list:
    return [inspect_file(path, MIN_SIZE, MAX_PIXELS) for path in chunk]


def in_processes(paths: list[str], processes: int) -> list:
    context = multiprocessing.get_context("forkserver")
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        return [r for chunk in pool.map(check_chunk, chunks) for r in chunk]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path)
    parser.add_argument("--files", type=int, default=600)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.images:
            paths = sorted(str(p) for p in args.images.rglob("*") if p.is_file())
        else:
            paths = grainy_jpegs(Path(tmp), args.files)
        ways = {f"threads {n}": (in_threads, n) for n in args.threads}
        ways["processes 2"] = (in_processes, 2)
        best = dict.fromkeys(ways, float("inf"))
        expected = None
        for _ in range(args.repeat):
            for name, (run, n) in ways.items():
                start = time.perf_counter()
                results = run(paths, n)
                best[name] = min(best[name], time.perf_counter() - start)
                assert expected is None or results == expected, name  # the same answers
                expected = results
    print(f"{len(paths)} files, best of {args.repeat}, {multiprocessing.cpu_count()} cores")
    print(f"{'way':<14}{'files/s':>10}{'x threads 1':>13}")
    base = best.get("threads 1")
    for name, seconds in best.items():
        ratio = f"{base / seconds:13.2f}" if base else ""
        print(f"{name:<14}{len(paths) / seconds:10.0f}{ratio}")


if __name__ == "__main__":
    main()
