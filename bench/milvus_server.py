"""10^6 codes in a real Milvus server beside FAISS, in one run: load time, p50/p99 per query,
recall@10 against the exact scan, memory; and the nprobe chosen for the codes against 512.

    python bench/milvus_server.py [--size 1000000] [--queries 200] [--threads 1]
                                  [--kinds structured random]

For each kind of 64-bit codes (bench/retrieval.py's: "structured", 1000 Gaussian clusters
through 64 random hyperplanes, closer to an autoencoder's codes of photos; "random",
uniform, the worst case), --size codes and --queries fresh ones of the same kind:
  flat        faiss.IndexBinaryFlat, the exact scan (the reference of every recall)
  IVF tuned   build_index(kind="ivf"): 1024 lists, nprobe chosen by index.tune_nprobe (the
              fewest lists holding recall@10 >= 0.99 on 1000 of the codes); build seconds
              include the choice
  IVF 512     the same index at nprobe 512, the former fixed default
  Milvus      a Milvus 2.3 standalone server (the milvus-server extra, started here by
              tests/milvus_servers.py in a temporary folder): the codes synced by
              remote.sync as `alexnet index --milvus` sends them (digests, paths of
              ImageNet's length, classes, column-wise batches, the final flush), load
              seconds; then the wait until the server has built BIN_IVF_FLAT on every
              sealed segment; searched with the local index's share of lists (tuned), and
              at 512 of 1024
Single-query k=10 searches (one query at a time, as `alexnet search`), faiss on --threads
threads; Milvus over its local gRPC port. MB: resident memory the process gained building
the index; for Milvus the server process's whole resident memory (VmRSS) after the searches.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from alexnet.retrieval import milvus, remote
from alexnet.retrieval.index import build_index
from retrieval import random_codes, resident_mb, structured_codes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from milvus_servers import start_server, stop  # noqa: E402

K = 10
OLD_NPROBE = 512


def recall(D: np.ndarray, I: np.ndarray, exact_D: np.ndarray) -> float:
    found = ((D <= exact_D[:, -1:]) & (I >= 0)).sum(1)
    return float(np.minimum(found, K).mean() / K)


def single_queries(search, queries: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
    """p50, p99 ms of one query at a time, and the (D, I) found."""
    times, D, I = [], [], []
    for q in queries:
        start = time.perf_counter()
        d, i = search(q[None])
        times.append(time.perf_counter() - start)
        D.append(d[0])
        I.append(i[0])
    p50, p99 = 1000 * np.percentile(times, [50, 99])
    return p50, p99, np.array(D), np.array(I)


def server_mb(server) -> float:
    status = Path(f"/proc/{server.server_proc.pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1]) / 1024


def row(name: str, n: int, build: float, mb: float, p50: float, p99: float, r: float) -> None:
    print(f"{name:44} {n:9d} {build:8.1f} {mb:7.0f} {p50:8.3f} {p99:8.3f} {r:7.3f}", flush=True)


def wait_indexed(store, n: int) -> None:
    """Until the server has built its index over all n rows."""
    while True:
        described = store.client.describe_index(store.name, "code")
        if int(described.get("indexed_rows", 0)) >= n and not described.get("pending_index_rows"):
            return
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kinds", nargs="+", default=["structured", "random"])
    parser.add_argument(
        "--row-wise", type=int, default=100_000, help="codes sent the former way (0: skip)"
    )
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    centres = 3 * rng.standard_normal((1000, 128), dtype=np.float32)
    planes = rng.standard_normal((128, 64), dtype=np.float32)
    load = os.getloadavg()[0]
    print(f"faiss {faiss.__version__}, {os.cpu_count()} CPUs, load {load:.1f}; {args.queries} "
          f"single-query k={K} searches, faiss on {args.threads} thread(s)")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp))
        try:
            client = milvus.connect(f"http://127.0.0.1:{server.listen_port}")
            print(f"{'index':44} {'codes':>9} {'build s':>8} {'MB':>7} {'p50 ms':>8} "
                  f"{'p99 ms':>8} {'recall':>7}")  # fmt: skip
            for kind in args.kinds:
                if kind == "random":
                    codes, queries = random_codes(rng, args.size), random_codes(rng, args.queries)
                else:
                    codes = structured_codes(rng, args.size, centres, planes)
                    queries = structured_codes(rng, args.queries, centres, planes)
                measure(client, server, kind, codes, queries)
                if args.row_wise:
                    row_wise(client, codes[: args.row_wise])
        finally:
            stop(server)


def measure(client, server, kind: str, codes: np.ndarray, queries: np.ndarray) -> None:
    n = len(codes)
    before, start = resident_mb(), time.perf_counter()
    flat = build_index(codes, kind="flat")
    flat_build, flat_mb = time.perf_counter() - start, resident_mb() - before
    p50, p99, exact_D, _ = single_queries(lambda q: flat.search(q, K), queries)
    row(f"flat, {kind}", n, flat_build, flat_mb, p50, p99, 1.0)

    before, start = resident_mb(), time.perf_counter()
    ivf = build_index(codes, kind="ivf")  # nprobe chosen for the codes
    build, mb = time.perf_counter() - start, resident_mb() - before
    tuned = ivf.nprobe
    for nprobe in (tuned, OLD_NPROBE):
        ivf.nprobe = nprobe
        p50, p99, D, I = single_queries(lambda q: ivf.search(q, K), queries)
        what = "tuned" if nprobe == tuned else "former default"
        row(f"IVF {ivf.nlist}/{nprobe} ({what}), {kind}", n, build, mb, p50, p99,
            recall(D, I, exact_D))  # fmt: skip

    ids = np.arange(n, dtype=np.int64)
    name = milvus.collection_name(f"bench-{kind}", str(n))
    store = milvus.MilvusCodes(client, name, 64, "bench", probe=(tuned, ivf.nlist))
    start = time.perf_counter()
    digests = remote.digests(codes, 100_000 + ids % 50_000, 1_700_000_000_000_000_000 + ids)

    def records(at: np.ndarray) -> tuple[list[str], list[str]]:
        wnids = [f"n{1440764 + i % 1000:08d}" for i in at]
        paths = [f"/data/imagenet/train/{w}/{w}_{i}.JPEG" for w, i in zip(wnids, at, strict=True)]
        return paths, wnids

    done = remote.sync(store, ids, codes, digests, records)
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    wait_indexed(store, n)
    indexed = time.perf_counter() - start
    print(f"  Milvus: {done['inserted']} codes synced in {loaded:.1f} s "
          f"({done['inserted'] / loaded:,.0f} a second, flush included); "
          f"BIN_IVF_FLAT built on every segment {indexed:.1f} s later", flush=True)  # fmt: skip
    for nprobe in (store.nprobe, OLD_NPROBE):
        store.nprobe = nprobe
        p50, p99, D, I = single_queries(lambda q: store.search(q, K), queries)
        what = "tuned share" if nprobe != OLD_NPROBE else "former default"
        row(f"Milvus {store.lists}/{nprobe} ({what}), {kind}", n, loaded, server_mb(server),
            p50, p99, recall(D, I, exact_D))  # fmt: skip
    store.drop()


def row_wise(client, codes: np.ndarray) -> None:
    """The former load, for comparison: lists of row dicts, 5000 a request (pymilvus packs
    each row's values one by one), into a collection of its own; then the same flush."""
    name = milvus.collection_name("bench-rows", str(len(codes)))
    store = milvus.MilvusCodes(client, name, 64, "bench")
    ids = np.arange(len(codes))
    digests = remote.digests(codes, 100_000 + ids % 50_000, 1_700_000_000_000_000_000 + ids)
    start = time.perf_counter()
    for s in range(0, len(codes), 5000):
        rows = [
            {"id": int(i), "code": codes[i].tobytes(), "path": f"/data/imagenet/train/x/x_{i}.JPEG",
             "class": "x", "digest": digests[i]}
            for i in ids[s : s + 5000]
        ]  # fmt: skip
        client.upsert(name, rows, timeout=milvus.CALL_TIMEOUT)
    store.flush()
    took = time.perf_counter() - start
    print(f"  the former row-wise load: {len(codes)} codes in {took:.1f} s "
          f"({len(codes) / took:,.0f} a second, flush included)", flush=True)  # fmt: skip
    store.drop()


if __name__ == "__main__":
    main()
