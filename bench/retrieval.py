"""Retrieval benchmark: binary codes in FAISS against exact float search over 4096-d fc7.

    python bench/retrieval.py [--sizes 100000 1000000] [--bits 64 256] [--queries 200]
                              [--float-size 100000] [--hnsw-size 100000] [--threads N]
                              [--ivf-sizes 1000000 10000000]

Synthetic data (uniform random codes, standard normal float vectors: search cost does not
depend on the values). For each size and code length: build time and bytes per image of
alexnet.retrieval.index.build_index (IndexBinaryFlat, exact Hamming), and the p50/p99 latency
of single-query k=10 searches (one query at a time, as `alexnet search` with one image).
The baseline is faiss.IndexFlatL2 over float32 4096-d vectors at --float-size images; the
ratios compare each binary index with it. With --hnsw-size, an IndexBinaryHNSW (the
approximate index used above the size threshold) is built too, with its recall@10 against
exact search. With --ivf-sizes, the index `build_index` chooses above the size threshold
(IndexBinaryIVF, 64 bits) at each size, on random codes (the worst case: no structure for
its lists to follow) and on structured codes (clustered Gaussian points through random
hyperplanes, as an autoencoder's codes of similar images cluster), each beside the flat scan
of the same codes, with recall@10 of the query set against exact search (tie-aware, as
measure_recall counts) and the resident memory the process gained while building it. On a
host with a GPU the flat indexes would be searched there (to_device);
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
CHUNK = 1_000_000  # codes generated per step, so 10^7 codes never exist as floats at once


def latencies(index, queries: np.ndarray) -> tuple[float, float]:
    """p50 and p99 milliseconds of one-query searches."""
    times = []
    for q in queries:
        start = time.perf_counter()
        index.search(q[None], K)
        times.append(time.perf_counter() - start)
    return tuple(1000 * np.percentile(times, [50, 99]))


def random_codes(rng, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 8), dtype=np.uint8)


def structured_codes(rng, n: int, centres: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """64-bit codes of points around random centres, by the sign of random projections."""
    parts = []
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        x = centres[rng.integers(0, len(centres), m)]
        x += rng.standard_normal(x.shape, dtype=np.float32)
        parts.append(np.packbits(x @ planes > 0, axis=1))
    return np.concatenate(parts)


def recall(index, exact, queries: np.ndarray) -> float:
    Dx, _ = exact.search(queries, K)
    D, I = index.search(queries, K)
    return float(np.minimum(((D <= Dx[:, -1:]) & (I >= 0)).sum(1), K).mean() / K)


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def ivf_rows(rng, sizes: list[int], n_queries: int):
    """Yields each row as soon as it is measured (the 10^7 rows take minutes)."""
    centres = 3 * rng.standard_normal((1000, 128), dtype=np.float32)
    planes = rng.standard_normal((128, 64), dtype=np.float32)
    for n in sizes:
        for name, make in (
            ("random", lambda m: random_codes(rng, m)),
            ("structured", lambda m: structured_codes(rng, m, centres, planes)),
        ):
            codes, queries = make(n), make(n_queries)
            before = resident_mb()
            start = time.perf_counter()
            exact = build_index(codes, kind="flat")
            flat_build, flat_mb = time.perf_counter() - start, resident_mb() - before
            p50, p99 = latencies(exact, queries)
            yield f"64 flat, {name}", n, flat_build, p50, p99, 1.0, flat_mb
            before = resident_mb()
            start = time.perf_counter()
            index = build_index(codes, kind="ivf")
            build, mb = time.perf_counter() - start, resident_mb() - before
            p50, p99 = latencies(index, queries)
            yield f"64 IVF, {name}", n, build, p50, p99, recall(index, exact, queries), mb
            del codes, exact, index


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--bits", type=int, nargs="+", default=[64, 256])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--float-size", type=int, default=100_000)
    p.add_argument("--float-queries", type=int, default=50)
    p.add_argument("--hnsw-size", type=int, default=0, help="0: skip the HNSW row")
    p.add_argument("--threads", type=int, default=None, help="faiss OpenMP threads")
    p.add_argument("--ivf-sizes", type=int, nargs="*", default=[], help="IVF rows at these sizes")
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
    if args.ivf_sizes:
        print(
            f"\n{'index':26}{'images':>10}{'build s':>9}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'recall':>8}{'RSS MB':>8}{'flat/this p50':>15}"
        )
        for name, n, build, p50, p99, rec, mb in ivf_rows(rng, args.ivf_sizes, args.queries):
            if "flat" in name:
                flat50 = p50
            print(
                f"{name:26}{n:10d}{build:9.2f}{p50:9.3f}{p99:9.3f}{rec:8.3f}{mb:8.0f}"
                f"{flat50 / p50:15.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
