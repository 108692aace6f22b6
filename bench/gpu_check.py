"""The Python side of bench/gpu_check.sh: the environment check, fc7 and FAISS on the GPU, and
the one table of every step's figures.

    python bench/gpu_check.py env                       one line: what is missing, or ok
    python bench/gpu_check.py fc7 [--batch 256] [--json PATH]
    python bench/gpu_check.py faiss [--codes 1000000] [--bits 64] [--json PATH]
    python bench/gpu_check.py table OUT                 the table of OUT's results

fc7 reuses bench/speed.py's Inference (eval, inference_mode; channels-last and bf16 autocast
on a GPU); faiss times alexnet's flat binary index (retrieval.index.build_index) on the CPU
against its GPU copy (to_device), batched and one query at a time (bench/retrieval.py's
latencies), and checks that both return the same distances. Each measurement stops with one
line when what should run on the GPU would run on the CPU. The pipeline and training figures
come from bench/pipeline.py --device gpu and bench/train.py --require-gpu; `table` reads the
JSON files they all write into OUT, and the step log gpu_check.sh keeps there (steps.txt:
name, exit code, seconds, limit), and exits non-zero when any step failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
IMAGENET_TRAIN = 1_281_167  # ILSVRC-2012 training images: one epoch
STEPS = ("tests", "pipeline", "train", "fc7", "faiss")


def bench_module(name: str):
    """Another bench/ script as a module (by path: `retrieval` would also name a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- env ----------------------------------------------------------------------------------


def missing() -> tuple[list[str], list[str]]:
    """(what is missing for the GPU check, what was found), each as short phrases."""
    gaps, found = [], []
    try:
        import torch
    except ImportError:
        gaps.append("torch (pip install .)")
    else:
        if torch.cuda.is_available():
            found.append(
                f"torch {torch.__version__} on {torch.cuda.get_device_name(0)} "
                f"(CUDA {torch.version.cuda})"
            )
        else:
            gaps.append(
                f"a CUDA device for torch {torch.__version__} (torch.cuda.is_available() is "
                f"False; built for CUDA {torch.version.cuda})"
            )
    try:
        import nvidia.dali
    except ImportError:
        gaps.append("nvidia-dali (pip install .)")
    else:
        found.append(f"DALI {nvidia.dali.__version__}")
    try:
        import faiss
    except ImportError:
        gaps.append("faiss (pip install faiss-gpu)")
    else:
        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if gpus > 0 and hasattr(faiss, "GpuIndexBinaryFlat"):
            found.append(f"faiss {faiss.__version__} ({gpus} GPU{'s' * (gpus > 1)})")
        else:
            gaps.append(
                f"faiss with GPUs (faiss {faiss.__version__}: faiss.get_num_gpus() == {gpus}; "
                "pip uninstall faiss-cpu, then pip install faiss-gpu)"
            )
    for module, package in (("alexnet.pipeline", "alexnet (pip install .)"), ("pytest", "pytest")):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            gaps.append(package)
    return gaps, found


def env(args) -> int:
    gaps, found = missing()
    if gaps:
        print(f"missing: {'; '.join(gaps)}", file=sys.stderr)
        return 1
    print(f"ok: {', '.join(found)}")
    return 0


# --- fc7, faiss ---------------------------------------------------------------------------


def require_cuda():
    import torch

    if not torch.cuda.is_available():
        sys.exit("error: CUDA is not available (torch.cuda.is_available() is False)")
    return torch.device("cuda", torch.cuda.current_device())


def fc7(args) -> int:
    """fc7 images/s of the paper's network on the GPU: median of --rounds."""
    device = require_cuda()
    import torch

    from alexnet.model.alexnet import AlexNet, AlexNetConfig

    speed = bench_module("speed")
    model = AlexNet(AlexNetConfig(num_classes=1000)).to(device)
    model = model.to(memory_format=torch.channels_last)
    infer = speed.Inference(model, args.batch, device)
    rates = [infer.run(args.batches) for _ in range(args.rounds)]
    figures = {"device": str(device), "batch": args.batch, "images_per_s": statistics.median(rates)}
    print(f"fc7 extraction, batch {args.batch}: {figures['images_per_s']:.0f} img/s on {device}")
    return write(args.json, figures)


def faiss_search(args) -> int:
    """The flat binary index on the CPU and on the GPU: batched and single-query search."""
    import faiss
    import numpy as np

    from alexnet.retrieval.index import build_index, search, to_device

    if not (hasattr(faiss, "GpuIndexBinaryFlat") and faiss.get_num_gpus() > 0):
        sys.exit(
            f"error: faiss {faiss.__version__} sees no GPU (faiss.get_num_gpus() == "
            f"{faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0}): install "
            "faiss-gpu in place of faiss-cpu"
        )
    latencies = bench_module("retrieval").latencies
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (args.codes, args.bits // 8), dtype=np.uint8)
    queries = rng.integers(0, 256, (args.queries, args.bits // 8), dtype=np.uint8)
    cpu = build_index(codes, kind="flat")
    gpu = to_device(cpu)
    if not isinstance(gpu, faiss.GpuIndexBinaryFlat):
        sys.exit(f"error: to_device gave a {type(gpu).__name__}, not a GpuIndexBinaryFlat")
    figures = {"codes": args.codes, "bits": args.bits, "queries": args.queries, "k": 10}
    results = {}
    for name, index in (("cpu", cpu), ("gpu", gpu)):
        search(index, queries[:10], 10)  # warm-up
        start = time.perf_counter()
        results[name] = search(index, queries, 10)
        figures[f"{name}_batch_ms"] = 1000 * (time.perf_counter() - start)
        figures[f"{name}_single_p50_ms"] = latencies(index, queries[:100])[0]
    if not np.array_equal(results["cpu"][0], results["gpu"][0]):
        sys.exit("error: the GPU index returned other distances than the CPU index")
    print(
        f"faiss flat {args.bits}-bit, {args.codes} codes, {args.queries} queries k=10: "
        f"CPU {figures['cpu_batch_ms']:.1f} ms, GPU {figures['gpu_batch_ms']:.1f} ms; "
        f"one query p50 CPU {figures['cpu_single_p50_ms']:.3f} ms, "
        f"GPU {figures['gpu_single_p50_ms']:.3f} ms"
    )
    return write(args.json, figures)


def write(path: Path | None, figures: dict) -> int:
    if path:
        path.write_text(json.dumps(figures, indent=1))
    return 0


# --- table --------------------------------------------------------------------------------


def load(out: Path, name: str) -> dict | None:
    try:
        return json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def step_status(out: Path) -> dict[str, str]:
    """Each step's "ok, N s", or why it failed (with its log's last line)."""
    status = {name: "not run" for name in STEPS}
    try:
        lines = (out / "steps.txt").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        name, rc, seconds, limit = line.split()
        if rc == "0":
            status[name] = f"ok, {seconds} s"
            continue
        try:
            tail = (out / f"{name}.log").read_text().strip().splitlines()[-1][:100]
        except (OSError, IndexError):
            tail = ""
        why = f"timed out at {limit} s" if rc in ("124", "137") else f"FAILED (exit {rc})"
        status[name] = f"{why}: {tail}" if tail else why
    return status


def minutes(images_per_s: float, gpus: int) -> str:
    return f"{IMAGENET_TRAIN / (images_per_s * gpus) / 60:.1f} min"


def table(out: Path) -> tuple[str, bool]:
    """The table of every step's figures, and whether every step passed."""
    status = step_status(out)
    rows: list[tuple[str, str, str]] = []

    def row(what: str, figure: str, step: str) -> None:
        rows.append((what, figure, status[step] if step else ""))

    summary = ""
    try:
        summary = (out / "tests.log").read_text().strip().splitlines()[-1].strip("= ")
    except (OSError, IndexError):
        pass
    row("gpu-marked tests (pytest -m gpu)", summary or "-", "tests")
    pipe = load(out, "pipeline")
    if pipe:
        for set_name, f in pipe["sets"].items():
            rate = f["images_per_s"]
            row(f"DALI train pipeline, mixed decoding ({set_name})", f"{rate['b']:.0f} img/s", "")
            row("DALI train pipeline, patch cache", f"{rate['b2']:.0f} img/s", "")
            row(
                f"faster torchvision loader ({f['best_torch']})",
                f"{rate[f['best_torch']]:.0f} img/s",
                "",
            )
            row(
                "DALI / torchvision; cache / torchvision",
                f"{f['b_over_best_torch']:.2f}x; {f['b2_over_best_torch']:.2f}x",
                "pipeline",
            )
    else:
        row("pipeline benchmark (bench/pipeline.py --device gpu)", "-", "pipeline")
    train = load(out, "train")
    if train:
        b = f"batch {train['batch']}, bf16, channels-last"
        row(f"training, model alone ({b})", f"{train['model_alone']:.0f} img/s", "")
        row(
            f"training end to end, DALI mixed decoding ({train['images']} small photos)",
            f"{train['end_to_end']:.0f} img/s "
            f"(data wait {100 * train['end_to_end_data_wait']:.0f}%)",
            "",
        )
        row(
            "training end to end, patch cache",
            f"{train['end_to_end_cached']:.0f} img/s "
            f"(data wait {100 * train['end_to_end_cached_data_wait']:.0f}%)",
            "",
        )
        best = max(train["end_to_end"], train["end_to_end_cached"])
        row(
            "ImageNet epoch (1,281,167 images), 1 GPU",
            f"{minutes(train['end_to_end'], 1)} decoding, {minutes(train['end_to_end_cached'], 1)}"
            " from the cache",
            "",
        )
        row("ImageNet epoch, 8 such GPUs (linear scaling)", minutes(best, 8), "train")
    else:
        row("training (bench/train.py --require-gpu)", "-", "train")
    f = load(out, "fc7")
    if f:
        row(f"fc7 extraction (batch {f['batch']}, bf16)", f"{f['images_per_s']:.0f} img/s", "fc7")
    else:
        row("fc7 extraction", "-", "fc7")
    f = load(out, "faiss")
    if f:
        row(
            f"faiss flat {f['bits']}-bit, {f['codes']} codes, {f['queries']} queries k=10",
            f"GPU {f['gpu_batch_ms']:.1f} ms vs CPU {f['cpu_batch_ms']:.1f} ms "
            f"({f['cpu_batch_ms'] / f['gpu_batch_ms']:.1f}x); one query p50 "
            f"{f['gpu_single_p50_ms']:.3f} vs {f['cpu_single_p50_ms']:.3f} ms",
            "faiss",
        )
    else:
        row("faiss flat search, GPU vs CPU", "-", "faiss")
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, width, strict=True)).rstrip() for r in rows]
    passed = all(s.startswith("ok") for s in status.values())
    return "\n".join(lines), passed


def show(args) -> int:
    text, passed = table(args.out)
    try:
        print((args.out / "env.txt").read_text().strip())
    except OSError:
        pass
    print(text)
    if not passed:
        print(f"gpu_check: some steps failed (their logs are in {args.out})", file=sys.stderr)
    return 0 if passed else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="one line: what the GPU check is missing").set_defaults(run=env)
    q = sub.add_parser("fc7", help="fc7 extraction img/s on the GPU")
    q.add_argument("--batch", type=int, default=256)
    q.add_argument("--batches", type=int, default=10, help="batches per round")
    q.add_argument("--rounds", type=int, default=3)
    q.add_argument("--json", type=Path, default=None)
    q.set_defaults(run=fc7)
    q = sub.add_parser("faiss", help="faiss-gpu flat search against the CPU index")
    q.add_argument("--codes", type=int, default=1_000_000)
    q.add_argument("--bits", type=int, choices=[64, 128, 256], default=64)
    q.add_argument("--queries", type=int, default=1000)
    q.add_argument("--json", type=Path, default=None)
    q.set_defaults(run=faiss_search)
    q = sub.add_parser("table", help="print the table of a gpu_check.sh output folder")
    q.add_argument("out", type=Path)
    q.set_defaults(run=show)
    args = p.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
