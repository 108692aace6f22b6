"""Retrieval settings a user can change, with their defaults: plain constants, importable
without torch or faiss, so that the command line shows them without loading either."""

BITS = 64  # binary code length
CODES = "autoencoder"  # code method: autoencoder, itq, pca-sign or lsh (retrieval/codes.py)
CODE_METHODS = ("autoencoder", "itq", "pca-sign", "lsh")
MIN_BITS, MAX_BITS = 32, 256  # in steps of 8 (codes are packed into bytes)
APPROX_THRESHOLD = 200_000  # above this many images (and without a GPU): IVF, not exact
IVF_LISTS = 1024  # IVF: inverted lists (k-means centroids of the codes)
IVF_RECALL = 0.99  # IVF: recall@10 the fewest lists searched per query (nprobe) must hold
FEATURE_BATCH = 64  # images per batch when extracting fc7
QUERY_BATCH = 32
K = 10  # results per query
SEARCH_RERANK = 0  # search: re-rank shortlist length; 0 keeps the Hamming order
EVAL_RERANK = 100  # eval-retrieval: shortlist of the "hamming+rerank" mode
PIXEL_SIZE = 32  # eval-retrieval: side of the raw-pixel baseline's vectors
DUPLICATE_FC7 = 0.075  # duplicates: relative fc7 distance that confirms a pair (duplicates.py)


def bits_problem(bits: int) -> str | None:
    """Why `bits` cannot be a code length (codes are packed into bytes), or None."""
    if bits % 8 or not MIN_BITS <= bits <= MAX_BITS:
        return f"must be a multiple of 8 from {MIN_BITS} to {MAX_BITS}"
    return None
