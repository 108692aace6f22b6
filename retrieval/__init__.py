"""fc7 retrieval (paper, section 6.1): features -> binary codes -> FAISS index -> search.

The vocabulary, once:
- collection   everything a run can search: the training set (its files: the manifest's
               training split) or a gallery (its files: the images below a folder), each a
               `Collection` with files, fc7 features, binary codes, a FAISS index and a record
               of what made them. `alexnet.collection(run, name=None)` and
               `alexnet.collections(run)` (the functions of module collection).
- update       build a collection or bring it up to date (a gallery incrementally: new and
               changed files added, vanished ones dropped); `Collection.update(folder=None)`.
- search       query images in, result records out (`Collection.search`; `stream` yields the
               same records one query at a time); `index.search` is its FAISS step, numpy in
               and out.
- duplicates   groups of near-duplicate images in a collection (`Collection.duplicates`),
               or the images of one collection already in another (`against=`).
- evaluate     eval-retrieval: the validation images against the training set
               (`Collection.evaluate`).
- id           an image's row in its collection's feature file: stable across updates,
               renumbered when a gallery is compacted.
- compact      rewrite a gallery's feature file with only the rows its files use
               (`Collection.update(folder, compact=True)`; also when over half are dead).
- stale        a collection whose record no longer matches what it was made from (the data,
               the checkpoint, the autoencoder) or whose files were rewritten (store.problem).

Modules:
collection   the Collection type: open, update, search, file, thumbnail, describe
update       building and updating: the training set's and a gallery's steps (torchrun-aware)
store        what a collection keeps on disk: its table of files, its record, the staleness rule
features     fc7: the one extractor (files -> rows of a memory-mapped float16 file) and
             query images' vectors
autoencoder  4096 -> 256 -> B bits, trained on the features (and labels); packed uint8 codes
codes        the code methods behind one interface: autoencoder (default), itq, pca-sign, lsh
index        FAISS binary indexes, numpy in and out: build, search, re-rank, recall, save/load
duplicates   near-duplicate groups: codes shortlist, fc7 confirms (in one, or one in another)
compact      a gallery's feature file and table rewritten with their live rows, kill-safe
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
    "Collection": "collection",
    "fit_codes": "codes",
    "load_encoder": "codes",
    "evaluate_retrieval": "evaluate",
    "find_duplicates": "duplicates",
    "make_montage": "montage",
    "query_features": "features",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
