"""fc7 retrieval (paper, section 6.1): features -> autoencoder -> binary codes -> FAISS index.

features     fc7 of every training image (memory-mapped float16) and of query images
autoencoder  4096 -> 1024 -> 256 -> B bits, trained on the features; packed uint8 codes
index        faiss binary index (exact Hamming; IVF above a size threshold; GPU flat where a
             GPU is), optional fc7 re-rank; a collection's build and stale-index checks
api          open_index, search, index_run, describe, thumbnail: what every face (terminal,
             web page) calls
gallery      any folder of photos indexed with a run (incremental; sharded under torchrun)
duplicates   near-duplicate groups in a gallery: codes shortlist, fc7 confirms
milvus       a collection's codes in a Milvus server (or Milvus Lite), searched as faiss is
baselines    ITQ, PCA-sign and LSH binary codes of fc7 (the autoencoder's baselines)
evaluate     eval-retrieval: precision@k and mAP of codes, re-rank, baselines, float fc7, pixels
montage      a PNG contact sheet of search results
defaults     the retrieval settings' defaults (light: no torch, no faiss)
"""

from alexnet.pipeline.lazy import lazy_exports

_EXPORTS = {
    "Autoencoder": "autoencoder",
    "AutoencoderConfig": "autoencoder",
    "RunIndex": "index",
    "build_run_index": "index",
    "describe": "api",
    "evaluate_retrieval": "evaluate",
    "find_duplicates": "duplicates",
    "index_gallery": "gallery",
    "open_gallery": "gallery",
    "index_run": "api",
    "make_montage": "montage",
    "open_index": "api",
    "query_features": "features",
    "search": "api",
    "search_stream": "api",
    "thumbnail": "api",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
