"""Weighted k-NN classification on embeddings (InstDisc / DINO vote), searched with FAISS.

The protocol (docs/protocols.md):
- train and test features are L2-normalised; similarity is the cosine (inner product);
- the top-k train neighbours vote for their label with weight exp(s / T);
- the prediction is the argmax of the class scores, top-5 comes from the sorted scores.

Design choices, each against a bug seen in the peers:
- one neighbour search for max(k); every (k, T) pair is a slice of it (not one search per k);
- queries are processed in chunks sized by a memory budget (never a fixed number of chunks,
  never the full Q x N similarity matrix);
- the class count comes from the train labels or is given, never from the test labels;
  labels may be any integers (non-contiguous, more than 1000 classes).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]
INDEX_KINDS = ("flat", "flat-fp16", "ivf", "hnsw")
GPU_MAX_K = 2048
_EPS = 1e-12


# ----------------------------------------------------------------------------------------------
# The vote: a pure function of tensors
# ----------------------------------------------------------------------------------------------


def knn_vote(similarities: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int,
             temperature: float) -> torch.Tensor:
    """Class scores of the weighted k-NN vote.

    Args:
        similarities: (Q, k) cosine similarities of each query's neighbours, best first.
        neighbour_labels: (Q, k) int64 class indices in [0, num_classes) of those neighbours;
            a negative index (a missing neighbour from an approximate index) casts no vote.
        num_classes: C.
        temperature: T; each neighbour adds exp(s / T) to its class.
    Returns:
        (Q, C) float32 scores. Shifting by the row maximum (exp((s - s_max) / T)) keeps small T
        finite and leaves the ranking unchanged.
    """
    sims = similarities.float()  # (Q, k)
    shift = sims.max(dim=1, keepdim=True).values if sims.shape[1] else sims.new_zeros(len(sims), 1)
    weights = ((sims - shift) / temperature).exp_()  # (Q, k)
    missing = neighbour_labels < 0
    weights = weights.masked_fill(missing, 0.0)
    labels = neighbour_labels.masked_fill(missing, 0)  # (Q, k)
    scores = torch.zeros(sims.shape[0], num_classes, dtype=torch.float32, device=sims.device)
    return scores.scatter_add_(1, labels, weights)  # (Q, C)


def topk_predictions(scores: torch.Tensor, n: int = 5) -> torch.Tensor:
    """(Q, C) class scores -> (Q, min(n, C)) class indices, best first."""
    return scores.topk(min(n, scores.shape[1]), dim=1).indices


# ----------------------------------------------------------------------------------------------
# Inputs: arrays, normalisation, labels
# ----------------------------------------------------------------------------------------------


def as_numpy(x: ArrayLike) -> np.ndarray:
    """A numpy view (or copy, for tensors on a device) of a tensor or array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def l2_normalize(x: ArrayLike, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Row-wise L2 normalisation to a new float32 array (the input is never modified)."""
    x = as_numpy(x)
    out = np.empty(x.shape, dtype=np.float32) if out is None else out
    step = max(1, (64 << 20) // max(1, x.shape[1] * 4))  # ~64 MiB of rows at a time
    for start in range(0, x.shape[0], step):
        block = x[start:start + step].astype(np.float32)  # (B, D)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))[:, None]  # (B, 1)
        np.divide(block, np.maximum(norms, _EPS), out=out[start:start + step])
    return out


@dataclass
class LabelSpace:
    """Maps dataset labels (any integers) to class indices 0..C-1, defined by the train set."""

    values: Optional[np.ndarray]  # sorted label values (None: labels already are 0..C-1)
    num_classes: int

    @classmethod
    def from_train(cls, train_labels: np.ndarray, num_classes: Optional[int] = None) -> "LabelSpace":
        """With `num_classes`, labels must lie in [0, num_classes); else the distinct train labels."""
        if num_classes is not None:
            if train_labels.size and (train_labels.min() < 0 or train_labels.max() >= num_classes):
                raise ValueError(f"train labels span [{train_labels.min()}, {train_labels.max()}] but "
                                 f"num_classes is {num_classes}")
            return cls(None, int(num_classes))
        values = np.unique(train_labels)
        if values.size and values[0] == 0 and values[-1] == values.size - 1:
            return cls(None, int(values.size))  # already contiguous 0..C-1
        return cls(values, int(values.size))

    def encode(self, labels: np.ndarray) -> np.ndarray:
        """Dataset labels -> class indices; labels unknown to the train set become -1."""
        labels = labels.astype(np.int64, copy=False)
        if self.values is None:
            return np.where((labels >= 0) & (labels < self.num_classes), labels, -1)
        pos = np.clip(np.searchsorted(self.values, labels), 0, max(0, self.values.size - 1))
        return np.where(self.values[pos] == labels, pos, -1) if self.values.size else -np.ones_like(labels)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Class indices -> dataset labels."""
        return indices if self.values is None else self.values[indices]


def integer_labels(x: ArrayLike, name: str, error: type[Exception] = ValueError) -> np.ndarray:
    """Labels as int64 (N,): integral floats are accepted, anything else raises `error` naming `name`."""
    y = as_numpy(x)
    if y.ndim != 1:
        raise error(f"{name} must be 1-D (N,), got shape {tuple(y.shape)}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise error(f"{name} must be integers, got non-integral floats")
    elif y.dtype.kind not in "iub":
        raise error(f"{name} must be integers, got dtype {y.dtype}")
    return y.astype(np.int64, copy=False)


def _check_inputs(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray,
                  test_labels: np.ndarray, kmax: int) -> None:
    if train.ndim != 2 or test.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D): train {train.shape}, test {test.shape}")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"feature dimensions differ: train D={train.shape[1]}, test D={test.shape[1]}")
    if len(train_labels) != len(train):
        raise ValueError(f"train has {len(train)} rows but {len(train_labels)} labels")
    if len(test_labels) != len(test):
        raise ValueError(f"test has {len(test)} rows but {len(test_labels)} labels")
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"empty features: train has {len(train)} rows, test {len(test)}")
    if kmax > len(train):
        raise ValueError(f"k={kmax} is larger than the train set ({len(train)} rows)")
    if kmax < 1:
        raise ValueError(f"k must be at least 1, got {kmax}")


# ----------------------------------------------------------------------------------------------
# Index and search
# ----------------------------------------------------------------------------------------------


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
                normalize: bool = True, nlist: Optional[int] = None, nprobe: int = 32,
                hnsw_m: int = 32, ef_search: int = 256, seed: int = 0):
    """A FAISS inner-product index over the rows of `train` (N, D).

    kinds: `flat` (exact, IndexFlatIP), `flat-fp16` (exact search over float16 storage, half
    the memory, slower), `ivf` (IVF-Flat, approximate), `hnsw` (HNSW-Flat, approximate, CPU).
    With `normalize`, rows are L2-normalised block by block as they are added, so no second
    full-size copy of `train` is ever made.
    """
    faiss = _faiss()
    train = as_numpy(train)
    n, d = train.shape
    prep = (lambda x: l2_normalize(x)) if normalize else (lambda x: np.ascontiguousarray(x, np.float32))
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


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------


@dataclass
class KnnOutput:
    """Everything one k-NN run measured."""

    results: list[dict]  # [{"k", "temperature", "top1", "top5"}], percent
    predictions: dict[tuple[int, float], np.ndarray]  # (k, T) -> (Q, min(5, C)) labels, best first
    num_classes: int
    search_seconds: float  # time inside FAISS search (index building excluded)
    recall: Optional[float] = None  # approximate indexes: recall@max(k) against exact search
    plan: Optional[object] = None  # the exact CPU search: its knn_stream.StreamPlan (block sizes, memory)


def knn_accuracy(train_feats: ArrayLike, train_labels: ArrayLike, test_feats: ArrayLike,
                 test_labels: ArrayLike, ks: Sequence[int] = (20,),
                 temperatures: Sequence[float] = (0.07,), num_classes: Optional[int] = None,
                 index: str = "flat", memory_budget_gb: float = 2.0, device: str = "auto",
                 progress: bool = False) -> list[dict]:
    """Weighted k-NN top-1 / top-5 accuracy (percent) for every (k, T) pair.

    Args:
        train_feats, test_feats: (N, D) and (Q, D) features, numpy or torch, any float dtype;
            they are L2-normalised here (cosine similarity), the inputs are not modified.
        train_labels, test_labels: (N,) and (Q,) integer labels, any values.
        ks, temperatures: every combination is scored from one search for max(ks); a value
            given twice is scored once.
        num_classes: C when known (labels then lie in [0, C)); None: the distinct train labels.
            A test label absent from the train set counts as an error.
        index: flat (exact, default) | flat-fp16 | ivf | hnsw (approximate).
        memory_budget_gb: working memory for search results and votes (the index itself,
            N x D x 4 bytes for flat, is not counted).
        device: auto | cpu | cuda, for the FAISS index.
    Returns:
        `[{"k", "temperature", "top1", "top5"}, ...]` in the order of `ks` x `temperatures`
        (repeats dropped).
    """
    return knn_evaluate(train_feats, train_labels, test_feats, test_labels, ks, temperatures,
                        num_classes, index, memory_budget_gb, device, progress).results


def knn_predict(train_feats: ArrayLike, train_labels: ArrayLike, test_feats: ArrayLike,
                ks: Sequence[int] = (20,), temperatures: Sequence[float] = (0.07,),
                num_classes: Optional[int] = None, index: str = "flat",
                memory_budget_gb: float = 2.0, device: str = "auto") -> dict[tuple[int, float], np.ndarray]:
    """Top-5 predicted labels for every (k, T): `{(k, T): (Q, min(5, C)) int64}`, best first.

    Labels are returned as the train labels' own values (not remapped indices).
    """
    return knn_evaluate(train_feats, train_labels, test_feats, None, ks, temperatures, num_classes,
                        index, memory_budget_gb, device, keep_predictions=True).predictions


def knn_evaluate(train_feats: ArrayLike, train_labels: ArrayLike, test_feats: ArrayLike,
                 test_labels: Optional[ArrayLike], ks: Sequence[int] = (20,),
                 temperatures: Sequence[float] = (0.07,), num_classes: Optional[int] = None,
                 index: str = "flat", memory_budget_gb: float = 2.0, device: str = "auto",
                 progress: bool = False, keep_predictions: bool = False,
                 recall_sample: int = 1000) -> KnnOutput:
    """`knn_accuracy` with everything it measured: see its arguments; returns a `KnnOutput`.

    Approximate indexes (ivf, hnsw) also report recall@max(k) against exact search on up to
    `recall_sample` queries (0: skip).
    """
    # Repeats are scored once: a repeated (k, T) pair would otherwise add its hits twice.
    ks = list(dict.fromkeys(int(k) for k in ks))
    temperatures = list(dict.fromkeys(float(t) for t in temperatures))
    if not ks or not temperatures:
        raise ValueError("give at least one k and one temperature")
    if not all(math.isfinite(t) and t > 0 for t in temperatures):
        raise ValueError(f"temperatures must be positive and finite, got {temperatures}")
    if not (math.isfinite(memory_budget_gb) and memory_budget_gb > 0):
        raise ValueError(f"the memory budget must be a positive number of GB, got {memory_budget_gb}")
    from .stream import RowSource

    train = train_feats if isinstance(train_feats, RowSource) else as_numpy(train_feats)
    test = test_feats if isinstance(test_feats, RowSource) else as_numpy(test_feats)
    y_train = integer_labels(train_labels, "train labels")
    y_test = integer_labels(test_labels, "test labels") if test_labels is not None else np.zeros(len(test), np.int64)
    kmax = max(ks)
    _check_inputs(train, y_train, test, y_test, kmax)
    space = LabelSpace.from_train(y_train, num_classes)
    train_idx = torch.from_numpy(space.encode(y_train))  # (N,) class indices
    test_idx = torch.from_numpy(space.encode(y_test))  # (Q,), -1: a class unseen in train

    if kmax > GPU_MAX_K and device != "cpu":
        device = "cpu"  # FAISS GPU search returns at most 2048 neighbours
    pairs = [(k, t) for k in ks for t in temperatures]
    streamed = index == "flat" and not use_gpu(device)
    if streamed:  # exact search on the CPU: the bank is streamed in blocks, never held whole
        chunks, plan = _streamed(train, test, kmax, memory_budget_gb, progress)
    else:
        if isinstance(train, RowSource) or isinstance(test, RowSource):
            raise ValueError(f"--index {index} (or a GPU) needs the whole bank in memory; load the files")
        index_obj = build_index(train, index, device)
        queries = l2_normalize(test)  # (Q, D) float32
        chunk = query_chunk_size(kmax, space.num_classes, memory_budget_gb, len(pairs))
        chunks, plan = search_chunks(index_obj, queries, kmax, chunk, progress, memory_budget_gb), None
    top1 = dict.fromkeys(pairs, 0)
    top5 = dict.fromkeys(pairs, 0)
    preds: dict[tuple[int, float], list[np.ndarray]] = {p: [] for p in pairs}
    vote_rows = query_chunk_size(kmax, space.num_classes, memory_budget_gb, len(pairs))
    seconds = 0.0
    tic = time.perf_counter()
    for start, chunk_sims, chunk_ids in chunks:
        seconds += time.perf_counter() - tic
        for off in range(0, len(chunk_sims), vote_rows):
            sims_t = torch.from_numpy(chunk_sims[off:off + vote_rows])  # (B, kmax)
            ids_t = torch.from_numpy(chunk_ids[off:off + vote_rows])  # (B, kmax); -1: fewer found
            nbr = torch.where(ids_t >= 0, train_idx[ids_t.clamp_min(0)], torch.full_like(ids_t, -1))
            truth = test_idx[start + off:start + off + len(sims_t)]  # (B,)
            for k, t in pairs:
                top = topk_predictions(knn_vote(sims_t[:, :k], nbr[:, :k], space.num_classes, t))  # (B, 5)
                hits = top == truth[:, None]  # (B, 5)
                top1[(k, t)] += int(hits[:, 0].sum())
                top5[(k, t)] += int(hits.any(dim=1).sum())
                if keep_predictions:
                    preds[(k, t)].append(space.decode(top.numpy()))
        tic = time.perf_counter()
    recall = None
    if index in ("ivf", "hnsw") and recall_sample > 0:
        recall = search_recall(train, queries, kmax, index_obj, recall_sample)
    q = len(test)
    results = [{"k": k, "temperature": t, "top1": 100.0 * top1[(k, t)] / q,
                "top5": 100.0 * top5[(k, t)] / q} for k, t in pairs]
    predictions = {p: np.concatenate(v) for p, v in preds.items()} if keep_predictions else {}
    return KnnOutput(results, predictions, space.num_classes, seconds, recall, plan)


def _streamed(train, test, k: int, memory_budget_gb: float, progress: bool):
    """The exact CPU search: the bank streamed in blocks within the budget (knn_stream.py)."""
    from .stream import ArrayRows, RowSource, plan_stream, stream_search, working_budget_gb

    bank = train if isinstance(train, RowSource) else ArrayRows(train, "train features")
    queries = test if isinstance(test, RowSource) else ArrayRows(test, "test features")
    plan = plan_stream(len(bank), len(queries), bank.shape[1], k, working_budget_gb(memory_budget_gb),
                       bank.stored_bytes_per_row)
    return stream_search(bank, queries, k, plan, progress), plan


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
    train = l2_normalize(train_feats)
    _, exact = faiss.knn(sample_q, train, k, metric=faiss.METRIC_INNER_PRODUCT)
    del train
    _, approx = index.search(sample_q, k)
    found = sum(len(np.intersect1d(a[a >= 0], e)) for a, e in zip(approx, exact))
    return found / exact.size
