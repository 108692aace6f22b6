"""Binary-code search at 10^7 images on one machine: which index holds recall@10 >= 0.99 at
p50 <= 1 ms per query, and what Milvus (Lite) costs beside it.

    python bench/scale_codes.py [--size 10000000] [--lists 1024 4096] [--queries 200]
                                [--hnsw-size 1000000] [--milvus-size 100000]
                                [--threads 1] [--time-limit 1800]

For random 64-bit codes (uniform: nothing for an index to group, the worst case) and
structured ones (1000 Gaussian clusters through 64 random hyperplanes, as bench/retrieval.py
makes them; closer to an autoencoder's codes of photos), at --size codes each:
  flat   faiss.IndexBinaryFlat, the exact scan
  IVF    faiss.IndexBinaryIVF with each of --lists k-means lists (trained on 50 codes per
         list), nprobe doubled from 1 until recall@10 >= 0.99 (then 3/4 of that tried)
  HNSW   faiss.IndexBinaryHNSW (M 32) at --hnsw-size codes (its build grows too fast for
         10^7 here), efSearch likewise from 16
  Milvus alexnet.retrieval.milvus on Milvus Lite (BIN_FLAT, exact) at --milvus-size codes,
         over its local gRPC socket, in a temporary folder
Each row: build seconds (Milvus: the upserts), resident memory gained (Milvus: the server
process's), p50/p99 of single-query k=10 searches with --threads faiss threads (one query at
a time, as `alexnet search`), and recall@10 of --queries queries (fresh codes of the same
kind) against the exact answer of the flat scan, tie-aware as measure_recall counts (a hit
counts when no farther than the exact 10th). The nprobe and efSearch sweeps measure recall
with batched searches on every core. --time-limit stops between rows, printing what was
left out; each row prints as soon as it is measured.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from alexnet.retrieval.defaults import IVF_LISTS
from retrieval import latencies, random_codes, resident_mb, structured_codes

K = 10
TARGET = 0.99
TRAIN_PER_LIST = 50


def recall(D: np.ndarray, I: np.ndarray, exact_D: np.ndarray) -> float:
    found = ((D <= exact_D[:, -1:]) & (I >= 0)).sum(1)
    return float(np.minimum(found, K).mean() / K)


def ivf(codes: np.ndarray, lists: int) -> faiss.IndexBinaryIVF:
    quantizer = faiss.IndexBinaryFlat(64)
    index = faiss.IndexBinaryIVF(quantizer, 64, lists)
    index.own_fields = True
    quantizer.this.disown()
    rows = np.random.default_rng(0).choice(len(codes), TRAIN_PER_LIST * lists, replace=False)
    index.train(codes[np.sort(rows)])
    index.add(codes)
    return index


def sweep(index, knob_name: str, queries, exact_D, start: int, stop: int) -> tuple[int, float]:
    """The smallest knob (`start` doubled, then 3/4 of the first that does) whose
    recall reaches TARGET; else `stop`. Batched on every core."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(os.cpu_count())

    def set_knob(knob: int) -> None:
        setattr(index.hnsw if knob_name == "efSearch" else index, knob_name, knob)

    def measure(knob: int) -> float:
        set_knob(knob)
        return recall(*index.search(queries, K), exact_D)

    knob = start
    while (rec := measure(knob)) < TARGET and knob < stop:
        knob = min(2 * knob, stop)
    if knob >= 4 * start and (mid := measure(knob * 3 // 4)) >= TARGET:
        knob, rec = knob * 3 // 4, mid  # between two powers of two
    set_knob(knob)
    faiss.omp_set_num_threads(threads)
    return knob, rec


def server_mb() -> float:
    """Resident MB of this process's children (Milvus Lite's server runs as one)."""
    total = 0
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return total / 2**20


def milvus_row(codes, queries, exact_D):
    from alexnet.retrieval import milvus

    with tempfile.TemporaryDirectory() as tmp:
        client = milvus.connect(str(Path(tmp) / "codes.db"))
        store = milvus.MilvusCodes(client, "bench", 64, "bench")
        ids = np.arange(len(codes))
        names = [f"{i}.jpg" for i in ids]
        start = time.perf_counter()
        store.upsert(ids, codes, names, ["c"] * len(ids), names)
        store.count()  # waits until every row is visible
        build = time.perf_counter() - start
        p50, p99 = latencies(store, queries)
        row = ("Milvus Lite BIN_FLAT", build, server_mb(), p50, p99)
        row += (recall(*store.search(queries, K), exact_D),)
        client.close()
    return row


def rows(args, name: str, codes: np.ndarray, queries: np.ndarray, deadline: float):
    """(label, build s, MB, p50, p99, recall) of each index over these codes."""
    before, start = resident_mb(), time.perf_counter()
    flat = faiss.IndexBinaryFlat(64)
    flat.add(codes)
    build, mb = time.perf_counter() - start, resident_mb() - before
    faiss.omp_set_num_threads(os.cpu_count())
    exact_D, _ = flat.search(queries, K)
    faiss.omp_set_num_threads(args.threads)
    yield (f"flat, {name}", len(codes), build, mb, *latencies(flat, queries), 1.0)
    for lists in args.lists:
        if time.perf_counter() > deadline:
            print(f"time limit: IVF {lists} lists on {name} codes left out", flush=True)
            continue
        before, start = resident_mb(), time.perf_counter()
        index = ivf(codes, lists)
        build, mb = time.perf_counter() - start, resident_mb() - before
        knob, rec = sweep(index, "nprobe", queries, exact_D, 1, lists)
        label = f"IVF {lists}/{knob}, {name}"
        yield (label, len(codes), build, mb, *latencies(index, queries), rec)
        del index
    n = min(args.hnsw_size, len(codes))
    if n and time.perf_counter() < deadline:
        sub = faiss.IndexBinaryFlat(64)
        sub.add(codes[:n])
        sub_D, _ = sub.search(queries, K)
        before, start = resident_mb(), time.perf_counter()
        index = faiss.IndexBinaryHNSW(64, 32)
        index.add(codes[:n])
        build, mb = time.perf_counter() - start, resident_mb() - before
        knob, rec = sweep(index, "efSearch", queries, sub_D, 16, 4096)
        yield (f"HNSW ef {knob}, {name}", n, build, mb, *latencies(index, queries), rec)
    n = min(args.milvus_size, len(codes))
    if n and time.perf_counter() < deadline:
        sub = faiss.IndexBinaryFlat(64)
        sub.add(codes[:n])
        label, *measured = milvus_row(codes[:n], queries, sub.search(queries, K)[0])
        yield (f"{label}, {name}", n, *measured)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=10_000_000)
    p.add_argument("--lists", type=int, nargs="*", default=[IVF_LISTS, 4 * IVF_LISTS])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--hnsw-size", type=int, default=1_000_000, help="0: no HNSW row")
    p.add_argument("--milvus-size", type=int, default=100_000, help="0: no Milvus row")
    p.add_argument("--threads", type=int, default=1, help="faiss threads of single queries")
    p.add_argument("--time-limit", type=float, default=1800, help="seconds; then stop")
    args = p.parse_args()
    deadline = time.perf_counter() + args.time_limit
    faiss.omp_set_num_threads(args.threads)
    print(
        f"faiss {faiss.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
        f"single-query k={K} searches on {args.threads} thread(s), {args.queries} queries"
    )
    print(
        f"{'index':32}{'codes':>10}{'build s':>9}{'MB':>7}{'p50 ms':>9}{'p99 ms':>9}{'recall':>8}"
    )
    rng = np.random.default_rng(0)
    centres = 3 * rng.standard_normal((1000, 128), dtype=np.float32)
    planes = rng.standard_normal((128, 64), dtype=np.float32)
    for name, make in (
        ("random", lambda m: random_codes(rng, m)),
        ("structured", lambda m: structured_codes(rng, m, centres, planes)),
    ):
        if time.perf_counter() > deadline:
            print(f"time limit: {name} codes left out")
            continue
        codes, queries = make(args.size), make(args.queries)
        for label, n, build, mb, p50, p99, rec in rows(args, name, codes, queries, deadline):
            print(
                f"{label:32}{n:10d}{build:9.1f}{mb:7.0f}{p50:9.3f}{p99:9.3f}{rec:8.3f}",
                flush=True,
            )
        del codes


if __name__ == "__main__":
    main()
