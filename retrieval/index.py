"""The binary-code index of a run: FAISS Hamming search, optional fc7 re-ranking.

Paper, section 6.1: retrieval by short binary codes instead of 4096-d Euclidean distance.
Database ids are positions in the manifest's training split, so id i is the i-th training file.

Modes of `build_index`:
- "flat": faiss.IndexBinaryFlat, exact Hamming distance (the default).
- "ivf": faiss.IndexBinaryIVF (k-means lists of codes, `nprobe` of them searched per query),
  approximate; chosen by "auto" above `approx_threshold` images (200,000) on a host without
  a GPU: at 10^6 codes it searches in a fraction of the flat scan's time at recall@10 >= 0.99
  even on random codes (BENCHMARKS.md), where hashing (IndexBinaryMultiHash) needs so many
  bit flips to reach that recall that it is slower than the flat scan.
- "hnsw": faiss.IndexBinaryHNSW, approximate; only on request (slower to build than IVF and
  below its recall).
The recall@10 of an approximate index against exact search is measured on a sample when it
is built (`measure_recall`) and stored in INDEX/codes.json.
- On a host with a GPU (faiss.get_num_gpus() > 0), "auto" stays "flat" at any size and
  `to_device` copies it to a faiss.GpuIndexBinaryFlat: brute force on a GPU is exact and fast.
What is saved is always the CPU index (faiss.write_index_binary).

`search(index, codes, k)` returns (D, I): int32 Hamming distances and int64 ids, best first.
`rerank(features, queries, I, k)` re-orders a Hamming shortlist by exact Euclidean distance
between float fc7 vectors (read from the memory-mapped features) and returns (D, I) with D
the Euclidean (not squared) distances.

The run-level functions tie the stages together: `build_run_index` makes features,
autoencoder and index, each skipped when its file is current; `open_run_index` loads them for
search and refuses an index built from another manifest or checkpoint.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import faiss
import numpy as np

from alexnet.model.inference import TrainedRun, query_crops
from alexnet.pipeline.dali import QueryCrops
from alexnet.pipeline.dataset import split_files, verify_files
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.files import atomic_write, file_identity, read_json, write_json
from alexnet.pipeline.layout import IndexPaths

from . import autoencoder as ae
from . import codes as C
from .defaults import APPROX_THRESHOLD, FEATURE_BATCH, IVF_LISTS, IVF_NPROBE, QUERY_BATCH
from .features import (
    extract_features,
    features_current,
    load_features,
    read_rows,
    source_identity,
)

log = logging.getLogger(__name__)

INDEX_VERSION = 1
HNSW_M = 32
HNSW_EF_SEARCH = 128
IVF_TRAIN_PER_LIST = 50  # k-means sample: faiss warns below 39 points per centroid
IVF_MIN_LIST = 100  # codes per list at least, so a small collection trains few centroids
KINDS = ("flat", "ivf", "hnsw")
GPU_MAX_K = 2048  # faiss GPU k-selection limit; larger k searches on the CPU copy
POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def gpu_available() -> bool:
    return hasattr(faiss, "GpuIndexBinaryFlat") and faiss.get_num_gpus() > 0


# --- codes and indexes: numpy in, numpy out ----------------------------------------------


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
    index.nprobe = max(1, lists * IVF_NPROBE // IVF_LISTS)  # the same share; saved with it
    return index


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
    k = min(k, len(codes))
    rows = np.random.default_rng(seed).choice(len(codes), min(sample, len(codes)), replace=False)
    exact = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    exact.add(codes)
    Dx, _ = exact.search(codes[rows], k)
    Da, Ia = index.search(codes[rows], k)
    found = ((Da <= Dx[:, -1:]) & (Ia >= 0)).sum(1)
    return float(np.minimum(found, k).mean() / k)


# --- a collection's files: features, autoencoder, codes, index ----------------------------


def save_codes(codes: np.ndarray, path: Path) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, codes)

    return atomic_write(path, write)


def _autoencoder_current(paths: IndexPaths, source: dict, bits, method, labels) -> bool:
    if not paths.autoencoder.is_file():
        return False
    try:
        state = ae.load_autoencoder(paths.autoencoder)
        C.encoder_from_state(state)
    except AlexnetError:
        return False
    return state.get("source") == source and C.current(state, method, bits, labels)


def index_problem(paths: IndexPaths, source: dict) -> str | None:
    """None when the index is complete and built from `source`; else what is wrong with it."""
    if not paths.meta.is_file():
        return "missing"
    try:
        meta = read_json(paths.meta, "index description", "")
    except AlexnetError:
        return "unreadable"
    if meta.get("version") != INDEX_VERSION:
        return "written by another version"
    if meta.get("source", {}).get("manifest") != source["manifest"]:
        return "built for another manifest (the data changed since)"
    if meta.get("source") != source:
        return f"built from another checkpoint ({meta['source'].get('checkpoint')})"
    for path, key in (
        (paths.autoencoder, "autoencoder"),
        (paths.codes, "codes"),
        (paths.index, "index"),
    ):
        if not path.is_file() or file_identity(path) != meta.get(key):
            return f"{path.name} is missing or was rewritten after the index"
    if not features_current(paths, source):
        return "the fc7 features are missing or incomplete"
    return None


def build_run_index(
    trained: TrainedRun,
    paths: IndexPaths | None = None,
    *,
    bits: int | None = None,
    approx_threshold: int = APPROX_THRESHOLD,
    batch_size: int = FEATURE_BATCH,
    ae_config: ae.AutoencoderConfig | None = None,
    codes: str | None = None,
    progress: bool = True,
) -> dict:
    """Features, autoencoder, codes and index of the training set (`paths` defaults to
    RUN/index), each step skipped when already current.

    `bits` None keeps current codes of any width (else trains the default 64); `codes`, the
    code method (retrieval/codes.py), None keeps the current one (else the default).
    Returns the index description (also written to INDEX/codes.json).
    """
    paths = paths or trained.paths.index
    source = source_identity(trained)
    if features_current(paths, source):
        log.info("fc7 features are current: %s", paths.features)
    else:
        extract_features(trained, paths, batch_size=batch_size, progress=progress)
    features = load_features(paths)

    retrained = False
    labels = np.array(split_files(trained.manifest, "train")[1])
    width = bits if ae_config is None else ae_config.bits
    if _autoencoder_current(paths, source, width, codes, labels):
        log.info("codes are current: %s", paths.autoencoder)
        state = ae.load_autoencoder(paths.autoencoder)
        model = C.encoder_from_state(state)
    else:
        if ae_config is not None:
            model = ae.train_autoencoder(features, ae_config, labels=labels, progress=progress)
        else:
            method, width = codes or C.DEFAULT_METHOD, bits or ae.AutoencoderConfig.bits
            model = C.fit_codes(features, labels, method=method, bits=width, progress=progress)
        report = C.report(model, features)
        state = C.encoder_state(model, source=source, report=report)
        ae.save_autoencoder(state, paths.autoencoder)
        retrained = True
        log.info("%s", C.describe(model, report))

    if not retrained and index_problem(paths, source) is None:
        meta = read_json(paths.meta, "index description", "")
        if meta["kind"] == auto_kind(meta["count"], approx_threshold):
            log.info("index is current: %s", paths.index)
            return meta

    codes = model.encode(features)
    save_codes(codes, paths.codes)
    start = time.perf_counter()
    index = build_index(codes, approx_threshold=approx_threshold)
    meta = {
        "version": INDEX_VERSION,
        "source": source,
        "kind": index_kind(index),
        "count": int(index.ntotal),
        "bits": int(codes.shape[1] * 8),
        "build_seconds": round(time.perf_counter() - start, 3),
        "recall_at_10": 1.0 if index_kind(index) == "flat" else measure_recall(index, codes),
        "code_method": model.method,
        "code_settings": C.settings(model),
        "autoencoder_report": {k: v for k, v in state["report"].items() if k != "bit_balance"},
    }
    atomic_write(paths.index, lambda tmp: faiss.write_index_binary(index, tmp))
    meta.update(
        autoencoder=file_identity(paths.autoencoder),
        codes=file_identity(paths.codes),
        index=file_identity(paths.index),
    )
    write_json(paths.meta, meta)
    return meta


@dataclass
class RunIndex:
    """What a search needs: the network, the autoencoder, codes, index and features."""

    trained: TrainedRun
    paths: IndexPaths
    autoencoder: ae.Autoencoder  # the code encoder, of any method (retrieval/codes.py)
    codes: np.ndarray
    index: faiss.IndexBinary  # on the CPU, as saved
    fast: faiss.IndexBinary  # the same, on the GPU where there is one
    features: np.ndarray  # float16 (N, 4096), memory-mapped
    meta: dict
    unit = "training images"  # what the database holds, in messages

    @cached_property
    def files(self) -> tuple[list[str], list[int]]:
        """Paths and labels of the indexed images: id i is the i-th training file."""
        return split_files(self.trained.manifest, "train")

    @cached_property
    def train_positions(self) -> np.ndarray:
        """Manifest positions of the indexed images: id i is the i-th training file."""
        return self.trained.manifest["files"].positions("train")

    @property
    def thumb_key(self) -> str:
        """What names this collection's thumbnail folder: the manifest's fingerprint."""
        return self.trained.manifest["fingerprint"]

    def file_of(self, i: int) -> str:
        """The file of indexed image `i`; ids outside 0..N-1 refused."""
        n = self.index.ntotal
        if not 0 <= i < n:
            raise AlexnetError(f"there is no indexed image {i}: ids run from 0 to {n - 1}")
        return self.files[0][i]

    def hits(self, ids: np.ndarray) -> list[dict]:
        """{"path", "class", "class_id"} of each indexed image in `ids`, after checking that
        its file is as it was at prep (gone or changed: an error)."""
        manifest = self.trained.manifest
        table, root = manifest["files"], manifest["root"]
        positions = self.train_positions[ids]
        verify_files(manifest, positions)
        return [
            {
                "path": f"{root}/{table.paths[p]}",
                "class": self.trained.class_names[table.labels[p]],
                "class_id": self.trained.classes[table.labels[p]],
            }
            for p in positions
        ]

    @cached_property
    def crops(self) -> QueryCrops:
        """The query pipeline, built on the first search and kept for every later one."""
        return query_crops(self.trained, QUERY_BATCH)

    def search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return search(self.fast if k <= GPU_MAX_K else self.index, codes, k)

    def check_k(self, k: int) -> None:
        if k < 1:
            raise AlexnetError(f"-k must be at least 1, got {k}")
        if k > self.index.ntotal:
            raise AlexnetError(
                f"-k {k} is larger than the database ({self.index.ntotal} {self.unit})"
            )

    def query(
        self, vectors: np.ndarray, k: int, rerank_top: int = 0, codes: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Float fc7 query vectors (and their codes, when already encoded) -> (D, I) of the k
        best indexed images.

        - rerank_top 0: D are Hamming distances between the codes.
        - rerank_top R > 0: the R nearest by Hamming (at least k) re-ordered by Euclidean fc7
          distance; D are those Euclidean distances.
        """
        self.check_k(k)
        if codes is None:
            codes = self.autoencoder.encode(vectors)
        if rerank_top <= 0:
            return self.search(codes, k)
        _, shortlist = self.search(codes, min(max(rerank_top, k), self.index.ntotal))
        return rerank(self.features, vectors, shortlist, k)


def open_run_index(trained: TrainedRun, paths: IndexPaths | None = None) -> RunIndex:
    """Load an index (default: the training set's); refuse one built from another manifest or
    checkpoint."""
    paths = paths or trained.paths.index
    fix = f"rebuild it with `alexnet index --run {trained.paths}`"
    problem = index_problem(paths, source_identity(trained))
    if problem:
        raise AlexnetError(f"the index in {paths.folder} is stale or incomplete ({problem}): {fix}")
    try:
        index = faiss.read_index_binary(str(paths.index))
    except RuntimeError as e:
        raise AlexnetError(f"{paths.index} is unreadable: {fix}") from e
    meta = read_json(paths.meta, "index description", "")
    model = C.load_encoder(paths.autoencoder)
    return RunIndex(
        trained,
        paths,
        model,
        np.load(paths.codes),
        index,
        to_device(index),
        load_features(paths),
        meta,
    )
