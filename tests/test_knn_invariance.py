"""k-NN answers that depend on neither the features' scale nor the class numbering (issue 21), and
the monitor on features the validator refuses."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssl_bf.knn import vote as knn_mod
from ssl_bf.knn.vote import knn_evaluate, knn_predict, knn_vote
from test_knn import blobs


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf"])
def test_any_scale_gives_the_same_neighbours_votes_and_recall(index):
    """Features times 1e-25 or 1e30 (float32) or 1e-300 (float64) score as the features do; the
    float32 normalisation used to turn them into zero or infinite rows (11-46% instead of 38%)."""
    train, ty = blobs(600, 16, 6, seed=21, noise=2.0)
    test, sy = blobs(120, 16, 6, seed=22, noise=2.0)
    base = knn_evaluate(train, ty, test, sy, ks=(20,), index=index, device="cpu", recall_sample=50)
    for scale, dtype in ((1e-25, np.float32), (1e30, np.float32), (1e-300, np.float64), (1e300, np.float64)):
        got = knn_evaluate((train.astype(np.float64) * scale).astype(dtype), ty,
                           (test.astype(np.float64) * scale).astype(dtype), sy, ks=(20,), index=index,
                           device="cpu", recall_sample=50)
        assert got.results == base.results and got.recall == base.recall, (scale, dtype)


def test_relabelled_classes_give_the_renamed_predictions():
    train, ty = blobs(300, 8, 5, seed=3, noise=2.0)
    test, _ = blobs(80, 8, 5, seed=4, noise=2.0)
    names = np.array([9_000_000_000, 4, 77, 0, 123_456])  # non-contiguous, order not kept
    plain = knn_predict(train, ty, test, ks=(1, 7), temperatures=(0.07, 1.0))
    renamed = knn_predict(train, names[ty], test, ks=(1, 7), temperatures=(0.07, 1.0))
    for key, pred in plain.items():
        np.testing.assert_array_equal(renamed[key], np.where(pred >= 0, names[pred.clip(0)], -1))


def test_equal_scores_go_to_the_class_of_the_nearer_neighbour():
    """Two duplicated train rows with different labels tie exactly; the class of the first listed
    (nearer, then lower train row) wins, whatever the class numbers, and an unvoted class is never
    predicted (top-5 holds only the two)."""
    train = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    query = np.array([[1.0, 0.1]], np.float32)
    for labels in ([3, 1, 0], [1, 3, 0]):
        pred = knn_predict(train, np.array(labels), query, ks=(2,))[(2, 0.07)]
        assert pred.tolist() == [[labels[0], labels[1]]]
    scores = knn_vote(torch.tensor([[0.9, 0.9, 0.5]]), torch.tensor([[2, 0, 1]]), 4, 0.07)
    assert knn_mod.rank_classes(scores, torch.tensor([[2, 0, 1]])).tolist() == [[2, 0, 1]]


def test_monitor_skips_features_with_no_direction(capsys):
    """A backbone giving a zero feature row: the monitor reports NaN with one line, training goes on."""
    from types import SimpleNamespace

    from ssl_bf.train.monitor import KnnMonitor

    monitor = object.__new__(KnnMonitor)
    monitor.enabled = True
    monitor.device = torch.device("cpu")
    monitor.cfg = SimpleNamespace(monitor=SimpleNamespace(knn_k=3, knn_temperature=0.07, bank_subset=None,
                                                          query_subset=None))
    monitor.bank_set = monitor.query_set = SimpleNamespace(classes=["a", "b"])
    feats = torch.ones(6, 4)
    feats[2] = 0.0
    monitor.features = lambda backbone, dataset, limit=None: (feats, torch.tensor([0, 1, 0, 1, 0, 1]))
    assert math.isnan(monitor.top1(None, full=True))
    assert "k-NN monitor: skipped" in capsys.readouterr().out
