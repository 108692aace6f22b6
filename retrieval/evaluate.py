"""eval-retrieval: how well each representation retrieves images of the query's class.

Paper, section 6.1 (figure 4, right): fc7 neighbours share the query's content even when
their pixels are far apart in L2. Queries are the validation images, the database is the
training set, and a result is relevant when it has the query's class. Modes:

- "hamming": the autoencoder's binary codes, ranked by Hamming distance.
- "hamming+rerank": the top R by Hamming re-ordered by Euclidean fc7 distance (the rest of
  the ranking keeps its Hamming order).
- "fc7_euclidean": exact Euclidean distance between float fc7 vectors.
- "pixels_euclidean": Euclidean distance between raw pixels of the 256x256 centre patches
  (the prep pipeline's output), area-averaged down to `pixel_size` (default 32: the 32x32
  images of Krizhevsky & Hinton 2011, and 64x smaller; pass 256 for the full patch).

For each: mean precision@k, mean average precision over the full ranking of the training set,
bytes per database image as searched (codes; codes + float16 fc7 for the re-rank; float32
vectors for the exact searches), and the query time (ms per query, batched, excluding the
network's forward pass which all fc7 modes share; encoding and re-ranking are included).
Hamming distances tie often; ties are broken in a fixed random order of the database, not in
manifest order, which is sorted by class and would favour the first classes.

Unlike search, this holds the training set's fc7 as float32 (16 KB per image) and its pixel
vectors in memory, and ranks the whole database for every query (CHUNK queries at a time):
it is meant for validation sets of up to some tens of thousands of images (--max-queries
samples the queries of a larger one).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import faiss
import numpy as np

from alexnet.pipeline.dali import SIZE, Loader, default_device, pipe_options, prep_pipeline
from alexnet.pipeline.dataset import split_files, verify_files
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.files import write_json
from alexnet.pipeline.layout import RunPaths

from . import autoencoder as ae
from .defaults import EVAL_RERANK, PIXEL_SIZE, K
from .features import DIM, query_features
from .index import RunIndex, hamming, rerank

log = logging.getLogger(__name__)

CHUNK = 64  # queries ranked at a time: memory is CHUNK x database size


def average_precision(relevant: np.ndarray) -> np.ndarray:
    """AP of each row of a (Q, N) boolean relevance matrix in rank order (0 with no relevant)."""
    hits = np.cumsum(relevant, axis=1)
    precision = hits / np.arange(1, relevant.shape[1] + 1)
    total = relevant.sum(1)
    return np.where(total > 0, (precision * relevant).sum(1) / np.maximum(total, 1), 0.0)


def rank_by(distances: np.ndarray, tie_order: np.ndarray) -> np.ndarray:
    """Database ids sorted by distance, ties in `tie_order` (a permutation of the ids)."""
    order = np.argsort(distances[:, tie_order], axis=1, kind="stable")
    return tie_order[order]


def squared_l2(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    return (queries**2).sum(1)[:, None] - 2 * queries @ database.T + (database**2).sum(1)[None]


def pixel_vectors(
    files: list[str], size: int = 32, *, batch_size: int = 32, num_threads: int | None = None
) -> np.ndarray:
    """float32 (n, size*size*3): the prep pipeline's 256x256 centre patches, area-averaged."""
    if SIZE % size:
        raise AlexnetError(f"--pixel-size must divide {SIZE}, got {size}")
    f = SIZE // size
    device = default_device()
    pipe = prep_pipeline(
        files, device=device, **pipe_options(device, min(batch_size, len(files)), 0, num_threads)
    )
    out = []
    for (images,) in Loader(pipe, outputs=("images",)):
        x = images.cpu().numpy().astype(np.float32).reshape(len(images), size, f, size, f, 3)
        out.append(x.mean((2, 4)).reshape(len(images), -1))
    return np.concatenate(out)


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def evaluate_retrieval(
    ri: RunIndex,
    *,
    k: int = K,
    rerank_top: int = EVAL_RERANK,
    pixel_size: int = PIXEL_SIZE,
    max_queries: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Precision@k, mAP, bytes per image and query time of the four modes (module docstring)."""
    net = ri.trained
    verify_files(net.manifest)  # every file is read below, for the raw-pixel baseline
    db_files, db_labels = split_files(net.manifest, "train")
    q_files, q_labels = split_files(net.manifest, "val")
    if not q_files:
        raise AlexnetError(
            "the run has no validation images to use as queries: "
            "rerun `alexnet prep` with --val-fraction above 0"
        )
    rng = np.random.default_rng(seed)
    if max_queries and len(q_files) > max_queries:
        keep = np.sort(rng.choice(len(q_files), max_queries, replace=False))
        q_files, q_labels = [q_files[i] for i in keep], [q_labels[i] for i in keep]
    n = len(db_files)
    k = min(k, n)
    rerank_top = min(max(rerank_top, k), n)
    db_labels, q_labels = np.array(db_labels), np.array(q_labels)
    tie_order = rng.permutation(n)

    q_fc7 = query_features(net, q_files, progress=progress)
    q_codes = ae.encode(ri.autoencoder, q_fc7)
    db_fc7 = np.asarray(ri.features, np.float32)
    log.info(
        "raw pixels at %dx%d of %d training and %d validation images",
        pixel_size,
        pixel_size,
        n,
        len(q_files),
    )
    threads = net.config.num_threads
    db_pix = pixel_vectors(db_files, pixel_size, num_threads=threads)
    q_pix = pixel_vectors(q_files, pixel_size, num_threads=threads)

    def flat_l2(db):
        index = faiss.IndexFlatL2(db.shape[1])
        index.add(db)
        return index

    fc7_index, pix_index = flat_l2(db_fc7), flat_l2(db_pix)
    times = {
        "hamming": _timed(lambda: ri.query(q_fc7, k))[0],
        "hamming+rerank": _timed(lambda: ri.query(q_fc7, k, rerank_top))[0],
        "fc7_euclidean": _timed(lambda: fc7_index.search(q_fc7, k))[0],
        "pixels_euclidean": _timed(lambda: pix_index.search(q_pix, k))[0],
    }
    code_bytes = ri.codes.shape[1]
    bytes_per_image = {
        "hamming": code_bytes,
        "hamming+rerank": code_bytes + 2 * DIM,
        "fc7_euclidean": 4 * DIM,
        "pixels_euclidean": 4 * db_pix.shape[1],
    }

    precision = {m: [] for m in times}
    aps = {m: [] for m in times}
    for s in range(0, len(q_files), CHUNK):
        rows = slice(s, s + CHUNK)
        by_hamming = rank_by(hamming(q_codes[rows], ri.codes), tie_order)
        _, top = rerank(ri.features, q_fc7[rows], by_hamming[:, :rerank_top], rerank_top)
        rankings = {
            "hamming": by_hamming,
            "hamming+rerank": np.concatenate([top, by_hamming[:, rerank_top:]], axis=1),
            "fc7_euclidean": rank_by(squared_l2(q_fc7[rows], db_fc7), tie_order),
            "pixels_euclidean": rank_by(squared_l2(q_pix[rows], db_pix), tie_order),
        }
        for mode, ranking in rankings.items():
            relevant = db_labels[ranking] == q_labels[rows, None]
            precision[mode].append(relevant[:, :k].mean(1))
            aps[mode].append(average_precision(relevant))

    modes = {
        m: {
            f"precision_at_{k}": float(np.concatenate(precision[m]).mean()),
            "map": float(np.concatenate(aps[m]).mean()),
            "bytes_per_image": int(bytes_per_image[m]),
            "query_ms": 1000 * times[m] / len(q_files),
        }
        for m in times
    }
    return {
        "checkpoint": str(net.checkpoint),
        "queries": len(q_files),
        "database": n,
        "k": k,
        "bits": int(code_bytes * 8),
        "rerank": rerank_top,
        "pixel_size": pixel_size,
        "index": ri.meta.get("kind"),
        "chance_precision": float(np.mean([np.mean(db_labels == c) for c in q_labels])),
        "modes": modes,
    }


def format_table(result: dict) -> str:
    k = result["k"]
    lines = [
        f"{result['queries']} validation queries against {result['database']} training "
        "images; "
        f"{result['bits']}-bit codes, re-rank top {result['rerank']}, pixels at "
        f"{result['pixel_size']}x{result['pixel_size']}; chance precision "
        f"{result['chance_precision']:.3f}",
        f"{'mode':18}{f'P@{k}':>8}{'mAP':>8}{'bytes/img':>11}{'ms/query':>10}",
    ]
    for mode, r in result["modes"].items():
        lines.append(
            f"{mode:18}{r[f'precision_at_{k}']:8.3f}{r['map']:8.3f}{r['bytes_per_image']:11d}"
            f"{r['query_ms']:10.3f}"
        )
    return "\n".join(lines)


def write_result(result: dict, run: str | Path) -> Path:
    return write_json(RunPaths(run).eval_retrieval, result)
