"""The GPU paths, where a CUDA device is (skipped elsewhere: conftest.py); bench/gpu_check.sh
runs them. Each checks that the work really runs on the GPU: DALI's mixed decoding and GPU
operators, the patch cache fed to the GPU graph, the network in bf16 and channels-last, and
FAISS's GPU index against the CPU one."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures import make_images

from alexnet.model.alexnet import AlexNet, AlexNetConfig
from alexnet.model.config import TrainConfig
from alexnet.model.distributed import autocast, setup_world
from alexnet.model.loaders import eval_loader, train_loader
from alexnet.pipeline.cache import open_cache
from alexnet.pipeline.dali import default_device
from alexnet.pipeline.layout import RunPaths
from alexnet.pipeline.manifest import load_manifest
from alexnet.pipeline.prep import prepare
from alexnet.pipeline.stats import load_stats

pytestmark = pytest.mark.gpu


def test_the_loaders_run_on_the_gpu_and_the_cache_gives_the_same_batches(tmp_path):
    assert default_device() == "gpu"
    run = tmp_path / "run"
    prepare(make_images(tmp_path / "data", train=9), run, cache=True, progress=False)
    assert json.loads(RunPaths(run).cache_record.read_text())["decoder"] == "gpu"
    manifest = load_manifest(run)
    stats = load_stats(run, manifest.fingerprint)
    patches = open_cache(run, manifest)
    world = setup_world()
    assert world.device.type == "cuda" and world.dali_device == "gpu"
    config = TrainConfig(batch_size=4, num_threads=2)
    for make in (
        lambda cache: train_loader(manifest, stats, config, 0, world, cache=cache),
        lambda cache: eval_loader(manifest, stats, config, world, ten_crop=True, cache=cache),
    ):
        plain, cached = list(make(None)), list(make(patches))
        assert len(plain) == len(cached) > 0
        for (x, y), (xc, yc) in zip(plain, cached, strict=True):
            assert x.is_cuda and xc.is_cuda and y.is_cuda
            assert torch.equal(y, yc) and torch.equal(x, xc)


def test_the_network_trains_in_bf16_channels_last_on_the_gpu():
    device = setup_world().device
    torch.manual_seed(0)
    model = AlexNet(AlexNetConfig(num_classes=10)).to(device).to(memory_format=torch.channels_last)
    x = (torch.randn(8, 3, 224, 224, device=device) * 60).contiguous(
        memory_format=torch.channels_last
    )
    with autocast(device):
        out = model(x)
    assert out.is_cuda and out.dtype == torch.bfloat16 and out.shape == (8, 10)
    F.cross_entropy(out.float(), torch.arange(8, device=device)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.is_cuda and torch.isfinite(p.grad).all(), name


def test_faiss_gpu_flat_index_finds_what_the_cpu_index_finds():
    faiss = pytest.importorskip("faiss")
    from alexnet.retrieval.index import build_index, search, to_device

    assert faiss.get_num_gpus() > 0, "faiss sees no GPU: install faiss-gpu in place of faiss-cpu"
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (20_000, 8), dtype=np.uint8)
    queries = rng.integers(0, 256, (50, 8), dtype=np.uint8)
    cpu = build_index(codes, kind="flat")
    gpu = to_device(cpu)
    assert isinstance(gpu, faiss.GpuIndexBinaryFlat)
    D, ids = search(cpu, queries, 10)
    Dg, ids_gpu = search(gpu, queries, 10)
    np.testing.assert_array_equal(D, Dg)
    # ids may differ only among codes at the same distance
    np.testing.assert_array_equal(np.sort(D, axis=1), D)
    for q in range(len(queries)):
        last = D[q, -1]
        assert set(ids[q][D[q] < last]) == set(ids_gpu[q][Dg[q] < last])
