"""Gallery benchmark: indexing a folder of photos, updating it, finding planted duplicates.

    python bench/gallery.py --run RUN [--images 5000] [--add 100] [--planted 40]
                            [--batch-size 64] [--workers N] [--scratch /tmp]

RUN is a trained run (its training-set index is built first when missing, and not timed).
Photos are made from imagenette-mini (/work/shared/data/imagenette-mini, 1,600 photos):
each is a random crop (60-100% of each side) of a source photo, resized to a random shorter
side of 160-400 px and saved as JPEG at a random quality of 70-95, in folders of 500, under
a temporary folder in --scratch that is deleted at the end.

1. Full build: `Collection.update` of --images photos: wall time and images/s (scanning and
   decoding checks included, as a user waits for them).
2. Update: --add more photos, then `update` again: wall time, images/s of the added
   photos, and its ratio to the full build's time; then an update with nothing new (the
   scan alone).
3. Duplicates (--planted N > 0): a gallery of the 400 validation photos plus, for the first N
   of them, a copy resized to 3/4, one re-encoded at JPEG quality 25 and a mirrored one;
   `Collection.duplicates` with its defaults: planted groups found exactly, groups missed, groups
   holding a photo that is not a copy, and the time it took.
"""

from __future__ import annotations

import argparse
import glob
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from alexnet.pipeline.layout import RunPaths
from alexnet.retrieval.collection import collection

DATA = Path("/work/shared/data/imagenette-mini")


def variants(folder: Path, sources: list[str], start: int, count: int, seed: int) -> None:
    """`count` photos numbered from `start`: random crops, sizes and JPEG qualities."""
    rng = np.random.default_rng([seed, start])
    for n in range(start, start + count):
        with Image.open(sources[n % len(sources)]) as im:
            im = im.convert("RGB")
            w, h = (int(s * rng.uniform(0.6, 1.0)) for s in im.size)
            x, y = rng.integers(0, im.width - w + 1), rng.integers(0, im.height - h + 1)
            im = im.crop((x, y, x + w, y + h))
            side = rng.integers(160, 401)
            scale = side / min(im.size)
            im = im.resize((round(im.width * scale), round(im.height * scale)))
            sub = folder / f"{n // 500:03d}"
            sub.mkdir(parents=True, exist_ok=True)
            im.save(sub / f"{n:05d}.jpg", quality=int(rng.integers(70, 96)))


def timed(label: str, fn):
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    print(f"{label}: {seconds:.1f} s", flush=True)
    return result, seconds


def planted(folder: Path, n: int) -> dict[str, list[str]]:
    """The validation photos, and 3 copies of the first n: {original: [its group]}."""
    groups = {}
    for i, f in enumerate(sorted(glob.glob(str(DATA / "val/*/*")))):
        target = folder / Path(f).parent.name / Path(f).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, target)
        if i < n:
            im = Image.open(f).convert("RGB")
            copies = folder / "copies"
            copies.mkdir(exist_ok=True)
            small = (im.width * 3 // 4, im.height * 3 // 4)
            im.resize(small, Image.Resampling.BICUBIC).save(copies / f"{i}_small.jpg", quality=90)
            im.save(copies / f"{i}_q25.jpg", quality=25)
            ImageOps.mirror(im).save(copies / f"{i}_mirror.jpg", quality=90)
            names = [copies / f"{i}_{k}.jpg" for k in ("small", "q25", "mirror")]
            groups[str(target)] = sorted(str(p) for p in [target, *names])
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--add", type=int, default=100)
    parser.add_argument("--planted", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--scratch", default="/tmp")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    collection(args.run, workers=args.workers).open()  # built here when missing
    sources = sorted(glob.glob(str(DATA / "*/*/*.JPEG")))
    scratch = Path(tempfile.mkdtemp(prefix="alexnet-gallery-bench-", dir=args.scratch))
    name = f"bench-{scratch.name[-8:]}"
    try:
        photos = scratch / "photos"
        _, made = timed(
            f"made {args.images} photos",
            lambda: variants(photos, sources, 0, args.images, args.seed),
        )
        gallery = collection(args.run, name, workers=args.workers)
        options = dict(batch_size=args.batch_size, progress=False)
        record, full = timed("full build", lambda: gallery.update(photos, **options))
        assert record["count"] == args.images, record["count"]
        variants(photos, sources, args.images, args.add, args.seed)
        record, update = timed(
            f"update adding {args.add}", lambda: gallery.update(photos, **options)
        )
        assert (record["added"], record["updated"], record["removed"]) == (args.add, 0, 0)
        _, rescan = timed("update adding none", lambda: gallery.update(photos, **options))
        print(
            f"\nfull build: {args.images} images in {full:.1f} s = {args.images / full:.1f} img/s\n"
            f"update: {args.add} added to {args.images} in {update:.1f} s = "
            f"{args.add / update:.1f} img/s; {update / full:.3f} of the full build's time "
            f"({full / update:.1f}x faster)\n"
            f"update with nothing new: {rescan:.1f} s ({rescan / full:.3f} of the full build)\n"
            f"batch {args.batch_size}, workers {args.workers or 'default'}"
        )
        shutil.rmtree(RunPaths(args.run).gallery(name).folder)

        if args.planted:
            folder = scratch / "planted"
            groups = planted(folder, args.planted)
            gallery.update(folder, **options)
            gallery.open()
            report, seconds = timed(
                "duplicates", lambda: gallery.duplicates(sheets=False, progress=False)
            )
            found = [sorted(g["images"]) for g in report["groups"]]
            exact = sum(g in found for g in groups.values())
            planted_files = {p for g in groups.values() for p in g}
            impure = sum(any(p not in planted_files for p in g) for g in found)
            mirrored = sum(p["mirrored"] for g in report["groups"] for p in g["pairs"])
            print(
                f"\nduplicates in {report['images']} images ({args.planted} photos with 3 "
                f"copies each): {exact}/{len(groups)} planted groups found exactly, "
                f"{len(found)} groups in all, {impure} holding a photo that is no copy; "
                f"{report['candidates']} candidate pairs within {report['max_distance']} bits, "
                f"fc7 <= {report['max_fc7']}, {mirrored} pairs confirmed by the mirrored crop; "
                f"{seconds:.1f} s"
            )
            shutil.rmtree(RunPaths(args.run).gallery(name).folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
