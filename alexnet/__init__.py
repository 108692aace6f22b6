"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012) as a library: the few verbs a script needs.

    import alexnet
    run = alexnet.prepare("photos/", "runs/photos")      # manifest + mean image + RGB PCA
    alexnet.fit(run, epochs=30, batch_size=32)           # the paper's trainer
    model = alexnet.load(run)                            # .predict(images), .features(images)
    train = alexnet.collection(run)                      # the training set, searchable
    train.update()                                       # fc7 -> binary codes -> FAISS index
    train.search(["query.jpg"], k=10)

Images are paths, folders, encoded bytes (bytes, bytearray, memoryview), PIL images or uint8
HxWx3 arrays everywhere (pipeline/images.py: the one way in).
Names are imported on first use, so `import alexnet` loads neither torch, DALI nor faiss.
"""

from pathlib import Path

# In a source checkout the stage folders (pipeline/, model/, ...) sit beside this one, not in
# it: found there, `alexnet.pipeline` is the checkout's own code whether or not it is installed.
_HERE = Path(__file__).resolve().parent
if not (_HERE / "pipeline").is_dir() and (_HERE.parent / "pipeline" / "__init__.py").is_file():
    __path__.append(str(_HERE.parent))

from alexnet.pipeline.lazy import lazy_exports  # noqa: E402

_EXPORTS = {
    "AlexnetError": "alexnet.pipeline.errors",
    "prepare": "alexnet.pipeline.prep",
    "fit": "alexnet.model.train",
    "load": "alexnet.model.inference",
    "import_weights": "alexnet.model.reference",
    "collection": "alexnet.retrieval.collection",
    "collections": "alexnet.retrieval.collection",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(None, _EXPORTS)
