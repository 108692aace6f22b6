"""Datasets, training-set statistics and the DALI pipelines that feed every later stage.

dataset   scan an ImageFolder tree into a Manifest (classes, labels, split, skipped files)
manifest  Manifest: RUN/manifest.json + manifest.files.npz read, written and checked here only
walk      the one folder walk (prep, galleries, query folders); imagecheck: does a file decode
split     the seeded train/val split
imagenet  labels of a flat validation folder and class names: ImageNet's files, label files
stats     mean image, channel mean, RGB covariance and PCA -> RUN/stats.npz
prep      `alexnet prep` as one function: scan, manifest, statistics
dali      the DALI graphs (prep, train, eval, query) as functions on DataNodes
loader    their torch side: Loader, QueryCrops, centre_patches, check_batch_size
layout    RunPaths: every file under RUN/, named once
files     atomic writes, JSON, file identities; errors: AlexnetError
defaults  the prep settings' defaults (light: no DALI, no torch)
"""

from .lazy import lazy_exports

_EXPORTS = {
    "AlexnetError": "errors",
    "IndexPaths": "layout",
    "Loader": "loader",
    "QueryCrops": "loader",
    "RunPaths": "layout",
    "Stats": "stats",
    "compute_stats": "stats",
    "eval_pipeline": "dali",
    "Manifest": "manifest",
    "load_manifest": "manifest",
    "load_stats": "stats",
    "prepare": "prep",
    "query_pipeline": "dali",
    "scan": "dataset",
    "split_files": "manifest",
    "train_pipeline": "dali",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
