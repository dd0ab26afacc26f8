"""Weighted k-NN classification on embeddings (InstDisc / DINO vote), searched with FAISS.

The protocol (docs/protocols.md):
- train and test features are L2-normalised (in float64, so any scale gives the same unit rows);
  similarity is the cosine (inner product);
- the top-k train neighbours vote for their label with weight exp(s / T);
- classes are ranked by score; equal scores go to the class of the nearer neighbour (neighbours
  are listed by similarity, then train row), so the ranking never depends on how classes are
  numbered. Only classes some neighbour voted for are ranked: top-5 may list fewer than five.

Design choices, each against a bug seen in the peers:
- one neighbour search for max(k); every (k, T) pair is a slice of it (not one search per k);
- queries are processed in chunks sized by a memory budget (never a fixed number of chunks,
  never the full Q x N similarity matrix);
- the class count comes from the train labels or is given, never from the test labels;
  labels may be any integers >= 0 (non-contiguous, more than 1000 classes).
- every input passes `ssl_bf.validate` (finite non-zero rows, integer labels, matching shapes).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..validate import check_feature_layout, check_features, check_labels, check_pair
from .arrays import ArrayLike, as_numpy, l2_normalise
from .index import GPU_MAX_K, build_index, query_chunk_size, search_chunks, search_recall, use_gpu
from .labels import LabelSpace

__all__ = ["KnnOutput", "LabelSpace", "as_numpy", "knn_accuracy", "knn_evaluate", "knn_predict", "knn_vote",
           "nearest_first", "rank_classes", "use_gpu"]


# ----------------------------------------------------------------------------------------------
# The vote: pure functions of tensors
# ----------------------------------------------------------------------------------------------


def nearest_first(sims: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each query's neighbours (Q, k) ordered by similarity, best first, then by train row: one
    order whatever order the search returned equal similarities in."""
    order = np.lexsort((ids, -sims.astype(np.float64)), axis=1)  # (Q, k)
    return np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)


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
        (Q, C) float64 scores. Shifting by the row maximum (exp((s - s_max) / T)) keeps small T
        finite and leaves the ranking unchanged. Each class adds its neighbours in list order,
        so two classes whose neighbours have the same similarities get exactly equal scores.
    """
    sims = similarities.double()  # (Q, k)
    shift = sims.max(dim=1, keepdim=True).values if sims.shape[1] else sims.new_zeros(len(sims), 1)
    weights = ((sims - shift) / temperature).exp_()  # (Q, k)
    missing = neighbour_labels < 0
    weights = weights.masked_fill(missing, 0.0)
    labels = neighbour_labels.masked_fill(missing, 0)  # (Q, k)
    scores = torch.zeros(sims.shape[0], num_classes, dtype=torch.float64, device=sims.device)
    return scores.scatter_add_(1, labels, weights)  # (Q, C)


def rank_classes(scores: torch.Tensor, neighbour_labels: torch.Tensor, n: int = 5) -> torch.Tensor:
    """The `n` best classes of each query, best first: (Q, min(n, k, C)) int64, -1 where fewer
    classes got a vote.

    Classes are ranked by score; among equal scores, the class whose first neighbour comes
    earlier in the list (nearer) ranks first. Classes no neighbour voted for are not ranked. Both
    rules look at the neighbours only, never at the class numbers.
    """
    q, k = neighbour_labels.shape
    voted = neighbour_labels >= 0  # (Q, k)
    labels = neighbour_labels.clamp_min(0)  # (Q, k)
    position = torch.arange(k, device=labels.device).expand(q, k)  # (Q, k)
    first = torch.full_like(scores, k, dtype=torch.int64).scatter_reduce_(
        1, labels, position.masked_fill(~voted, k), "amin")  # (Q, C): each class's first neighbour
    is_first = voted & (first.gather(1, labels) == position)  # (Q, k): one entry per voted class
    candidate = scores.gather(1, labels).masked_fill(~is_first, -math.inf)  # (Q, k)
    n = min(n, scores.shape[1])
    order = torch.sort(candidate, dim=1, descending=True, stable=True).indices[:, :n]  # ties: list order
    top = labels.gather(1, order)  # (Q, min(n, k, C))
    return top.masked_fill(candidate.gather(1, order) == -math.inf, -1)


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


def _check_features(train, test, kmax: int) -> None:
    """Shapes (and, for in-memory arrays, every row: a file's rows are checked as they are read)."""
    for x, name in ((train, "train features"), (test, "test features")):
        check_feature_layout(x.shape, x.dtype, getattr(x, "name", name))
        if isinstance(x, np.ndarray):
            check_features(x, name)
    check_pair(train.shape, test.shape, getattr(train, "name", "train features"),
               getattr(test, "name", "test features"), [kmax])


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------


@dataclass
class KnnOutput:
    """Everything one k-NN run measured."""

    results: list[dict]  # [{"k", "temperature", "top1", "top5"}], percent
    predictions: dict[tuple[int, float], np.ndarray]  # (k, T) -> (Q, min(5, k, C)) labels, best first; -1: none
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
        train_feats, test_feats: (N, D) and (Q, D) features, numpy or torch, any float dtype and
            any scale; they are L2-normalised here (cosine similarity), the inputs are not
            modified. A row holding NaN, Inf or only zeros is refused (ValueError naming it).
        train_labels, test_labels: (N,) and (Q,) integer labels >= 0, any values.
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
    """Top-5 predicted labels for every (k, T): `{(k, T): (Q, min(5, k, C)) int64}`, best first.

    Labels are returned as the train labels' own values (not remapped indices); -1 fills the
    places of a query whose neighbours voted for fewer classes.
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
    kmax = max(ks)
    _check_features(train, test, kmax)
    y_train = check_labels(train_labels, "train labels", rows=len(train))
    space = LabelSpace.from_train(y_train, num_classes)
    y_test = check_labels(test_labels, "test labels", rows=len(test)) if test_labels is not None \
        else np.zeros(len(test), np.int64)
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
        queries = l2_normalise(test, "test features")  # (Q, D) float32
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
        chunk_sims, chunk_ids = nearest_first(chunk_sims, chunk_ids)
        for off in range(0, len(chunk_sims), vote_rows):
            sims_t = torch.from_numpy(chunk_sims[off:off + vote_rows])  # (B, kmax)
            ids_t = torch.from_numpy(chunk_ids[off:off + vote_rows])  # (B, kmax); -1: fewer found
            nbr = torch.where(ids_t >= 0, train_idx[ids_t.clamp_min(0)], torch.full_like(ids_t, -1))
            truth = test_idx[start + off:start + off + len(sims_t)]  # (B,)
            for k, t in pairs:
                top = rank_classes(knn_vote(sims_t[:, :k], nbr[:, :k], space.num_classes, t), nbr[:, :k])  # (B, 5)
                hits = (top == truth[:, None]) & (top >= 0)  # (B, 5); -1: no class, unseen class
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
    """The exact CPU search: the bank streamed in blocks within the budget (stream.py)."""
    from .stream import ArrayRows, RowSource, plan_stream, stream_search, working_budget_gb

    bank = train if isinstance(train, RowSource) else ArrayRows(train, "train features")
    queries = test if isinstance(test, RowSource) else ArrayRows(test, "test features")
    plan = plan_stream(len(bank), len(queries), bank.shape[1], k, working_budget_gb(memory_budget_gb),
                       bank.stored_bytes_per_row)
    return stream_search(bank, queries, k, plan, progress), plan
