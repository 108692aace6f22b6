"""Milvus for the tests: Milvus Lite (a .db file, embedded) and one real standalone server.

The server is the `milvus` package's (the milvus-server extra: a Milvus 2.3 standalone binary
in a wheel), started once per test run in a temporary folder on a free port, by the
session-scoped fixture `milvus_server` (its URI), and stopped at the end of the run, failed
tests included: the binary, and anything it started, by process id. Where it cannot start
(the package missing, another CPU, no disk), the tests that need it skip with the reason.

`milvus_backend` is the parameter of a fixture that runs a test on both: "lite" or "server".
"""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest

BACKENDS = ("lite", "server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (none where there is no /proc)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = parents.get(todo.pop(), [])
        found += below
        todo += below
    return found


def stop(server) -> None:
    """Stop the server process and everything it started, at once: its data is a temporary
    folder's, with nothing to keep (a graceful stop takes Milvus over 30 s; and the package's
    own stop raises when a killed server takes more than 3 s to exit, as on a loaded machine)."""
    proc = server.server_proc
    if proc is not None:
        for pid in [*children(proc.pid), proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    server.stop()  # closes its log files (the process is gone: nothing else to do)


def start_server(folder: Path, wait: float = 300.0):
    """A started MilvusServer in `folder`, every port a free one: the package picks the first
    free port from each default, but the embedded etcd binds 2379 and 2380 whatever Milvus's
    configuration says, unless it has a configuration file of its own (etcd.config.path)."""
    from milvus import MilvusServer, MilvusServerConfig

    client, peer = free_port(), free_port()
    (folder / "etcd.yaml").write_text(
        "name: milvus\n"
        f"listen-client-urls: http://127.0.0.1:{client}\n"
        f"advertise-client-urls: http://127.0.0.1:{client}\n"
        f"listen-peer-urls: http://127.0.0.1:{peer}\n"
        f"initial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
        f"initial-cluster: milvus=http://127.0.0.1:{peer}\n"
    )
    package = Path(MilvusServerConfig().template_file)
    template = package.read_text().replace(
        "\netcd:\n", f"\netcd:\n  config:\n    path: {folder / 'etcd.yaml'}\n", 1
    )
    (folder / "milvus.yaml.template").write_text(template)
    server = MilvusServer(
        MilvusServerConfig(template=str(folder / "milvus.yaml.template")), wait_for_started=False
    )
    server.config.glog_conf_file = str(package.parent / "glog.conf")
    server.set_base_dir(str(folder / "data"))
    server.config.configs.update(etcd_port=client, proxy_port=free_port())
    server.start()
    health = f"http://127.0.0.1:{server.webservice_port}/healthz"
    deadline = time.monotonic() + wait  # a limit on waiting, not a measurement
    while server.server_proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(health, timeout=5) as answer:
                if b"OK" in answer.read():
                    return server
        except OSError:
            pass
        time.sleep(0.5)
    log = folder / "data" / "logs" / "milvus-stdout.log"
    errors = [line for line in log.read_text(errors="replace").splitlines() if "[ERROR]" in line]
    why = "it exited" if server.server_proc.poll() is not None else f"not up in {wait:.0f} s"
    stop(server)
    raise RuntimeError(f"{why}: {errors[-1][:300] if errors else log}")


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """The URI of a real Milvus standalone server, started for this test run."""
    try:
        import milvus  # noqa: F401
    except ImportError:
        pytest.skip("needs the milvus-server extra: pip install '.[milvus-server]'")
    try:
        server = start_server(tmp_path_factory.mktemp("milvus-server"))
    except Exception as e:  # another CPU, no disk: the reason, then skip
        pytest.skip(f"the Milvus server could not start: {type(e).__name__}: {e}")
    try:
        yield f"http://127.0.0.1:{server.listen_port}"
    finally:
        stop(server)


def milvus_uri(request, tmp_path_factory, backend: str) -> str:
    """A URI of `backend`: a fresh Milvus Lite file, or the session's server."""
    if backend == "server":
        return request.getfixturevalue("milvus_server")
    return str(tmp_path_factory.mktemp("milvus-lite") / "codes.db")
