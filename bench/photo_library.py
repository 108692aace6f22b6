"""Phone photos: fc7 of 12 MP and 24 MP JPEGs against 500x375 ones and the network alone, peak
memory, and what decoding them reduced changes in fc7 and in retrieval.

    python bench/photo_library.py --run RUN [--photos 200] [--large 40] [--scratch /tmp]

RUN is a trained run (a full-size network), exported (`export-onnx`) and imported again
(`import-weights`) as a published network is: a run without training images. --photos
photos of imagenette-mini (/work/shared/data/imagenette-mini, every class alike) are
written three times under a temporary folder in --scratch: resized to 500x375, to 4032x3024
(12 MP, what phones write) and, for the first --large of them, to 6000x4000 (24 MP); JPEG
quality 90. Each case runs in a fresh process, one after the other, and says its peak
resident memory (VmHWM: the network, torch, DALI and the batches; the fc7 rows are kept in
memory, 16 KB an image):

- forward: the network's fc7 on ready crops, batch 64: what decoding cannot beat;
- 500x375, 12 MP, 24 MP: fc7 of the folder as a gallery's photos are read (pipeline/images.py:
  large JPEGs decoded reduced, batches of 64 bounded by decoded pixels);
- reader: the 500x375 folder through DALI's file reader, as the training set's rows are made
  (and galleries' were before reduced decoding);
- 12 MP decoded whole: the same with reduced decoding off (as before it existed; batches of
  64 bounded by pixels, which before was not so either);
- index 12 MP: `Collection.update` of the 12 MP folder as the imported run's first gallery
  (scan, checks, fc7, fitting and choosing its codes, index), wall time and peak memory.

Then fc7 of the 12 MP photos reduced against whole: cosine similarity per photo, and
retrieval by folder (leave-one-out, float fc7 Euclidean, P@10 and mAP) from each.
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path("/work/shared/data/imagenette-mini")
SIZES = {"500x375": (500, 375), "12 MP": (4032, 3024), "24 MP": (6000, 4000)}


def make_photos(folder: Path, n: int, large: int) -> dict[str, list[str]]:
    """{size: files}: the first n photos of imagenette-mini, classes interleaved, per size."""
    from PIL import Image

    by_class = [sorted(glob.glob(str(c / "*"))) for c in sorted((DATA / "train").iterdir())]
    sources = [f for group in zip(*by_class, strict=False) for f in group][:n]
    files: dict[str, list[str]] = {size: [] for size in SIZES}
    for i, source in enumerate(sources):
        with Image.open(source) as im:
            im = im.convert("RGB")
            for size, wh in SIZES.items():
                if size == "24 MP" and i >= large:
                    continue
                out = folder / size.replace(" ", "") / Path(source).parent.name / f"{i:04d}.jpg"
                out.parent.mkdir(parents=True, exist_ok=True)
                im.resize(wh, Image.Resampling.BICUBIC).save(out, quality=90)
                files[size].append(str(out))
    return files


def imported(run: str, scratch: Path) -> str:
    """RUN's network exported to ONNX and imported again, as a user imports a published
    network: a run without training images, whose first gallery fits its codes."""
    from alexnet.model.inference import load_trained
    from alexnet.model.onnx_io import export_onnx
    from alexnet.model.reference import import_weights
    from alexnet.pipeline.stats import load_stats

    trained = load_trained(run, check_files=False)
    export_onnx(run, scratch / "net.onnx")
    mean = load_stats(run, trained.manifest.fingerprint).mean_image
    np.save(scratch / "mean.npy", mean.astype(np.float32))
    (scratch / "labels.txt").write_text("\n".join(trained.manifest.classes) + "\n")
    out = scratch / "imported"
    import_weights(
        scratch / "net.onnx", out, mean=scratch / "mean.npy", labels=scratch / "labels.txt"
    )
    return str(out)


def child(case: str, run: str, files: list[str], out: str) -> None:
    """One case, in this process: writes fc7 (when made) to `out` and prints its seconds."""
    import torch

    from alexnet.model.inference import load_trained
    from alexnet.retrieval.collection import collection

    trained = load_trained(run, check_files=False)
    start = time.perf_counter()
    if case == "forward":
        x = torch.randn(64, 3, 224, 224) * 50
        for done in range(0, len(files), 64):
            trained.fc7(x[: len(files) - done])
    elif case == "reader":  # the training set's path: DALI's file reader, decoded whole
        from alexnet.model.distributed import World
        from alexnet.retrieval.features import _crops, fc7_batches

        world = World(device=torch.device("cpu"))
        crops = _crops(trained, files, slice(0, len(files)), world, 64, None)
        np.save(out, np.concatenate(list(fc7_batches(trained, crops))))
    elif case == "index":
        gallery = collection(run, "bench")
        gallery.update(Path(files[0]).parents[1], progress=False)
        shutil.rmtree(gallery.paths.folder)
    else:
        reduce = case != "whole"
        batches = trained.outputs(files, "fc7", batch_size=64, skip=False, reduce=reduce)
        np.save(out, np.concatenate([h for _, h in batches]))
    seconds = time.perf_counter() - start
    status = Path("/proc/self/status").read_text()
    peak = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
    print(json.dumps({"seconds": seconds, "rss_gb": int(peak) / 2**20}))


def measure(case: str, run: str, files: list[str], out: Path) -> dict:
    """Run one case in a fresh process: its seconds, images/s and peak resident memory."""
    listed = out.with_suffix(".json")
    listed.write_text(json.dumps(files))
    cmd = [sys.executable, __file__, "--child", case, "--run", run, "--files", str(listed)]
    done = subprocess.run([*cmd, "--out", str(out)], stdout=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"{case} failed: {done.stdout}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return {**found, "rate": len(files) / found["seconds"]}


def leave_one_out(x: np.ndarray, labels: np.ndarray, k: int = 10) -> tuple[float, float]:
    """P@k and mAP of every row against all the others by Euclidean distance."""
    sq = (x.astype(np.float64) ** 2).sum(1)
    d = sq[:, None] + sq[None] - 2 * x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")[:, :-1]
    hits = labels[order] == labels[:, None]
    p_at_k = hits[:, :k].mean()
    ranks = np.arange(1, hits.shape[1] + 1)
    ap = [(np.cumsum(h) / ranks)[h].mean() if h.any() else 0.0 for h in hits]
    return float(p_at_k), float(np.mean(ap))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--large", type=int, default=40)
    parser.add_argument("--scratch", default="/tmp")
    parser.add_argument("--child")
    parser.add_argument("--files")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.run, json.loads(Path(args.files).read_text()), args.out)
        return

    scratch = Path(tempfile.mkdtemp(prefix="alexnet-photos-", dir=args.scratch))
    try:
        start = time.perf_counter()
        files = make_photos(scratch, args.photos, args.large)
        print(f"made {args.photos} photos at 3 sizes in {time.perf_counter() - start:.0f} s")
        run = imported(args.run, scratch)
        cases = [
            ("forward", "500x375"),
            ("500x375", "500x375"),
            ("reader", "500x375"),
            ("12 MP", "12 MP"),
            ("24 MP", "24 MP"),
            ("whole", "12 MP"),
            ("index", "12 MP"),
        ]
        found = {}
        for case, size in cases:
            found[case] = measure(case, run, files[size], scratch / f"{case}.npy")
            print(case, size, json.dumps(found[case]), flush=True)
        reduced = np.load(scratch / "12 MP.npy")
        whole = np.load(scratch / "whole.npy")
        small = np.load(scratch / "500x375.npy")
        labels = np.unique([Path(f).parent.name for f in files["12 MP"]], return_inverse=True)[1]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    base = found["500x375"]["rate"]
    print(f"\n{args.photos} photos ({args.large} at 24 MP), network of {args.run}\n")
    print("| case | images | img/s | vs 500x375 | peak RSS |\n| --- | ---: | ---: | ---: | ---: |")
    names = {
        "forward": "fc7 forward alone (ready crops)",
        "500x375": "500x375 JPEGs",
        "reader": "500x375 JPEGs, DALI's file reader (the training set's path)",
        "12 MP": "12 MP JPEGs (4032x3024), reduced decoding",
        "24 MP": "24 MP JPEGs (6000x4000), reduced decoding",
        "whole": "12 MP JPEGs decoded whole",
        "index": "`update` of a 12 MP gallery (all steps)",
    }
    for case, size in cases:
        f = found[case]
        n = len(files[size])
        print(
            f"| {names[case]} | {n} | {f['rate']:.1f} | {f['rate'] / base:.2f}x | "
            f"{f['rss_gb']:.2f} GB |"
        )
    cos = (reduced * whole).sum(1) / (
        np.linalg.norm(reduced, axis=1) * np.linalg.norm(whole, axis=1)
    )
    print(
        f"\nfc7 of the 12 MP photos, reduced against whole decoding: cosine mean {cos.mean():.5f}"
        f", min {cos.min():.5f}, 5th percentile {np.percentile(cos, 5):.5f}"
    )
    print("\n| fc7 from | P@10 | mAP |\n| --- | ---: | ---: |")
    for name, x in [
        ("12 MP, reduced decoding", reduced),
        ("12 MP, whole decoding", whole),
        ("the same photos at 500x375", small),
    ]:
        p, m = leave_one_out(x, labels)
        print(f"| {name} | {p:.3f} | {m:.3f} |")


if __name__ == "__main__":
    main()
