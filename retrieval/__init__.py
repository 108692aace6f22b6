"""fc7 retrieval (paper, section 6.1): features -> autoencoder -> binary codes -> FAISS index.

features     fc7 of every training image (memory-mapped float16) and of query images
autoencoder  4096 -> 1024 -> 256 -> B bits, trained on the features; packed uint8 codes
index        faiss binary index (exact Hamming; HNSW above a size threshold; GPU flat where a
             GPU is), optional fc7 re-rank; the run-level build and stale-index checks
evaluate     eval-retrieval: precision@k and mAP of codes, re-rank, float fc7, raw pixels
montage      a PNG contact sheet of search results
"""
