"""Binary-code baselines for the autoencoder: ITQ, PCA-sign and LSH codes of fc7 at B bits.

Each is a linear projection and a sign: bit j of x is 1[(x - mean) . w_j > 0], packed as the
autoencoder's codes are (np.packbits, big-endian within each byte), so that every kind of
code is searched alike. Modes (Gong & Lazebnik 2011, "Iterative quantization: a Procrustes
approach to learning binary codes", CVPR; its PCA-direct and LSH baselines):

- "itq": the top B principal directions, then the ITQ rotation R that minimises the
  quantisation loss ||sign(VR) - VR||^2 of the projected data V, found by alternating the
  sign and an orthogonal Procrustes step, 50 iterations from a seeded random rotation
  (numpy: see itq_rotation for why not faiss.ITQMatrix), on a seeded sample of at most
  ITQ_SAMPLE rows. w = PCA @ R.
- "pca_sign": the top B principal directions as they are.
- "lsh": B random hyperplanes through the mean: orthonormal Gaussian directions drawn as
  faiss.IndexLSH draws them (faiss.RandomRotationMatrix), seeded.

Everything is fitted on the database's features only, streamed in blocks (features'
feature_blocks): the mean and covariance are accumulated in float64 over every row (memory:
the d x d covariance, 128 MB at d = 4096, and one block, whatever the number of rows), the
principal directions are the covariance's top B eigenvectors (`pca`; faiss.PCAMatrix would
need every row in memory at once), each signed so that its largest coordinate is positive.

Functions, numpy in and out: `fit_baselines(features, bits)` -> {name: Projection};
`encode(projections, features)` -> {name: packed uint8 codes}, one pass for all of them;
`itq_rotation(v)`, `quantisation_loss(v, r)` for ITQ on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import faiss
import numpy as np
import scipy.linalg
import scipy.sparse.linalg

from .features import BLOCK, feature_blocks

log = logging.getLogger(__name__)

BASELINES = ("itq", "pca_sign", "lsh")
ITQ_ITERATIONS = 50
ITQ_SAMPLE = 100_000  # rows ITQ is fitted on (seeded sample): its cost grows with rows x B^2


@dataclass(frozen=True)
class Projection:
    """Codes 1[(x - mean) @ matrix > 0]: mean (d,), matrix (d, bits), both float32."""

    name: str
    mean: np.ndarray
    matrix: np.ndarray

    @property
    def bits(self) -> int:
        return self.matrix.shape[1]


def _blocks(features, block: int, progress: bool, desc: str):
    from tqdm import tqdm

    with tqdm(total=len(features), desc=desc, unit="img", disable=not progress) as bar:
        for start, x in feature_blocks(features, block=block):
            yield start, x
            bar.update(len(x))


def moments(
    features: np.ndarray, *, covariance: bool = True, block: int = BLOCK, progress: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """float64 mean (d,) and covariance (d, d) (or None) of the rows, one block at a time.

    Sums are taken about the first block's mean, so that the covariance does not come from
    the difference of two large, nearly equal terms (fc7 is non-negative, its mean large).
    """
    shift = s1 = s2 = None
    desc = "fc7 covariance" if covariance else "fc7 mean"
    for _, x in _blocks(features, block, progress, desc):
        if shift is None:
            shift = x.mean(0)
            s1 = np.zeros(x.shape[1])
            s2 = np.zeros((x.shape[1], x.shape[1])) if covariance else None
        x -= shift
        s1 += x.sum(0, dtype=np.float64)
        if covariance:
            s2 += x.T @ x  # float32 within a block, float64 across blocks
    n = len(features)
    m = s1 / n
    return shift + m, s2 / n - np.outer(m, m) if covariance else None


def pca(
    features: np.ndarray, bits: int, *, block: int = BLOCK, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """float64 mean (d,) and top `bits` principal directions (d, bits), largest variance
    first, each signed so that its largest-magnitude coordinate is positive.

    More rows than dimensions: the covariance, streamed, and its top eigenvectors by
    Lanczos iteration (scipy's eigsh, from a fixed start: ~8 s at d = 4096 where a full
    eigendecomposition took 20-60 s on this machine). Fewer: the rows are no larger than the
    covariance, so their SVD; directions beyond the rows' rank (no variance) complete the
    basis in a seeded random orthonormal way.
    """
    n, d = features.shape
    if n > d:
        mean, cov = moments(features, block=block, progress=progress)
        try:
            values, vecs = scipy.sparse.linalg.eigsh(cov, k=bits, which="LA", v0=np.ones(d))
        except (ValueError, scipy.sparse.linalg.ArpackError):  # k too close to d; no convergence
            values, vecs = scipy.linalg.eigh(cov, subset_by_index=[d - bits, d - 1])
        vecs = vecs[:, np.argsort(-values, kind="stable")]
    else:
        x = np.asarray(features, np.float64)
        mean = x.mean(0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        vecs = vt[: min(bits, int((s > s[0] * 1e-6).sum()))].T
        if vecs.shape[1] < bits:
            extra = np.random.default_rng(0).standard_normal((d, bits - vecs.shape[1]))
            q, _ = np.linalg.qr(np.concatenate([vecs, extra], axis=1))
            vecs = np.concatenate([vecs, q[:, vecs.shape[1] :]], axis=1)
    flip = np.sign(vecs[np.abs(vecs).argmax(0), np.arange(bits)])
    return mean, vecs * flip


def itq_rotation(v: np.ndarray, *, iterations: int = ITQ_ITERATIONS, seed: int = 0) -> np.ndarray:
    """float32 orthogonal (B, B) rotation R of ITQ for the centred, PCA-projected rows v
    (n, B): the codes are sign(v @ R).

    From a seeded random rotation, `iterations` times: B = sign(v R), then R = P Q^T where
    v^T B = P S Q^T (orthogonal Procrustes), each step lowering the quantisation loss or
    keeping it. Not faiss.ITQMatrix: in faiss 1.15 its loss rises between some iterations
    and its rotation is not the Procrustes solution of the step before (BENCHMARKS.md).
    """
    v = np.asarray(v, np.float64)
    bits = v.shape[1]
    r, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((bits, bits)))
    for _ in range(iterations):
        b = np.where(v @ r < 0, -1.0, 1.0)
        p, _, qt = np.linalg.svd(v.T @ b)
        r = p @ qt
    return r.astype(np.float32)


def quantisation_loss(v: np.ndarray, r: np.ndarray) -> float:
    """ITQ's objective per row: mean over rows of ||sign(v r) - v r||^2."""
    y = np.asarray(v, np.float64) @ r
    return float(((np.where(y < 0, -1.0, 1.0) - y) ** 2).sum(1).mean())


def lsh_hyperplanes(dim: int, bits: int, *, seed: int = 0) -> np.ndarray:
    """float32 (dim, bits) orthonormal random directions, as faiss.IndexLSH draws them."""
    rr = faiss.RandomRotationMatrix(dim, bits)
    rr.init(seed)
    return faiss.vector_to_array(rr.A).reshape(bits, dim).T.copy()


def _sample_rows(
    features: np.ndarray, rows: np.ndarray, proj: np.ndarray, block: int, progress: bool
) -> np.ndarray:
    """(len(rows), B): the sorted `rows` of the features, centred and projected by `proj`."""
    mean, matrix = proj
    out = []
    for start, x in _blocks(features, block, progress, "ITQ sample"):
        lo, hi = np.searchsorted(rows, [start, start + len(x)])
        if hi > lo:
            out.append((x[rows[lo:hi] - start] - mean) @ matrix)
    return np.concatenate(out)


def fit_baselines(
    features: np.ndarray,
    bits: int,
    *,
    names: Iterable[str] = BASELINES,
    itq_sample: int = ITQ_SAMPLE,
    seed: int = 0,
    block: int = BLOCK,
    progress: bool = False,
) -> dict[str, Projection]:
    """The projections of `names` (module docstring) fitted on the (N, d) database
    features, float or memory-mapped float16; seeded."""
    names = list(names)
    unknown = set(names) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}: choose from {BASELINES}")
    n, dim = features.shape
    if not 1 <= bits <= dim:
        raise ValueError(f"bits must be in 1..{dim}, got {bits}")
    if not names:
        return {}
    out = {}
    if {"pca_sign", "itq"} & set(names):
        mean, directions = pca(features, bits, block=block, progress=progress)
        out["pca_sign"] = directions.astype(np.float32)
        if "itq" in names:
            rng = np.random.default_rng(seed)
            rows = np.sort(rng.choice(n, min(n, itq_sample), replace=False))
            proj = (mean.astype(np.float32), out["pca_sign"])
            v = _sample_rows(features, rows, proj, block, progress)
            r = itq_rotation(v, seed=seed)
            log.info(
                "ITQ on %d rows: quantisation loss %.4g per row (PCA-sign: %.4g)",
                len(v),
                quantisation_loss(v, r),
                quantisation_loss(v, np.eye(bits)),
            )
            out["itq"] = out["pca_sign"] @ r
    else:
        mean, _ = moments(features, covariance=False, block=block, progress=progress)
    if "lsh" in names:
        out["lsh"] = lsh_hyperplanes(dim, bits, seed=seed)
    mean = mean.astype(np.float32)
    return {k: Projection(k, mean, out[k].astype(np.float32)) for k in names}


def encode(
    projections: dict[str, Projection],
    features: np.ndarray,
    *,
    block: int = BLOCK,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Packed uint8 codes (N, bits / 8) of every projection, in one pass over the features."""
    names = list(projections)
    if not names:
        return {}
    means = {projections[k].mean.tobytes() for k in names}
    if len(means) > 1:
        raise ValueError("the projections encoded together must share their mean")
    mean = projections[names[0]].mean
    matrix = np.concatenate([projections[k].matrix for k in names], axis=1)
    splits = np.cumsum([projections[k].bits for k in names])[:-1]
    codes = {k: [] for k in names}
    for _, x in _blocks(features, block, progress and len(features) > block, "baseline codes"):
        x -= mean
        for k, y in zip(names, np.split(x @ matrix > 0, splits, axis=1), strict=True):
            codes[k].append(np.packbits(y, axis=1))
    width = {k: -(-projections[k].bits // 8) for k in names}
    return {
        k: np.concatenate(codes[k]) if codes[k] else np.zeros((0, width[k]), np.uint8)
        for k in names
    }
