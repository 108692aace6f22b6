"""Binary codes in FAISS: numpy in, numpy out, nothing about runs (faiss/contrib's style).

Paper, section 6.1: retrieval by short binary codes instead of 4096-d Euclidean distance.
Codes are packed uint8 arrays (N, bits / 8); ids are row numbers of the codes given.

Modes of `build_index(codes, kind)`:
- "flat": faiss.IndexBinaryFlat, exact Hamming distance (the default).
- "ivf": faiss.IndexBinaryIVF (k-means lists of codes, `nprobe` of them searched per query),
  approximate; chosen by "auto" above `approx_threshold` codes (200,000) on a host without
  a GPU: at 10^6 codes it searches in a fraction of the flat scan's time at recall@10 >= 0.99
  even on random codes (BENCHMARKS.md), where hashing (IndexBinaryMultiHash) needs so many
  bit flips to reach that recall that it is slower than the flat scan. Its nprobe follows
  the codes (`tune_nprobe`): the fewest lists that hold recall@10 >= IVF_RECALL (0.99) on a
  sample of the codes themselves as queries, against the exact scan, saved with the index.
  Codes of photos cluster, and a few lists suffice; uniform random codes need hundreds.
- "hnsw": faiss.IndexBinaryHNSW, approximate; only on request (slower to build than IVF and
  below its recall).
- On a host with a GPU (faiss.get_num_gpus() > 0), "auto" stays "flat" at any size and
  `to_device` copies it to a faiss.GpuIndexBinaryFlat: brute force on a GPU is exact and fast.

`search(index, queries, k)` returns (D, I): int32 Hamming distances and int64 ids, best first.
`rerank(features, queries, I, k)` re-orders a Hamming shortlist by exact Euclidean distance
between float fc7 vectors (read from memory-mapped features) and returns (D, I) with D the
Euclidean (not squared) distances. `measure_recall` is the recall@k of an approximate index
against exact search; `hamming` the numpy popcount reference. `save_index` / `load_index`
write and read the CPU index (faiss.write_index_binary).
"""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np

from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.files import atomic_write

from .defaults import APPROX_THRESHOLD, IVF_LISTS, IVF_RECALL
from .features import read_rows

log = logging.getLogger(__name__)

HNSW_M = 32
HNSW_EF_SEARCH = 128
IVF_TRAIN_PER_LIST = 50  # k-means sample: faiss warns below 39 points per centroid
IVF_MIN_LIST = 100  # codes per list at least, so a small collection trains few centroids
TUNE_SAMPLE = 1000  # codes searched as queries to choose nprobe
KINDS = ("flat", "ivf", "hnsw")
GPU_MAX_K = 2048  # faiss GPU k-selection limit; larger k searches on the CPU copy
POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def gpu_available() -> bool:
    return hasattr(faiss, "GpuIndexBinaryFlat") and faiss.get_num_gpus() > 0


def hamming(queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """int32 (len(queries), len(codes)) Hamming distances between packed uint8 codes."""
    return POPCOUNT[queries[:, None, :] ^ codes[None, :, :]].sum(-1, dtype=np.int32)


def build_index(
    codes: np.ndarray, *, kind: str = "auto", approx_threshold: int = APPROX_THRESHOLD
) -> faiss.IndexBinary:
    """A CPU binary index over packed uint8 codes (N, bits / 8); ids 0..N-1 in row order."""
    if codes.dtype != np.uint8 or codes.ndim != 2:
        raise ValueError(f"codes must be a 2-d uint8 array, got {codes.dtype} {codes.shape}")
    if kind == "auto":
        kind = auto_kind(len(codes), approx_threshold)
    bits = codes.shape[1] * 8
    if kind == "flat":
        index = faiss.IndexBinaryFlat(bits)
    elif kind == "ivf":
        index = _ivf(codes)
    elif kind == "hnsw":
        index = faiss.IndexBinaryHNSW(bits, HNSW_M)
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        raise ValueError(f"index kind must be auto, {', '.join(KINDS)}, got {kind!r}")
    index.add(np.ascontiguousarray(codes))
    if kind == "ivf":
        tune_nprobe(index, codes)
    return index


def _ivf(codes: np.ndarray) -> faiss.IndexBinaryIVF:
    """An IVF index trained on a seeded sample of the codes (not yet filled)."""
    lists = min(IVF_LISTS, max(1, len(codes) // IVF_MIN_LIST))  # small collections: fewer
    quantizer = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index = faiss.IndexBinaryIVF(quantizer, codes.shape[1] * 8, lists)
    index.own_fields = True  # the index keeps its quantizer alive when Python drops it
    quantizer.this.disown()
    sample = min(len(codes), IVF_TRAIN_PER_LIST * lists)
    rows = np.sort(np.random.default_rng(0).choice(len(codes), sample, replace=False))
    index.train(np.ascontiguousarray(codes[rows]))
    return index


def tune_nprobe(
    index: faiss.IndexBinaryIVF,
    codes: np.ndarray,
    *,
    target: float = IVF_RECALL,
    k: int = 10,
    sample: int = TUNE_SAMPLE,
    seed: int = 1,
) -> float:
    """Set `index.nprobe` (saved with the index) to the fewest lists that hold recall@k >=
    `target` on a seeded sample of `codes` (the indexed ones) searched as queries, against the
    exact scan; returns that recall. Recall cannot fall as nprobe grows (a superset of lists
    is searched), so doubling, then bisecting, finds the smallest."""
    queries, kth = _exact(codes, k, sample, seed)

    def recall(nprobe: int) -> float:
        index.nprobe = nprobe
        return _recall(*index.search(queries, min(k, len(codes))), kth)

    low, high = 0, 1  # recall(low) < target (0: nothing searched), recall(high) unknown
    while high < index.nlist and recall(high) < target:
        low, high = high, min(2 * high, index.nlist)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if recall(middle) >= target else (middle, high)
    return recall(high)


def _exact(codes: np.ndarray, k: int, sample: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(queries: a seeded sample of the codes, the exact distance of each one's k-th nearest)."""
    k = min(k, len(codes))
    rows = np.random.default_rng(seed).choice(len(codes), min(sample, len(codes)), replace=False)
    queries = np.ascontiguousarray(codes[np.sort(rows)])
    exact = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    exact.add(np.ascontiguousarray(codes))
    return queries, exact.search(queries, k)[0][:, -1:]


def _recall(D: np.ndarray, I: np.ndarray, kth: np.ndarray) -> float:
    """Tie-aware recall: a result counts when no farther than the exact k-th distance."""
    found = ((D <= kth) & (I >= 0)).sum(1)
    return float(np.minimum(found, D.shape[1]).mean() / D.shape[1])


def ivf_settings(index: faiss.IndexBinary) -> dict:
    """{"lists", "nprobe"} of an IVF index (what a record keeps); {} for another kind."""
    if not isinstance(index, faiss.IndexBinaryIVF):
        return {}
    return {"lists": int(index.nlist), "nprobe": int(index.nprobe)}


def auto_kind(count: int, approx_threshold: int = APPROX_THRESHOLD) -> str:
    return "ivf" if count > approx_threshold and not gpu_available() else "flat"


def index_kind(index: faiss.IndexBinary) -> str:
    if isinstance(index, faiss.IndexBinaryIVF):
        return "ivf"
    return "hnsw" if isinstance(index, faiss.IndexBinaryHNSW) else "flat"


_gpu_resources = None


def to_device(index: faiss.IndexBinary) -> faiss.IndexBinary:
    """A GPU copy of a flat index when a GPU is there; otherwise the index itself."""
    global _gpu_resources
    if index_kind(index) != "flat" or not gpu_available():
        return index
    if _gpu_resources is None:
        _gpu_resources = faiss.StandardGpuResources()
    return faiss.GpuIndexBinaryFlat(_gpu_resources, index)


def search(index: faiss.IndexBinary, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(D, I) of the k nearest codes by Hamming distance: int32 and int64, (len(queries), k)."""
    if not 1 <= k <= index.ntotal:
        raise AlexnetError(f"k={k} is outside 1..{index.ntotal} (the number of indexed images)")
    D, I = index.search(np.ascontiguousarray(queries, dtype=np.uint8), k)
    return D.astype(np.int32), I.astype(np.int64)


def rerank(
    features: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-order each row of `candidates` by Euclidean distance of float features; keep k.

    `features` is the (memory-mapped) database, `queries` the float query vectors; ids < 0
    (missing results) are dropped. Returns float32 distances and int64 ids, (len(queries), k),
    padded with inf / -1 when a row has fewer than k candidates.
    """
    D = np.full((len(queries), k), np.inf, np.float32)
    I = np.full((len(queries), k), -1, np.int64)
    for q, (x, ids) in enumerate(zip(np.asarray(queries, np.float32), candidates, strict=True)):
        ids = np.sort(ids[ids >= 0])  # sorted: sequential reads from the memory map
        d = np.sqrt(((read_rows(features, ids) - x) ** 2).sum(1))
        best = np.argsort(d, kind="stable")[:k]
        D[q, : len(best)], I[q, : len(best)] = d[best], ids[best]
    return D, I


def measure_recall(
    index: faiss.IndexBinary, codes: np.ndarray, *, k: int = 10, sample: int = 1000, seed: int = 0
) -> float:
    """Recall@k of `index` against exact search, on a sample of the database as queries.

    Tie-aware: with short codes many images share a distance, so a result counts as found
    when its distance is no larger than the exact k-th distance.
    """
    queries, kth = _exact(codes, k, sample, seed)
    return _recall(*index.search(queries, min(k, len(codes))), kth)


def save_index(index: faiss.IndexBinary, path: Path) -> Path:
    """Write the CPU index to `path` atomically."""
    return atomic_write(path, lambda tmp: faiss.write_index_binary(index, tmp))


def load_index(path: Path) -> faiss.IndexBinary:
    """The index saved at `path`; an unreadable file is an error naming it."""
    try:
        return faiss.read_index_binary(str(path))
    except RuntimeError as e:
        raise AlexnetError(f"{path} is unreadable: build it again") from e
