"""The network: parameter count, shapes, LRN against the paper's formula, initialisation."""

import numpy as np
import pytest
import torch

from alexnet.model.alexnet import TEST_WIDTH, AlexNet, AlexNetConfig, local_response_norm

pytestmark = pytest.mark.full_size  # the paper's widths and parameter count


def test_parameter_count_matches_the_paper():
    assert sum(p.numel() for p in AlexNet().parameters()) == 60_965_224


def test_the_tests_narrow_network_keeps_a_4096_d_fc7(monkeypatch):
    monkeypatch.setenv(TEST_WIDTH, "16")  # what every test not marked full_size builds
    model = AlexNet(AlexNetConfig(num_classes=10))
    assert sum(p.numel() for p in model.parameters()) < 60_965_224 // 40
    assert model.fc7(torch.zeros(1, 3, 224, 224)).shape == (1, 4096)
    monkeypatch.setenv(TEST_WIDTH, "3")
    with pytest.raises(ValueError, match=TEST_WIDTH):
        AlexNet()


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


@pytest.mark.parametrize(
    "preset, stds, biases",
    [
        ("paper", [0.01] * 8, [0, 1, 0, 1, 1, 1, 1, 0]),
        ("caffe", [0.01] * 5 + [0.005, 0.005, 0.01], [0, 0.1, 0, 0.1, 0.1, 0.1, 0.1, 0]),
        # He: sqrt(2 / fan_in), fan_in = in_channels / groups x kernel area, or in_features
        (
            "kaiming",
            [
                (2 / n) ** 0.5
                for n in (3 * 121, 48 * 25, 256 * 9, 192 * 9, 192 * 9, 9216, 4096, 4096)
            ],
            [0] * 8,
        ),
    ],
)
def test_initialisation_presets(preset, stds, biases):
    torch.manual_seed(0)
    layers = AlexNet(AlexNetConfig(init=preset)).layers()
    assert list(layers) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    for (name, layer), std, bias in zip(layers.items(), stds, biases, strict=True):
        w = layer.weight.detach()
        assert abs(w.mean().item()) < 0.05 * std, name
        assert w.std().item() == pytest.approx(std, rel=0.05), name
        assert layer.bias.detach().unique().tolist() == [pytest.approx(bias)], name


def test_the_default_network_has_the_papers_initialisation():
    assert AlexNetConfig().init == "paper"
    biases = [float(m.bias.detach().unique()) for m in AlexNet().layers().values()]
    assert biases == [0, 1, 0, 1, 1, 1, 1, 0]  # fc8, the output layer, starts at 0


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="paper, caffe, kaiming"):
        AlexNet(AlexNetConfig(init="xavier"))


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


def test_a_network_built_around_saved_weights_is_that_network(tmp_path):
    """Inference builds the network on the meta device and puts the checkpoint's weights in
    (no random initialisation first): the same function as the network that was saved."""
    from alexnet.model.checkpoint import build_network
    from alexnet.model.config import TrainConfig, with_settings

    torch.manual_seed(0)
    config = with_settings(TrainConfig(), columns=1, lrn=False)
    trained = AlexNet(AlexNetConfig(num_classes=5, columns=1, lrn=False)).eval()
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    weights = torch.load(tmp_path / "w.pt", mmap=True)
    rebuilt = build_network(config, 5, torch.device("cpu"), weights).eval()
    assert rebuilt.features[4].groups == 1 and isinstance(rebuilt.features[2], torch.nn.Identity)
    assert all(p.device.type == "cpu" for p in rebuilt.parameters())
    x = torch.randn(2, 3, 224, 224) * 50
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), trained(x), rtol=0, atol=0)
    assert not any(p.is_meta for p in AlexNet(AlexNetConfig(num_classes=5)).parameters())
    with pytest.raises(RuntimeError, match="size mismatch"):
        build_network(TrainConfig(), 5, torch.device("cpu"), weights)  # two columns: other shapes


def test_ten_crop_averages_probabilities_not_logits():
    """Section 4.1: the softmax outputs of the crops are averaged. One confident crop and two
    mild ones disagree: averaged logits would follow the confident crop, probabilities the two."""
    from alexnet.model.inference import crop_probabilities

    logits = torch.tensor([[[10.0, 0.0], [0.0, 2.0], [0.0, 2.0]]])  # 1 image, 3 crops
    probs = crop_probabilities(torch.nn.Flatten(), logits[..., None, None], torch.device("cpu"))
    assert probs.argmax(1).item() == 1 and logits.mean(1).argmax(1).item() == 0
    torch.testing.assert_close(probs, logits.softmax(-1).mean(1))


def test_network_settings_live_in_one_place_and_old_flat_configs_still_load():
    from dataclasses import asdict

    from alexnet.model.config import TrainConfig, config_from_dict, with_settings

    config = with_settings(TrainConfig(), crop=227, columns=1, epochs=5)
    assert config.network.crop == config.crop == 227 and config.network.columns == 1
    assert config_from_dict(asdict(config)) == config
    flat = {k: v for k, v in asdict(config).items() if k != "network"}
    flat |= {k: v for k, v in asdict(config.network).items() if k != "num_classes"}
    assert config_from_dict(flat) == config  # a checkpoint's config before it was nested
    with pytest.raises(AttributeError):
        _ = config.no_such_setting
