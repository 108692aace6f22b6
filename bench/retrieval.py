"""Retrieval benchmark: binary codes in FAISS against exact float search over 4096-d fc7.

    python bench/retrieval.py [--sizes 100000 1000000] [--bits 64 256] [--queries 200]
                              [--float-size 100000] [--hnsw-size 100000] [--threads N]

Synthetic data (uniform random codes, standard normal float vectors: search cost does not
depend on the values). For each size and code length: build time and bytes per image of
alexnet.retrieval.index.build_index (IndexBinaryFlat, exact Hamming), and the p50/p99 latency
of single-query k=10 searches (one query at a time, as `alexnet search` with one image).
The baseline is faiss.IndexFlatL2 over float32 4096-d vectors at --float-size images; the
ratios compare each binary index with it. With --hnsw-size, an IndexBinaryHNSW (the
approximate index used above the size threshold) is built too, with its recall@10 against
exact search. On a host with a GPU the flat indexes would be searched there (to_device);
this script measures what it is given, and says which.
"""

from __future__ import annotations

import argparse
import os
import time

import faiss
import numpy as np

from alexnet.retrieval.index import build_index, gpu_available, measure_recall, to_device

K = 10


def latencies(index, queries: np.ndarray) -> tuple[float, float]:
    """p50 and p99 milliseconds of one-query searches."""
    times = []
    for q in queries:
        start = time.perf_counter()
        index.search(q[None], K)
        times.append(time.perf_counter() - start)
    return tuple(1000 * np.percentile(times, [50, 99]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--bits", type=int, nargs="+", default=[64, 256])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--float-size", type=int, default=100_000)
    p.add_argument("--float-queries", type=int, default=50)
    p.add_argument("--hnsw-size", type=int, default=0, help="0: skip the HNSW row")
    p.add_argument("--threads", type=int, default=None, help="faiss OpenMP threads")
    args = p.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(
        f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, "
        f"GPU: {'yes' if gpu_available() else 'no'}, {os.cpu_count()} CPUs; "
        f"single-query k={K} searches"
    )

    start = time.perf_counter()
    xb = rng.standard_normal((args.float_size, 4096), dtype=np.float32)
    flat = faiss.IndexFlatL2(4096)
    flat.add(xb)
    float_build = time.perf_counter() - start  # includes generating the data
    del xb
    xq = rng.standard_normal((args.float_queries, 4096), dtype=np.float32)
    f50, f99 = latencies(flat, xq)
    del flat
    rows = [("float32 L2 (IndexFlatL2)", args.float_size, 4096 * 4, float_build, f50, f99, 1.0)]

    for n in args.sizes:
        for bits in args.bits:
            codes = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
            queries = rng.integers(0, 256, (args.queries, bits // 8), dtype=np.uint8)
            start = time.perf_counter()
            index = to_device(build_index(codes, kind="flat"))
            build = time.perf_counter() - start
            p50, p99 = latencies(index, queries)
            rows.append((f"{bits}-bit Hamming (flat)", n, bits // 8, build, p50, p99, 1.0))
    if args.hnsw_size:
        codes = rng.integers(0, 256, (args.hnsw_size, 8), dtype=np.uint8)
        start = time.perf_counter()
        index = build_index(codes, kind="hnsw")
        build = time.perf_counter() - start
        p50, p99 = latencies(index, rng.integers(0, 256, (args.queries, 8), dtype=np.uint8))
        rows.append(
            (
                "64-bit Hamming (HNSW)",
                args.hnsw_size,
                8,
                build,
                p50,
                p99,
                measure_recall(index, codes, sample=500),
            )
        )

    print(
        f"{'index':26}{'images':>10}{'bytes/img':>10}{'build s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'recall':>8}{'mem x':>8}{'p50 x':>8}"
    )
    for name, n, nbytes, build, p50, p99, recall in rows:
        print(
            f"{name:26}{n:10d}{nbytes:10d}{build:9.2f}{p50:9.3f}{p99:9.3f}{recall:8.3f}"
            f"{4096 * 4 / nbytes:8.0f}{f50 / p50:8.1f}"
        )
    print(
        f"mem x: float32 bytes per image / this index's; p50 x: the float index's p50 (at "
        f"{args.float_size} images) / this p50 (at this row's size)"
    )


if __name__ == "__main__":
    main()
