"""The binary index and the re-rank against brute-force numpy references (random codes)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from alexnet.pipeline.errors import AlexnetError
from alexnet.retrieval.index import (
    auto_kind,
    build_index,
    hamming,
    index_kind,
    measure_recall,
    rerank,
    search,
    tune_nprobe,
)


def popcount_distances(queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The reference: unpack every bit and count the differing ones."""
    return np.unpackbits(queries[:, None, :] ^ codes[None, :, :], axis=-1).sum(-1)


def random_codes(n: int, bits: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, bits // 8), dtype=np.uint8)


@pytest.mark.parametrize("bits", [32, 64, 256])
def test_hamming_distances_equal_numpy_popcount(bits):
    codes, queries = random_codes(500, bits, 0), random_codes(20, bits, 1)
    reference = popcount_distances(queries, codes)
    assert np.array_equal(hamming(queries, codes), reference)
    D, I = search(build_index(codes), queries, 500)  # every distance, through faiss
    assert np.array_equal(D, np.take_along_axis(reference, I, axis=1))
    assert np.array_equal(np.sort(I, axis=1), np.tile(np.arange(500), (20, 1)))


@pytest.mark.parametrize("bits", [64, 256])
def test_search_results_equal_brute_force(bits):
    codes, queries = random_codes(2000, bits, 2), random_codes(30, bits, 3)
    k = 10
    D, I = search(build_index(codes), queries, k)
    reference = popcount_distances(queries, codes)
    assert D.dtype == np.int32 and I.dtype == np.int64 and D.shape == I.shape == (30, k)
    assert np.array_equal(D, np.sort(reference, axis=1)[:, :k])  # the k smallest distances
    assert np.array_equal(D, np.take_along_axis(reference, I, axis=1))  # ids match distances
    assert all(len(set(row)) == k for row in I)


def test_a_database_code_finds_itself_at_distance_zero():
    codes = random_codes(1000, 64, 4)
    D, I = search(build_index(codes), codes[[5, 500, 999]], 1)
    assert D[:, 0].tolist() == [0, 0, 0] and I[:, 0].tolist() == [5, 500, 999]


def test_save_and_load_round_trip(tmp_path):
    codes, queries = random_codes(300, 64, 5), random_codes(7, 64, 6)
    index = build_index(codes)
    faiss.write_index_binary(index, str(tmp_path / "i.faissindex"))
    loaded = faiss.read_index_binary(str(tmp_path / "i.faissindex"))
    assert loaded.ntotal == 300 and index_kind(loaded) == "flat"
    for a, b in zip(search(index, queries, 5), search(loaded, queries, 5), strict=True):
        assert np.array_equal(a, b)


def test_ivf_above_the_threshold_and_flat_below():
    assert auto_kind(200_000) == "flat" and auto_kind(200_001) == "ivf"
    assert auto_kind(3000, approx_threshold=200_000) == "flat"
    codes = random_codes(3000, 64, 7)
    assert index_kind(build_index(codes, approx_threshold=5000)) == "flat"
    index = build_index(codes, approx_threshold=1000)
    assert index_kind(index) == "ivf" and index.ntotal == 3000


def test_ivf_results_are_true_hamming_neighbours():
    codes, queries = random_codes(3000, 64, 11), random_codes(30, 64, 12)
    index = build_index(codes, kind="ivf")
    D, I = search(index, queries, 10)
    reference = popcount_distances(queries, codes)
    assert np.array_equal(D, np.take_along_axis(reference, I, axis=1))  # ids match distances
    assert (np.diff(D, axis=1) >= 0).all() and all(len(set(row)) == 10 for row in I)
    exact_kth = np.sort(reference, axis=1)[:, 9:10]
    assert ((D <= exact_kth).sum(1) / 10).mean() >= 0.9  # what measure_recall counts
    assert measure_recall(index, codes, sample=200) >= 0.9
    assert measure_recall(build_index(codes), codes, sample=200) == 1.0
    D, I = search(index, codes[:20], 1)
    assert np.array_equal(D[:, 0], np.zeros(20))  # an exact copy is always found


def test_ivf_save_and_load_round_trip(tmp_path):
    codes, queries = random_codes(2000, 64, 13), random_codes(7, 64, 14)
    index = build_index(codes, kind="ivf")
    faiss.write_index_binary(index, str(tmp_path / "i.faissindex"))
    loaded = faiss.read_index_binary(str(tmp_path / "i.faissindex"))
    assert index_kind(loaded) == "ivf" and loaded.nprobe == index.nprobe
    for a, b in zip(search(index, queries, 5), search(loaded, queries, 5), strict=True):
        assert np.array_equal(a, b)


def clustered_codes(n: int, clusters: int, seed: int) -> np.ndarray:
    """Codes near `clusters` random centres (each bit flipped with probability 0.05): codes
    of similar photos lie close together, as these do."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2, (clusters, 64), dtype=np.uint8)
    bits = centres[rng.integers(0, clusters, n)] ^ (rng.random((n, 64)) < 0.05)
    return np.packbits(bits.astype(np.uint8), axis=1)


def brute_force_recall(index, codes: np.ndarray, nprobe: int) -> float:
    """recall@10 of `index` at `nprobe` with every code as a query, against numpy popcount."""
    index.nprobe = nprobe
    D, I = index.search(codes, 10)
    kth = np.concatenate(
        [np.sort(popcount_distances(codes[s : s + 500], codes), 1)[:, 9:10]
         for s in range(0, len(codes), 500)]
    )  # fmt: skip
    return float((((D <= kth) & (I >= 0)).sum(1)).mean() / 10)


@pytest.mark.parametrize("kind", ["clustered", "random"])
def test_nprobe_is_the_fewest_lists_that_hold_recall_099(kind):
    codes = clustered_codes(3000, 20, 15) if kind == "clustered" else random_codes(3000, 64, 15)
    index = build_index(codes, kind="ivf")
    assert index.nlist == 30  # IVF_MIN_LIST codes a list at least
    found = tune_nprobe(index, codes, sample=len(codes))  # every code a query: exact check
    chosen = index.nprobe
    assert found >= 0.99 and brute_force_recall(index, codes, chosen) == pytest.approx(found)
    if chosen > 1:
        assert brute_force_recall(index, codes, chosen - 1) < 0.99  # one list fewer loses it
    if kind == "clustered":
        assert chosen <= 3  # close codes share a list
    else:
        assert chosen >= 10  # nothing to group: most lists hold some of the 10 nearest


def test_an_ivf_index_is_built_with_its_nprobe_chosen_on_a_sample():
    codes = clustered_codes(20_000, 50, 16)
    index = build_index(codes, kind="ivf")  # nprobe chosen on 1000 of the codes
    assert 1 <= index.nprobe < index.nlist // 4
    assert measure_recall(index, codes, sample=2000, seed=5) >= 0.98  # other queries


def test_hnsw_on_request_and_its_recall():
    codes = random_codes(3000, 64, 7)
    index = build_index(codes, kind="hnsw")
    assert index_kind(index) == "hnsw" and index.ntotal == 3000
    assert measure_recall(index, codes, sample=200) >= 0.9


def test_k_outside_the_database_is_refused():
    index = build_index(random_codes(10, 64, 8))
    with pytest.raises(AlexnetError, match="k=11 is outside 1..10"):
        search(index, random_codes(1, 64, 9), 11)


def test_bad_codes_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        build_index(np.zeros((3, 8), np.float32))


def test_rerank_equals_brute_force_euclidean(tmp_path):
    rng = np.random.default_rng(10)
    path = tmp_path / "features.f16.npy"
    np.save(path, rng.normal(size=(400, 64)).astype(np.float16))
    features = np.load(path, mmap_mode="r")  # as the run's features are read
    queries = rng.normal(size=(6, 64)).astype(np.float32)
    shortlist = np.stack([rng.choice(400, 50, replace=False) for _ in range(6)])
    shortlist[0, -5:] = -1  # missing results are ignored
    D, I = rerank(features, queries, shortlist, 8)
    for q in range(6):
        ids = shortlist[q][shortlist[q] >= 0]
        d = np.linalg.norm(features[ids].astype(np.float64) - queries[q], axis=1)
        order = np.argsort(d)[:8]
        assert I[q].tolist() == ids[order].tolist()
        assert np.allclose(D[q], d[order], rtol=1e-5)


def test_rerank_pads_short_rows():
    features = np.eye(4, dtype=np.float16)
    D, I = rerank(features, np.zeros((1, 4), np.float32), np.array([[2, -1, -1]]), 3)
    assert I.tolist() == [[2, -1, -1]] and D[0, 0] == 1 and np.isinf(D[0, 1:]).all()
