"""2-D maps of embeddings for the report: a fixed random sample, L2-normalised, through t-SNE."""
from __future__ import annotations

from typing import Optional

import numpy as np

TSNE_SEED = 0


def sample_indices(n: int, size: int, seed: int = TSNE_SEED) -> np.ndarray:
    """`size` distinct row indices out of n (all of them if size >= n), sorted, reproducible."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def default_perplexity(n: int) -> float:
    """scikit-learn's 30, lowered for small samples (t-SNE needs perplexity < n)."""
    return float(max(2.0, min(30.0, (n - 1) / 3)))


def tsne_2d(x: np.ndarray, seed: int = TSNE_SEED, perplexity: Optional[float] = None) -> np.ndarray:
    """(N, D) features -> (N, 2) t-SNE coordinates (PCA init, fixed random_state).

    Rows are L2-normalised first, so distances follow the cosine similarity the k-NN uses.
    """
    from sklearn.manifold import TSNE

    x = np.asarray(x, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # NxD
    perplexity = default_perplexity(len(x)) if perplexity is None else perplexity
    tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity, learning_rate="auto")
    return tsne.fit_transform(x).astype(np.float32)  # Nx2
