"""The binary-code baselines (ITQ, PCA-sign, LSH) against numpy and faiss references, and the
streamed evaluation core: its results do not depend on how much it holds in memory."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from alexnet.retrieval import baselines as bl
from alexnet.retrieval.evaluate import (
    average_precision,
    evaluate_modes,
    exact_search,
    query_groups,
    streamed_l2,
)
from alexnet.retrieval.features import feature_blocks, read_rows

N, D, BITS = 3000, 64, 16


def make_features(n: int = N, d: int = D, seed: int = 0) -> np.ndarray:
    """float16 rows with a decaying spectrum (distinct principal directions) and a large,
    non-zero mean, non-negative as fc7 is."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    x = (rng.standard_normal((n, d)) * np.geomspace(4, 0.2, d)) @ basis.T + 6
    return np.maximum(x, 0).astype(np.float16)


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    return make_features()


@pytest.fixture(scope="module")
def mapped(features, tmp_path_factory) -> np.ndarray:
    """The same rows as a memory-mapped .npy file, as load_features opens the index's."""
    path = tmp_path_factory.mktemp("baselines") / "features.f16.npy"
    np.save(path, features)
    return np.load(path, mmap_mode="r")


def bits_of(codes: np.ndarray, bits: int = BITS) -> np.ndarray:
    return np.unpackbits(codes, axis=1)[:, :bits].astype(bool)


def test_feature_blocks_read_a_map_as_its_rows(features, mapped):
    for source in (features, mapped, mapped[100:2500]):  # the last: a view, read by slicing
        got = np.concatenate([x for _, x in feature_blocks(source, block=700)])
        assert got.dtype == np.float32 and np.array_equal(got, np.asarray(source, np.float32))
    starts = [s for s, _ in feature_blocks(mapped, block=700)]
    assert starts == list(range(0, N, 700))
    ids = np.array([0, 5, 6, 999, N - 1])
    for source in (features, mapped):
        assert np.array_equal(read_rows(source, ids), features[ids].astype(np.float32))


def test_pca_sign_matches_numpy_pca_up_to_the_sign_of_each_component(features, mapped):
    x = features.astype(np.float64)
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    reference = vt[:BITS].T  # (d, bits), largest variance first
    p = bl.fit_baselines(mapped, BITS, names=["pca_sign"], block=700)["pca_sign"]
    assert p.matrix.shape == (D, BITS) and np.allclose(p.mean, mean, atol=1e-4)
    agreement = p.matrix.T.astype(np.float64) @ reference
    signs = np.sign(np.diag(agreement))
    assert np.allclose(np.abs(agreement), np.eye(BITS), atol=1e-3)
    codes = bl.encode({"pca_sign": p}, mapped, block=700)["pca_sign"]
    expected = (x - mean) @ (reference * signs) > 0
    assert codes.shape == (N, BITS // 8) and codes.dtype == np.uint8
    assert (bits_of(codes) != expected).mean() < 1e-3  # float32 vs float64 at the boundary


def test_pca_of_fewer_rows_than_dimensions(features):
    x = features[:40].astype(np.float64)  # 40 rows, 64 dimensions: the SVD path
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    mean, w = bl.pca(features[:40], BITS)
    assert np.allclose(mean, x.mean(0)) and np.allclose(np.abs(w.T @ vt[:BITS].T), np.eye(BITS))
    mean, w = bl.pca(features[:10], BITS)  # rank 9: the other 7 directions complete a basis
    assert np.allclose(w.T @ w, np.eye(BITS), atol=1e-8)
    _, _, vt = np.linalg.svd(features[:10].astype(np.float64) - mean, full_matrices=False)
    assert np.allclose(np.abs(w[:, :9].T @ vt[:9].T), np.eye(9), atol=1e-6)


def test_the_fit_is_the_same_streamed_or_in_memory_and_seeded(features, mapped):
    a = bl.fit_baselines(features, BITS, block=N)
    b = bl.fit_baselines(mapped, BITS, block=512)
    for name in bl.BASELINES:
        assert np.allclose(a[name].matrix, b[name].matrix, atol=1e-4), name
    ca, cb = bl.encode(a, features), bl.encode(b, mapped, block=333)
    for name in bl.BASELINES:
        assert (bits_of(ca[name]) != bits_of(cb[name])).mean() < 1e-3, name


def test_itq_rotation_is_orthogonal_and_its_loss_never_rises(features):
    x = features.astype(np.float32)
    pca = bl.fit_baselines(x, BITS, names=["pca_sign"])["pca_sign"]
    v = (x - pca.mean) @ pca.matrix
    losses = []
    for iterations in (0, 1, 2, 3, 5, 10, 20, 50):
        r = bl.itq_rotation(v, iterations=iterations, seed=3)
        assert np.allclose(r.T @ r, np.eye(BITS), atol=1e-5)
        losses.append(bl.quantisation_loss(v, r))
    assert all(b <= a * (1 + 1e-6) for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < losses[0]
    assert losses[-1] < bl.quantisation_loss(v, np.eye(BITS))  # below plain PCA-sign's
    # a fixed point: one more sign + Procrustes step moves the rotation little
    r = bl.itq_rotation(v, iterations=200, seed=3).astype(np.float64)
    p, _, qt = np.linalg.svd(v.T @ np.where(v @ r < 0, -1.0, 1.0))
    assert np.abs(p @ qt - r).max() < 1e-2


def test_itq_codes_are_the_signs_of_the_rotated_pca_projection(features):
    x = features.astype(np.float32)
    fit = bl.fit_baselines(x, BITS, names=["itq", "pca_sign"], seed=1)
    pca, itq = fit["pca_sign"], fit["itq"]
    r = bl.itq_rotation((x - pca.mean) @ pca.matrix, seed=1)  # every row: sample >= N
    assert np.allclose(itq.matrix, pca.matrix @ r, atol=1e-5)
    expected = (x.astype(np.float64) - pca.mean) @ (pca.matrix @ r) > 0
    assert (bits_of(bl.encode({"itq": itq}, x)["itq"]) != expected).mean() < 1e-3
    # on a sample: fitted on fewer rows, still a rotation of the same PCA directions
    sampled = bl.fit_baselines(x, BITS, names=["itq"], itq_sample=500, seed=1)["itq"]
    rot = pca.matrix.T @ sampled.matrix
    assert np.allclose(rot.T @ rot, np.eye(BITS), atol=1e-4)


def test_lsh_shape_balance_seed_and_faiss_index_lsh(features):
    x = features.astype(np.float32)
    lsh = bl.fit_baselines(x, BITS, names=["lsh"], seed=5)["lsh"]
    codes = bl.encode({"lsh": lsh}, x)["lsh"]
    assert codes.shape == (N, BITS // 8) and codes.dtype == np.uint8
    on = bits_of(codes).mean(0)
    assert np.all((on > 0.3) & (on < 0.7)), on  # hyperplanes through the mean
    again = bl.encode(bl.fit_baselines(x, BITS, names=["lsh"], seed=5), x)["lsh"]
    other = bl.encode(bl.fit_baselines(x, BITS, names=["lsh"], seed=6), x)["lsh"]
    assert np.array_equal(codes, again) and not np.array_equal(codes, other)
    # faiss.IndexLSH with the same random rotation, on the centred rows (its bits come
    # least significant first within a byte)
    index = faiss.IndexLSH(D, BITS, True, False)
    index.rrot.init(5)
    theirs = index.sa_encode(np.ascontiguousarray(x - lsh.mean))
    theirs = np.unpackbits(theirs, axis=1, bitorder="little")[:, :BITS].astype(bool)
    assert (theirs != bits_of(codes)).mean() < 1e-3


def test_bad_arguments_are_refused(features):
    with pytest.raises(ValueError, match="unknown baselines"):
        bl.fit_baselines(features, BITS, names=["sh"])
    with pytest.raises(ValueError, match="bits must be"):
        bl.fit_baselines(features, D + 8)


def test_average_precision_against_its_definition():
    rng = np.random.default_rng(0)
    relevant = rng.random((20, 50)) < 0.2
    relevant[3] = False
    hits = np.cumsum(relevant, axis=1)
    precision = hits / np.arange(1, 51)
    total = relevant.sum(1)
    expected = np.where(total > 0, (precision * relevant).sum(1) / np.maximum(total, 1), 0)
    assert np.allclose(average_precision(relevant), expected)


def test_streamed_distances_and_search_match_brute_force(features, mapped):
    q = features[:7].astype(np.float32) + 0.5
    x = features.astype(np.float64)
    d = ((q[:, None, :] - x[None]) ** 2).sum(-1)
    assert np.allclose(streamed_l2(mapped, q, block=700), d, rtol=1e-4, atol=1e-2)
    dist, ids = exact_search(mapped, q, 5, block=700)
    assert np.array_equal(ids, np.argsort(d, axis=1, kind="stable")[:, :5])
    assert np.allclose(dist, np.sort(d, axis=1)[:, :5], rtol=1e-4)


def test_evaluate_modes_is_the_same_whatever_memory_it_may_use(features, mapped):
    labels = np.arange(N) % 5
    x = features.astype(np.float32)
    x += 6 * (labels[:, None] == np.arange(D) % 5)  # classes to retrieve
    path_rows = np.asarray(x, np.float16)
    queries, q_labels = path_rows[:40].astype(np.float32) + 0.1, labels[:40]
    fit = bl.fit_baselines(path_rows, BITS)
    db_codes = bl.encode(fit, path_rows)
    codes = {
        name: (db_codes[name], lambda v, p=fit[name]: bl.encode({p.name: p}, v)[p.name])
        for name in fit
    }
    pixels = (x[:, :12].copy(), queries[:, :12].copy())

    def run(memory):
        return evaluate_modes(
            path_rows, labels, queries, q_labels, codes=codes, rerank_of="itq", pixels=pixels,
            k=10, rerank_top=30, memory=memory,
        )  # fmt: skip

    assert query_groups(N, 40, 4 * N * 3)[0] == 3 and query_groups(N, 40, 10**9) == (40, 40)
    big, small = run(10**9), run(4 * N * 3)  # all 40 queries at once; 3 at a time
    assert list(big) == ["itq", "itq+rerank", "pca_sign", "lsh", "fc7_euclidean",
                         "pixels_euclidean"]  # fmt: skip
    for mode in big:
        for key in ("precision_at_10", "map", "bytes_per_image"):
            # float distances may differ in the last bit between matrix shapes
            same = big[mode][key] == pytest.approx(small[mode][key], rel=1e-4)
            assert same if "euclidean" in mode else big[mode][key] == small[mode][key], mode
    assert big["itq"]["bytes_per_image"] == 2 and big["fc7_euclidean"]["bytes_per_image"] == 2 * D
    assert big["fc7_euclidean"]["precision_at_10"] > 0.9  # the classes are easy in float
    assert big["itq+rerank"]["precision_at_10"] >= big["itq"]["precision_at_10"]
