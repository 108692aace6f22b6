"""eval-retrieval: how well each representation retrieves images of the query's class.

Paper, section 6.1 (figure 4, right): fc7 neighbours share the query's content even when
their pixels are far apart in L2. Queries are the validation images, the database is the
training set, and a result is relevant when it has the query's class. Modes:

- "hamming": the autoencoder's binary codes, ranked by Hamming distance.
- "hamming+rerank": the top R by Hamming re-ordered by Euclidean fc7 distance (the rest of
  the ranking keeps its Hamming order).
- "itq", "pca_sign", "lsh": binary codes of as many bits as the autoencoder's, made by the
  baselines of retrieval/baselines.py (fitted on the training set's fc7 only), by Hamming.
- "fc7_euclidean": exact Euclidean distance between fc7 vectors (the stored float16).
- "pixels_euclidean": Euclidean distance between raw pixels of the 256x256 centre patches
  (the prep pipeline's output), area-averaged down to `pixel_size` (default 32: the 32x32
  images of Krizhevsky & Hinton 2011, and 64x smaller; pass 256 for the full patch).
- "pixels_autoencoder": the run's code method, the autoencoder, applied to those pixel vectors
  instead of fc7 (as Krizhevsky & Hinton 2011 did on 32x32 images), with as many bits and
  trained the same way (label-aware on the training labels, as the default codes are), by
  Hamming: the paper's claim (section 6.1) is that codes of fc7 retrieve better than this.

For each: mean precision@k, mean average precision over the full ranking of the training set,
bytes per database image as searched (codes; codes + float16 fc7 for the re-rank; float16
fc7 vectors; float32 pixel vectors), and the query time (ms per query, batched, excluding the
network's forward pass which all fc7 modes share; encoding and re-ranking are included; every
code mode is timed on an exact faiss.IndexBinaryFlat). Hamming distances tie often; ties are
broken in a fixed random order of the database, not in manifest order, which is sorted by
class and would favour the first classes.

Memory: the training set's fc7 stay in their float16 memory map and are streamed a block at a
time (the float mode, the baselines' fitting and encoding; the re-rank reads only its
shortlist), so a database of 10^6 images needs its codes, about `MEMORY` bytes of distances
and rankings, and the pixel vectors (float32, 12 KB per image at 32x32: the one part that
grows with the database). Every query is ranked against the whole database, so time grows
with queries x database (`max_queries` samples the queries of a large validation set).
`evaluate_modes` is the part that needs no images: features, labels and codes in, the table
out; `evaluate_retrieval` adds the queries' fc7, the baselines and the pixels, from arrays and
file lists (the training set's Collection passes its own: `Collection.evaluate`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import faiss
import numpy as np

from alexnet.pipeline.dali import SIZE, default_device
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.loader import centre_patches

from . import baselines as bl
from .baselines import BASELINES
from .codes import fit_codes
from .defaults import EVAL_RERANK, PIXEL_SIZE, K
from .features import BLOCK, feature_blocks
from .index import hamming, rerank

log = logging.getLogger(__name__)

CHUNK = 64  # queries ranked at a time, at most
MEMORY = 1 << 30  # bytes of distances and rankings held at once, whatever the database's size
RANK_BYTES = 32  # bytes per (query, database image) while a chunk of queries is ranked
RADIUS = 2  # Hamming radius of the "precision within a radius" of code modes (hash lookup)


def average_precision(relevant: np.ndarray) -> np.ndarray:
    """AP of each row of a (Q, N) boolean relevance matrix in rank order (0 with no relevant):
    the mean, over the relevant results, of the precision at each one's rank."""
    ap = np.zeros(len(relevant))
    for q, row in enumerate(relevant):
        ranks = np.flatnonzero(row) + 1
        if len(ranks):
            ap[q] = (np.arange(1, len(ranks) + 1) / ranks).mean()
    return ap


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
        raise AlexnetError(f"{{pixel_size}} must divide {SIZE}, got {size}", param="pixel_size")
    f = SIZE // size
    out = []
    for x in centre_patches(
        files, batch_size=batch_size, device=default_device(), num_threads=num_threads
    ):
        x = x.astype(np.float32).reshape(len(x), size, f, size, f, 3)
        out.append(x.mean((2, 4)).reshape(len(x), -1))
    return np.concatenate(out)


def pixel_codes(
    pixels: np.ndarray, queries: np.ndarray, labels: np.ndarray, bits: int, *, seed: int = 0
) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """evaluate_modes' (database codes, query encoder) of the autoencoder of retrieval/codes.py
    fitted on float32 (N, size*size*3) pixel vectors and their labels instead of fc7
    ("pixels_autoencoder"). Its queries are the `queries`' pixel vectors: the encoder, given
    the queries' fc7 as every mode is, encodes those (timed, as the other modes' encoding)."""
    encoder = fit_codes(
        pixels, labels, method="autoencoder", bits=bits, seed=seed, dim=pixels.shape[1]
    )
    return encoder.encode(pixels), lambda fc7: encoder.encode(queries)


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def exact_search(
    features: np.ndarray, queries: np.ndarray, k: int, *, block: int = BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """(D, I) of the k nearest rows of `features` (memory-mapped float16 is fine) by squared
    Euclidean distance: float32 and int64, best first. Streamed a block at a time."""
    heap = faiss.ResultHeap(len(queries), k)
    queries = np.ascontiguousarray(queries, np.float32)
    for start, x in feature_blocks(features, block=block):
        D, I = faiss.knn(queries, x, min(k, len(x)))
        heap.add_result(D, I + start)
    heap.finalize()
    return heap.D, heap.I


def streamed_l2(features: np.ndarray, queries: np.ndarray, *, block: int = BLOCK) -> np.ndarray:
    """float32 (len(queries), N) squared Euclidean distances to every row of `features`,
    one block of the (memory-mapped) features at a time."""
    out = np.empty((len(queries), len(features)), np.float32)
    for start, x in feature_blocks(features, block=block):
        out[:, start : start + len(x)] = squared_l2(queries, x)
    return out


def query_groups(n: int, queries: int, memory: int = MEMORY) -> tuple[int, int]:
    """(queries whose float distances are held at once, queries ranked at a time) for a
    database of n images within about `memory` bytes."""
    group = max(1, min(queries, memory // (4 * n)))
    chunk = max(1, min(CHUNK, memory // (RANK_BYTES * n), group))
    return group, chunk


def evaluate_modes(
    features: np.ndarray,
    db_labels: np.ndarray,
    queries: np.ndarray,
    q_labels: np.ndarray,
    *,
    codes: dict[str, tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]],
    rerank_of: str | None = None,
    pixels: tuple[np.ndarray, np.ndarray] | None = None,
    k: int = K,
    rerank_top: int = EVAL_RERANK,
    tie_order: np.ndarray | None = None,
    memory: int = MEMORY,
    progress: bool = False,
) -> dict[str, dict]:
    """Precision@k, mAP, bytes per image and query time of each mode (module docstring).

    `features`: the database's (N, d) fc7, memory-mapped float16 is fine (streamed);
    `queries`: float32 (Q, d) query fc7; labels: int arrays. `codes`: mode -> (database's
    packed codes, function from float fc7 to packed codes). `rerank_of`: the code mode whose
    top `rerank_top` are re-ranked by fc7 ("MODE+rerank"). `pixels`: (database, queries)
    float32 pixel vectors, or None. Ties in `tie_order` (default: a seeded permutation).
    Memory: the codes, the pixels, and about `memory` bytes of distances and rankings.
    """
    from tqdm import tqdm

    n, nq = len(features), len(queries)
    k = min(k, n)
    rerank_top = min(max(rerank_top, k), n)
    if tie_order is None:
        tie_order = np.random.default_rng(0).permutation(n)
    db_labels = np.asarray(db_labels, np.int32)
    q_labels = np.asarray(q_labels, np.int32)
    dim_bytes = features.dtype.itemsize * features.shape[1]

    modes: dict[str, dict] = {}
    for mode, (db_codes, encoder) in codes.items():
        index = faiss.IndexBinaryFlat(db_codes.shape[1] * 8)
        index.add(np.ascontiguousarray(db_codes))
        seconds, q_codes = _timed(lambda e=encoder: e(queries))
        seconds += _timed(lambda i=index, c=q_codes: i.search(c, k))[0]
        modes[mode] = {"codes": q_codes, "bytes": db_codes.shape[1], "seconds": seconds}
        if mode == rerank_of:
            seconds = _timed(lambda e=encoder: e(queries))[0]
            seconds += _timed(
                lambda i=index, c=q_codes: rerank(features, queries, i.search(c, rerank_top)[1], k)
            )[0]
            modes[f"{mode}+rerank"] = {"bytes": db_codes.shape[1] + dim_bytes, "seconds": seconds}
    modes["fc7_euclidean"] = {
        "bytes": dim_bytes,
        "seconds": _timed(lambda: exact_search(features, queries, k))[0],
    }
    if pixels is not None:
        db_pix, q_pix = pixels
        modes["pixels_euclidean"] = {
            "bytes": 4 * db_pix.shape[1],
            "seconds": _timed(lambda: faiss.knn(q_pix, db_pix, k))[0],
        }
    precision = {m: [] for m in modes}
    aps = {m: [] for m in modes}
    within = {m: [] for m in codes}  # precision within Hamming radius RADIUS (0 where none)

    def score(mode: str, rows: slice, ranking: np.ndarray) -> None:
        relevant = db_labels[ranking] == q_labels[rows, None]
        precision[mode].append(relevant[:, :k].mean(1))
        aps[mode].append(average_precision(relevant))

    group, chunk = query_groups(n, nq, memory)
    with tqdm(total=nq, desc="ranking", unit="query", disable=not progress) as bar:
        for g in range(0, nq, group):
            fc7 = streamed_l2(features, queries[g : g + group])
            for s in range(g, min(g + group, nq), chunk):
                rows = slice(s, min(s + chunk, nq))
                for mode, (db_codes, _) in codes.items():
                    d = hamming(modes[mode]["codes"][rows], db_codes).astype(np.uint16)
                    near = d <= RADIUS
                    same = db_labels[None] == q_labels[rows, None]
                    within[mode].append((near & same).sum(1) / np.maximum(near.sum(1), 1))
                    ranking = rank_by(d, tie_order)  # uint16: numpy's radix sort
                    del d
                    score(mode, rows, ranking)
                    if mode == rerank_of:
                        _, top = rerank(
                            features, queries[rows], ranking[:, :rerank_top], rerank_top
                        )
                        ranking[:, :rerank_top] = top
                        score(f"{mode}+rerank", rows, ranking)
                    del ranking
                score("fc7_euclidean", rows, rank_by(fc7[s - g : rows.stop - g], tie_order))
                if pixels is not None:
                    d = squared_l2(q_pix[rows], db_pix)
                    score("pixels_euclidean", rows, rank_by(d, tie_order))
                bar.update(rows.stop - rows.start)
            del fc7

    return {
        m: {
            f"precision_at_{k}": float(np.concatenate(precision[m]).mean()),
            "map": float(np.concatenate(aps[m]).mean()),
            "bytes_per_image": int(modes[m]["bytes"]),
            "query_ms": 1000 * modes[m]["seconds"] / nq,
            **(
                {f"precision_radius_{RADIUS}": float(np.concatenate(within[m]).mean())}
                if m in within
                else {}
            ),
        }
        for m in modes
    }


def evaluate_retrieval(
    features: np.ndarray,
    codes: np.ndarray,
    encode: Callable[[np.ndarray], np.ndarray],
    db_files: Sequence[str],
    db_labels: Sequence[int],
    q_files: Sequence[str],
    q_labels: Sequence[int],
    *,
    fc7: Callable[[list[str]], np.ndarray],
    k: int = K,
    rerank_top: int = EVAL_RERANK,
    pixel_size: int = PIXEL_SIZE,
    baselines: tuple[str, ...] = BASELINES,
    max_queries: int | None = None,
    seed: int = 0,
    num_threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Precision@k, mAP, bytes per image and query time of every mode (module docstring):
    the validation images `q_files` against the training set.

    `features`, `codes`: the training set's fc7 rows (memory-mapped float16 is fine) and
    packed codes, by position as `db_files`; `encode`: float fc7 -> packed codes (the run's
    code method, mode "hamming"); `fc7(files)`: float32 fc7 of image files (the queries').
    `num_threads`: DALI threads of the pixel pipeline. Returns {"queries", "database", "k",
    "bits", "rerank", "pixel_size", "baselines_fit_seconds", "chance_precision", "modes"}.
    """
    rng = np.random.default_rng(seed)
    q_files, q_labels = list(q_files), list(q_labels)
    if max_queries and len(q_files) > max_queries:
        keep = np.sort(rng.choice(len(q_files), max_queries, replace=False))
        q_files, q_labels = [q_files[i] for i in keep], [q_labels[i] for i in keep]
    n = len(db_files)
    tie_order = rng.permutation(n)

    q_fc7 = fc7(q_files)
    bits = codes.shape[1] * 8
    modes_codes = {"hamming": (codes, encode)}
    fit_seconds, projections = _timed(
        lambda: bl.fit_baselines(features, bits, names=baselines, seed=seed, progress=progress)
    )
    db_codes = bl.encode(projections, features, progress=progress)
    for name, p in projections.items():
        modes_codes[name] = (db_codes[name], lambda x, p=p: bl.encode({p.name: p}, x)[p.name])
    log.info(
        "raw pixels at %dx%d of %d training and %d validation images",
        pixel_size,
        pixel_size,
        n,
        len(q_files),
    )
    db_pix = pixel_vectors(list(db_files), pixel_size, num_threads=num_threads)
    q_pix = pixel_vectors(q_files, pixel_size, num_threads=num_threads)
    modes_codes["pixels_autoencoder"] = pixel_codes(
        db_pix, q_pix, np.array(db_labels), bits, seed=seed
    )
    modes = evaluate_modes(
        features,
        np.array(db_labels),
        q_fc7,
        np.array(q_labels),
        codes=modes_codes,
        rerank_of="hamming",
        pixels=(db_pix, q_pix),
        k=k,
        rerank_top=rerank_top,
        tie_order=tie_order,
        progress=progress,
    )
    return {
        "queries": len(q_files),
        "database": n,
        "k": min(k, n),
        "bits": bits,
        "rerank": min(max(rerank_top, k), n),
        "pixel_size": pixel_size,
        "baselines_fit_seconds": round(fit_seconds, 3),
        "chance_precision": float(np.mean([np.mean(np.array(db_labels) == c) for c in q_labels])),
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
        f"{'mode':18}{f'P@{k}':>8}{'mAP':>8}{f'P@r{RADIUS}':>8}{'bytes/img':>11}{'ms/query':>10}",
    ]
    for mode, r in result["modes"].items():
        r2 = r.get(f"precision_radius_{RADIUS}")
        lines.append(
            f"{mode:18}{r[f'precision_at_{k}']:8.3f}{r['map']:8.3f}"
            + (f"{r2:8.3f}" if r2 is not None else f"{'-':>8}")
            + f"{r['bytes_per_image']:11d}{r['query_ms']:10.3f}"
        )
    return "\n".join(lines)
