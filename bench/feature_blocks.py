"""What checking the fc7 feature file (features.f16.npy) as searches read it would cost,
against checking it whole and against the re-ranking it serves. A file of `--rows` float16
rows of 4096 is written once; then, with it in the page cache:

- whole: the xxh3-128 of the whole file (what `alexnet verify` reads), per million rows;
- rerank: a query's re-ranking of R random rows (the rows a `--rerank R` search touches);
- blocks of B rows: the same query with every block it touches hashed first (the first
  query's cost, before any block is known good), and the table of block checksums per
  million rows.

    python bench/feature_blocks.py [--rows 65536] [--rerank 50] [--queries 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import xxhash

from alexnet.pipeline.files import content_digest
from alexnet.retrieval.index import rerank

DIM = 4096


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scratch", default=tempfile.gettempdir())
    ap.add_argument("--rows", type=int, default=65536)
    ap.add_argument("--rerank", type=int, default=50)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        path = Path(tmp) / "features.f16.npy"
        out = np.lib.format.open_memmap(path, "w+", np.float16, (args.rows, DIM))
        for s in range(0, args.rows, 4096):
            out[s : s + 4096] = rng.random((min(4096, args.rows - s), DIM), np.float32)
        out.flush()
        del out
        content_digest(path)  # into the page cache
        start = time.perf_counter()
        content_digest(path)
        whole = time.perf_counter() - start
        size = path.stat().st_size
        print(
            f"{args.rows:,} rows ({size / 1e6:,.0f} MB), page cache; whole file: {whole:.3f} s, "
            f"{whole * 1e6 / args.rows:.1f} s per million rows"
        )
        features = np.load(path, mmap_mode="r")
        queries = rng.random((args.queries, DIM), np.float32)
        picks = [rng.choice(args.rows, args.rerank, replace=False) for _ in range(args.queries)]
        start = time.perf_counter()
        for q, ids in zip(queries, picks, strict=True):
            rerank(features, q[None], ids[None], 10)
        plain = (time.perf_counter() - start) / args.queries
        print(f"re-ranking {args.rerank} rows: {1000 * plain:.2f} ms a query")
        raw = np.asarray(features).reshape(args.rows, -1).view(np.uint8)
        for block in (1, 16, 256, 4096):
            start = time.perf_counter()
            for q, ids in zip(queries, picks, strict=True):
                for b in np.unique(ids // block):
                    xxhash.xxh3_128(raw[b * block : (b + 1) * block]).digest()
                rerank(features, q[None], ids[None], 10)
            checked = (time.perf_counter() - start) / args.queries
            table = 16 * 1e6 / block
            print(
                f"blocks of {block:5d} rows ({block * DIM * 2 / 1e6:6.2f} MB): "
                f"{1000 * checked:7.2f} ms a query ({checked / plain:5.1f}x the re-ranking), "
                f"checksums {table / 1e6:6.2f} MB per million rows"
            )


if __name__ == "__main__":
    main()
