"""A collection whose codes Milvus serves (`--milvus`): the same answers as the local FAISS
index, through the CLI, on Milvus Lite started by the test (a .db file under tmp_path) and on
a real Milvus server (milvus_servers.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from milvus_servers import BACKENDS, milvus_uri
from retrieval_fixtures import indexed_run

from alexnet.cli.main import cli
from alexnet.cli.web import create_app

pytest.importorskip("pymilvus", reason="needs the milvus extra: pip install '.[milvus]'")


def invoke(*args, code: int = 0):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return indexed_run(tmp_path_factory.mktemp("remote"))


@pytest.fixture(params=BACKENDS)
def db(request, tmp_path_factory) -> str:
    """A Milvus URI: a fresh Milvus Lite file, or the test run's server."""
    return milvus_uri(request, tmp_path_factory, request.param)


def answers(output: str) -> list[list[tuple[str, int]]]:
    """Each query's results as (path, hamming), sorted so that ties compare equal."""
    return [
        sorted((r["path"], r["hamming"]) for r in q["results"])
        for q in json.loads(output)["queries"]
    ]


def test_index_search_and_serve_through_milvus_answer_as_the_local_index(run, db):
    out = invoke("index", "--run", run, "--milvus", db).output
    assert "written:" in out and "12 codes inserted, 0 replaced, 0 deleted" in out
    server = "BIN_IVF_FLAT, nprobe 1024 of 1024 lists" if "://" in db else "BIN_FLAT (exact)"
    assert f": {server}" in out  # the index the server searches, said once
    queries = sorted(str(p) for p in (run.parent / "data").rglob("*.jpg"))[:4]
    k = 12  # the whole training set (4 x 3): ties cannot change which images come back
    local = invoke("search", *queries, "--run", run, "-k", k, "--json").stdout
    searched = invoke("search", *queries, "--run", run, "-k", k, "--json", "--milvus", db)
    remote = searched.stdout
    assert answers(remote) == answers(local)
    assert searched.stderr.count("codes in Milvus collection alexnet_") == 1
    assert server in searched.stderr
    hamming = [[r["hamming"] for r in q["results"]] for q in json.loads(remote)["queries"]]
    assert all(h == sorted(h) for h in hamming) and all(h[0] == 0 for h in hamming[:1])

    again = invoke("index", "--run", run, "--milvus", db).output
    assert "0 codes inserted, 0 replaced, 0 deleted" in again  # nothing changed: nothing sent
    app = TestClient(create_app(run, milvus=str(db)))
    info = app.get("/api/info").json()
    assert info["index"].startswith("milvus ") and info["milvus_index"] == server
    with open(queries[0], "rb") as f:
        page = app.post("/api/search", files={"image": ("q.jpg", f, "image/jpeg")}, data={"k": k})
    assert page.status_code == 200, page.text
    got = sorted((r["path"], r["hamming"]) for r in page.json()["queries"][0]["results"])
    assert got == answers(local)[0]


def test_a_gallery_update_and_duplicates_through_milvus(run, tmp_path, db):
    photos = tmp_path / "photos"
    shutil.copytree(run.parent / "data" / "red", photos / "red")
    invoke("index", "--run", run, "--images", photos, "--name", "p", "--milvus", db)
    (photos / "red" / "0.jpg").unlink()
    out = invoke("index", "--run", run, "--images", photos, "--name", "p", "--milvus", db).output
    assert "1 removed" in out
    local = invoke("duplicates", "--run", run, "--gallery", "p").output
    remote = invoke("duplicates", "--run", run, "--gallery", "p", "--milvus", db).output
    assert local.splitlines()[-1].split("written")[0] == remote.splitlines()[-1].split("written")[0]

    # another gallery's photos found in "p", whose codes Milvus range-searches
    shutil.copytree(run.parent / "data" / "red", tmp_path / "new" / "red")
    invoke("index", "--run", run, "--images", tmp_path / "new", "--name", "q")  # local only
    args = ("duplicates", "--run", run, "--gallery", "q", "--against", "p")
    local, remote = invoke(*args).stdout, invoke(*args, "--milvus", db).stdout
    assert "5 of 6 images of q found in p" in local  # red/0.jpg was removed from p
    pairs = [[line for line in out.splitlines() if " -> " in line] for out in (local, remote)]
    assert pairs[0] == pairs[1] and len(pairs[0]) == 5
    assert local.splitlines()[-1].split("written")[0] == remote.splitlines()[-1].split("written")[0]
    refused = invoke("duplicates", "--run", run, "--gallery", "p", "--against", "q",
                     "--milvus", db, code=2).output  # fmt: skip
    assert "does not hold the codes of gallery q" in refused and "(0 of 6)" in refused


def test_milvus_collections_of_another_network_or_an_unreachable_server_are_refused(run, tmp_path):
    bad = invoke("search", run.parent / "data" / "red" / "0.jpg", "--run", run,
                 "--milvus", "http://127.0.0.1:9", code=2)  # fmt: skip
    assert bad.output.startswith("error: ") and len(bad.output.strip().splitlines()) == 1
