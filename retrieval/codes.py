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
    with today's loss weights (a schedule of other length is kept). Without labels or a
    method: codes chosen by choose_codes."""
    kind = state.get("method", "autoencoder")
    if method not in (None, kind) or bits not in (None, state["config"]["bits"]):
        return False
    if method is None and not label_count(labels):  # made by choose_codes, or to be
        return bool(state.get("choice"))
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


# --- the choice for features without labels -----------------------------------------------

CHOICE_MIN = 100  # fewer photos than this: too few to hold some out, the default method
CHOICE_HOLDOUT = 0.2  # share of the photos held out to measure each candidate on
CHOICE_HELD_MAX = 2000  # at most this many held out (the measure compares all their pairs)
CHOICE_K = 10
# Above this chance agreement (the share of photo pairs the network puts in one class) its
# classes say too little to judge codes by: a network that calls most photos one thing.
CHOICE_MAX_CHANCE = 0.5
NETWORK_CLASSES = "autoencoder (network's classes)"  # the label-aware codes on fc8's argmax


def predicted_classes(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """int64 (N,) argmax of the network's last layer (fc8: `weight` (classes, 4096), `bias`)
    applied to fc7 `features`: the class the network says each image is."""
    w, b = np.asarray(weight, np.float32), np.asarray(bias, np.float32)
    out = [
        np.argmax(np.asarray(features[s : s + ae.CHUNK], np.float32) @ w.T + b, axis=1)
        for s in range(0, len(features), ae.CHUNK)
    ]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _hamming(codes: np.ndarray) -> np.ndarray:
    """(n, n) Hamming distances between packed codes, each to itself made the largest."""
    b = np.unpackbits(codes, axis=1).astype(np.float32)
    d = b.shape[1] - (b @ b.T + (1 - b) @ (1 - b).T)
    np.fill_diagonal(d, b.shape[1] + 1)
    return d


def _precision_map(distances: np.ndarray, labels: np.ndarray, k: int) -> tuple[float, float]:
    """P@k and mAP of every row as a query against the others, relevant: the same label.
    Ties in distance are broken by index (a stable sort), the query itself ranked last."""
    order = np.argsort(distances, axis=1, kind="stable")[:, :-1]
    hits = labels[order] == labels[:, None]
    ranks = np.arange(1, hits.shape[1] + 1)
    found = hits.sum(1)
    precision = np.cumsum(hits, axis=1) / ranks
    ap = np.where(found > 0, (precision * hits).sum(1) / np.maximum(found, 1), 0.0)
    return float(hits[:, :k].mean()), float(ap.mean())


def _kept_neighbours(distances: np.ndarray, features: np.ndarray, k: int) -> float:
    """Share of each row's k nearest by fc7 (Euclidean) among its k nearest by `distances`."""
    x = np.asarray(features, np.float32)
    sq = (x * x).sum(1)
    d = sq[:, None] + sq[None, :] - 2 * x @ x.T
    np.fill_diagonal(d, np.inf)
    near = np.argsort(d, axis=1, kind="stable")[:, :k]
    mine = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(near, mine, strict=True)]))


def choose_codes(
    features: np.ndarray,
    predictions: np.ndarray | None,
    *,
    bits: int,
    seed: int = 0,
    progress: bool = False,
    **settings,
):
    """(encoder, choice) for features without labels: the method whose codes measure best on
    a held-out part of the photos, fitted again on all of them. `predictions`: the network's
    own class of each image (predicted_classes), or None.

    Candidates: the unsupervised autoencoder, ITQ, and where the network's classes are
    informative (two held-out photos in one predicted class by chance at most
    CHOICE_MAX_CHANCE of the time), the label-aware autoencoder trained on its predictions
    (NETWORK_CLASSES), kept only where it also keeps as many of fc7's neighbours as the best
    other (the network's classes favour the codes trained on them). Each is fitted on the
    other photos and measured on the held-out ones,
    as queries against each other: P@10 and mAP with "the network predicts the same class"
    as relevance (no label from the user), and the share of fc7's 10 nearest neighbours the
    codes keep (reported; it decides where the network's classes are not informative).
    `choice`: {"chosen", "method", "measure", "held_out", "network_chance_agreement",
    "scores": {candidate: {...}}, "reason"}, JSON-able. `settings`: the autoencoder's, as
    fit_codes takes them."""
    n = len(features)
    if n < CHOICE_MIN:
        encoder = fit_codes(features, None, method=DEFAULT_METHOD, bits=bits, seed=seed, **settings)
        reason = f"{n} photos, fewer than {CHOICE_MIN}: too few to measure, the default method"
        return encoder, {"chosen": DEFAULT_METHOD, "method": DEFAULT_METHOD, "reason": reason}
    rng = np.random.default_rng(seed)
    held = np.sort(rng.permutation(n)[: min(CHOICE_HELD_MAX, int(n * CHOICE_HOLDOUT))])
    fit = np.setdiff1d(np.arange(n), held)
    x_fit = np.asarray(features[fit], np.float32)
    x_held = np.asarray(features[held], np.float32)
    candidates = {"autoencoder": ("autoencoder", None), "itq": ("itq", None)}
    chance = None
    if predictions is not None:
        shares = np.unique(predictions[held], return_counts=True)[1] / len(held)
        chance = round(float((shares**2).sum()), 4)
    by_network = chance is not None and chance <= CHOICE_MAX_CHANCE
    if by_network and label_count(predictions[fit]) > 0:
        candidates[NETWORK_CLASSES] = ("autoencoder", predictions)
    measure = "network" if by_network else "fc7"
    scores = {}
    for name, (method, labels) in candidates.items():
        log.info("measuring %s codes on %d held-out photos", name, len(held))
        fit_labels = None if labels is None else labels[fit]
        encoder = fit_codes(x_fit, fit_labels, method=method, bits=bits, seed=seed, **settings)
        distances = _hamming(encoder.encode(x_held))
        score = {"fc7_neighbours_kept": round(_kept_neighbours(distances, x_held, CHOICE_K), 4)}
        if measure == "network":
            p, m = _precision_map(distances, predictions[held], CHOICE_K)
            score |= {"network_p_at_10": round(p, 4), "network_map": round(m, 4)}
        scores[name] = score
    keys = ("network_p_at_10", "network_map") if measure == "network" else ("fc7_neighbours_kept",)
    rank = lambda c: tuple(scores[c][k] for k in keys)  # noqa: E731
    chosen = max((c for c in scores if c != NETWORK_CLASSES), key=rank)  # first on a tie
    # Codes trained on the network's classes are judged by those classes: they are kept only
    # where they also keep as many of fc7's neighbours, not by that measure alone.
    own = scores.get(NETWORK_CLASSES)
    kept = "fc7_neighbours_kept"
    if own and rank(NETWORK_CLASSES) > rank(chosen) and own[kept] >= scores[chosen][kept]:
        chosen = NETWORK_CLASSES
    method, labels = candidates[chosen]
    encoder = fit_codes(
        features, labels, method=method, bits=bits, seed=seed, progress=progress, **settings
    )
    what = (
        "P@10 (then mAP) of its codes against the network's own predicted classes"
        if measure == "network"
        else "the share of fc7's 10 nearest neighbours its codes keep"
    )
    reason = f"the best by {what}, on {len(held)} held-out photos of {n}"
    if measure == "fc7" and chance is not None:
        reason += (
            f"; the network's classes, same for two photos by chance {chance:.2f}, say too little"
        )
    choice = {"chosen": chosen, "method": method, "measure": what, "held_out": len(held)}
    choice["network_chance_agreement"] = chance
    return encoder, {**choice, "scores": scores, "reason": reason}


def describe_choice(choice: dict) -> str:
    """One line: which codes were chosen for photos without labels, and why."""
    scores = choice.get("scores") or {}
    listed = "; ".join(
        f"{name} " + ", ".join(f"{k} {v:.3f}" for k, v in s.items()) for name, s in scores.items()
    )
    return f"codes chosen without labels: {choice['chosen']} ({choice['reason']})" + (
        f": {listed}" if listed else ""
    )
