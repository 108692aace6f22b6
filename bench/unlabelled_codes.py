"""Codes for photos without labels: the method `alexnet index` chooses (retrieval/codes.py,
choose_codes) against every method, on a gallery scored by its folders afterwards.

    python bench/unlabelled_codes.py --run RUN --images DIR [--scratch /tmp] [--bits 64]

RUN is a trained run. Its network is exported (`export-onnx`) and imported again
(`import-weights`, with RUN's mean image and class ids), so that, as a published network, it
has no training images: the first gallery indexed with it fits the codes on its own photos,
without labels, and chooses their method. DIR (e.g. imagenette-mini: its train/ and val/
class folders) is indexed as that gallery; its folders are read only to score.

Each method is then fitted on the gallery's fc7 as the index fits it (all photos, no labels;
"autoencoder (network's classes)": the label-aware autoencoder trained on the network's own
predicted classes), and every photo is a query against all the others (leave-one-out): P@10
and mAP with "same folder" as relevance, ties in a seeded random order. "chosen" is the
codes the gallery holds. The measure the choice used (on held-out photos, no folder) is
printed beside.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from alexnet.model.inference import load_trained
from alexnet.model.onnx_io import export_onnx
from alexnet.model.reference import import_weights
from alexnet.pipeline.stats import load_stats
from alexnet.retrieval import codes as C
from alexnet.retrieval.collection import collection


def leave_one_out(distances: np.ndarray, labels: np.ndarray, k: int = 10) -> tuple[float, float]:
    """P@k and mAP of every row against all the others; ties in a seeded random order."""
    order = np.random.default_rng(0).permutation(len(labels))
    d = distances[np.ix_(order, order)].astype(np.float64)
    np.fill_diagonal(d, np.inf)
    return C._precision_map(d, labels[order], k)


def hamming_matrix(codes: np.ndarray) -> np.ndarray:
    b = np.unpackbits(codes, axis=1).astype(np.float32)
    return b.shape[1] - (b @ b.T + (1 - b) @ (1 - b).T)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--images", required=True, type=Path)
    parser.add_argument("--scratch", default="/tmp", type=Path)
    parser.add_argument("--bits", type=int, default=64)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    trained = load_trained(args.run, check_files=False)
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        tmp = Path(tmp)
        export_onnx(args.run, tmp / "net.onnx")
        mean = load_stats(args.run, trained.manifest.fingerprint).mean_image
        np.save(tmp / "mean.npy", mean.astype(np.float32))
        (tmp / "labels.txt").write_text("\n".join(trained.manifest.classes) + "\n")
        imported = tmp / "imported"
        import_weights(tmp / "net.onnx", imported, mean=tmp / "mean.npy", labels=tmp / "labels.txt")
        start = time.perf_counter()
        record = collection(imported, "photos").update(args.images, progress=False)
        seconds = time.perf_counter() - start
        gallery = collection(imported, "photos").open()
        table = gallery.table
        features = np.asarray(gallery.features[table.rows], np.float32)
        folders = np.array([Path(p).parent.name for p in table.paths])
        labels = np.unique(folders, return_inverse=True)[1]
        fc8 = gallery.trained.model.classifier[-1]
        weight, bias = (t.detach().float().numpy() for t in (fc8.weight, fc8.bias))
        predictions = C.predicted_classes(features, weight, bias)

        rows = {}
        for name, method, fit_labels in [
            ("autoencoder", "autoencoder", None),
            ("itq", "itq", None),
            ("lsh", "lsh", None),
            ("pca-sign", "pca-sign", None),
            (C.NETWORK_CLASSES, "autoencoder", predictions),
        ]:
            encoder = C.fit_codes(features, fit_labels, method=method, bits=args.bits)
            rows[name] = leave_one_out(hamming_matrix(encoder.encode(features)), labels)
        sq = (features**2).sum(1)
        rows["fc7 (float, Euclidean)"] = leave_one_out(
            sq[:, None] + sq[None] - 2 * features @ features.T, labels
        )
        rows["chosen"] = leave_one_out(hamming_matrix(table.codes), labels)

    choice = record["code_choice"]
    classes = trained.manifest.classes
    said = ""
    if set(folders) <= set(classes):  # folders named as the network's classes
        truth = np.array([classes.index(f) for f in folders])
        said = (
            f"; the network's argmax is the folder's class for {np.mean(predictions == truth):.1%}"
        )
    print(
        f"\n{len(labels)} photos in {len(set(folders))} folders, {args.bits}-bit codes, "
        f"network of {args.run}{said}; gallery indexed in {seconds:.0f} s"
    )
    print(C.describe_choice(choice))
    print("\n| codes | P@10 | mAP |\n| --- | ---: | ---: |")
    for name, (p, m) in rows.items():
        shown = f"chosen: {choice['chosen']}" if name == "chosen" else name
        print(f"| {shown} | {p:.3f} | {m:.3f} |")


if __name__ == "__main__":
    main()
