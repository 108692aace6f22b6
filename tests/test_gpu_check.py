"""bench/gpu_check.sh and its Python helpers, as far as a machine without a GPU can check them:
the script's syntax and arguments, a missing GPU or environment said in one line with a
non-zero exit, the helpers' arguments and their refusal to measure the CPU in place of the
GPU, and the table they print from a folder of results."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
NO_GPU = pytest.mark.skipif(
    bool(shutil.which("nvidia-smi")) or torch.cuda.is_available(), reason="a GPU is here"
)


def bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sh(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_the_script_parses_and_explains_itself():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    r = sh("--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: bench/gpu_check.sh")
    for option in ("--python PATH", "--no-install", "--data DIR", "--out DIR", "faiss-gpu"):
        assert option in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bogus"], "unknown argument '--bogus'"),
        (["--python"], "--python needs a value"),
        (["--python", "/no/such/python"], "--python /no/such/python is not an executable"),
        (["--data", "/"], "no training images in //train"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args, message):
    r = sh(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert message in one_line(r.stderr)


@NO_GPU
@pytest.mark.parametrize("args", [[], ["--no-install"], ["--python", sys.executable]])
def test_no_gpu_is_one_line_and_exit_3_before_anything_is_installed(tmp_path, args):
    r = sh(*args, "--venv", str(tmp_path / "venv"), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 3 and r.stdout == ""
    assert "no NVIDIA GPU on this host" in one_line(r.stderr)
    assert not (tmp_path / "venv").exists() and not (tmp_path / "out").exists()


@NO_GPU
def test_env_says_in_one_line_what_is_missing(capsys):
    assert bench("gpu_check").main(["env"]) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("missing: a CUDA device for torch")
    assert "faiss with GPUs" in line and "faiss-gpu" in line  # faiss-cpu is installed here


@NO_GPU
@pytest.mark.parametrize(
    "script, argv, message",
    [
        ("gpu_check", ["fc7"], "CUDA is not available"),
        ("gpu_check", ["faiss", "--codes", "100"], "sees no GPU"),
        ("pipeline", ["--device", "gpu"], "--device gpu, but CUDA is not available"),
        ("train", ["--require-gpu"], "--require-gpu, but CUDA is not available"),
    ],
)
def test_the_helpers_refuse_to_measure_the_cpu_for_the_gpu(script, argv, message):
    with pytest.raises(SystemExit) as e:
        bench(script).main(argv)
    assert message in str(e.value.code)


@pytest.mark.parametrize(
    "script, argv",
    [
        ("gpu_check", []),
        ("gpu_check", ["nothing"]),
        ("gpu_check", ["faiss", "--bits", "32"]),
        ("gpu_check", ["fc7", "--batch", "many"]),
        ("gpu_check", ["table"]),
        ("pipeline", ["--device", "tpu"]),
        ("pipeline", ["--threads", "two"]),
        ("train", ["--json"]),
    ],
)
def test_the_helpers_reject_bad_arguments(script, argv, capsys):
    with pytest.raises(SystemExit) as e:
        bench(script).main(argv)
    assert e.value.code == 2 and "usage:" in capsys.readouterr().err


def results(out: Path, failed: str | None = None) -> Path:
    """A folder as gpu_check.sh leaves it, with made-up figures."""
    out.mkdir()
    steps = [("tests", 0, 31, 100), ("pipeline", 0, 80, 110), ("train", 0, 70, 120)]
    steps += [("fc7", 0, 12, 40), ("faiss", 1 if failed == "faiss" else 0, 20, 60)]
    (out / "steps.txt").write_text("".join(f"{n} {rc} {s} {lim}\n" for n, rc, s, lim in steps))
    (out / "tests.log").write_text("...\n3 passed in 20.51s\n")
    rates = {"a": 9000.0, "b": 6000.0, "b2": 12000.0, "c1": 900.0, "c2": 1500.0, "c3": 2000.0}
    figures = {"images_per_s": rates, "best_torch": "c3", "b_over_best_torch": 3.0}
    figures |= {"b2_over_best_torch": 6.0, "b2_over_b": 2.0}
    pipe = {"device": "gpu", "sets": {"ImageNet-sized 500x375": figures}}
    (out / "pipeline.json").write_text(json.dumps(pipe))
    train = {"device": "cuda:0", "batch": 128, "images": 1024, "model_alone": 5000.0}
    train |= {"end_to_end": 2000.0, "end_to_end_data_wait": 0.25}
    train |= {"end_to_end_cached": 4000.0, "end_to_end_cached_data_wait": 0.05}
    (out / "train.json").write_text(json.dumps(train))
    (out / "fc7.json").write_text(json.dumps({"batch": 256, "images_per_s": 20000.0}))
    if failed == "faiss":
        (out / "faiss.log").write_text("Traceback ...\nerror: faiss 1.15.1 sees no GPU\n")
    else:
        faiss = {"codes": 10**6, "bits": 64, "queries": 1000, "k": 10, "cpu_batch_ms": 900.0}
        faiss |= {"gpu_batch_ms": 9.0, "cpu_single_p50_ms": 1.2, "gpu_single_p50_ms": 0.1}
        (out / "faiss.json").write_text(json.dumps(faiss))
    return out


def test_the_table_gives_every_figure_and_the_epoch_times(tmp_path, capsys):
    gpu_check = bench("gpu_check")
    assert gpu_check.main(["table", str(results(tmp_path / "ok"))]) == 0
    text = capsys.readouterr().out
    assert "3 passed in 20.51s" in text and "ok, 31 s" in text
    assert "6000 img/s" in text and "c3" in text and "3.00x; 6.00x" in text
    # 1,281,167 images at 2000 and 4000 img/s, and on 8 GPUs at the better of the two
    assert "10.7 min decoding, 5.3 min from the cache" in text
    assert "ImageNet epoch, 8 such GPUs (linear scaling) | 0.7 min" in " ".join(text.split())
    assert "20000 img/s" in text and "(100.0x)" in text


def test_the_table_names_a_failed_step_and_exits_1(tmp_path, capsys):
    assert bench("gpu_check").main(["table", str(results(tmp_path / "bad", "faiss"))]) == 1
    out, err = capsys.readouterr()
    assert "FAILED (exit 1): error: faiss 1.15.1 sees no GPU" in out
    assert "some steps failed" in one_line(err)


def test_a_dali_graph_left_on_the_cpu_is_caught_though_its_batches_reach_the_gpu():
    import numpy as np

    from alexnet.pipeline.dali import cached_eval_pipeline, pipe_options
    from alexnet.pipeline.loader import Loader

    pipeline = bench("pipeline")
    patches = np.zeros((2, 256, 256, 3), np.uint8)
    pipe = cached_eval_pipeline(
        patches, np.arange(2), np.arange(2), np.zeros(3), **pipe_options("cpu", 2, 0, 1)
    )
    loader = Loader(pipe, size=2)
    assert pipeline.dali_on_device(loader, "b") is loader  # --device cpu: as asked
    pipeline.DEVICE = "gpu"
    with pytest.raises(SystemExit, match="b's DALI graph ends on the cpu, not the GPU"):
        pipeline.dali_on_device(loader, "b")
    with pytest.raises(SystemExit, match="b ran on the CPU although --device gpu"):
        pipeline.on_device(next(iter(loader))[0], "b")
