"""The hand-written LRN against nn.LocalResponseNorm, the formula and finite differences."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet.model import lrn
from alexnet.model.alexnet import AlexNet, AlexNetConfig
from alexnet.model.lrn import LocalResponseNorm


def torch_lrn(size, alpha, beta, k):
    return nn.LocalResponseNorm(size, alpha * size, beta, k)  # PyTorch divides alpha by size


@pytest.fixture(params=[None, 7], ids=["default-chunks", "row-chunks"])
def chunking(request, monkeypatch):
    """Also run each test with chunks of a few rows, the path large images take."""
    if request.param:
        monkeypatch.setattr(lrn, "CPU_CHUNK_ELEMENTS", request.param)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape", [(3, 7, 5, 4), (2, 1, 3, 3), (2, 2, 4, 3), (2, 3, 4, 4), (2, 96, 6, 5), (2, 6, 9)]
)
@pytest.mark.parametrize("size", [5, 3, 4, 1])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_torch(dtype, shape, size, channels_last, chunking):
    if channels_last and len(shape) != 4:
        pytest.skip("channels-last is 4-d")
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype) * 30
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(shape, dtype=dtype)
    alpha, beta, k = 1e-3, 0.75 if size != 4 else 0.6, 2.0
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, ref = LocalResponseNorm(size, alpha, beta, k)(x1), torch_lrn(size, alpha, beta, k)(x2)
    ours.backward(g)
    ref.backward(g)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, ref, **tol)
    torch.testing.assert_close(x1.grad, x2.grad, **tol)
    if channels_last:
        assert ours.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "size, alpha, beta, k",
    [(5, 1e-4, 0.75, 2.0), (5, 1e-2, 0.6, 1.0), (4, 1e-2, 1.3, 0.5), (3, 1e-2, 0.5, 1.0)],
    ids=["paper", "beta-0.6", "even-size", "beta-0.5"],
)
def test_gradcheck(size, alpha, beta, k, chunking):
    torch.manual_seed(0)
    scale = 40.0 if alpha < 1e-3 else 4.0  # alpha * x^2 of order 1: the window term matters
    x = (torch.randn(2, 6, 3, 4, dtype=torch.float64) * scale).requires_grad_()
    module = LocalResponseNorm(size, alpha, beta, k)
    assert torch.autograd.gradcheck(module, (x,))
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(module, (x_cl,))


def test_worked_example():
    # SPEC.md, tf.nn.lrn's convention: 1..32 as NHWC [2,2,2,4], k=0, alpha=1, beta=1, n=5.
    x = torch.arange(1, 33, dtype=torch.float64).reshape(2, 2, 2, 4).permute(0, 3, 1, 2)
    out = LocalResponseNorm(5, alpha=1.0, beta=1.0, k=0.0)(x).permute(0, 2, 3, 1)
    assert out.reshape(-1)[25].item() == pytest.approx(0.00923952, abs=1e-8)
    assert out.reshape(-1)[25].item() == pytest.approx(26 / (25**2 + 26**2 + 27**2 + 28**2))


def test_paper_defaults():
    m = LocalResponseNorm()
    assert (m.size, m.alpha, m.beta, m.k) == (5, 1e-4, 0.75, 2.0)


def test_bf16_autocast_computes_in_float32():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3)
    x = torch.randn(2, 3, 9, 9) * 30
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = F.relu(conv(x))
        out = LocalResponseNorm(5, 1e-3)(h)
    assert out.dtype == h.dtype == torch.bfloat16
    expected = torch_lrn(5, 1e-3, 0.75, 2.0)(h.float())
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)
    out.float().sum().backward()
    assert conv.weight.grad.dtype == torch.float32 and torch.isfinite(conv.weight.grad).all()


def test_network_gradients_match_torch_lrn():
    """Through AlexNet, after the in-place ReLUs: same loss and gradients as with PyTorch's LRN."""
    torch.manual_seed(0)
    ours = AlexNet(AlexNetConfig(num_classes=10, dropout=0.0))
    ref = copy.deepcopy(ours)
    for i, layer in enumerate(ref.features):
        if isinstance(layer, LocalResponseNorm):
            ref.features[i] = torch_lrn(layer.size, layer.alpha, layer.beta, layer.k)
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in ref.features) == 2
    x, y = torch.randn(2, 3, 224, 224) * 60, torch.tensor([3, 7])
    losses = []
    for model in (ours, ref):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=0)
    for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        scale = q.grad.abs().max().item()
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-4 * scale, msg=name)


def test_empty_batch_and_inference_mode():
    x = torch.zeros(0, 5, 3, 3, requires_grad=True)
    LocalResponseNorm()(x).sum().backward()
    assert x.grad.shape == x.shape
    with torch.inference_mode():
        x = torch.randn(2, 7, 4, 4) * 30
        torch.testing.assert_close(LocalResponseNorm()(x), torch_lrn(5, 1e-4, 0.75, 2.0)(x))
