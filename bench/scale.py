"""Prep and search at ImageNet's size (1.28 million training files), measured on a synthetic
tree and extrapolated.

    python bench/scale.py [--files 200000] [--classes 1000] [--stats-images 5000] [--keep DIR]

Makes, in a temporary folder, DATA/train/<wnid>/<wnid>_<i>.JPEG: --files small JPEGs (64x48,
a few dozen distinct encodings written over and over, so that making them is quick) in
--classes folders, plus a flat DATA/val/ of files/25 images labelled by a Kaggle-style
LOC_val_solution.csv (ImageNet's ratio of 50,000 to 1.28M). Then measures, in CPU seconds (the
work itself: a shared machine's load changes the wall time, not this; on an idle machine the
wall time is the CPU time over the cores in use)
  validation    alexnet's per-file check (open, fstat, PIL draft decode) in one process, in
                files per CPU-second (= per core), on a few hundred imagenette photos
                re-encoded at 500x375 (ImageNet's typical size; ~40 KB each), on the same
                with noise added ("grainy": ~110 KB, ImageNet's average file size), and on
                the synthetic files
  scan          dataset.scan of the whole tree: the walk, the validation in threads,
                the manifest's columns
  statistics    the DALI prep pipeline and float64 sums (stats.compute_stats), images per
                CPU-second on the two 500x375 sets and on --stats-images synthetic files
  manifest      its size on disk and save time, and in a fresh process the load (integrity
                checked, no file stat'ed: what search does) with its memory, the check of
                every file (what training does) and of the validation files (what eval does)
  DALI reader   memory of a fresh process after building the prep pipeline over the whole
                training list, against one over 1,000 files
  search        `alexnet -q search` start to end (a fresh process each, wall and CPU), and
                where its CPU time goes. The run is assembled with library functions: the
                manifest above, statistics of the --stats-images subset, an untrained
                AlexNet checkpoint with momentum state (its size is what a training
                checkpoint weighs), a features file of the right shape (zeros: extracting
                fc7 of 200,000 images takes hours on a CPU) marked complete, an autoencoder
                trained on a random sample, and the codes and FAISS index built by
                update_training_set.
Each figure is extrapolated to 1,281,167 files (linearly where it grows with the file
count) and set beside its target. BENCHMARKS.md ("Scale") has the figures and the reading.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

IMAGENET = 1_281_167  # ILSVRC-2012 training images
IMAGENET_VAL = 50_000
DEFAULT_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-mini"
SCRIPT = str(Path(__file__).resolve())


def rss_mb() -> float:
    """This process's resident memory now, in MB (Linux)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Clock:
    """Wall and CPU seconds of a block. On a shared machine the wall time depends on what else
    runs; the CPU time is the work itself (on an idle machine, wall = CPU / cores in use)."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, cpu_seconds() - self.cpu


# --- the synthetic tree --------------------------------------------------------------------


def jpeg_variants(n: int = 48, size: tuple[int, int] = (64, 48)) -> list[bytes]:
    """n distinct small JPEGs: a colour gradient and noise each."""
    import io

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        base = rng.uniform(0, 255, 3)
        ramp = np.linspace(0, 80, size[0])[None, :, None]
        pixels = np.clip(base + ramp + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255)
        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def make_tree(root: Path, files: int, classes: int) -> Path:
    """ILSVRC-shaped: train/<wnid>/<wnid>_<i>.JPEG and a flat val/ with Kaggle's label file."""
    variants = jpeg_variants()
    wnids = [f"n{10_000_000 + c:08d}" for c in range(classes)]
    written = 0
    for c, wnid in enumerate(wnids):
        folder = root / "train" / wnid
        folder.mkdir(parents=True)
        for i in range(files // classes + (c < files % classes)):
            (folder / f"{wnid}_{i}.JPEG").write_bytes(variants[written % len(variants)])
            written += 1
    (root / "val").mkdir()
    rows = ["ImageId,PredictionString"]
    for i in range(1, files // 25 + 1):
        name = f"ILSVRC2012_val_{i:08d}"
        (root / "val" / f"{name}.JPEG").write_bytes(variants[i % len(variants)])
        rows.append(f"{name},{wnids[i % classes]} 0 0 63 47")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    names = "".join(f"{w} synthetic class {c}, another name\n" for c, w in enumerate(wnids))
    (root / "LOC_synset_mapping.txt").write_text(names)
    return root


def imagenet_sized(photos: Path, folder: Path, count: int) -> list[str]:
    """`count` imagenette photos re-encoded at 500x375 (bench/pipeline.py's helper)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from pipeline import imagenet_sized as reencode
    from pipeline import list_images

    folder.mkdir(parents=True)
    return reencode(list_images(str(photos / "train"), count)[0], str(folder))


def grainy(files: list[str], folder: Path, sigma: float = 24.0) -> list[str]:
    """The same photos with Gaussian noise added before encoding (quality 90): upscaled
    imagenette photos compress to ~40 KB, while ImageNet's JPEGs average ~110 KB, and a
    decoder's work grows with the bytes it entropy-decodes."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = []
    for i, f in enumerate(files):
        with Image.open(f) as im:
            pixels = np.asarray(im.convert("RGB"), np.float32)
        noisy = np.clip(pixels + rng.normal(0, sigma, pixels.shape), 0, 255).astype(np.uint8)
        out.append(str(folder / f"{i:05d}.jpg"))
        Image.fromarray(noisy).save(out[-1], "JPEG", quality=90)
    return out


def mean_kb(files: list[str]) -> float:
    return float(np.mean([os.path.getsize(f) for f in files])) / 1024


# --- measurements in this process ----------------------------------------------------------


def validation_rate(files: list[str]) -> float:
    """Files per CPU-second of inspect_file in this one process (after a warm-up pass)."""
    from alexnet.pipeline.imagecheck import inspect_file

    for f in files[:50]:
        inspect_file(f)
    with Clock() as c:
        reasons = [inspect_file(f)[0] for f in files]
    assert not any(reasons), [r for r in reasons if r][:3]
    return len(files) / c.cpu


def stats_rate(files: list[str]) -> float:
    """Images per CPU-second of the statistics pass (DALI's threads included), after a short
    pass that pays DALI's one-time start-up."""
    from alexnet.pipeline.stats import compute_stats

    compute_stats(files[:64], "bench", batch_size=64, device="cpu", progress=False)
    with Clock() as c:
        compute_stats(files, "bench", batch_size=64, device="cpu", progress=False)
    return len(files) / c.cpu


# --- measurements in a fresh process (memory and start-up must not include this one's) -------


def child(what: str, *args: str) -> dict:
    """Run `python bench/scale.py --child WHAT ARGS` and return the JSON it prints last."""
    done = subprocess.run(
        [sys.executable, SCRIPT, "--child", what, *args], capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_manifest(run: str) -> dict:
    import gc
    import tracemalloc

    from alexnet.pipeline.manifest import load_manifest, verify_files

    before = rss_mb()
    with Clock() as load:
        manifest = load_manifest(run, check_files=False)
    grown = rss_mb() - before
    with Clock() as val:
        verify_files(manifest, manifest.files.positions("val"))
    with Clock() as every:
        verify_files(manifest)
    del manifest
    gc.collect()
    tracemalloc.start()  # slows allocation down: a second load, for the peak alone
    load_manifest(run, check_files=False)
    _, peak = tracemalloc.get_traced_memory()
    return {
        "load_s": load.cpu,
        "load_mb": grown,
        "load_peak_mb": peak / 2**20,
        "check_val_s": val.cpu,
        "check_all_s": every.cpu,
    }


def child_reader(run: str, count: str) -> dict:
    from alexnet.pipeline.dali import pipe_options, prep_pipeline
    from alexnet.pipeline.manifest import load_manifest, split_files

    manifest = load_manifest(run, check_files=False)
    before = rss_mb()
    files = split_files(manifest, "train")[0][: int(count)]
    listed = rss_mb()
    pipe = prep_pipeline(files, device="cpu", **pipe_options("cpu", 64, 0, 2))
    pipe.build()
    return {"files": len(files), "list_mb": listed - before, "built_mb": rss_mb() - listed}


def child_startup(run: str, query: str) -> dict:
    """Where `alexnet search` spends its start-up, in CPU seconds: Collection.open's and search's
    steps in turn."""
    marks = {}
    start = cpu_seconds()

    def mark(name: str) -> None:
        nonlocal start
        marks[name] = cpu_seconds() - start
        start = cpu_seconds()

    import faiss  # noqa: F401
    import nvidia.dali  # noqa: F401
    import torch

    from alexnet.model.checkpoint import build_network, load_checkpoint
    from alexnet.model.config import config_from_dict
    from alexnet.model.distributed import World, local_device
    from alexnet.model.inference import TrainedRun
    from alexnet.pipeline.layout import RunPaths
    from alexnet.pipeline.manifest import load_manifest
    from alexnet.pipeline.stats import load_stats
    from alexnet.retrieval.collection import Collection

    mark("imports (torch, DALI, faiss, alexnet)")
    paths, world = RunPaths(run), World(device=local_device())
    manifest = load_manifest(run, check_files=False)
    mark("manifest")
    stats = load_stats(run, manifest.fingerprint)
    mark("statistics")
    saved = load_checkpoint(paths.best, mmap=True)  # as load_trained reads it
    mark("checkpoint file")
    config = config_from_dict(saved["config"])
    model = build_network(config, len(manifest.classes), torch.device("cpu"), saved["model"])
    model.eval()
    mark("network built around the weights")
    trained = TrainedRun(paths, model, config, manifest, stats, paths.best, 1, world)
    train = Collection(run).open(trained=trained)
    mark("index, codes, autoencoder opened")
    train.search([query], k=10)
    mark("one query searched (DALI graph, fc7, codes)")
    train.search([query], k=10)
    mark("the same query again")
    return marks


# --- the run search opens ------------------------------------------------------------------


def assemble_run(manifest: dict, run: Path, stats_files: list[str]) -> dict:
    """A run of the tree's size from library functions (module docstring); returns sizes."""
    import torch

    from alexnet.model.alexnet import AlexNet, AlexNetConfig
    from alexnet.model.checkpoint import checkpoint_state, save_checkpoint
    from alexnet.model.config import TrainConfig
    from alexnet.model.inference import load_trained
    from alexnet.model.init import resolve
    from alexnet.model.optim import optimizer_for
    from alexnet.model.plateau import plateau_schedule
    from alexnet.pipeline.layout import RunPaths
    from alexnet.pipeline.stats import compute_stats, save_stats
    from alexnet.retrieval import autoencoder as ae
    from alexnet.retrieval import codes as C
    from alexnet.retrieval.features import DIM, mark_complete, source_identity
    from alexnet.retrieval.update import update_training_set

    paths = RunPaths(run)
    save_stats(compute_stats(stats_files, manifest.fingerprint, progress=False), run)
    config = resolve(TrainConfig())
    model = AlexNet(AlexNetConfig(num_classes=len(manifest.classes)))
    optimizer = optimizer_for(model, config)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates the momentum buffers a training checkpoint carries
    schedule = plateau_schedule(config).state_dict()
    state = checkpoint_state(
        model, config, manifest, optimizer=optimizer, schedule=schedule, epoch=1
    )
    save_checkpoint(paths.best, state)

    trained = load_trained(run, check_files=False)
    n = len(manifest.files.positions("train"))
    paths.index.folder.mkdir(parents=True, exist_ok=True)
    np.lib.format.open_memmap(paths.index.features, "w+", np.float16, (n, DIM)).flush()
    mark_complete(paths.index, source_identity(trained), n)
    sample = np.random.default_rng(0).normal(0, 1, (2048, DIM)).astype(np.float16)
    # label-aware, as the run's labels make them (else the index would fit them again on all
    # the zero features: the default codes are label-aware), briefly trained
    labels = np.arange(len(sample)) % len(manifest.classes)
    model_ae = C.fit_codes(sample, labels, bits=64, epochs=1, min_steps=8)
    ae_state = C.encoder_state(
        model_ae, source=source_identity(trained), report=C.report(model_ae, sample)
    )
    ae.save_autoencoder(ae_state, paths.index.autoencoder)
    with Clock() as c:
        meta = update_training_set(trained, paths.index, trained.world, "index", progress=False)
    return {
        "checkpoint_mb": paths.best.stat().st_size / 1e6,
        "index_build_s": c.cpu,
        "index_kind": meta["kind"],
        "indexed": meta["count"],
    }


def command_times(command: list[str], repeats: int = 3) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of a command, start to finish, `repeats` times."""
    times = []
    for _ in range(repeats):
        with Clock() as c:
            subprocess.run(command, check=True, capture_output=True)
        times.append((c.wall, c.cpu))
    return times


# --- the report ----------------------------------------------------------------------------


def report(r: dict, n: int) -> str:
    """The table: each figure at the measured size and at 1,281,167 files, with its target."""
    x = IMAGENET / n
    cores = os.cpu_count() or 1
    m, big, small = r["manifest"], r["reader_full"], r["reader_small"]
    per_file_kb = (big["built_mb"] - small["built_mb"]) / (big["files"] - small["files"]) * 1024
    search_cpu = float(np.median([cpu for _, cpu in r["search"]]))
    imports_cpu = float(np.median([cpu for _, cpu in r["imports"]]))
    rows = [
        (
            f"validation, 500x375 JPEGs ({r['kb_big']:.0f} KB): files/s per core",
            r["val_big"],
            r["val_big"],
            ">= 400",
        ),
        (
            f"validation, 500x375 grainy ({r['kb_noisy']:.0f} KB): files/s per core",
            r["val_noisy"],
            r["val_noisy"],
            ">= 400",
        ),
        ("validation, 64x48 JPEGs: files/s per core", r["val_small"], r["val_small"], ""),
        ("scan + validation: files/s per core", n / r["scan_cpu_s"], None, ""),
        ("scan + validation: CPU s", r["scan_cpu_s"], r["scan_cpu_s"] * x, ""),
        (
            f"  1.33M grainy 500x375 JPEGs: wall s on {cores} cores",
            None,
            (IMAGENET + IMAGENET_VAL) / r["val_noisy"] / cores,
            "",
        ),
        ("statistics, 500x375: images/s per core", r["stats_big"], r["stats_big"], ""),
        ("statistics, 500x375 grainy: images/s per core", r["stats_noisy"], r["stats_noisy"], ""),
        ("statistics, 64x48: images/s per core", r["stats_small"], r["stats_small"], ""),
        (
            f"  1.28M grainy 500x375 JPEGs: wall h on {cores} cores",
            None,
            IMAGENET / r["stats_noisy"] / cores / 3600,
            "",
        ),
        ("manifest on disk: MB (json + npz)", r["manifest_mb"], r["manifest_mb"] * x, ""),
        ("manifest save: CPU s", r["save_s"], r["save_s"] * x, ""),
        ("manifest load (integrity checked): CPU s", m["load_s"], m["load_s"] * x, "<= 2"),
        ("manifest load: MB resident after", m["load_mb"], m["load_mb"] * x, "<= 1000"),
        (
            "manifest load: MB peak (Python heap)",
            m["load_peak_mb"],
            m["load_peak_mb"] * x,
            "<= 1000",
        ),
        ("file check of every file (train): CPU s", m["check_all_s"], m["check_all_s"] * x, ""),
        ("file check of the val files (eval): CPU s", m["check_val_s"], m["check_val_s"] * x, ""),
        (
            "DALI pipeline over the training list: MB",
            big["built_mb"],
            small["built_mb"] + per_file_kb * IMAGENET / 1024,
            "",
        ),
        ("  and the Python list of paths it is given: MB", big["list_mb"], big["list_mb"] * x, ""),
        ("checkpoint with momentum: MB", r["run"]["checkpoint_mb"], r["run"]["checkpoint_mb"], ""),
        (
            "`alexnet search` start to end: CPU s (median of 3)",
            search_cpu,
            search_cpu + (x - 1) * m["load_s"],  # what grows with the file count
            "<= 3",
        ),
        ("  a bare `python -c 'import torch, nvidia.dali, faiss'`", imports_cpu, imports_cpu, ""),
    ]
    lines = [f"{'measure':54}{'at ' + format(n, ','):>14}{'at 1,281,167':>14}  target"]
    for name, here, there, target in rows:
        cells = [f"{v:14.2f}" if v is not None else f"{'':14}" for v in (here, there)]
        lines.append(f"{name:54}{''.join(cells)}  {target}")
    wall = ", ".join(f"{w:.1f}" for w, _ in r["search"])
    lines += [
        "",
        f"`alexnet search` wall s on this machine: {wall}; CPU s of its steps, one process:",
        *(f"  {k:52}{v:8.2f}" for k, v in r["startup"].items()),
        f"DALI pipeline: {small['built_mb']:.0f} MB with {small['files']} files, "
        f"{per_file_kb:.3f} KB per further file",
        f"index: {r['run']['index_kind']} over {r['run']['indexed']} codes, built in "
        f"{r['run']['index_build_s']:.0f} CPU s; fc7 features at 1.28M: 1,281,167 x 4096 x 2 "
        f"bytes = {IMAGENET * 4096 * 2 / 1e9:.1f} GB",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--stats-images", type=int, default=5000)
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--big", type=int, default=300, help="500x375 re-encodes to measure")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, *rest = args.child
        print(json.dumps(globals()[f"child_{what}"](*rest)))
        return

    from alexnet.pipeline.dataset import scan
    from alexnet.pipeline.manifest import load_manifest, save_manifest, split_files

    work = Path(args.keep or tempfile.mkdtemp(prefix="alexnet-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    r: dict = {}
    with Clock() as whole:
        try:
            with Clock() as c:
                data = make_tree(work / "data", args.files, args.classes)
            print(f"tree of {args.files} + {args.files // 25} files: {c.wall:.0f} s")
            big = imagenet_sized(args.photos, work / "big", args.big)
            noisy = grainy(big, work / "grainy")
            r["kb_big"], r["kb_noisy"] = mean_kb(big), mean_kb(noisy)
            r["val_big"] = validation_rate(big)
            r["val_noisy"] = validation_rate(noisy)
            small = [str(p) for p in sorted((data / "train").glob("*/*_1*.JPEG"))[:2000]]
            r["val_small"] = validation_rate(small)
            print(f"validation: {r['val_noisy']:.0f} and {r['val_small']:.0f} files per CPU-s")

            with Clock() as c:
                manifest = scan(data, progress=False)
            n = len(manifest.files)
            r["scan_cpu_s"] = c.cpu
            print(f"scan: {n} files, {c.wall:.0f} s, skipped {len(manifest.skipped)}")

            r["stats_big"] = stats_rate(big)
            r["stats_noisy"] = stats_rate(noisy)
            train = split_files(manifest, "train")[0]
            stats_files = train[:: max(1, len(train) // args.stats_images)][: args.stats_images]
            r["stats_small"] = stats_rate(stats_files)
            print(f"statistics: {r['stats_noisy']:.0f} and {r['stats_small']:.0f} images per CPU-s")

            run = work / "run"
            with Clock() as c:
                save_manifest(manifest, run)
            r["save_s"] = c.cpu
            r["manifest_mb"] = sum(p.stat().st_size for p in run.glob("manifest.*")) / 1e6
            del train, manifest
            r["manifest"] = child("manifest", str(run))
            r["reader_full"] = child("reader", str(run), str(args.files))
            r["reader_small"] = child("reader", str(run), "1000")
            print("manifest and DALI reader measured")

            manifest = load_manifest(run, check_files=False)
            r["run"] = assemble_run(manifest, run, stats_files)
            script = str(Path(sys.executable).with_name("alexnet"))
            r["search"] = command_times([script, "-q", "search", big[0], "--run", str(run)])
            imports = "import torch, nvidia.dali, faiss"
            r["imports"] = command_times([sys.executable, "-c", imports])
            r["startup"] = child("startup", str(run), big[0])
        finally:
            if args.keep is None:
                shutil.rmtree(work, ignore_errors=True)
    print()
    print(report(r, n))
    load = os.getloadavg()[0]
    print(
        f"\n{os.cpu_count()} CPUs, load average {load:.1f} at the end; the benchmark took "
        f"{whole.wall / 60:.1f} min wall, {whole.cpu / 60:.1f} min CPU"
    )


if __name__ == "__main__":
    main()
