"""eval-retrieval's memory and time at ImageNet's size, on synthetic fc7 features.

    python bench/eval_memory.py [--images 1000000] [--queries 200] [--old-images 100000]
                                [--dir /tmp] [--keep]

Writes a synthetic float16 features file as `alexnet index` does (--images x 4096, 8 GB at
10^6: 1000 classes, each row ReLU(class centre + noise), classes in turn) and queries from the
same classes, then measures, each in a fresh process (so that its peak resident memory,
VmHWM in /proc/self/status, is its own):

  new   what eval-retrieval now runs on a database: the ITQ / PCA-sign / LSH baselines fitted
        and the database encoded (retrieval.baselines, streamed from the memory map), then
        retrieval.evaluate.evaluate_modes over them with ITQ + fc7 re-rank, the float fc7
        mode (streamed) and no pixels (there are no images); the autoencoder's codes are
        one more code array of 8 bytes per image.
  old   the former memory pattern, re-created here (the former code needed a run with
        images): the database's fc7 copied to float32 (16 KB per image) and added to a
        faiss.IndexFlatL2 (a second copy), then every 64 queries ranked against full-length
        distances. Only at --old-images: at 10^6 it would need ~33 GB.

Prints one line per measurement: images, seconds of each stage, peak RSS (VmHWM) and the
resident memory at the end split into anonymous and file-backed pages. The synthetic files
are deleted at the end unless --keep. BENCHMARKS.md ("eval-retrieval at 10^6 images") has
the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM, CLASSES, BITS, K, RERANK = 4096, 1000, 64, 10, 100
SCRIPT = str(Path(__file__).resolve())


def status() -> dict:
    """VmHWM, VmRSS, RssAnon, RssFile of this process, in MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def synthetic(folder: Path, images: int, queries: int, seed: int = 0) -> None:
    """folder/features.f16.npy (images x 4096 float16), folder/queries.npz (float32 rows and
    labels); database labels are row % CLASSES."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLASSES, DIM)).astype(np.float32)

    def rows(labels):
        noise = rng.standard_normal((len(labels), DIM), dtype=np.float32)
        return np.maximum(centres[labels] + 1.5 * noise, 0)

    out = np.lib.format.open_memmap(
        folder / "features.f16.npy", mode="w+", dtype=np.float16, shape=(images, DIM)
    )
    for s in range(0, images, 16384):
        labels = np.arange(s, min(s + 16384, images)) % CLASSES
        out[s : s + len(labels)] = rows(labels)
    out.flush()
    del out
    q_labels = rng.integers(0, CLASSES, queries)
    np.savez(folder / "queries.npz", q=rows(q_labels).astype(np.float16), labels=q_labels)


def measure_new(folder: Path) -> dict:
    from alexnet.retrieval import baselines as bl
    from alexnet.retrieval.evaluate import evaluate_modes

    features = np.load(folder / "features.f16.npy", mmap_mode="r")
    z = np.load(folder / "queries.npz")
    queries, q_labels = z["q"].astype(np.float32), z["labels"]
    labels = np.arange(len(features)) % CLASSES
    t = {}
    start = time.perf_counter()
    fit = bl.fit_baselines(features, BITS)
    t["fit"] = time.perf_counter() - start
    start = time.perf_counter()
    db_codes = bl.encode(fit, features)
    t["encode"] = time.perf_counter() - start
    codes = {
        name: (db_codes[name], lambda x, p=fit[name]: bl.encode({p.name: p}, x)[p.name])
        for name in fit
    }
    start = time.perf_counter()
    modes = evaluate_modes(
        features, labels, queries, q_labels, codes=codes, rerank_of="itq", k=K, rerank_top=RERANK
    )
    t["evaluate"] = time.perf_counter() - start
    return {
        "seconds": t,
        "memory": status(),
        "p_at_10": {m: r["precision_at_10"] for m, r in modes.items()},
    }


def measure_old(folder: Path) -> dict:
    """The former evaluation's memory pattern (module docstring), on the fc7 mode and one
    code mode: what held memory in it."""
    import faiss

    from alexnet.retrieval.evaluate import rank_by, squared_l2
    from alexnet.retrieval.index import hamming

    features = np.load(folder / "features.f16.npy", mmap_mode="r")
    z = np.load(folder / "queries.npz")
    queries, q_labels = z["q"].astype(np.float32), z["labels"]
    labels = np.arange(len(features)) % CLASSES
    rng = np.random.default_rng(0)
    db_codes = rng.integers(0, 256, (len(features), BITS // 8), dtype=np.uint8)
    q_codes = rng.integers(0, 256, (len(queries), BITS // 8), dtype=np.uint8)
    tie_order = rng.permutation(len(features))
    t = {}
    start = time.perf_counter()
    db = np.asarray(features, np.float32)
    index = faiss.IndexFlatL2(DIM)
    index.add(db)
    index.search(queries, K)
    t["load+search"] = time.perf_counter() - start
    start = time.perf_counter()
    precision = []
    for s in range(0, len(queries), 64):
        rows = slice(s, s + 64)
        for d in (hamming(q_codes[rows], db_codes), squared_l2(queries[rows], db)):
            relevant = labels[rank_by(d, tie_order)] == q_labels[rows, None]
            hits = np.cumsum(relevant, axis=1)  # the former average_precision's arrays
            ap = (hits / np.arange(1, relevant.shape[1] + 1) * relevant).sum(1)
            precision.append(relevant[:, :K].mean(1) + 0 * ap)
    t["evaluate"] = time.perf_counter() - start
    return {"seconds": t, "memory": status()}


def run(kind: str, folder: Path) -> dict:
    out = subprocess.run(
        [sys.executable, SCRIPT, "--measure", kind, "--dir", str(folder)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(kind: str, images: int, queries: int, r: dict) -> str:
    m = r["memory"]
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in r["seconds"].items())
    return (
        f"{kind:4} {images:>9,} images x {queries} queries: {stages}; peak RSS (VmHWM) "
        f"{m['VmHWM'] / 1024:.2f} GB; at the end RSS {m['VmRSS'] / 1024:.2f} GB "
        f"(anonymous {m['RssAnon'] / 1024:.2f}, file-backed {m['RssFile'] / 1024:.2f})"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--old-images", type=int, default=100_000)
    p.add_argument("--dir", type=Path, default=Path("/tmp"))
    p.add_argument("--keep", action="store_true")
    p.add_argument("--measure", choices=("new", "old"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        fn = measure_new if args.measure == "new" else measure_old
        print(json.dumps(fn(args.dir)))
        return

    need = args.images * DIM * 2 * 1.1
    free = shutil.disk_usage(args.dir).free
    if need > free:
        sys.exit(f"{args.dir} has {free / 1e9:.1f} GB free, the features need {need / 1e9:.1f}")
    print(f"{args.queries} queries; {BITS}-bit codes; k={K}; re-rank top {RERANK}", flush=True)
    for images, kinds in ((args.old_images, ("old", "new")), (args.images, ("new",))):
        folder = Path(tempfile.mkdtemp(prefix="eval-memory-", dir=args.dir))
        try:
            start = time.perf_counter()
            synthetic(folder, images, args.queries)
            print(f"synthetic {images:,} x {DIM} float16: {time.perf_counter() - start:.0f} s")
            for kind in kinds:
                print(report(kind, images, args.queries, run(kind, folder)), flush=True)
        finally:
            if args.keep:
                print(f"kept: {folder}")
            else:
                shutil.rmtree(folder)


if __name__ == "__main__":
    main()
