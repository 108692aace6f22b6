"""Serving benchmark: one query end to end (upload -> JSON) against `alexnet serve`, beside the
network's own single-image forward time.

    python bench/serve.py [--images 10000] [--requests 60] [--clients 4]

Builds a run with --images indexed images in a temporary folder. The indexed part is
synthetic, which does not change what a query costs: small generated JPEGs on disk (the
manifest is checked against them), statistics and an untrained checkpoint written through the
library, random float16 fc7 features written as an extraction writes them, and an autoencoder
trained for 2 updates, with which `update_training_set` encodes the features and builds the
index. What a query runs through is real: `alexnet serve` in its own process, HTTP over
127.0.0.1, PIL's check, the DALI query pipeline, the network's fc7, the encoder, the FAISS
index and the JSON records.

Measures, with the server started once:
- latency: --requests sequential uploads of one 500x375 JPEG (after 5 warm-up requests),
  each on a kept-alive connection; p50 and p99 in ms, and the p50 of the part spent in
  the library's search (its query_ms: decode, fc7, encode, index, records);
- throughput: --clients concurrent clients, each sending its share of --requests uploads
  one after another; requests/s;
- forward: the network's fc7 of one 3x224x224 crop (batch 1, as the server runs it), timed
  in a process of its own (see forward_worker) while the server is idle, alternating with
  the latency requests so that both see the same load on the machine; p50 in ms.
Prints p50 / forward (target <= 1.5): what serving adds on top of the network.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from alexnet.model.checkpoint import build_network, checkpoint_state, save_checkpoint
from alexnet.model.config import TrainConfig
from alexnet.model.inference import load_trained, to_float16
from alexnet.pipeline.dataset import scan
from alexnet.pipeline.layout import RunPaths
from alexnet.pipeline.manifest import save_manifest
from alexnet.pipeline.stats import Stats, save_stats
from alexnet.retrieval.autoencoder import (
    AutoencoderConfig,
    autoencoder_state,
    report,
    save_autoencoder,
    train_autoencoder,
)
from alexnet.retrieval.features import (
    DIM,
    grow_features,
    load_features,
    mark_complete,
    source_identity,
)
from alexnet.retrieval.update import update_training_set

CLASSES = 10
BOUNDARY = "alexnet-bench"


def make_run(root: Path, n: int) -> Path:
    """A run whose training set is `n` indexed images (see the module docstring)."""
    rng = np.random.default_rng(0)
    distinct = []
    for _ in range(100):  # 100 different 32x32 pictures, each written n / 100 times
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
        distinct.append(buf.getvalue())
    for i in range(n):
        folder = root / "data" / f"class{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").write_bytes(distinct[i % len(distinct)])
    run = root / "run"
    manifest = scan(root / "data", val_fraction=0.0, progress=False)
    save_manifest(manifest, run)
    mean, cov = np.full(3, 128.0), np.eye(3) * 900  # grey, and no colour PCA to speak of
    stats = Stats(np.full((256, 256, 3), 128.0), mean, cov, np.diag(cov), np.eye(3), n, "")
    save_stats(replace(stats, fingerprint=manifest.fingerprint), run)
    config = TrainConfig()
    model = build_network(config, CLASSES, torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    state = checkpoint_state(model, config, manifest, optimizer=optimizer, schedule={}, epoch=1)
    save_checkpoint(RunPaths(run).best, state)

    trained = load_trained(run, check_files=False)
    paths, source = RunPaths(run).index, source_identity(trained)
    paths.folder.mkdir(parents=True, exist_ok=True)
    grow_features(paths.features, n)
    out = np.load(paths.features, mmap_mode="r+")
    for s in range(0, n, 1000):  # ReLU outputs
        out[s : s + 1000] = to_float16(
            rng.standard_normal((min(1000, n - s), DIM), dtype=np.float32).clip(0)
        )
    out.flush()
    del out
    mark_complete(paths, source, n)
    # An autoencoder after 2 updates (2 batches of 128): the update keeps it as current,
    # then encodes every feature and builds the index.
    sample = np.asarray(load_features(paths)[:256], np.float32)
    model = train_autoencoder(sample, AutoencoderConfig(epochs=1, min_steps=1), progress=False)
    state = autoencoder_state(model, source=source, report=report(model, sample))
    save_autoencoder(state, paths.autoencoder)
    update_training_set(trained, paths, trained.world, "index", progress=False)
    return run


def query_jpeg() -> bytes:
    """A photo-sized (500x375) JPEG: smooth colours plus noise, about as costly to decode."""
    rng = np.random.default_rng(1)
    v, u = np.mgrid[0:375, 0:500] / 500
    pixels = np.stack([200 * u, 150 * v + 50, 120 + 60 * np.sin(8 * u)], -1)
    pixels += rng.normal(0, 20, pixels.shape)
    buf = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def multipart(image: bytes, **fields) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    head = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=image; filename=q.jpg\r\n"
        "Content-Type: image/jpeg\r\n\r\n"
    )
    return b"".join([*parts, head.encode(), image, f"\r\n--{BOUNDARY}--\r\n".encode()])


class Client:
    """One kept-alive connection, as a browser tab holds one."""

    def __init__(self, port: int, body: bytes):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.body = body
        self.headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}

    def search(self) -> float:
        """Seconds from sending the upload to holding the parsed JSON."""
        try:
            return self._search()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            self.conn.close()  # the server dropped the idle connection (keep-alive timeout)
            return self._search()

    def _search(self) -> float:
        start = time.perf_counter()
        self.conn.request("POST", "/api/search", self.body, self.headers)
        reply = self.conn.getresponse()
        out = json.loads(reply.read())
        elapsed = time.perf_counter() - start
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}: {out}")
        self.library_ms = out["query_ms"]  # the part spent in Collection.search
        return elapsed


def start_server(run: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "alexnet.cli.main", "-q", "serve", "--run", str(run), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if m := re.search(r"http://127\.0\.0\.1:(\d+)/", line):
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # drain the rest
            return proc, int(m.group(1))
    raise RuntimeError("alexnet serve did not start")


def forward_worker(run: str) -> None:
    """--forward-worker RUN: the run's network, one fc7 forward per line read, its ms printed.

    Run as the server runs it: in a process of its own, idle between calls, the forward in a
    worker thread (FastAPI runs a search in its thread pool). On a busy machine, the same
    forward timed in the main thread of the benchmark's own process measured several times
    slower than the whole search inside the server, so that comparison would flatter."""
    model = load_trained(run, check_files=False).model
    x = 60 * torch.randn(1, 3, 224, 224)  # 0-255-scale pixel differences, as the server sees

    def forward() -> float:
        with torch.inference_mode():
            start = time.perf_counter()
            model.fc7(x)
            return 1000 * (time.perf_counter() - start)

    with ThreadPoolExecutor(1) as pool:
        for _ in sys.stdin:
            print(pool.submit(forward).result(), flush=True)


class Forward:
    def __init__(self, run: Path):
        command = [sys.executable, __file__, "--forward-worker", str(run)]
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def ms(self) -> float:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--forward-worker", metavar="RUN", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.forward_worker:
        return forward_worker(args.forward_worker)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp), args.images)
        built = time.perf_counter() - began
        body = multipart(query_jpeg(), k=10, rerank=0)
        proc, port = start_server(run)
        network = Forward(run)
        try:
            client = Client(port, body)
            for _ in range(5):  # warm-up
                client.search()
                network.ms()
            latency, library, forward = [], [], []
            for _ in range(args.requests):  # alternated, so both see the same machine load
                latency.append(1000 * client.search())
                library.append(client.library_ms)
                forward.append(network.ms())
            clients = [Client(port, body) for _ in range(args.clients)]
            for c in clients:
                c.search()
            share = args.requests // args.clients
            start = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(lambda c: [c.search() for _ in range(share)], clients))
            throughput = share * args.clients / (time.perf_counter() - start)
        finally:
            network.close()
            proc.terminate()
            proc.wait(30)
    p50, p99 = np.percentile(latency, [50, 99])
    f50 = float(np.median(forward))
    print(
        f"{args.images} indexed images, {os.cpu_count()} CPUs (load average now "
        f"{os.getloadavg()[0]:.1f}), torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads); run built in {built:.0f} s"
    )
    print(
        f"end to end (upload -> JSON), k=10: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
        f"(in the library's search: p50 {np.median(library):.1f} ms)"
    )
    print(f"{args.clients} concurrent clients: {throughput:.1f} requests/s")
    print(f"network forward (fc7, one 224x224 crop): p50 {f50:.1f} ms")
    total = time.perf_counter() - began
    print(f"p50 / forward = {p50 / f50:.2f} (target <= 1.5); benchmark took {total:.0f} s")


if __name__ == "__main__":
    main()
