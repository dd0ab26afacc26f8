"""FAISS indexes over a bank of features and the blocked searches over them: exact (flat, flat-fp16)
or approximate (ivf, hnsw, with their recall measured against exact search), on CPU or GPU."""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Optional

import numpy as np

from ..process_env import launch_env
from .arrays import ArrayLike, as_numpy, l2_normalise, unit_rows_

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


def faiss_gpu_id(device: str, local_rank: int, gpus: int) -> int:
    """The GPU a FAISS index goes on for a torch device string: `cuda:N` -> N; `cuda` or `auto` ->
    this process's GPU (`local_rank` modulo the `gpus` FAISS sees), as `devices.resolve_device`
    picks it for torch. Never GPU 0 for every rank."""
    if gpus < 1:
        raise RuntimeError("this FAISS build sees no GPU (install faiss-gpu, or use device='cpu')")
    if device.startswith("cuda:"):
        index = device.split(":", 1)[1]
        if not index.isdigit() or int(index) >= gpus:
            raise ValueError(f"device '{device}': FAISS sees {gpus} GPU(s) (cuda:0 to cuda:{gpus - 1})")
        return int(index)
    return local_rank % gpus


class _ResourceScope:
    """The FAISS GPU resources of one `gpu_resources()` block, made on first use."""

    def __init__(self, make: Callable[[], object]) -> None:
        self.make, self.resources = make, None

    def get(self) -> object:
        if self.resources is None:
            self.resources = self.make()
        return self.resources


_SCOPES: list[_ResourceScope] = []  # the open `gpu_resources()` blocks, innermost last
_PROCESS_SCOPE = _ResourceScope(lambda: _faiss().StandardGpuResources())  # outside any block


@contextlib.contextmanager
def gpu_resources(make: Optional[Callable[[], object]] = None) -> Iterator[_ResourceScope]:
    """A block whose GPU indexes share resources made for it on first use (`make()`: a new
    `faiss.StandardGpuResources` by default; none is made if no GPU index is built), let go on
    leaving the block, also on an error: once the block's indexes are gone too, their GPU memory
    (temporary buffers, streams, cuBLAS handles) is freed instead of held until the next check."""
    scope = _ResourceScope(make or (lambda: _faiss().StandardGpuResources()))
    _SCOPES.append(scope)
    try:
        yield scope
    finally:
        _SCOPES.remove(scope)
        scope.resources = None


def _gpu_resources():
    """The innermost block's resources, else one set kept for the process (a one-shot `ssl-bf knn`)."""
    return (_SCOPES[-1] if _SCOPES else _PROCESS_SCOPE).get()


def build_index(train: ArrayLike, kind: str = "flat", device: str = "auto", *,
                normalise: bool = True, nlist: Optional[int] = None, nprobe: int = 32,
                hnsw_m: int = 32, ef_search: int = 256, seed: int = 0):
    """A FAISS inner-product index over the rows of `train` (N, D).

    kinds: `flat` (exact, IndexFlatIP), `flat-fp16` (exact search over float16 storage, half
    the memory, slower), `ivf` (IVF-Flat, approximate), `hnsw` (HNSW-Flat, approximate, CPU).
    With `normalise`, rows are L2-normalised block by block as they are added (in float64, whatever
    their scale: `arrays.unit_rows_`), so no second full-size copy of `train` is ever made.
    """
    faiss = _faiss()
    train = as_numpy(train)
    n, d = train.shape

    def prep(rows: np.ndarray, start: int = 0) -> np.ndarray:  # (B, D) -> (B, D) float32
        if not normalise:
            return np.ascontiguousarray(rows, np.float32)
        return unit_rows_(rows, "train features", start, n, np.empty(rows.shape, np.float32))

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
        gpu = faiss_gpu_id(device, launch_env().local_rank, faiss.get_num_gpus())
        index = faiss.index_cpu_to_gpu(_gpu_resources(), gpu, index)
    step = 1 << 16
    for start in range(0, n, step):
        index.add(prep(train[start:start + step], start))
    return index


def query_chunk_size(k: int, num_classes: int, memory_budget_gb: float, num_pairs: int = 1) -> int:
    """Queries per chunk so that search results and vote scores fit the budget.

    Per query: k similarities (4 B) and ids (8 B), their sorted copies, labels and weights (40 B),
    and a few (C,) float64 / int64 rows (scores, first neighbours). FAISS's own blocked search uses
    a fixed few MiB on top.
    """
    per_query = k * 52 + num_classes * 8 * 3 + num_pairs * 5 * 8
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
    train = l2_normalise(train_feats, "train features")
    _, exact = faiss.knn(sample_q, train, k, metric=faiss.METRIC_INNER_PRODUCT)
    del train
    _, approx = index.search(sample_q, k)
    found = sum(len(np.intersect1d(a[a >= 0], e)) for a, e in zip(approx, exact))
    return found / exact.size
