"""Search: query images in, result records out. The one function behind `alexnet search`
(and any other face), so that every face returns the same records.

    ri = open_index("runs/demo")                   # network + index, built on first use
    result = search(ri, ["photo.jpg", png_bytes], k=10)
    result["queries"][0]["results"][0]             # {"rank", "id", "path", "class",
                                                   #  "class_id", "hamming", "distance"}
    describe(ri)                                   # classes, images, bits, epoch, top-1 error
    thumbnail(ri, 7)                               # JPEG bytes of indexed image 7, cached

Queries are image files, folders of them, encoded image bytes, or decoded uint8 HxWx3 arrays;
all go through the evaluation centre crop of the same DALI graph as the indexed images.
"class" is the display name of a result's class, "class_id" its folder name.

Opening a run checks the manifest's integrity but not the 1.28 million files behind it (that
would take seconds at ImageNet's size): a search checks the files it returns, and building an
index checks every training file first.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from alexnet.model.inference import load_trained
from alexnet.model.metrics import read_metrics
from alexnet.pipeline.dataset import check_image, verify_files
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.files import atomic_write
from alexnet.pipeline.lock import RunLock

from .defaults import APPROX_THRESHOLD, BITS, CODES, FEATURE_BATCH, QUERY_BATCH, SEARCH_RERANK, K
from .features import query_features, source_identity
from .index import RunIndex, build_run_index, hamming, index_problem, open_run_index
from .montage import centre_square

log = logging.getLogger(__name__)

THUMB = 160  # thumbnail side in pixels: small enough for a page of 100 results


def open_index(
    run: str | Path,
    checkpoint: str | Path | None = None,
    *,
    progress: bool = False,
    workers: int | None = None,
) -> RunIndex:
    """RUN's trained network and training-set index, building the index first (saying so)
    when there is none; a stale index is refused."""
    trained = load_trained(run, checkpoint, check_files=False, workers=workers)
    paths = trained.paths.index
    if index_problem(paths, source_identity(trained)) == "missing":
        log.warning(
            "no index in %s yet: building it now (fc7 features of the training set, "
            "autoencoder, index); later searches reuse it",
            paths.folder,
        )
        verify_files(trained.manifest, trained.manifest["files"].positions("train"))
        with RunLock(run, "search, building the index"):
            build_run_index(trained, paths, progress=progress)
    return open_run_index(trained, paths)


def index_run(
    run: str | Path,
    *,
    bits: int = BITS,
    codes: str = CODES,
    approx_threshold: int = APPROX_THRESHOLD,
    batch_size: int = FEATURE_BATCH,
    progress: bool = True,
    workers: int | None = None,
) -> dict:
    """Build (or bring up to date) RUN's training-set index with `codes` (the code method:
    retrieval/codes.py); returns its description."""
    trained = load_trained(run, check_files="train", workers=workers)
    paths = trained.paths.index
    problem = index_problem(paths, source_identity(trained))
    if problem not in (None, "missing"):
        log.warning("rebuilding the index: %s", problem)
    with RunLock(run, "index"):
        meta = build_run_index(
            trained,
            paths,
            bits=bits,
            codes=codes,
            approx_threshold=approx_threshold,
            batch_size=batch_size,
            progress=progress,
        )
    return {**meta, "path": str(paths.index)}


def _encoded(query: str | Path | bytes | np.ndarray) -> str | bytes:
    """A query as something query_features reads: a path, or encoded bytes (arrays -> PNG)."""
    if isinstance(query, np.ndarray):
        from PIL import Image

        if query.dtype != np.uint8 or query.ndim != 3 or query.shape[2] != 3:
            raise AlexnetError(
                f"a query array must be uint8 HxWx3, got {query.dtype} {query.shape}"
            )
        buf = io.BytesIO()
        Image.fromarray(query).save(buf, format="PNG")  # lossless: decodes to the same pixels
        return buf.getvalue()
    return query if isinstance(query, bytes) else str(query)


def search(
    ri: RunIndex,
    queries: Sequence[str | Path | bytes | np.ndarray],
    *,
    k: int = K,
    rerank_top: int = SEARCH_RERANK,
    names: Sequence[str] | None = None,
) -> dict:
    """The k most similar indexed images of each query, as records.

    Paths name themselves; bytes and arrays are named by `names` (default "query N").
    `rerank_top` R > 0 re-orders the R nearest by Hamming distance by float fc7 distance.
    Returns {"query_ms", "k", "rerank", "distance", "bits", "index", "checkpoint", "queries":
    [{"query", ("class", "class_id": when the query's folder names a class), "results":
    [{"rank", "id", "path", "class", "class_id", "hamming", "distance"}]}]}.
    The files returned are checked first (gone or changed since indexed: an error); a
    gallery's images whose folder names none of the run's classes have class None.
    """
    items, names = _queries(queries, names, rerank_top)
    start = time.perf_counter()
    rows = [
        row
        for batch in search_batches(ri, items, names, k=k, rerank_top=rerank_top)
        for row in batch
    ]
    return {
        "query_ms": 1000 * (time.perf_counter() - start) / max(1, len(items)),
        "k": k,
        "rerank": rerank_top,
        "distance": "fc7 euclidean" if rerank_top else "hamming",
        "bits": int(ri.codes.shape[1] * 8),
        "index": ri.meta.get("kind"),
        "checkpoint": str(ri.trained.checkpoint),
        "queries": rows,
    }


def search_stream(
    ri: RunIndex,
    queries: Sequence[str | Path | bytes | np.ndarray],
    *,
    k: int = K,
    rerank_top: int = SEARCH_RERANK,
    names: Sequence[str] | None = None,
) -> Iterator[dict]:
    """search's per-query records ({"query", ("class", "class_id"), "results"}), yielded as
    each batch of queries is answered: a folder of 10^5 queries prints as it goes."""
    items, names = _queries(queries, names, rerank_top)
    for batch in search_batches(ri, items, names, k=k, rerank_top=rerank_top):
        yield from batch


def _queries(queries, names, rerank_top: int) -> tuple[list[str | bytes], Sequence[str]]:
    """The queries as paths or bytes, and their names; bytes that do not decode refused."""
    if rerank_top < 0:
        raise AlexnetError(f"the re-rank shortlist must be 0 (off) or more, got {rerank_top}")
    items = [_encoded(q) for q in queries]
    if names is None:
        names = [q if isinstance(q, str) else f"query {i + 1}" for i, q in enumerate(items)]
    for item, name in zip(items, names, strict=True):
        # Bytes come from outside (uploads): PIL says what is wrong before DALI meets them.
        reason = check_image(item, min_size=1) if isinstance(item, bytes) else None
        if reason:
            raise AlexnetError(f"{name} cannot be used as a query: {reason}")
    return items, names


def search_batches(
    ri: RunIndex, items: list[str | bytes], names: Sequence[str], *, k: int, rerank_top: int
) -> Iterator[list[dict]]:
    """The records of each batch of QUERY_BATCH queries, batch after batch."""
    ri.check_k(k)
    for s in range(0, len(items), QUERY_BATCH):
        vectors = query_features(ri.trained, items[s : s + QUERY_BATCH], crops=ri.crops)
        codes = ri.autoencoder.encode(vectors)
        D, I = ri.query(vectors, k, rerank_top, codes)
        rows = []
        for q, name in enumerate(names[s : s + QUERY_BATCH]):
            found = I[q] >= 0  # an approximate index may find fewer than k
            ids, dist = I[q][found], D[q][found]
            ham = hamming(codes[q : q + 1], ri.codes[ids])[0]
            results = [
                {
                    "rank": r + 1,
                    "id": int(i),
                    **hit,
                    "hamming": int(ham[r]),
                    "distance": float(dist[r]),
                }
                for r, (i, hit) in enumerate(zip(ids, ri.hits(ids), strict=True))
            ]
            rows.append({"query": name, **query_class(ri.trained, name), "results": results})
        yield rows


def query_class(trained, name: str) -> dict:
    """The class of a query image when its folder is named after one of the run's classes
    (as in the dataset's own tree), so faces can say whether a result matches it."""
    folder = Path(name).parent.name
    if folder not in trained.classes:
        return {}
    label = trained.classes.index(folder)
    return {"class": trained.class_names[label], "class_id": folder}


def indexed_file(ri: RunIndex, i: int) -> str:
    """The file of indexed image `i` (an unknown id: an error)."""
    return ri.file_of(i)


def thumbnail(ri: RunIndex, i: int) -> bytes:
    """A JPEG of indexed image `i`'s centre square, THUMB pixels a side: made on first request
    and kept under RUN/thumbs (made each time where the run folder cannot be written)."""
    source = indexed_file(ri, i)
    path = ri.trained.paths.thumb(ri.thumb_key, i)
    if path.is_file():
        return path.read_bytes()
    buf = io.BytesIO()
    centre_square(source, THUMB).save(buf, format="JPEG", quality=85)
    data = buf.getvalue()
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    except AlexnetError as e:
        log.debug("thumbnail not kept: %s", e)
    return data


def describe(ri: RunIndex) -> dict:
    """What a face shows about a run's index: the run, its classes, the number of indexed
    images, the code length and index kind, the checkpoint, its epoch and that epoch's
    validation top-1 error (None when RUN/metrics.jsonl has no line for it)."""
    trained = ri.trained
    errors = {m["epoch"]: m.get("top1_error") for m in read_metrics(trained.paths.root)}
    return {
        "run": str(trained.paths),
        "classes": trained.classes,
        "count": int(ri.index.ntotal),
        "bits": int(ri.codes.shape[1] * 8),
        "index": ri.meta.get("kind"),
        "checkpoint": str(trained.checkpoint),
        "epoch": trained.epoch,
        "top1_error": errors.get(trained.epoch),
    }
