"""A deep autoencoder that turns 4096-d fc7 vectors into short binary codes.

Paper, section 6.1: "Computing similarity by using Euclidean distance between two 4096-
dimensional, real-valued vectors is inefficient, but it could be made efficient by training an
auto-encoder to compress these vectors to short binary codes" (as Krizhevsky & Hinton 2011 did
on raw pixels). Layers: 4096 -> 256 -> B code units -> 256 -> 4096 by default (`hidden`), ReLU
in the hidden layers, trained with mean-squared reconstruction error on standardised features
(the per-dimension mean and std are saved with the weights and applied again at encode time).

Label-aware codes (config.classes > 0, the default where the training set has labels:
retrieval/codes.py): a linear classifier on the bits (as +-1) predicts each image's class, its
cross-entropy added to the reconstruction error, as the latent hash layer of Lin et al. 2015
("Deep learning of binary hash codes", DLBHC) and SSDH (Yang et al., TPAMI 2018) are trained
with a classification objective. Retrieval here is judged by the class (eval-retrieval), and
the reconstruction term alone spends the bits on fc7's largest variations, whatever the class.

Binarisation: a straight-through estimator. In the forward pass the code is the hard
threshold 1[z > 0] (that is, sigmoid(z) > 1/2), so the decoder is trained on exactly the bits
that go into the index; in the backward pass the gradient is that of sigmoid(z). The
semantic-hashing alternative (Gaussian noise added before a sigmoid, which pushes the units
towards saturation) uses real-valued codes while training and thresholds them only
afterwards, so what is trained and what is indexed differ until the units have saturated,
which takes many epochs and a tuned noise scale; a few CPU epochs are what we can afford. A
small penalty keeps each bit's batch-mean sigmoid near 1/2, because a bit that is always on
or always off carries no information and, under the sigmoid gradient, would never recover.

Modes of use:
- `train_autoencoder(features, config, labels=...)`: trains on the (memory-mapped) features.
- `autoencoder_state(model, ...)` / `model_from_state(state)`: the dict saved as
  RUN/index/autoencoder.pt (weights_only-loadable; the standardisation is in the weights).
- `encode(model, features)`: packed uint8 codes, B/8 bytes per image (np.packbits, big-endian
  bit order within each byte), batched.
- `report(model, features)`: bit balance (share of images with each bit on) and
  reconstruction error (MSE in standardised units; 1.0 is what predicting the mean scores).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alexnet.model.checkpoint import load_state, save_state
from alexnet.pipeline.errors import AlexnetError

from .defaults import BITS, bits_problem

log = logging.getLogger(__name__)

AUTOENCODER_VERSION = 1
CHUNK = 4096  # rows at a time when reading the memory-mapped features


@dataclass(frozen=True)
class AutoencoderConfig:
    bits: int = BITS  # code units: a multiple of 8 in MIN_BITS..MAX_BITS
    dim: int = 4096
    # one hidden layer of 256 each side: the label-aware codes retrieve as well as with
    # 1024-256 at a quarter of the cost (BENCHMARKS.md, "Label-aware codes")
    hidden: tuple[int, ...] = (256,)
    epochs: int = 5
    min_steps: int = 200  # small sets get more epochs: at least this many updates in all
    batch_size: int = 128
    lr: float = 1e-3  # Adam
    seed: int = 0
    # Loss weights. classes > 0 makes the codes label-aware: a linear classifier on the bits
    # predicts each training image's class (Lin et al. 2015; Yang et al. 2018), so that the
    # bits separate what the training labels separate. classes 0: reconstruction only.
    classes: int = 0
    reconstruction: float = 1.0
    classification: float = 1.0
    balance: float = 0.1  # the bit-balance penalty

    def __post_init__(self):
        problem = bits_problem(self.bits)
        if problem:
            raise AlexnetError(f"{{bits}} {problem}, got {self.bits}", param="bits")


class Binarise(torch.autograd.Function):
    """Forward: 1[z > 0]. Backward: the gradient of sigmoid(z) (straight-through)."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return (z > 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        s = torch.sigmoid(z)
        return grad * s * (1 - s)


def _stack(sizes: tuple[int, ...]) -> nn.Sequential:
    """Linear layers of these sizes, ReLU between them, linear output."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


class Autoencoder(nn.Module):
    def __init__(self, config: AutoencoderConfig = AutoencoderConfig()):
        super().__init__()
        self.config = config
        sizes = (config.dim, *config.hidden, config.bits)
        self.encoder = _stack(sizes)  # its last outputs are the code-layer inputs z
        self.decoder = _stack(sizes[::-1])  # standardised fc7, linear output
        # the class of an image from its bits; used only in training
        self.classifier = nn.Linear(config.bits, config.classes) if config.classes else None
        # the training features' per-dimension mean and std, saved with the weights
        self.register_buffer("mean", torch.zeros(config.dim))
        self.register_buffer("std", torch.ones(config.dim))

    def standardise(self, features: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(np.asarray(features, np.float32)) - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Standardised features -> (reconstruction, code-layer inputs z, class logits or
        None)."""
        z = self.encoder(x)
        b = Binarise.apply(z)
        logits = self.classifier(2 * b - 1) if self.classifier is not None else None
        return self.decoder(b), z, logits

    method = "autoencoder"  # the code method (retrieval/codes.py)

    @property
    def bits(self) -> int:
        return self.config.bits

    def encode(self, features: np.ndarray) -> np.ndarray:
        return encode(self, features)


def _moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std in float64, one chunk of the memory map at a time."""
    s = np.zeros(features.shape[1])
    s2 = np.zeros(features.shape[1])
    for i in range(0, len(features), CHUNK):
        x = np.asarray(features[i : i + CHUNK], np.float64)
        s += x.sum(0)
        s2 += (x * x).sum(0)
    mean = s / len(features)
    std = np.sqrt(np.maximum(s2 / len(features) - mean**2, 0))
    return mean.astype(np.float32), np.maximum(std, 1e-3).astype(np.float32)  # dead units: no 0/0


def train_autoencoder(
    features: np.ndarray,
    config: AutoencoderConfig = AutoencoderConfig(),
    *,
    labels: np.ndarray | None = None,
    progress: bool = True,
) -> Autoencoder:
    """Train on float (N, dim) features (memory-mapped is fine); returns the model, in eval mode.

    `labels` (N,) class ids in 0..config.classes - 1 are required when config.classes > 0.
    Seeded: the same features and config give the same weights (on the same machine and
    thread count). At least `min_steps` updates, so that small sets get more epochs.
    """
    from tqdm import tqdm

    if len(features) == 0:
        raise AlexnetError("no features to train the autoencoder on")
    if config.classes:
        if labels is None or len(labels) != len(features):
            raise ValueError("a label-aware autoencoder needs one label per feature row")
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = Autoencoder(config)
    mean, std = _moments(features)
    model.mean.copy_(torch.from_numpy(mean))
    model.std.copy_(torch.from_numpy(std))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    batch = min(config.batch_size, len(features))
    steps = len(features) // batch
    epochs = max(config.epochs, -(-config.min_steps // steps))  # ceil
    model.train()
    with tqdm(total=epochs * steps, desc="autoencoder", unit="step", disable=not progress) as bar:
        for _ in range(epochs):
            order = rng.permutation(len(features))
            for b in range(steps):
                # sorted: sequential reads from the memory map
                rows = np.sort(order[b * batch : (b + 1) * batch])
                x = model.standardise(features[rows])
                y, z, logits = model(x)
                loss = nn.functional.mse_loss(y, x)
                balance = ((torch.sigmoid(z).mean(0) - 0.5) ** 2).mean()
                total = config.reconstruction * loss + config.balance * balance
                if logits is not None:
                    xent = nn.functional.cross_entropy(logits, labels[rows])
                    total = total + config.classification * xent
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                bar.update()
                bar.set_postfix(mse=f"{loss.item():.4f}")
    log.info(
        "autoencoder: %d steps of %d, last batch reconstruction MSE %.4f",
        epochs * steps,
        batch,
        loss.item(),
    )
    return model.eval()


@torch.no_grad()
def _code_bits(model: Autoencoder, features: np.ndarray):
    """Yields (code bits as bool (n, bits), reconstruction squared-error sum) per chunk."""
    for i in range(0, len(features), CHUNK):
        x = model.standardise(features[i : i + CHUNK])
        bits = model.encoder(x) > 0
        err = ((model.decoder(bits.float()) - x) ** 2).sum().item()
        yield bits.numpy(), err


def encode(model: Autoencoder, features: np.ndarray) -> np.ndarray:
    """Float (N, 4096) features -> packed uint8 codes (N, bits / 8)."""
    if len(features) == 0:
        return np.zeros((0, model.config.bits // 8), np.uint8)
    return np.concatenate([np.packbits(bits, axis=1) for bits, _ in _code_bits(model, features)])


def report(model: Autoencoder, features: np.ndarray) -> dict:
    """Bit balance and reconstruction error of the binary codes over `features`."""
    on = np.zeros(model.config.bits)
    err = 0.0
    for bits, e in _code_bits(model, features):
        on += bits.sum(0)
        err += e
    balance = on / len(features)
    return {
        "images": len(features),
        "bit_balance": np.round(balance, 4).tolist(),
        "bits_always_on_or_off": int(((balance == 0) | (balance == 1)).sum()),
        "mean_abs_balance_offset": float(np.abs(balance - 0.5).mean()),
        "reconstruction_mse": err / (len(features) * features.shape[1]),
    }


def autoencoder_state(model: Autoencoder, **extra) -> dict:
    """The dict saved as RUN/index/autoencoder.pt: version, config, weights, and `extra`."""
    return {
        "version": AUTOENCODER_VERSION,
        "config": asdict(model.config),
        "model": model.state_dict(),
        **extra,
    }


def model_from_state(state: dict) -> Autoencoder:
    names = {f.name for f in fields(AutoencoderConfig)}
    config = AutoencoderConfig(
        **{k: tuple(v) if k == "hidden" else v for k, v in state["config"].items() if k in names}
    )
    model = Autoencoder(config)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        raise AlexnetError(
            f"the autoencoder's weights do not fit its config ({e}): rebuild with `alexnet index`"
        ) from e
    return model.eval()


def save_autoencoder(state: dict, path: str | Path) -> Path:
    return save_state(path, state, AUTOENCODER_VERSION)


def load_autoencoder(path: str | Path) -> dict:
    return load_state(path, "autoencoder", "rebuild it with `alexnet index`", AUTOENCODER_VERSION)
