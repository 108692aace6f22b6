"""What integrity checking costs: checksum speeds, the small files checked at every open of a
collection at ImageNet's size, and `alexnet verify`'s read of the feature file per million
images. Prints figures measured in one run.

    python bench/integrity.py [--scratch /tmp] [--images 1281167] [--feature-mb 1024]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import xxhash

from alexnet.pipeline.files import content_digest
from alexnet.retrieval import autoencoder as ae

BLOCK = 1 << 24


def rate(make, data: bytes) -> float:
    """MB/s of a hash over `data` in 16 MB blocks (best of 3)."""
    best = 0.0
    view = memoryview(data)
    for _ in range(3):
        start, h = time.perf_counter(), make()
        for s in range(0, len(data), BLOCK):
            h.update(view[s : s + BLOCK])
        h.digest()
        best = max(best, len(data) / (time.perf_counter() - start) / 1e6)
    return best


def timed_digest(path: Path) -> float:
    start = time.perf_counter()
    content_digest(path)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scratch", default=tempfile.gettempdir())
    ap.add_argument("--images", type=int, default=1_281_167)
    ap.add_argument("--feature-mb", type=int, default=1024)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 256 << 20, dtype=np.uint8).tobytes()
    print(f"checksum speed over 256 MB in memory ({os.cpu_count()} CPUs):")
    speeds = {
        "xxh3-128": rate(xxhash.xxh3_128, data),
        "sha256": rate(hashlib.sha256, data),
        "blake2b": rate(hashlib.blake2b, data),
    }
    for name, mbs in speeds.items():
        print(f"  {name:10s} {mbs:9,.0f} MB/s  ({mbs / speeds['xxh3-128']:.3f} of xxh3)")

    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        folder = Path(tmp)
        codes = rng.integers(0, 256, (args.images, 8), dtype=np.uint8)
        np.save(folder / "codes.u8.npy", codes)
        index = faiss.IndexBinaryFlat(64)
        index.add(codes)
        faiss.write_index_binary(index, str(folder / "codes.faissindex"))
        model = ae.Autoencoder(ae.AutoencoderConfig(bits=64, classes=1000))
        ae.save_autoencoder(ae.autoencoder_state(model), folder / "autoencoder.pt")
        small = [folder / n for n in ("codes.u8.npy", "codes.faissindex", "autoencoder.pt")]
        for p in small:
            content_digest(p)  # in the page cache, as after the first open
        sizes = sum(p.stat().st_size for p in small)
        seconds = min(sum(timed_digest(p) for p in small) for _ in range(5))
        print(
            f"checked at every open, {args.images:,} images (codes, flat index, autoencoder "
            f"of 1000 classes): {sizes / 1e6:.1f} MB in {1000 * seconds:.1f} ms, "
            f"{100 * seconds / 3.0:.1f}% of a 3 s search start-up"
        )
        features = folder / "features.f16.npy"
        with open(features, "wb") as f:
            for _ in range(args.feature_mb // 64):
                f.write(rng.integers(0, 256, 64 << 20, dtype=np.uint8).tobytes())
        seconds = min(timed_digest(features) for _ in range(3))
        per_million = 4096 * 2 * 1e6 / (features.stat().st_size / seconds)
        print(
            f"verify's read of the features ({args.feature_mb} MB, page cache): "
            f"{features.stat().st_size / seconds / 1e6:,.0f} MB/s, i.e. {per_million:.1f} s per "
            "million images (8 KB of float16 fc7 each) when the disk keeps up"
        )


if __name__ == "__main__":
    main()
