"""The code methods behind one interface, the label-aware autoencoder, `index --codes`."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures import make_images
from retrieval_fixtures import CLASSES, QuickConfig, make_run

import alexnet
from alexnet.cli.main import cli
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.layout import RunPaths
from alexnet.retrieval import autoencoder as ae
from alexnet.retrieval import codes as C
from alexnet.retrieval.evaluate import evaluate_modes

SMALL = {"hidden": (64,), "epochs": 30, "min_steps": 1, "batch_size": 64}


def labelled(n: int = 320, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 (n, 4096) non-negative vectors whose class shows in 32 weak dimensions under
    strong class-free variation in 256 others: the largest directions carry no class."""
    fixed = np.random.default_rng(99)  # the same classes and directions for every seed
    mixing, signal = fixed.normal(0, 1, (8, 256)), fixed.normal(0, 1, (classes, 32))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = rng.gamma(1.0, 0.2, (n, 4096))
    x[:, :256] += rng.normal(0, 3, (n, 8)) @ mixing
    x[:, 256:288] += 1.5 * signal[labels]
    return np.maximum(x, 0).astype(np.float32), labels


@pytest.mark.parametrize("method", C.METHODS)
def test_every_method_fits_encodes_and_round_trips(method, tmp_path):
    x, y = labelled(160)
    settings = SMALL if method == "autoencoder" else {}
    enc = C.fit_codes(x, y, method=method, bits=32, seed=3, **settings)
    codes = enc.encode(x)
    assert enc.method == method and enc.bits == 32
    assert codes.dtype == np.uint8 and codes.shape == (160, 4)
    assert np.array_equal(enc.encode(x[:5]), codes[:5])  # a code does not depend on its batch
    assert np.array_equal(
        C.fit_codes(x, y, method=method, bits=32, seed=3, **settings).encode(x), codes
    )  # seeded
    path = C.save_encoder(enc, tmp_path / "codes.pt", report=C.report(enc, x))
    back = C.load_encoder(path)
    assert back.method == method and np.array_equal(back.encode(x), codes)
    state = ae.load_autoencoder(path)
    assert state["method"] == method and state["config"]["bits"] == 32
    assert state["config"]["seed"] == 3
    json.dumps(C.settings(back))  # recorded in the index description as JSON


def test_unknown_method_and_bad_length_are_refused():
    x, y = labelled(40)
    with pytest.raises(AlexnetError, match="codes` must be one of autoencoder, itq"):
        C.fit_codes(x, y, method="pq", bits=32)
    with pytest.raises(AlexnetError, match="multiple of 8"):
        C.fit_codes(x, y, method="itq", bits=12)


def test_label_aware_codes_retrieve_the_class_better_than_unsupervised(caplog):
    x, y = labelled()
    q, qy = labelled(120, seed=1)  # new images of the same classes
    aware = C.fit_codes(x, y, bits=32, **SMALL)
    assert aware.config.classes == 4 and aware.classifier is not None
    with caplog.at_level(logging.INFO, logger="alexnet.retrieval.codes"):
        plain = C.fit_codes(x, None, bits=32, **SMALL)
    assert plain.config.classes == 0 and "unsupervised" in caplog.text
    assert C.fit_codes(x, np.zeros(len(x), int), bits=32, **SMALL).config.classes == 0
    r = evaluate_modes(
        x, y, q, qy, codes={m: (e.encode(x), e.encode) for m, e in [("a", aware), ("p", plain)]}
    )
    assert r["a"]["map"] > r["p"]["map"] + 0.1, r
    assert r["a"]["precision_at_10"] > r["p"]["precision_at_10"], r
    assert 0 <= r["a"]["precision_radius_2"] <= 1


def test_saved_codes_are_current_only_for_the_same_method_bits_and_labels():
    x, y = labelled(80)
    config = ae.AutoencoderConfig(bits=32, classes=4, **C.DEFAULT_WEIGHTS)  # today's defaults
    state = C.encoder_state(ae.Autoencoder(config))
    assert C.current(state, "autoencoder", 32, y) and C.current(state, None, None, y)
    assert not C.current(state, "itq", 32, y) and not C.current(state, None, 64, y)
    assert not C.current(state, None, None, None)  # label-aware, but no labels now
    other = C.encoder_state(C.fit_codes(x, y, bits=32, classification=1.0, **SMALL))
    assert not C.current(other, None, None, y)  # made with other loss weights
    old = ae.autoencoder_state(ae.Autoencoder(ae.AutoencoderConfig(bits=32)))  # before methods
    assert isinstance(C.encoder_from_state(old), ae.Autoencoder)


def test_index_codes_switches_the_method_and_keeps_the_features(tmp_path, monkeypatch):
    monkeypatch.setattr(ae, "AutoencoderConfig", QuickConfig)
    run = make_run(
        make_images(tmp_path / "data", train=6, val=None, names=CLASSES), tmp_path / "run"
    )
    paths = RunPaths(run).index

    def index(*flags):
        r = CliRunner().invoke(cli, ["index", "--run", str(run), "-q", *flags])
        assert r.exit_code == 0, r.output
        return r.output, json.loads(paths.meta.read_text())

    out, meta = index()
    assert "autoencoder codes" in out and meta["code_method"] == "autoencoder"
    assert meta["code_settings"]["classes"] == 3  # the run's labels: label-aware
    features = paths.features.stat().st_mtime_ns
    out, meta = index("--codes", "itq")
    assert "itq codes" in out and meta["code_method"] == "itq"
    assert meta["code_settings"] == {"bits": 64, "seed": 0}
    assert paths.features.stat().st_mtime_ns == features  # fc7 not extracted again
    train = alexnet.collection(run).open()
    assert train.autoencoder.method == "itq"
    assert np.array_equal(train.autoencoder.encode(np.asarray(train.features)), train.table.codes)
    hit = train.search([train.file(0)], k=1)["queries"][0]["results"]
    assert hit[0]["hamming"] == 0  # a training image finds its own code
    r = CliRunner().invoke(cli, ["index", "--run", str(run), "--codes", "pq"])
    assert r.exit_code != 0 and "--codes" in r.output


def test_precision_and_map_of_the_choice_match_a_brute_force_count():
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (30, 4), dtype=np.uint8)
    labels = rng.integers(0, 3, 30)
    d = C._hamming(codes)
    bits = np.unpackbits(codes, axis=1)
    for i, j in [(0, 1), (5, 17), (29, 2)]:
        assert d[i, j] == (bits[i] != bits[j]).sum()
    p, m = C._precision_map(d, labels, 10)
    precisions, aps = [], []
    for q in range(30):
        others = sorted((d[q, j], j) for j in range(30) if j != q)  # ties by index
        hits = [labels[j] == labels[q] for _, j in others]
        precisions.append(sum(hits[:10]) / 10)
        found = [sum(hits[: r + 1]) / (r + 1) for r in range(len(hits)) if hits[r]]
        aps.append(sum(found) / len(found) if found else 0.0)
    assert p == pytest.approx(np.mean(precisions)) and m == pytest.approx(np.mean(aps))


def test_codes_for_photos_without_labels_are_chosen_by_a_held_out_measurement():
    x, classes = labelled(400)  # `classes`: what the network predicts, not a user's labels
    encoder, choice = C.choose_codes(x, classes, bits=32, **SMALL)
    scores = choice["scores"]
    assert set(scores) == {"autoencoder", "itq", C.NETWORK_CLASSES}
    assert choice["held_out"] == 80 and "held-out photos of 400" in choice["reason"]
    assert 0.2 < choice["network_chance_agreement"] <= C.CHOICE_MAX_CHANCE  # 4 classes
    rank = lambda c: (scores[c]["network_p_at_10"], scores[c]["network_map"])  # noqa: E731
    other = max(["autoencoder", "itq"], key=rank)
    own, kept = scores[C.NETWORK_CLASSES], "fc7_neighbours_kept"
    # the class shows in weak dimensions only: codes taught the network's classes find it...
    assert rank(C.NETWORK_CLASSES) > rank(other)
    # ...and are kept only where they keep as many of fc7's neighbours as the best other
    keep = own[kept] >= scores[other][kept]
    assert choice["chosen"] == (C.NETWORK_CLASSES if keep else other)
    assert encoder.method == choice["method"]
    if choice["method"] == "autoencoder":
        assert encoder.config.classes == (4 if keep else 0)
    assert all(0 <= s["fc7_neighbours_kept"] <= 1 for s in scores.values())
    assert C.current(C.encoder_state(encoder, choice=choice), None, None, None)
    assert not C.current(C.encoder_state(encoder), None, None, None)  # made before the choice
    # a network that says one class for (nearly) everything: fc7's neighbours decide
    mostly = np.where(np.arange(400) % 10 == 0, classes, 0)  # 9 in 10 photos: class 0
    encoder, choice = C.choose_codes(x, mostly, bits=32, **SMALL)
    assert set(choice["scores"]) == {"autoencoder", "itq"} and "fc7" in choice["measure"]
    assert choice["network_chance_agreement"] > C.CHOICE_MAX_CHANCE
    assert "say too little" in choice["reason"]
    kept = {c: s["fc7_neighbours_kept"] for c, s in choice["scores"].items()}
    assert choice["chosen"] == max(kept, key=kept.get)
    # too few photos to hold some out: the default method, said so
    encoder, choice = C.choose_codes(x[:50], classes[:50], bits=32, **SMALL)
    assert choice["chosen"] == C.DEFAULT_METHOD and "fewer than 100" in choice["reason"]
    assert "codes chosen without labels: autoencoder" in C.describe_choice(choice)
