"""FAISS indexes over a bank of features and the blocked searches over them: exact (flat, flat-fp16)
or approximate (ivf, hnsw, with their recall measured against exact search), on CPU or GPU."""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional

import numpy as np

from .arrays import ArrayLike, as_numpy, l2_normalise

INDEX_KINDS = ("flat", "flat-fp16", "ivf", "hnsw")
GPU_MAX_K = 2048




def _faiss():
    import faiss  # imported lazily: a heavy import the CLI's --help should not pay

    return faiss


def use_gpu(device: str = "auto") -> bool:
    """Whether to put the FAISS index on a GPU: 'auto' uses one when FAISS sees one."""
    if device == "cpu":
        return False
    faiss = _faiss()
    available = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if device.startswith("cuda") and not available:
        raise RuntimeError("device='cuda' was asked for but this FAISS build sees no GPU "
                           "(install faiss-gpu, or use device='cpu')")
    return available


_GPU_RESOURCES = None


def _gpu_resources():
    """One StandardGpuResources per process, kept alive as long as the indexes that use it."""
    global _GPU_RESOURCES
    if _GPU_RESOURCES is None:
        _GPU_RESOURCES = _faiss().StandardGpuResources()
    return _GPU_RESOURCES


def build_index(train: ArrayLike, kind: str = "flat", device: str = "auto", *,
                normalise: bool = True, nlist: Optional[int] = None, nprobe: int = 32,
                hnsw_m: int = 32, ef_search: int = 256, seed: int = 0):
    """A FAISS inner-product index over the rows of `train` (N, D).

    kinds: `flat` (exact, IndexFlatIP), `flat-fp16` (exact search over float16 storage, half
    the memory, slower), `ivf` (IVF-Flat, approximate), `hnsw` (HNSW-Flat, approximate, CPU).
    With `normalise`, rows are L2-normalised block by block as they are added, so no second
    full-size copy of `train` is ever made.
    """
    faiss = _faiss()
    train = as_numpy(train)
    n, d = train.shape
    prep = (lambda x: l2_normalise(x)) if normalise else (lambda x: np.ascontiguousarray(x, np.float32))
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "flat-fp16":
        index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    elif kind == "ivf":
        nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))  # >= 39 training rows per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        index.train(prep(train[np.sort(rng.choice(n, size=min(n, 256 * nlist), replace=False))]))
        index.nprobe = min(nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = ef_search
    else:
        raise ValueError(f"unknown index '{kind}'; choose one of {', '.join(INDEX_KINDS)}")
    if kind in ("flat", "ivf") and use_gpu(device):
        index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)
    step = 1 << 16
    for start in range(0, n, step):
        index.add(prep(train[start:start + step]))
    return index


def query_chunk_size(k: int, num_classes: int, memory_budget_gb: float, num_pairs: int = 1) -> int:
    """Queries per chunk so that search results and vote scores fit the budget.

    Per query: k similarities (4 B) and ids (8 B), their labels and weights (16 B), and a few
    (C,) float32 score rows. FAISS's own blocked search uses a fixed few MiB on top.
    """
    per_query = k * 28 + num_classes * 4 * 3 + num_pairs * 5 * 8
    return int(max(1, min(1 << 16, memory_budget_gb * (1 << 30) // per_query)))


@contextlib.contextmanager
def blas_blocks(memory_budget_gb: float) -> Iterator[None]:
    """Larger FAISS brute-force blocks while searching (restored afterwards).

    FAISS's CPU flat search multiplies 4096 queries by 1024 database rows at a time, then
    updates the top-k heaps. With 8192-row blocks the sgemm calls are large enough to run at
    full speed: about 1.8x faster searches measured on 2 cores. The block buffer (4096 x 8192
    float32, 128 MiB) is capped at an eighth of the memory budget.
    """
    from .stream import blas_tiles

    query_bs = 4096
    db_bs = int(min(8192, max(1024, memory_budget_gb * (1 << 30) / 8 / (query_bs * 4))))
    with blas_tiles(query_bs, db_bs):
        yield


def search_chunks(index, queries: np.ndarray, k: int, chunk: int, progress: bool = False,
                  memory_budget_gb: float = 2.0) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield `(start, similarities (B, k) float32, ids (B, k) int64)` per block of queries."""
    from tqdm.auto import tqdm

    starts = range(0, len(queries), chunk)
    for start in tqdm(starts, desc="k-NN search", unit="chunk", disable=not progress or len(starts) < 2):
        block = np.ascontiguousarray(queries[start:start + chunk], dtype=np.float32)
        with blas_blocks(memory_budget_gb):
            sims, ids = index.search(block, k)
        yield start, sims, ids


def search_recall(train_feats: ArrayLike, queries: ArrayLike, k: int, index,
                  sample: int = 1000, seed: int = 0) -> float:
    """Recall@k of a built approximate `index` against exact search, on a sample of queries.

    The fraction of the exact top-k neighbours (brute force, `faiss.knn`, no second index) that
    the approximate index also returns. `queries` must already be L2-normalised.
    """
    faiss = _faiss()
    q = as_numpy(queries)
    rows = np.sort(np.random.default_rng(seed).choice(len(q), size=min(sample, len(q)), replace=False))
    sample_q = np.ascontiguousarray(q[rows], dtype=np.float32)
    train = l2_normalise(train_feats)
    _, exact = faiss.knn(sample_q, train, k, metric=faiss.METRIC_INNER_PRODUCT)
    del train
    _, approx = index.search(sample_q, k)
    found = sum(len(np.intersect1d(a[a >= 0], e)) for a, e in zip(approx, exact))
    return found / exact.size
