"""The autoencoder: shapes, the straight-through code layer, packing, determinism, saving."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from alexnet.pipeline.errors import AlexnetError
from alexnet.retrieval.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    Binarise,
    autoencoder_state,
    encode,
    load_autoencoder,
    model_from_state,
    report,
    save_autoencoder,
    train_autoencoder,
)

QUICK = AutoencoderConfig(epochs=1, min_steps=2, batch_size=16)


def features(n: int = 40, seed: int = 0) -> np.ndarray:
    """ReLU-like non-negative float16 vectors with some structure (two clusters)."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(1.0, 1.0, (2, 4096))
    x = centres[rng.integers(0, 2, n)] + rng.normal(0, 0.3, (n, 4096))
    return np.maximum(x, 0).astype(np.float16)


@pytest.mark.parametrize("bits", [32, 64, 256])
def test_shapes_packing_and_gradients(bits):
    torch.manual_seed(0)
    model = Autoencoder(AutoencoderConfig(bits=bits))
    x = torch.randn(5, 4096)
    y, z, logits = model(x)
    assert logits is None  # no classes: unsupervised
    assert y.shape == (5, 4096) and z.shape == (5, bits)
    assert torch.isfinite(y).all()
    torch.nn.functional.mse_loss(y, x).backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.encoder[0].weight.grad.abs().sum() > 0  # the gradient passes the binary layer

    f = features(7)
    codes = encode(model.eval(), f)
    assert codes.dtype == np.uint8 and codes.shape == (7, bits // 8)
    with torch.no_grad():
        bits_on = (model.encoder(model.standardise(f)) > 0).numpy()
    assert np.array_equal(np.unpackbits(codes, axis=1).astype(bool), bits_on)


def test_binarise_is_a_threshold_with_the_sigmoid_gradient():
    z = torch.tensor([-2.0, -0.1, 0.3, 4.0], requires_grad=True)
    b = Binarise.apply(z)
    assert b.tolist() == [0.0, 0.0, 1.0, 1.0]
    b.sum().backward()
    s = torch.sigmoid(z.detach())
    assert torch.allclose(z.grad, s * (1 - s))


@pytest.mark.parametrize("bits", [0, 12, 24, 260, 512])
def test_bad_code_lengths_are_refused(bits):
    with pytest.raises(AlexnetError, match="multiple of 8 from 32 to 256"):
        AutoencoderConfig(bits=bits)


def test_training_is_seeded_and_codes_are_deterministic():
    f = features()
    a, b = train_autoencoder(f, QUICK, progress=False), train_autoencoder(f, QUICK, progress=False)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    codes = encode(a, f)
    assert np.array_equal(codes, encode(a, f)) and np.array_equal(codes, encode(b, f))
    assert np.array_equal(encode(a, f[:3]), codes[:3])  # a code does not depend on its batch
    other = train_autoencoder(f, replace(QUICK, seed=1), progress=False)
    assert not torch.equal(other.encoder[0].weight, a.encoder[0].weight)


def test_report_and_save_load_round_trip(tmp_path):
    f = features()
    model = train_autoencoder(f, QUICK, progress=False)
    r = report(model, f)
    assert r["images"] == 40 and len(r["bit_balance"]) == 64
    assert all(0 <= v <= 1 for v in r["bit_balance"]) and r["reconstruction_mse"] > 0
    path = save_autoencoder(autoencoder_state(model, report=r), tmp_path / "autoencoder.pt")
    loaded = torch.load(path, weights_only=True)  # plain tensors and dicts only
    assert loaded["config"]["bits"] == 64 and loaded["report"] == r
    assert np.array_equal(encode(model_from_state(load_autoencoder(path)), f), encode(model, f))


def test_damaged_file_is_a_clear_error(tmp_path):
    path = tmp_path / "autoencoder.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(AlexnetError, match="not a readable autoencoder"):
        load_autoencoder(path)
