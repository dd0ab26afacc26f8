"""2-D maps of embeddings for the report: a fixed random sample, L2-normalised, through t-SNE.

scikit-learn's t-SNE crashes the whole process (SIGSEGV) on rows that all point the same way (all
zeros, identical points: its PCA start divides by a zero spread), and raises on NaN or on fewer
than two dimensions; `map_problem` names these before any of it runs, and `tsne_2d` refuses them
with a MapError.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ssl_bf.knn.arrays import l2_normalise

TSNE_SEED = 0
MIN_MAP_POINTS = 10  # t-SNE needs perplexity < n; fewer distinct points make no readable map
MIN_SPREAD = 1e-6  # below this spread of the unit rows, every point sits on one spot


class MapError(ValueError):
    """No t-SNE map can be drawn of these rows; the message says why."""


def sample_indices(n: int, size: int, seed: int = TSNE_SEED) -> np.ndarray:
    """`size` distinct row indices out of n (all of them if size >= n), sorted, reproducible."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def default_perplexity(n: int) -> float:
    """scikit-learn's 30, lowered for small samples (t-SNE needs perplexity < n)."""
    return float(max(2.0, min(30.0, (n - 1) / 3)))


def unit_rows(x: np.ndarray) -> np.ndarray:
    """(N, D) rows scaled to unit length; an all-zero row stays zero (it has no direction)."""
    unit = np.zeros(x.shape, dtype=np.float32)  # (N, D)
    nonzero = np.abs(x).max(axis=1) > 0  # (N,)
    if nonzero.any():
        unit[nonzero] = l2_normalise(x[nonzero])
    return unit


def map_problem(x: np.ndarray) -> Optional[str]:
    """Why the (N, D) rows `x` cannot be mapped, or None: fewer than 2 dimensions, values that are
    not finite, or fewer than MIN_MAP_POINTS distinct directions (all zeros, identical points)."""
    if x.ndim != 2 or x.shape[1] < 2:
        return f"the embeddings have shape {tuple(x.shape)}; a 2-D map needs rows of 2 or more values"
    if not np.isfinite(x).all():
        return "the embeddings hold NaN or infinite values"
    unit = unit_rows(x)  # (N, D) float32
    distinct = len(np.unique(unit, axis=0)) if np.isfinite(unit).all() else 0
    if distinct < MIN_MAP_POINTS:
        return (f"only {distinct} distinct direction(s) among {len(x)} points (all zeros or identical "
                f"points); a map needs {MIN_MAP_POINTS}")
    if float(unit.std(axis=0).max()) < MIN_SPREAD:
        return f"the {len(x)} points are all (nearly) the same direction; there is nothing to map"
    return None


def tsne_2d(x: np.ndarray, seed: int = TSNE_SEED, perplexity: Optional[float] = None) -> np.ndarray:
    """(N, D) features -> (N, 2) t-SNE coordinates (PCA init, fixed random_state).

    Rows are L2-normalised first, so distances follow the cosine similarity the k-NN uses. Rows
    that `map_problem` refuses raise MapError (scikit-learn would crash the process on some).
    """
    from sklearn.manifold import TSNE

    x = np.asarray(x)
    problem = map_problem(x)
    if problem:
        raise MapError(problem)
    unit = unit_rows(x)  # (N, D) float32
    perplexity = default_perplexity(len(unit)) if perplexity is None else perplexity
    tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity, learning_rate="auto")
    return tsne.fit_transform(unit).astype(np.float32)  # (N, 2)
