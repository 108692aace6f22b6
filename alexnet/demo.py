"""The whole chain on embedded photos, as one function: prep, a short training run, the
retrieval index, a few searches with a contact sheet, and the retrieval evaluation.

`demo` yields each stage's result as it finishes, ("photos", folder), ("prep", run),
("train", metrics), ("index", description), ("search", {"result", "montage", "root"}),
("eval-retrieval", {"result", "path"}), so a face can show each as it comes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEMO_RUN = Path("runs/demo")


def demo(
    run: str | Path = DEMO_RUN,
    *,
    data: str | Path | None = None,
    epochs: int = 6,
    batch_size: int = 32,
    queries: int = 3,
    progress: bool = True,
) -> Iterator[tuple[str, Any]]:
    """Run the chain into `run` on `data` (default: the Fashion-MNIST photos the system's
    dataset-fashion-mnist package holds, 10 classes); an interrupted demo resumes training."""
    from alexnet.model.train import fit
    from alexnet.pipeline import fashion_mnist
    from alexnet.pipeline.layout import RunPaths
    from alexnet.pipeline.manifest import load_manifest, split_files
    from alexnet.pipeline.prep import prepare
    from alexnet.retrieval.collection import collection
    from alexnet.retrieval.defaults import SEARCH_RERANK
    from alexnet.retrieval.montage import make_montage

    paths = RunPaths(run)
    if data is None:
        data = fashion_mnist.build(paths.demo_data)
        yield "photos", data
    yield "prep", prepare(data, run, progress=progress)
    resume = paths.last.exists()
    yield "train", fit(run, resume=resume, epochs=epochs, batch_size=batch_size, progress=progress)
    train = collection(run)
    yield "index", train.update(progress=progress)
    train.open(progress=progress)
    manifest = load_manifest(run)
    val_files, _ = split_files(manifest, "val")
    picks = val_files[:: max(1, len(val_files) // queries)][:queries]
    result = train.search(picks, k=5, rerank=SEARCH_RERANK)
    unit = "fc7" if SEARCH_RERANK else "bits"
    montage = make_montage(result["queries"], paths.montage, unit=unit)
    yield "search", {"result": result, "montage": montage, "root": manifest.root}
    evaluation = train.evaluate(progress=progress)
    yield "eval-retrieval", {"result": evaluation, "path": paths.eval_retrieval}
