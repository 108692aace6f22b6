"""Importing a reference network of the published size: time and peak memory.

    python bench/import_weights.py [--scratch /tmp] [--encoding v1|current]

Writes a .caffemodel with AlexNet's real blob shapes and 1000 classes (60,965,224 float32
values, about 233 MB, like bvlc_alexnet.caffemodel; random values; the legacy V1 encoding by
default, as the published file has) with the tests' protobuf writer, then imports it in a
fresh process and reports the import's wall time and that process's peak RSS
(resource.getrusage), next to the peak RSS of a process that only loads the same modules, so
the import's own share shows. Targets: at most 10 s on 2 cores, peak RSS at most 2.5 x the file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = str(Path(__file__).resolve().parents[1] / "tests")
WRITER = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from caffe_files import random_weights, write_caffemodel
write_caffemodel(Path(sys.argv[2]), random_weights(1000), v1=sys.argv[3] == "v1")
"""

CHILD = """
import json, resource, sys, time
import torch
torch.set_num_threads(2)
from alexnet.model import reference

def status(key):  # bytes
    return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) * 1024

before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # peak RSS (VmHWM) from here on
start = time.perf_counter()
reference.import_weights(sys.argv[1], sys.argv[2])
seconds = time.perf_counter() - start
rusage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "before": before, "peak": status("VmHWM"), "rusage": rusage}))
"""


def child(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", default=tempfile.gettempdir())
    parser.add_argument("--encoding", choices=["v1", "current"], default="v1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        path = Path(tmp) / "bvlc_alexnet.caffemodel"
        start = time.perf_counter()
        # In its own process: getrusage's peak of a process includes what the process it was
        # forked from held, so this one stays small.
        subprocess.run([sys.executable, "-c", WRITER, TESTS, str(path), args.encoding], check=True)
        size = path.stat().st_size
        print(f"wrote {path.name}: {size / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s")
        r = child(str(path), str(Path(tmp) / "run"))
        checkpoint = Path(tmp) / "run" / "checkpoints" / "best.pt"
        print(f"import: {r['seconds']:.2f} s ({size / 1e6 / r['seconds']:.0f} MB/s)")
        own = r["peak"] - r["before"]
        print(
            f"peak RSS (getrusage): {r['rusage'] / 1e6:.0f} MB = {r['rusage'] / size:.2f} x the "
            f"file; before the import {r['before'] / 1e6:.0f} MB (torch's libraries), so the "
            f"import's own peak is {own / 1e6:.0f} MB = {own / size:.2f} x the file"
        )
        print(f"checkpoint: {checkpoint.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
