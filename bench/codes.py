"""The code methods compared, from a run's saved fc7 features (BENCHMARKS.md, "Label-aware codes").

    python bench/codes.py --run RUN [--bits 32,64,128,256] [--seeds 0,1,2] [--holdout 0.2]
        [--set classification=0.5 --set balance=0.1 ...] [--methods ...] [--cache DIR]

Database: RUN/index/features.f16.npy (run `alexnet index --run RUN` first) with the manifest's
training labels. Queries: the validation images' fc7 and raw pixels (computed once, cached in
--cache), or with --holdout F a seeded, stratified share F of the TRAINING images (the code
methods are then fitted on the rest only): the split the defaults are chosen on, so that the
validation queries are never used to tune them.

Per method and code length: P@10, mAP and precision within Hamming radius 2 (0 for a query with
no code within it; the share of queries with one beside it), as eval-retrieval ranks (ties in
a seeded order), and the seconds to fit on `--threads` threads. Float fc7 and raw pixels once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from alexnet.model.inference import load_trained
from alexnet.pipeline.manifest import split_files
from alexnet.retrieval import codes as C
from alexnet.retrieval.evaluate import evaluate_modes, pixel_vectors
from alexnet.retrieval.features import load_features, query_features
from alexnet.retrieval.index import hamming

UNSUPERVISED = "autoencoder-unsupervised"


def cached(path: Path, make) -> np.ndarray:
    if path.is_file():
        return np.load(path)
    x = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    return x


def radius_precision(
    q_codes, db_codes, q_labels, db_labels, radius: int = 2
) -> tuple[float, float]:
    """(mean precision of the codes within `radius`, 0 where none; share of queries with one)."""
    d = hamming(q_codes, db_codes) <= radius
    hits = d.sum(1)
    good = (d & (db_labels[None] == q_labels[:, None])).sum(1)
    return float(np.where(hits > 0, good / np.maximum(hits, 1), 0).mean()), float((hits > 0).mean())


def holdout_split(labels: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (database rows, query rows): `share` of each class as queries, seeded."""
    rng = np.random.default_rng(seed)
    queries = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        queries.extend(rng.choice(rows, max(1, round(share * len(rows))), replace=False))
    q = np.sort(np.array(queries))
    return np.setdiff1d(np.arange(len(labels)), q), q


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--bits", default="64")
    p.add_argument("--seeds", default="0")
    p.add_argument("--methods", default=",".join([*C.METHODS, UNSUPERVISED]))
    p.add_argument("--holdout", type=float, default=0.0)
    p.add_argument("--set", action="append", default=[], help="autoencoder setting=value")
    p.add_argument("--cache", default="/tmp/alexnet-bench-codes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="append each result as a JSON line here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}

    net = load_trained(a.run, check_files=False)
    features = load_features(net.paths.index)
    db_files, db_labels = split_files(net.manifest, "train")
    db_labels = np.array(db_labels)
    pixels = None
    if a.holdout:
        db_rows, q_rows = holdout_split(db_labels, a.holdout, 0)
        db_feat, q_feat = (
            np.asarray(features[db_rows], np.float32),
            np.asarray(features[q_rows], np.float32),
        )
        db_lab, q_lab = db_labels[db_rows], db_labels[q_rows]
        where = f"held-out {len(q_rows)} of the training images"
    else:
        q_files, q_lab = split_files(net.manifest, "val")
        key = hashlib.sha1(f"{Path(a.run).resolve()}{net.checkpoint}".encode()).hexdigest()[:12]
        folder = Path(a.cache) / key
        q_feat = cached(folder / "val_fc7.npy", lambda: query_features(net, q_files))
        db_pix = cached(folder / "train_pixels.npy", lambda: pixel_vectors(db_files))
        q_pix = cached(folder / "val_pixels.npy", lambda: pixel_vectors(q_files))
        pixels = (db_pix, q_pix)
        db_feat, db_lab, q_lab = features, db_labels, np.array(q_lab)
        where = f"{len(q_lab)} validation images"
    tie_order = np.random.default_rng(0).permutation(len(db_lab))
    print(f"{a.run}: {len(db_lab)} database images, queries: {where}; load {_load()}")
    print(
        f"{'bits':>4} {'method':26}{'seed':>5}{'P@10':>7}{'mAP':>7}{'P@r2':>7}{'hit@r2':>7}"
        f"{'fit s':>7}"
    )
    floats_done = False
    for bits in map(int, a.bits.split(",")):
        for method in a.methods.split(","):
            for seed in map(int, a.seeds.split(",")):
                labels = None if method == UNSUPERVISED else db_lab
                extra = overrides if method.startswith("autoencoder") else {}
                start = time.perf_counter()
                enc = C.fit_codes(
                    db_feat,
                    labels,
                    method=method.split("-")[0] if method == UNSUPERVISED else method,
                    bits=bits,
                    seed=seed,
                    **extra,
                )
                fit = time.perf_counter() - start
                db_codes = enc.encode(db_feat)
                r = evaluate_modes(
                    db_feat,
                    db_lab,
                    q_feat,
                    q_lab,
                    codes={method: (db_codes, enc.encode)},
                    pixels=None if floats_done else pixels,
                    tie_order=tie_order,
                )
                q_codes = enc.encode(q_feat)
                pr2, hit = radius_precision(q_codes, db_codes, q_lab, db_lab)
                m = r[method]
                print(
                    f"{bits:4d} {method:26}{seed:5d}{m['precision_at_10']:7.3f}{m['map']:7.3f}"
                    f"{pr2:7.3f}{hit:7.3f}{fit:7.1f}",
                    flush=True,
                )
                if not floats_done:
                    for name in ("fc7_euclidean", "pixels_euclidean"):
                        if name in r:
                            f = r[name]
                            print(
                                f"{'-':>4} {name:26}{'-':>5}{f['precision_at_10']:7.3f}"
                                f"{f['map']:7.3f}",
                                flush=True,
                            )
                    floats_done = True
                if a.json:
                    row = {
                        "run": a.run,
                        "queries": where,
                        "bits": bits,
                        "method": method,
                        "seed": seed,
                        "settings": extra,
                        "precision_at_10": m["precision_at_10"],
                        "map": m["map"],
                        "precision_r2": pr2,
                        "hit_r2": hit,
                        "fit_seconds": fit,
                    }
                    with open(a.json, "a") as f:
                        f.write(json.dumps(row) + "\n")


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    main()
