"""Milvus as a remote store of one collection's binary codes: numpy in, numpy out.

For what one machine cannot do alone (several search servers over one up-to-date collection,
or more codes than one machine's memory): the packed uint8 codes of a collection live in one
Milvus collection, with each image's path, class and content digest beside its code, and
search returns (D, I) as faiss does: int32 Hamming distances and int64 ids, best first.

- `milvus_uri(uri)`: the URI given, else $ALEXNET_MILVUS, else None (no Milvus).
- `connect(uri)`: a pymilvus MilvusClient for `http://host:19530` (a server or cluster) or a
  local `*.db` file (Milvus Lite, embedded, started by pymilvus), with a short timeout.
- `collection_name(run_name, gallery)`: a valid Milvus collection name for a run's collection.
- `MilvusCodes(client, name, bits, network)`: creates the Milvus collection or opens it,
  refusing one made with other `bits` or another network (`network` is the caller's string
  that identifies the network and autoencoder which made the codes). Schema: id INT64 (the
  collection's row id, primary key), code BINARY_VECTOR(bits), path, class, digest VARCHAR.
  Index: BIN_IVF_FLAT with HAMMING on a server (IVF_LISTS lists: the same algorithm as the
  local IVF index), searched with the share of its lists that the local index searches of its
  own (`probe`: the local nprobe, chosen for recall at build; all lists, exact, for a local
  flat index); BIN_FLAT (exact) where that is all the backend has (Milvus Lite), said in a
  log line. Writes go column by column in batches of WRITE_BYTES.
  Methods: `insert` (new ids), `upsert`, `delete`, `flush`, `describe` (the index in words),
  `ids`, `digests`, `records`, `search` (k nearest), `range_search` (all codes closer than a
  radius, faiss's (lims, D, I)), `count`, `drop`.

Every pymilvus failure (server down, wrong URI, refused request) becomes one AlexnetError
line; messages name the caller's `milvus` parameter (the URI). pymilvus's own log lines,
which would repeat each failure with a timestamp, are silenced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from alexnet.pipeline.errors import AlexnetError

from .defaults import IVF_LISTS

log = logging.getLogger(__name__)

ENV = "ALEXNET_MILVUS"
CONNECT_TIMEOUT = 5.0  # seconds to reach the server: a wrong URI fails fast
CALL_TIMEOUT = 120.0  # seconds per request (a write of WRITE_BYTES on a loaded server)
BATCH = 5000  # rows per delete request or listing page
WRITE_BYTES = 16 << 20  # bytes of rows per insert or upsert request (Milvus takes 64 MB)
MAX_K = 16384  # Milvus's limit on results per query (topk) and on queries per request
SCHEMA_VERSION = 1
PATH_LENGTH, CLASS_LENGTH, DIGEST_LENGTH = 4096, 1024, 128  # VARCHAR max_length
INSTALL = "Milvus support is not installed: pip install 'alexnet[milvus]'"


def _pymilvus():
    try:
        import pymilvus
    except ImportError:
        raise AlexnetError(INSTALL) from None
    for name in ("pymilvus", "pymilvus.milvus_client"):  # errors reach the user as ours
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return pymilvus


def _failures() -> tuple[type[BaseException], ...]:
    import grpc  # pymilvus's transport; some refusals arrive as bare RpcErrors

    return (_pymilvus().MilvusException, grpc.RpcError)


def _reason(e: BaseException) -> str:
    text = getattr(e, "message", "") or (e.details() if hasattr(e, "details") else "") or str(e)
    return " ".join(str(text).split()) or type(e).__name__


def milvus_uri(uri: str | None = None) -> str | None:
    """The Milvus URI to use: `uri`, else $ALEXNET_MILVUS, else None (local FAISS files)."""
    return uri or os.environ.get(ENV) or None


def is_lite(uri: str) -> bool:
    """A local file, served by Milvus Lite (which has only the exact BIN_FLAT index)."""
    return "://" not in uri and uri.endswith(".db")


def connect(uri: str, *, timeout: float = CONNECT_TIMEOUT):
    """A MilvusClient for `uri`; an unreachable server or a bad URI is one AlexnetError."""
    pymilvus = _pymilvus()
    if "://" not in uri and not uri.endswith(".db"):
        raise AlexnetError(
            f"{{milvus}} {uri!r} is not a Milvus URI: give http://HOST:19530 for a server "
            "or a local file ending in .db for Milvus Lite"
        )
    try:
        with warnings.catch_warnings():  # milvus-lite imports pkg_resources, deprecated
            warnings.filterwarnings("ignore", "pkg_resources", UserWarning)
            return pymilvus.MilvusClient(uri, timeout=timeout)
    except _failures() as e:
        fix = (
            "check that its folder exists and is writable"
            if is_lite(uri)
            else "start the server (README: Milvus) or fix {milvus}"
        )
        raise AlexnetError(f"cannot open Milvus at {uri} ({_reason(e)}): {fix}") from None


def collection_name(run_name: str, gallery: str) -> str:
    """A valid Milvus collection name (letters, digits, _; at most 255) for a run's collection;
    a digest of the exact names keeps "a-b" and "a_b" apart."""
    digest = hashlib.sha1(f"{run_name}\0{gallery}".encode()).hexdigest()[:8]
    slug = re.sub(r"[^A-Za-z0-9_]+", "_", f"{run_name}__{gallery}").strip("_")[:200]
    return f"alexnet_{slug}_{digest}"


def probe_share(lists: int, probe: tuple[int, int] | None) -> int:
    """The lists of `lists` to search for the share `probe` = (nprobe, of lists) that the
    local IVF index searches (chosen there for recall: index.tune_nprobe); all of them, an
    exact search as the local flat index's, when `probe` is None."""
    if probe is None:
        return lists
    nprobe, of = probe
    return min(lists, max(1, -(-nprobe * lists // of)))


def _sent(rows: int) -> None:
    """Called after each batch of rows is stored (a test interrupts a load here)."""


class MilvusCodes:
    """One collection's codes in Milvus: created with `bits` and `network` when missing,
    opened when it holds the same; refused (nothing changed) when it holds others."""

    def __init__(
        self, client, name: str, bits: int, network: str, *, probe: tuple[int, int] | None = None
    ) -> None:
        if bits % 8 or bits <= 0:
            raise ValueError(f"bits must be a positive multiple of 8, got {bits}")
        self.client, self.name, self.bits, self.network = client, name, bits, network
        with self._call("open the collection"):
            if client.has_collection(name, timeout=CALL_TIMEOUT):
                self._check(client.describe_collection(name, timeout=CALL_TIMEOUT))
            else:
                self._create()
            index = client.describe_index(name, "code", timeout=CALL_TIMEOUT)
            client.load_collection(name, timeout=CALL_TIMEOUT)
        self.index_type, self.lists = index.get("index_type"), int(index.get("nlist") or 0)
        self.nprobe = probe_share(self.lists, probe) if self.index_type == "BIN_IVF_FLAT" else None

    @property
    def description(self) -> dict:
        return {"alexnet": SCHEMA_VERSION, "bits": self.bits, "network": self.network}

    def _check(self, described: dict) -> None:
        try:
            found = json.loads(described.get("description") or "")
        except json.JSONDecodeError:
            found = {}
        if not isinstance(found, dict) or found.get("alexnet") != SCHEMA_VERSION:
            raise AlexnetError(
                f"Milvus collection {self.name} was not made by this version of alexnet: "
                "drop it or choose another {milvus}"
            )
        if (found.get("bits"), found.get("network")) != (self.bits, self.network):
            raise AlexnetError(
                f"Milvus collection {self.name} holds {found.get('bits')}-bit codes of network "
                f"{found.get('network')!r}, not {self.bits}-bit codes of {self.network!r}: "
                "drop it (MilvusCodes.drop) to index again, or choose another {milvus}"
            )

    def _create(self) -> None:
        DataType = _pymilvus().DataType
        c = self.client
        schema = c.create_schema(
            auto_id=False, enable_dynamic_field=False, description=json.dumps(self.description)
        )
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("code", DataType.BINARY_VECTOR, dim=self.bits)
        schema.add_field("path", DataType.VARCHAR, max_length=PATH_LENGTH)
        schema.add_field("class", DataType.VARCHAR, max_length=CLASS_LENGTH)
        schema.add_field("digest", DataType.VARCHAR, max_length=DIGEST_LENGTH)
        # Session: a writer sees its own upserts at once; other readers within seconds.
        c.create_collection(self.name, schema=schema, consistency_level="Session")
        try:
            self._index("BIN_IVF_FLAT", {"nlist": IVF_LISTS})
        except _failures() as e:
            if "BIN_FLAT" not in _reason(e):
                c.drop_collection(self.name)
                raise
            log.info("this Milvus has only BIN_FLAT (Milvus Lite): %s searched exactly", self.name)
            self._index("BIN_FLAT", {})

    def _index(self, kind: str, params: dict) -> None:
        index = self.client.prepare_index_params()
        index.add_index("code", index_type=kind, metric_type="HAMMING", params=params)
        self.client.create_index(self.name, index, timeout=CALL_TIMEOUT)

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        try:
            yield
        except _failures() as e:
            raise AlexnetError(
                f"Milvus could not {what} ({self.name}): {_reason(e)}; is the server at "
                "{milvus} running?"
            ) from None

    def _codes(self, codes: np.ndarray) -> np.ndarray:
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] * 8 != self.bits:
            raise ValueError(
                f"codes must be uint8 (N, {self.bits // 8}), got {codes.dtype} {codes.shape}"
            )
        return np.ascontiguousarray(codes)

    def insert(self, ids, codes, paths, classes, digests) -> None:
        """Store new rows (ids not stored yet), column by column, WRITE_BYTES a request."""
        self._write("insert", ids, codes, paths, classes, digests)

    def upsert(self, ids, codes, paths, classes, digests) -> None:
        """Store rows, replacing any with the same id."""
        self._write("upsert", ids, codes, paths, classes, digests)

    def _write(
        self,
        how: str,
        ids: np.ndarray,
        codes: np.ndarray,
        paths: Sequence[str],
        classes: Sequence[str],
        digests: Sequence[str],
    ) -> None:
        # Columns, not rows: pymilvus packs a list of row dicts one value at a time in Python
        # (three quarters of a load's time); a column is one protobuf field per batch.
        ids, codes = np.asarray(ids, np.int64), self._codes(codes)
        if not len(ids) == len(codes) == len(paths) == len(classes) == len(digests):
            raise ValueError("ids, codes, paths, classes and digests differ in length")
        if not len(ids):
            return
        width = codes.shape[1]
        text = sum(len(x) for column in (paths, classes, digests) for x in column)
        batch = max(1, int(WRITE_BYTES // (8 + width + text / len(ids))))
        with self._call("store codes"):
            send = getattr(self._columns(), how)
            for s in range(0, len(ids), batch):
                packed = codes[s : s + batch].tobytes()
                vectors = [packed[i : i + width] for i in range(0, len(packed), width)]
                columns = [ids[s : s + batch].tolist(), vectors]
                columns += [list(c[s : s + batch]) for c in (paths, classes, digests)]
                send(columns, timeout=CALL_TIMEOUT)
                _sent(len(vectors))

    def _columns(self):
        """pymilvus's Collection of the same connection: the client that takes columns."""
        return _pymilvus().Collection(self.name, using=self.client._using)

    def flush(self) -> None:
        """Seal what was written, so that every reader sees it and the server indexes it."""
        with self._call("flush"):
            self.client.flush(self.name, timeout=CALL_TIMEOUT)

    def delete(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        with self._call("delete codes"):
            for s in range(0, len(ids), BATCH):
                batch = ids[s : s + BATCH].tolist()
                self.client.delete(self.name, ids=batch, timeout=CALL_TIMEOUT)

    def _scan(self, fields: list[str]) -> Iterator[dict]:
        """Every stored row's `fields`, as of now (strong consistency: after every write)."""
        with self._call("list the stored rows"):
            it = self.client.query_iterator(
                self.name, batch_size=BATCH, output_fields=fields, consistency_level="Strong"
            )
            try:
                while rows := it.next():
                    yield from rows
            finally:
                it.close()

    def ids(self) -> np.ndarray:
        """The stored ids, sorted int64."""
        return np.sort(np.fromiter((r["id"] for r in self._scan(["id"])), np.int64))

    def digests(self) -> dict[int, str]:
        """id -> content digest of every stored row: what an incremental update compares."""
        return {r["id"]: r["digest"] for r in self._scan(["id", "digest"])}

    def count(self) -> int:
        with self._call("count the stored rows"):
            rows = self.client.query(
                self.name, output_fields=["count(*)"], consistency_level="Strong"
            )
        return int(rows[0]["count(*)"])

    def records(self, ids: np.ndarray) -> list[dict]:
        """{"id", "path", "class", "digest"} of each id, in the order given; an id not stored
        (deleted since a search) is an AlexnetError."""
        ids = [int(i) for i in np.asarray(ids, np.int64).ravel()]
        with self._call("read rows"):
            found = {
                r["id"]: r
                for r in self.client.get(
                    self.name, ids=sorted(set(ids)), output_fields=["id", "path", "class", "digest"]
                )
            }
        missing = [i for i in ids if i not in found]
        if missing:
            raise AlexnetError(
                f"Milvus collection {self.name} no longer holds {missing[:5]}: search again"
            )
        return [found[i] for i in ids]

    def _search(self, queries: np.ndarray, limit: int, extra: dict) -> list:
        params = {"metric_type": "HAMMING", "params": dict(extra)}
        if self.nprobe is not None:
            params["params"]["nprobe"] = self.nprobe
        queries = self._codes(queries)
        hits = []
        with self._call("search"):
            for s in range(0, len(queries), MAX_K):
                data = [q.tobytes() for q in queries[s : s + MAX_K]]
                hits += self.client.search(
                    self.name, data=data, limit=limit, anns_field="code", search_params=params
                )
        return hits

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(D, I) of the k nearest stored codes: int32 Hamming distances and int64 ids,
        (len(queries), k), best first; padded with int32 max / -1 as faiss pads."""
        if not 1 <= k <= MAX_K:
            raise AlexnetError(f"{{k}} must be in 1..{MAX_K} with Milvus, got {k}")
        D = np.full((len(queries), k), np.iinfo(np.int32).max, np.int32)
        I = np.full((len(queries), k), -1, np.int64)
        for q, row in enumerate(self._search(queries, k, {})):
            D[q, : len(row)] = [h["distance"] for h in row]
            I[q, : len(row)] = [h["id"] for h in row]
        return D, I

    def range_search(
        self, queries: np.ndarray, radius: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every stored code at Hamming distance < radius of each query, as faiss's
        range_search: (lims, D, I), query q's hits in D[lims[q]:lims[q+1]], best first.
        More than MAX_K hits for a query is an AlexnetError (Milvus returns at most MAX_K)."""
        rows = self._search(queries, MAX_K, {"radius": radius, "range_filter": 0})
        if any(len(row) >= MAX_K for row in rows):
            raise AlexnetError(
                f"more than {MAX_K} codes lie within {{radius}} {radius} of a query: "
                "give a smaller radius"
            )
        lims = np.cumsum([0] + [len(row) for row in rows]).astype(np.int64)
        D = np.array([h["distance"] for row in rows for h in row], np.int32)
        I = np.array([h["id"] for row in rows for h in row], np.int64)
        return lims, D, I

    def describe(self) -> str:
        """The index the server searches, in words: "BIN_IVF_FLAT, nprobe 4 of 1024 lists"."""
        if self.nprobe is None:
            return f"{self.index_type} (exact)"
        return f"{self.index_type}, nprobe {self.nprobe} of {self.lists} lists"

    def drop(self) -> None:
        """Remove the Milvus collection and everything in it."""
        with self._call("drop the collection"):
            self.client.drop_collection(self.name, timeout=CALL_TIMEOUT)
