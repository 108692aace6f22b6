"""The code methods: one way to turn fc7 vectors into packed binary codes, whichever method.

Modes (`METHODS`), each fitted on the indexed set's fc7 (and, for the autoencoder, its labels):
- "autoencoder": retrieval/autoencoder.py's deep autoencoder (paper, section 6.1). With the
  training labels (two classes or more) it is label-aware: a linear classifier on the bits
  predicts the class while the decoder reconstructs fc7 from them (DEFAULT_WEIGHTS, chosen in
  BENCHMARKS.md on held-out training images). Without labels: reconstruction only, said in
  the log.
- "itq", "pca-sign", "lsh": retrieval/baselines.py's linear projections and a sign.

    encoder = fit_codes(features, labels, method="autoencoder", bits=64, seed=0)
    codes = encoder.encode(features)          # uint8 (N, bits / 8), np.packbits order
    save_encoder(encoder, path, source=...)   # method and settings recorded in the file
    encoder = load_encoder(path)              # the same codes again

Every encoder has `method`, `bits`, `settings()` (what made it, JSON-able) and `encode`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from alexnet.pipeline.errors import AlexnetError

from . import autoencoder as ae
from . import baselines as bl
from .defaults import CODE_METHODS, CODES

log = logging.getLogger(__name__)

METHODS = CODE_METHODS
DEFAULT_METHOD = CODES
# label-aware loss weights (BENCHMARKS.md, "Label-aware codes": chosen on held-out training fc7)
DEFAULT_WEIGHTS = {"reconstruction": 1.0, "classification": 10.0, "balance": 0.1}
STATE_VERSION = ae.AUTOENCODER_VERSION  # the file is RUN/index/autoencoder.pt, whatever the method


class ProjectionEncoder:
    """ITQ, PCA-sign or LSH codes: bit j is 1[(x - mean) @ matrix[:, j] > 0]."""

    def __init__(self, method: str, projection: bl.Projection, seed: int):
        self.method, self.projection, self.seed = method, projection, seed

    @property
    def bits(self) -> int:
        return self.projection.bits

    def settings(self) -> dict:
        return {"bits": self.bits, "seed": self.seed}

    def encode(self, features: np.ndarray) -> np.ndarray:
        p = self.projection
        return bl.encode({p.name: p}, features)[p.name]


def _method(method: str) -> str:
    if method not in METHODS:
        raise AlexnetError(f"{{codes}} must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def label_count(labels: np.ndarray | None) -> int:
    """Classes to predict: 0 (unsupervised) without labels or with fewer than two classes."""
    if labels is None or len(labels) == 0:
        return 0
    labels = np.asarray(labels)
    return int(labels.max()) + 1 if len(np.unique(labels)) >= 2 else 0


def fit_codes(
    features: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    method: str = DEFAULT_METHOD,
    bits: int,
    seed: int = 0,
    progress: bool = False,
    **settings,
):
    """An encoder of `method` fitted on float (N, d) features (memory-mapped is fine).

    `labels` (N,) int class ids make the autoencoder label-aware; `settings` override the
    autoencoder's config fields (e.g. classification=0.5).
    """
    method = _method(method)
    if method == "autoencoder":
        classes = label_count(labels)
        if not classes:
            log.info("no training labels (or one class): the autoencoder codes are unsupervised")
        weights = DEFAULT_WEIGHTS if classes else {}
        config = ae.AutoencoderConfig(
            bits=bits, seed=seed, classes=classes, **{**weights, **settings}
        )
        return ae.train_autoencoder(
            features, config, labels=labels if classes else None, progress=progress
        )
    ae.AutoencoderConfig(bits=bits)  # the same check of the code length for every method
    name = method.replace("-", "_")
    projection = bl.fit_baselines(features, bits, names=[name], seed=seed, progress=progress)
    return ProjectionEncoder(method, projection[name], seed)


def settings(encoder) -> dict:
    """What made the encoder: its config (autoencoder) or bits and seed (projections)."""
    if isinstance(encoder, ae.Autoencoder):
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(encoder.config).items()
        }
    return encoder.settings()


def encoder_state(encoder, **extra) -> dict:
    """A weights_only-loadable dict: version, method, settings, weights, and `extra`."""
    if isinstance(encoder, ae.Autoencoder):
        return {**ae.autoencoder_state(encoder, **extra), "method": "autoencoder"}
    p = encoder.projection
    return {
        "version": STATE_VERSION,
        "method": encoder.method,
        "config": settings(encoder),
        "model": {"mean": torch.from_numpy(p.mean), "matrix": torch.from_numpy(p.matrix)},
        **extra,
    }


def encoder_from_state(state: dict):
    method = state.get("method", "autoencoder")  # files from before the choice: autoencoders
    if method == "autoencoder":
        return ae.model_from_state(state)
    try:
        weights = state["model"]
        projection = bl.Projection(
            method.replace("-", "_"), weights["mean"].numpy(), weights["matrix"].numpy()
        )
        return ProjectionEncoder(_method(method), projection, state["config"]["seed"])
    except (KeyError, AttributeError) as e:
        raise AlexnetError(
            f"the {method} codes' file is incomplete ({e}): rebuild the index (`alexnet index`)"
        ) from e


def save_encoder(encoder, path: str | Path, **extra) -> Path:
    return ae.save_autoencoder(encoder_state(encoder, **extra), path)


def load_encoder(path: str | Path):
    return encoder_from_state(ae.load_autoencoder(path))


def report(encoder, features: np.ndarray) -> dict:
    """Bit balance of the codes over `features` (and, for the autoencoder, its reconstruction
    error; None for the projections, which reconstruct nothing)."""
    if isinstance(encoder, ae.Autoencoder):
        return ae.report(encoder, features)
    on = np.unpackbits(encoder.encode(features), axis=1).mean(0)
    return {
        "images": len(features),
        "bit_balance": np.round(on, 4).tolist(),
        "bits_always_on_or_off": int(((on == 0) | (on == 1)).sum()),
        "mean_abs_balance_offset": float(np.abs(on - 0.5).mean()),
        "reconstruction_mse": None,
    }


def current(state: dict, method: str | None, bits: int | None, labels: np.ndarray | None) -> bool:
    """Whether saved codes' `state` is what fit_codes would make now: the same method and
    code length (None: any), and an autoencoder label-aware exactly when there are labels,
    with today's loss weights (a schedule of other length is kept)."""
    kind = state.get("method", "autoencoder")
    if method not in (None, kind) or bits not in (None, state["config"]["bits"]):
        return False
    if kind != "autoencoder":
        return True
    classes = label_count(labels)
    today = {"classes": classes, **(DEFAULT_WEIGHTS if classes else {})}
    defaults = asdict(ae.AutoencoderConfig())
    return all(state["config"].get(k, defaults[k]) == v for k, v in today.items())


def describe(encoder, report: dict) -> str:
    """One line on fitted codes: method, length, reconstruction error, bit balance."""
    mse = report["reconstruction_mse"]
    return (
        f"{encoder.method} codes ({encoder.bits} bits)"
        + ("" if mse is None else f": reconstruction MSE {mse:.4f} (standardised; 1.0 = the mean)")
        + f"; bits on: min {min(report['bit_balance']):.2f}, max {max(report['bit_balance']):.2f}"
        f" of images; {report['bits_always_on_or_off']} bits constant"
    )
