"""Milvus as the store of a collection's codes, against faiss's exact IndexBinaryFlat.

Each test runs on Milvus Lite (embedded, started by pymilvus on a file under tmp_path; only
the exact BIN_FLAT index) and on a real Milvus server (milvus_servers.py; BIN_IVF_FLAT)."""

from __future__ import annotations

import logging
import socket
import sys
import time

import faiss
import numpy as np
import pytest
from milvus_servers import BACKENDS, milvus_uri

from alexnet.pipeline.errors import AlexnetError
from alexnet.retrieval import milvus, remote

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


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def client(request, tmp_path_factory, backend):
    c = milvus.connect(milvus_uri(request, tmp_path_factory, backend))
    yield c
    c.close()


def test_search_equals_faiss_and_updates_incrementally(client, backend, caplog):
    name = milvus.collection_name("runs/mini", "train")
    with caplog.at_level(logging.INFO, logger=milvus.__name__):
        store = milvus.MilvusCodes(client, name, BITS, "net-a")
    if backend == "lite":  # Milvus Lite refuses BIN_IVF_FLAT: the exact index
        assert store.index_type == "BIN_FLAT" and store.nprobe is None
        assert f"only BIN_FLAT (Milvus Lite): {name} searched exactly" in caplog.text
    else:  # a flat local index: every list probed, an exact search
        assert store.index_type == "BIN_IVF_FLAT" and store.nprobe == store.lists == 1024
        described = client.describe_index(name, "code")
        assert (described["index_type"], described["metric_type"]) == ("BIN_IVF_FLAT", "HAMMING")
    codes, queries = random_codes(3000, 0), random_codes(50, 1)
    ids = np.arange(3000) * 3 + 5  # a collection's ids need not be 0..N-1
    store.insert(ids, codes, *rows(ids))
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
    store.insert(new_ids, new_codes, *rows(new_ids))
    store.flush()  # sealed: the server searches its BIN_IVF_FLAT index from here on
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


def test_an_interrupted_sync_sends_only_the_missing_rows(client, monkeypatch):
    store = milvus.MilvusCodes(client, milvus.collection_name("runs/big", "g"), BITS, "net-a")
    ids, codes = np.arange(1000) * 2, random_codes(1000, 6)
    digests = remote.digests(codes, np.arange(1000) + 100, np.arange(1000) + 10**18)

    def records(at):
        return [f"img/{i}.jpg" for i in at], [f"class{i % 7}" for i in at]

    sent = []

    def interrupt(rows: int) -> None:  # Ctrl-C after the second batch is stored
        sent.append(rows)
        if len(sent) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(milvus, "WRITE_BYTES", 300 * 80)  # batches of ~300 rows
    monkeypatch.setattr(milvus, "_sent", interrupt)
    with pytest.raises(KeyboardInterrupt):
        remote.sync(store, ids, codes, digests, records)
    stored = sum(sent)
    assert 0 < stored < 1000 and store.count() == stored

    sent.clear()
    monkeypatch.setattr(milvus, "_sent", sent.append)
    done = remote.sync(store, ids, codes, digests, records)
    assert (done["inserted"], done["upserted"], done["deleted"]) == (1000 - stored, 0, 0)
    assert sum(sent) == 1000 - stored and store.count() == 1000
    assert_same_as_faiss(store, ids, codes, random_codes(20, 7), 10)

    # a changed image is replaced, a vanished one deleted: nothing else is sent
    digests[5] = "changed"
    sent.clear()
    done = remote.sync(store, ids[1:], codes[1:], digests[1:], records)
    assert (done["inserted"], done["upserted"], done["deleted"], sum(sent)) == (0, 1, 1, 1)
    assert store.digests()[int(ids[5])] == "changed" and store.count() == 999
    store.drop()


def test_the_server_probes_the_local_indexs_share_of_its_lists():
    assert milvus.probe_share(1024, None) == 1024  # a flat local index: exact
    assert milvus.probe_share(1024, (3, 1024)) == 3
    assert milvus.probe_share(1024, (3, 512)) == 6 and milvus.probe_share(1024, (1, 3000)) == 1
    assert milvus.probe_share(16, (40, 32)) == 16 and milvus.probe_share(10, (1, 3)) == 4


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
