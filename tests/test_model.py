"""The network: parameter count, shapes, LRN against the paper's formula, initialisation."""

import numpy as np
import pytest
import torch

from alexnet.model.alexnet import AlexNet, AlexNetConfig, local_response_norm


def test_parameter_count_matches_the_paper():
    assert sum(p.numel() for p in AlexNet().parameters()) == 60_965_224


@pytest.mark.parametrize(
    "config",
    [
        AlexNetConfig(num_classes=10),
        AlexNetConfig(num_classes=10, columns=1),
        AlexNetConfig(num_classes=10, lrn=False),
        AlexNetConfig(num_classes=7, dropout=0.2),
    ],
)
def test_forward_backward_every_option(config):
    torch.manual_seed(0)
    model = AlexNet(config)
    x = torch.randn(2, 3, 224, 224) * 50
    assert model.features[0](x).shape == (2, 96, 55, 55)
    out = model(x)
    assert out.shape == (2, config.num_classes)
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(out).all()
    assert model.fc7(x).shape == (2, 4096)


def test_one_column_has_full_connectivity():
    convs = [
        m for m in AlexNet(AlexNetConfig(columns=1)).features if isinstance(m, torch.nn.Conv2d)
    ]
    assert all(c.groups == 1 for c in convs)
    grouped = [m.groups for m in AlexNet().features if isinstance(m, torch.nn.Conv2d)]
    assert grouped == [1, 2, 1, 2, 2]


def test_initialisation():
    torch.manual_seed(0)
    model = AlexNet()
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert [float(m.bias.detach().unique()) for m in layers] == [0, 1, 0, 1, 1, 1, 1, 1]
    fc6 = layers[5].weight
    assert abs(fc6.mean().item()) < 1e-4 and abs(fc6.std().item() - 0.01) < 1e-4


def test_lrn_matches_the_worked_example():
    # tf.nn.lrn convention from SPEC.md: 1..32 as NHWC [2,2,2,4], k=0, alpha=1, beta=1.
    x = torch.arange(1, 33, dtype=torch.float64).reshape(2, 2, 2, 4).permute(0, 3, 1, 2)
    out = local_response_norm(alpha=1.0, beta=1.0, k=0.0)(x).permute(0, 2, 3, 1)
    assert out.reshape(-1)[25].item() == pytest.approx(0.00923952, abs=1e-8)
    assert out.reshape(-1)[25].item() == pytest.approx(26 / (25**2 + 26**2 + 27**2 + 28**2))


def test_lrn_paper_constants_against_the_formula():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 50, size=(1, 9, 3, 3))
    k, n, alpha, beta = 2.0, 5, 1e-4, 0.75
    expected = np.empty_like(a)
    for c in range(9):
        lo, hi = max(0, c - n // 2), min(9, c + n // 2 + 1)  # window clipped at the edges
        expected[:, c] = a[:, c] / (k + alpha * (a[:, lo:hi] ** 2).sum(1)) ** beta
    out = local_response_norm()(torch.from_numpy(a)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_channels_last_on_cpu_changes_only_the_layout():
    torch.manual_seed(0)
    model = AlexNet(AlexNetConfig(num_classes=10)).eval()
    x = torch.randn(2, 3, 224, 224) * 50
    with torch.no_grad():
        nchw = model.classifier(torch.flatten(model.features(x), 1))
        torch.testing.assert_close(model(x), nchw, rtol=1e-4, atol=1e-5)
    assert all(p.is_contiguous() for p in model.parameters())
