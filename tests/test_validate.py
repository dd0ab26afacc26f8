"""The one array validator (ssl_bf/validate.py): its messages, and every reader checked with the
same malformed inputs, so a reader that skipped the validator would fail here."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ssl_bf.validate import ArrayError, check_features, check_images, check_labels, check_pair, row_scales


def good(n: int = 12, d: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), np.arange(n) % 3


# ----------------------------------------------------------------------------------------------
# The validator's verdicts and messages
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("labels, fragment", [
    (np.array([0.0, 1e19, 2.0]), "labels must be integers that fit int64 (larger floats collapse into one class), "
                                 "found 1e+19 at row 1"),
    (np.array([0, 1, -4, -1]), "labels must be >= 0 (class indices), found -4 at row 2 and 1 more"),
    (np.array([0.0, np.nan]), "labels must be integers, found nan at row 1"),
    (np.array([0.0, -np.inf]), "labels must be integers, found -inf at row 1"),
    (np.array([0.0, 2.5]), "labels must be integers, found 2.5 at row 1"),
    (np.array([True, False]), "labels must be integers, found dtype bool"),
    (np.array(["a", "b"]), "labels must be integers, found dtype <U1"),
    (np.array([1 + 2j]), "labels must be integers, found dtype complex128"),
    (np.array([2**63 + 1], dtype=np.uint64), "labels must be integers that fit int64, found 9223372036854775809 at row 0"),
    (np.zeros((2, 3), np.int64), "labels must be 1-D (N,), found shape (2, 3)"),
    (np.zeros(0, np.int64), "no labels (an empty array)"),
    (np.array(3), "labels must be 1-D (N,), found shape ()"),
])
def test_labels_refused_naming_the_file_and_row(labels, fragment):
    with pytest.raises(ArrayError) as info:
        check_labels(labels, "y.npy")
    assert str(info.value) == f"y.npy: {fragment}"


def test_labels_accepted_exactly():
    assert check_labels(np.array([[2.0], [0.0], [2.0**62]]), "y").tolist() == [2, 0, 2**62]
    assert check_labels(torch.tensor([3, 1], dtype=torch.uint8), "y").dtype == np.int64
    assert check_labels(torch.tensor([1.0, 2.0], dtype=torch.bfloat16), "y").tolist() == [1, 2]
    with pytest.raises(ArrayError, match=r"y: 3 labels for 4 rows$"):
        check_labels(np.arange(3), "y", rows=4)
    with pytest.raises(ArrayError, match=r"labels span \[0, 5\] but the metadata lists 5 classes \(label 5 at row 2\)"):
        check_labels(np.array([0, 1, 5]), "y", num_classes=5)
    with pytest.raises(ArrayError, match="expected a tensor or array of labels, found list"):
        check_labels([0, 1], "y")


def test_feature_rows_refused_naming_them():
    x = np.ones((7, 3), np.float32)
    x[[1, 4], 2] = np.nan
    with pytest.raises(ArrayError, match=r"^x.npy: 2 of 7 rows contain NaN or Inf \(rows 1, 4\)$"):
        check_features(x, "x.npy")
    x[[1, 4], 2] = 1.0
    x[5] = 0.0
    with pytest.raises(ArrayError, match=r"^x.npy: 1 of 7 rows are all zeros \(rows 5\); a zero row has no direction"):
        check_features(x, "x.npy")
    with pytest.raises(ArrayError, match=r"among rows 100-106 contain NaN or Inf \(rows 103\)"):
        block = np.ones((7, 3))
        block[3, 0] = np.inf
        row_scales(block, "bank.npy", start=100, total=1000)
    np.testing.assert_array_equal(row_scales(np.array([[3.0, -4.0], [1e-300, 0.0]]), "x"), [4.0, 1e-300])
    for bad, fragment in [(np.ones((3, 2), np.int32), "floating point"), (np.ones(3), "2-D"),
                          (np.ones((0, 2)), "no embeddings"), (np.ones((2, 0)), "no embeddings")]:
        with pytest.raises(ArrayError, match=fragment):
            check_features(bad, "x.npy")


def test_pairs_and_images():
    with pytest.raises(ArrayError, match="embedding dimensions differ: a has D=4, b has D=5"):
        check_pair((10, 4), (3, 5), "a", "b")
    with pytest.raises(ArrayError, match="k=11 is larger than the train set: a has 10 rows"):
        check_pair((10, 4), (3, 4), "a", "b", [5, 11])
    check_images(np.zeros((2, 28, 28), np.uint8), "i", 3, rows=2)
    for bad, fragment in [(np.zeros((2, 28, 28), np.float32), "uint8"), (np.zeros((0, 28, 28), np.uint8), "no images"),
                          (np.zeros((2, 28), np.uint8), "3 dimensions")]:
        with pytest.raises(ArrayError, match=fragment):
            check_images(bad, "i", 3)
    with pytest.raises(ArrayError, match="2 images for 3 labels"):
        check_images(np.zeros((2, 28, 28), np.uint8), "i", 3, rows=3)


# ----------------------------------------------------------------------------------------------
# Every reader, the same malformed inputs
# ----------------------------------------------------------------------------------------------

MALFORMED = {
    "nan-row": lambda x, y: (_set(x, 5, np.nan), y, "row"),
    "inf-row": lambda x, y: (_set(x, 5, -np.inf), y, "row"),
    "zero-row": lambda x, y: (_set(x, 5, 0.0, whole=True), y, "rows 5"),
    "labels-1e19": lambda x, y: (x, 1e19 + y * 1e18, "row 0"),
    "label-nan": lambda x, y: (x, _set(y.astype(np.float64), 5, np.nan), "row 5"),
    "label-negative": lambda x, y: (x, _set(y.copy(), 5, -1), "row 5"),
    "label-fraction": lambda x, y: (x, y + 0.25, "row 0"),
    "labels-bool": lambda x, y: (x, y > 0, "bool"),
    "labels-short": lambda x, y: (x, y[:-1], "11"),
}


def _set(a, row, value, whole=False):
    a = a.copy()
    if whole:
        a[row] = value
    else:
        a[row, ...] = value
    return a


def _write(tmp, fmt, x, y):
    """Write a split; returns (features path, the names a refusal may give: features, labels file)."""
    from safetensors.numpy import save_file

    base = str(tmp / "train")
    if fmt == "safetensors":
        save_file({"embeddings": x, "labels": np.asarray(y)}, base + ".safetensors")
        return base + ".safetensors", (base + ".safetensors",)
    if fmt == "npz":
        np.savez(base + ".npz", embeddings=x, labels=y)
        return base + ".npz", (base + ".npz",)
    if fmt == "pth":
        torch.save(torch.from_numpy(x), str(tmp / "trainfeat.pth"))
        torch.save(torch.from_numpy(np.asarray(y)), str(tmp / "trainlabels.pth"))
        return str(tmp / "trainfeat.pth"), (str(tmp / "trainfeat.pth"), str(tmp / "trainlabels.pth"))
    np.save(base + ".npy", x)
    np.save(base + "_labels.npy", y)
    return base + ".npy", (base + ".npy", base + "_labels.npy")


def _load(fmt):
    def read(tmp, x, y):
        from ssl_bf.eval.formats import load_embeddings

        path, names = _write(tmp, fmt, x, y)
        load_embeddings(path)
        return names
    return read


def _streamed(fmt):
    def read(tmp, x, y):
        from ssl_bf.eval.formats import open_embeddings
        from ssl_bf.knn.vote import knn_evaluate

        path, names = _write(tmp, fmt, x, y)
        emb = open_embeddings(path)
        q, qy = good(4, x.shape[1], seed=1)
        knn_evaluate(emb.embeddings, emb.labels, q, qy, ks=(3,), device="cpu")
        return names
    return read


def _api(run):
    def read(tmp, x, y):
        q, qy = good(6, x.shape[1], seed=2)
        run(x, y, q, qy)
        return ("train features", "train labels")
    return read


def _knn(index):
    from ssl_bf.knn.vote import knn_evaluate

    return _api(lambda x, y, q, qy: knn_evaluate(x, y, q, qy, ks=(3,), index=index, device="cpu"))


def _probe(name, **kw):
    from ssl_bf.eval import linear_cached

    return _api(lambda x, y, q, qy: getattr(linear_cached, name)(x, y, q, qy, **kw))


READERS = {
    "safetensors": _load("safetensors"), "npy-pair": _load("npy"), "npz": _load("npz"), "dino-pth": _load("pth"),
    "safetensors-streamed": _streamed("safetensors"), "npy-streamed": _streamed("npy"),
    "knn-arrays": _knn("flat"), "knn-hnsw-arrays": _knn("hnsw"), "knn-ivf-arrays": _knn("ivf"),
    "logreg-arrays": _probe("probe_logreg", max_iter=3),
    "cached-arrays": _probe("probe_cached", recipe=None, bn_head=False),
    "cached-bn-arrays": _probe("probe_cached", bn_head=True),
}


@pytest.mark.parametrize("defect", list(MALFORMED))
@pytest.mark.parametrize("reader", list(READERS))
def test_every_reader_refuses_the_same_malformed_input(reader, defect, tmp_path):
    x, y = good()
    bad_x, bad_y, where = MALFORMED[defect](x, y)
    with pytest.raises(ValueError) as info:
        READERS[reader](tmp_path, bad_x, bad_y)
    message = str(info.value)
    assert any(name in message for name in READERS[reader](tmp_path, x, y) or ()), message
    assert where in message, message


def test_every_reader_accepts_the_good_input(tmp_path):
    x, y = good()
    for reader in READERS.values():
        assert reader(tmp_path, x, y)


def test_float16_storage_refuses_overflow_and_rows_lost_to_zero(tmp_path):
    from ssl_bf.eval.formats import EmbeddingsError, save_embeddings

    x, y = good()
    for scale, fragment in ((1e5, "rows contain NaN or Inf"), (1e-9, "rows are all zeros")):
        path = str(tmp_path / "e.safetensors")
        with pytest.raises(EmbeddingsError) as info:
            save_embeddings(path, x * scale, y, dtype="float16")
        assert str(info.value).startswith(path) and fragment in str(info.value)
        assert "once stored as float16; store them with --dtype float32" in str(info.value)
        assert not os.path.exists(path)
    save_embeddings(str(tmp_path / "ok.safetensors"), x * 1e5, y, dtype="float32")


def test_data_readers_name_the_labels_file_and_row(tmp_path):
    import pickle

    from ssl_bf.data import DataError, build_dataset

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for labels, fragment in (([0, 1, -3], ">= 0 (class indices), found -3 at row 2"),
                             ([0, 1.5, 2], "labels must be integers, found 1.5 at row 1"),
                             ([0, 1, 10], "label 10 at row 2"), ([0, 1], "2 labels for 3 rows")):
        with open(folder / "test_batch", "wb") as f:
            pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": labels}, f)
        with pytest.raises(DataError) as info:
            build_dataset("cifar10", root=str(tmp_path), split="test")
        assert str(info.value).startswith(str(folder / "test_batch")) and fragment in str(info.value)
        assert "re-download" in str(info.value)
