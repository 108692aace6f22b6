"""Milvus as the store of a collection's codes, against faiss's exact IndexBinaryFlat.

Milvus Lite (embedded, started here by pymilvus on a file under tmp_path) stands in for a
server: the same client, requests and schema; only the index is BIN_FLAT (exact) there."""

from __future__ import annotations

import logging
import socket
import sys
import time

import faiss
import numpy as np
import pytest

from alexnet.pipeline.errors import AlexnetError
from alexnet.retrieval import milvus

pytest.importorskip("pymilvus", reason="needs the milvus extra: pip install '.[milvus]'")

BITS = 64


def random_codes(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, BITS // 8), dtype=np.uint8)


def rows(ids: np.ndarray) -> tuple[list[str], list[str], list[str]]:
    return [f"img/{i}.jpg" for i in ids], [f"class{i % 7}" for i in ids], [f"d{i}" for i in ids]


def assert_same_as_faiss(store: milvus.MilvusCodes, ids, codes, queries, k: int) -> None:
    """Distances equal faiss's row for row; each id returned is stored, once per row, and at
    the distance reported (ties may come back in another order than faiss's); ids below the
    k-th distance are faiss's ids."""
    exact = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(BITS))
    exact.add_with_ids(codes, np.asarray(ids, np.int64))
    Dx, Ix = exact.search(queries, k)
    D, I = store.search(queries, k)
    assert D.dtype == np.int32 and I.dtype == np.int64 and D.shape == I.shape == (len(queries), k)
    assert np.array_equal(D, Dx)
    row_of = {int(i): r for r, i in enumerate(ids)}
    for q, d, i, ix in zip(queries, D, I, Ix, strict=True):
        assert len(set(i)) == k
        true = np.unpackbits(q ^ codes[[row_of[int(j)] for j in i]], axis=1).sum(1)
        assert np.array_equal(true, d)
        assert set(i[d < d[-1]]) == set(ix[d < d[-1]])


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    c = milvus.connect(str(tmp_path_factory.mktemp("milvus") / "codes.db"))
    yield c
    c.close()


def test_search_equals_faiss_and_updates_incrementally(client, caplog):
    name = milvus.collection_name("runs/mini", "train")
    with caplog.at_level(logging.INFO, logger=milvus.__name__):
        store = milvus.MilvusCodes(client, name, BITS, "net-a")
    assert store.index_type == "BIN_FLAT"  # Milvus Lite refuses BIN_IVF_FLAT: the exact index
    assert f"only BIN_FLAT (Milvus Lite): {name} searched exactly" in caplog.text
    codes, queries = random_codes(3000, 0), random_codes(50, 1)
    ids = np.arange(3000) * 3 + 5  # a collection's ids need not be 0..N-1
    store.upsert(ids, codes, *rows(ids))
    assert store.count() == 3000 and np.array_equal(store.ids(), ids)
    assert_same_as_faiss(store, ids, codes, queries, 10)
    assert np.array_equal(
        store.search(codes[:20], 1)[1][:, 0], ids[:20]
    )  # each finds itself  # each stored code finds itself

    # Incremental: replace 100 codes, delete 200, add 300; the same as faiss on the result.
    changed, gone = ids[:100], ids[100:300]
    codes[:100] = random_codes(100, 2)
    new_ids, new_codes = np.arange(10_000, 10_300), random_codes(300, 3)
    paths, classes, digests = rows(changed)
    store.upsert(changed, codes[:100], paths, classes, [d + "-v2" for d in digests])
    store.delete(gone)
    store.upsert(new_ids, new_codes, *rows(new_ids))
    keep = np.ones(len(ids), bool)
    keep[100:300] = False
    now_ids = np.concatenate([ids[keep], new_ids])
    now_codes = np.concatenate([codes[keep], new_codes])
    assert np.array_equal(store.ids(), np.sort(now_ids)) and store.count() == len(now_ids)
    assert_same_as_faiss(store, now_ids, now_codes, queries, 10)
    digests = store.digests()
    assert digests[int(ids[0])] == f"d{ids[0]}-v2" and digests[10_000] == "d10000"
    assert int(gone[0]) not in digests

    # Records in the order asked; a deleted id is refused.
    records = store.records(np.array([10_001, ids[0]]))
    assert [r["path"] for r in records] == ["img/10001.jpg", f"img/{ids[0]}.jpg"]
    assert records[0]["class"] == f"class{10_001 % 7}"
    with pytest.raises(AlexnetError, match="no longer holds"):
        store.records(gone[:1])

    # Range search: every code closer than the radius, as faiss's range_search finds them.
    exact = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(BITS))
    exact.add_with_ids(now_codes, now_ids.astype(np.int64))
    lims_x, D_x, I_x = exact.range_search(queries[:10], 22)
    lims, D, I = store.range_search(queries[:10], 22)
    assert np.array_equal(lims, lims_x) and lims[-1] > 0
    for q in range(10):
        s = slice(lims[q], lims[q + 1])
        assert sorted(zip(D[s], I[s], strict=True)) == sorted(zip(D_x[s], I_x[s], strict=True))

    # k beyond the stored rows pads as faiss pads.
    D, I = store.search(queries[:2], len(now_ids) + 5)
    assert (I[:, -5:] == -1).all() and (D[:, -5:] == np.iinfo(np.int32).max).all()


def test_reopen_keeps_codes_and_refuses_other_bits_or_network(client):
    name = milvus.collection_name("runs/other", "photos")
    store = milvus.MilvusCodes(client, name, BITS, "net-a")
    store.upsert(np.arange(10), random_codes(10, 4), *rows(np.arange(10)))
    assert milvus.MilvusCodes(client, name, BITS, "net-a").count() == 10
    with pytest.raises(AlexnetError, match="holds 64-bit codes of network 'net-a', not 128"):
        milvus.MilvusCodes(client, name, 128, "net-a")
    with pytest.raises(AlexnetError, match="not 64-bit codes of 'net-b'"):
        milvus.MilvusCodes(client, name, BITS, "net-b")
    assert np.array_equal(store.ids(), np.arange(10))  # nothing changed
    with pytest.raises(ValueError, match="uint8"):
        store.upsert(np.arange(2), random_codes(2, 5)[:, :4], *rows(np.arange(2)))
    store.drop()
    assert not client.has_collection(name)


def test_collection_names_are_valid_and_distinct():
    a, b = milvus.collection_name("my-run", "x"), milvus.collection_name("my_run", "x")
    assert a != b
    for name in (a, b, milvus.collection_name("/runs/ü 1" * 40, "gallery.v2")):
        assert len(name) <= 255 and name[0].isalpha()
        assert all(c.isalnum() and c.isascii() or c == "_" for c in name)


def test_uri_from_argument_or_environment(monkeypatch):
    monkeypatch.delenv(milvus.ENV, raising=False)
    assert milvus.milvus_uri() is None
    monkeypatch.setenv(milvus.ENV, "http://db:19530")
    assert milvus.milvus_uri() == "http://db:19530"
    assert milvus.milvus_uri("x.db") == "x.db"


def test_server_down_or_bad_uri_is_one_clear_line(tmp_path, capfd):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(AlexnetError, match=f"cannot open Milvus at http://127.0.0.1:{port}"):
        milvus.connect(f"http://127.0.0.1:{port}", timeout=1)
    assert time.perf_counter() - start < 10
    with pytest.raises(AlexnetError, match="not a Milvus URI"):
        milvus.connect("localhost:19530")
    with pytest.raises(AlexnetError, match="its folder exists"):
        milvus.connect(str(tmp_path / "missing" / "codes.db"))
    err = capfd.readouterr().err
    assert "Traceback" not in err and "ERROR" not in err  # pymilvus's own lines silenced


def test_without_pymilvus_the_fix_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # import fails
    with pytest.raises(AlexnetError, match=r"pip install 'alexnet\[milvus\]'"):
        milvus.connect("codes.db")
