"""Bad arrays (issue 21, cause 2): every reader's arrays pass one validator (ssl_bf/validate.py), and
k-NN / logreg answers depend on neither the features' scale nor how classes are numbered. Run by
tests/test_bad_inputs.py (the harness is tests/bad_inputs_harness.py).

Refusals exit 2 naming the file and the row, and write nothing. The exit-0 cases are golden values:
a fixed synthetic split (10 classes, D=16, 400 train / 100 test rows) scored as stored and scaled
by 1e-25 and 1e30 (float32 files), and with its classes renamed by a non-monotone map, must all
print the unscaled answer (k=20, T=0.07: 38.00 / 84.00; logreg 55.00 / 94.00). Before the fix,
1e-25 gave 46.00 and 1e30 with --index hnsw 10.00 (recall still 95.00%), logreg 10.00 for both.
"""
from __future__ import annotations

import os

from bad_inputs_harness import Case

WATCH = ("{run}", "{train}", "{test}", "{tmp}")
NP = "--no-progress"
K20 = ["--k", "20", "--temperature", "0.07", "--device", "cpu", NP]


def case(id: str, argv: list[str], says: tuple[str, ...], *, code: int = 2, **kw) -> Case:
    return Case(id, list(argv), code=code, says=says, unchanged=WATCH, **kw)


# ----------------------------------------------------------------------------------------------
# setups: (env, tmp) -> None
# ----------------------------------------------------------------------------------------------


def _split(env, name):
    from ssl_bf.eval.formats import load_embeddings

    return load_embeddings(env.paths("")[name])


def _pair(tmp, stem, x, y):
    import numpy as np

    np.save(os.path.join(tmp, f"{stem}.npy"), x)
    np.save(os.path.join(tmp, f"{stem}_labels.npy"), y)


def _raw_safetensors(path, x, y):
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"embeddings": np.ascontiguousarray(x), "labels": np.ascontiguousarray(y)}, path)


def huge_float_labels(env, tmp):
    """The run's train split with float64 labels 1e19 + c * 1e18: beyond int64 (they all used to
    become one class: 100.00%)."""
    e = _split(env, "train")
    _pair(tmp, "big", e.embeddings, 1e19 + e.labels.astype("float64") * 1e18)


def negative_labels(env, tmp):
    e = _split(env, "train")
    labels = e.labels.copy()
    labels[3] = -1
    _pair(tmp, "neg", e.embeddings, labels)


def nan_label(env, tmp):
    e = _split(env, "test")
    labels = e.labels.astype("float32")
    labels[6] = float("nan")
    _pair(tmp, "nanlab", e.embeddings, labels)


def bool_labels(env, tmp):
    e = _split(env, "test")
    _pair(tmp, "boollab", e.embeddings, e.labels % 2 == 0)


def inf_rows(env, tmp):
    e = _split(env, "test")
    x = e.embeddings.copy()
    x[2, 0], x[5, 3] = float("inf"), -float("inf")
    _raw_safetensors(os.path.join(tmp, "inf.safetensors"), x, e.labels)


def nan_rows_npy(env, tmp):
    e = _split(env, "train")
    x = e.embeddings.copy()
    x[[11, 250]] = float("nan")
    _pair(tmp, "nanbank", x, e.labels)


def zero_rows(env, tmp):
    e = _split(env, "test")
    x = e.embeddings.copy()
    x[4] = 0.0
    _raw_safetensors(os.path.join(tmp, "zero.safetensors"), x, e.labels)


def zero_rows_train_npy(env, tmp):
    e = _split(env, "train")
    x = e.embeddings.astype("float64")
    x[[0, 17]] = 0.0
    _pair(tmp, "zerobank", x, e.labels)


def golden_split(env, tmp):
    """The fixed synthetic split, as stored (s1), scaled (s-25, s30) and with classes renamed (r)."""
    import numpy as np

    rng = np.random.default_rng(21)
    centres = rng.normal(size=(10, 16))
    y = rng.integers(0, 10, 400)
    x = centres[y] + 2.2 * rng.normal(size=(400, 16))
    yt = rng.integers(0, 10, 100)
    xt = centres[yt] + 2.2 * rng.normal(size=(100, 16))
    rename = np.array([907, 3, 55, 1000000, 12, 8, 4242, 0, 77, 31])
    for stem, scale, names in (("s1", 1.0, None), ("s-25", 1e-25, None), ("s30", 1e30, None), ("r", 1.0, rename)):
        _pair(tmp, f"{stem}_train", (x * scale).astype(np.float32), y if names is None else names[y])
        _pair(tmp, f"{stem}_test", (xt * scale).astype(np.float32), yt if names is None else names[yt])


def golden_ties(env, tmp):
    """Every train vector twice, once with the test query's class c and once with a decoy c + 1;
    k=2 ties the two classes exactly. The tie goes to the class of the nearer neighbour (listed
    first: the lower train row), however the classes are numbered (t: as is, tr: reversed)."""
    import numpy as np

    rng = np.random.default_rng(5)
    v = rng.normal(size=(20, 16))
    a = (np.arange(20) % 5) * 2
    train, labels = np.repeat(v, 2, axis=0), np.stack([a, a + 1], 1).reshape(-1)
    test = v + 1e-3 * rng.normal(size=v.shape)
    for stem, names in (("t", np.arange(10)), ("tr", 9 - np.arange(10))):
        _pair(tmp, f"{stem}_train", train.astype(np.float32), names[labels])
        _pair(tmp, f"{stem}_test", test.astype(np.float32), names[a])


def fmnist_label_out_of_range(env, tmp):
    import numpy as np

    def idx(path, a):
        with open(path, "wb") as f:
            f.write(bytes([0, 0, 0x08, a.ndim]) + np.array(a.shape, ">u4").tobytes() + a.astype(np.uint8).tobytes())

    folder = os.path.join(tmp, "fm")
    os.makedirs(folder)
    idx(os.path.join(folder, "t10k-images-idx3-ubyte"), np.zeros((5, 28, 28), np.uint8))
    idx(os.path.join(folder, "t10k-labels-idx1-ubyte"), np.array([1, 2, 12, 3, 4]))


def cifar_negative_label(env, tmp):
    import pickle

    import numpy as np

    folder = os.path.join(tmp, "c10", "cifar-10-batches-py")
    os.makedirs(folder)
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, -3, 2]}, f)


def _names(stem):
    return ["--train", f"{{tmp}}/{stem}_train.npy", "--test", f"{{tmp}}/{stem}_test.npy"]


def _knn(stem, *extra):
    return ["knn", *_names(stem), *K20, *extra]


def _logreg(stem):
    return ["linear", "--protocol", "logreg", *_names(stem), "--max-iter", "30", "--device", "cpu", NP]


KNN_TRAIN = ["knn", "--test", "{test}", "--k", "5", NP, "--train"]
LOGREG_TRAIN = ["linear", "--protocol", "logreg", "--test", "{test}", "--max-iter", "5", NP, "--train"]
CACHED_TEST = ["linear", "--protocol", "cached", "--train", "{train}", "--epochs", "1", NP, "--test"]
EMBED_TEST = ["embed", "--checkpoint", "{ckpt}", "--split", "test", "--out", "{tmp}/o.safetensors", NP]

CASES = [
    # labels
    case("arrays-knn-train-labels-1e19", [*KNN_TRAIN, "{tmp}/big.npy"], ("{tmp}/big_labels.npy", "int64", "row 0"),
         setup=huge_float_labels, wrong_result=True),
    case("arrays-logreg-train-labels-1e19", [*LOGREG_TRAIN, "{tmp}/big.npy"], ("{tmp}/big_labels.npy", "int64"),
         setup=huge_float_labels, wrong_result=True),
    case("arrays-knn-train-labels-negative", [*KNN_TRAIN, "{tmp}/neg.npy"], ("{tmp}/neg_labels.npy", ">= 0", "row 3"),
         setup=negative_labels),
    case("arrays-cached-train-labels-negative", ["linear", "--protocol", "cached", "--train", "{tmp}/neg.npy",
                                                 "--test", "{test}", "--epochs", "1", NP],
         ("{tmp}/neg_labels.npy", ">= 0", "row 3"), setup=negative_labels),
    case("arrays-knn-test-label-nan", ["knn", "--train", "{train}", "--test", "{tmp}/nanlab.npy", NP],
         ("{tmp}/nanlab_labels.npy", "integers", "row 6"), setup=nan_label),
    case("arrays-knn-test-labels-bool", ["knn", "--train", "{train}", "--test", "{tmp}/boollab.npy", NP],
         ("{tmp}/boollab_labels.npy", "bool"), setup=bool_labels),
    # features
    case("arrays-knn-test-inf-rows", ["knn", "--train", "{train}", "--test", "{tmp}/inf.safetensors", NP],
         ("{tmp}/inf.safetensors", "NaN or Inf", "rows 2, 5"), setup=inf_rows),
    case("arrays-knn-train-nan-rows-streamed", [*KNN_TRAIN, "{tmp}/nanbank.npy", "--device", "cpu"],
         ("{tmp}/nanbank.npy", "NaN or Inf", "11, 250"), setup=nan_rows_npy),
    case("arrays-knn-hnsw-train-nan-rows", [*KNN_TRAIN, "{tmp}/nanbank.npy", "--index", "hnsw"],
         ("{tmp}/nanbank.npy", "NaN or Inf", "11, 250"), setup=nan_rows_npy),
    case("arrays-cached-test-nan-rows", [*CACHED_TEST, "{tmp}/inf.safetensors"], ("{tmp}/inf.safetensors", "rows 2, 5"),
         setup=inf_rows),
    case("arrays-knn-test-zero-row", ["knn", "--train", "{train}", "--test", "{tmp}/zero.safetensors", NP],
         ("{tmp}/zero.safetensors", "all zeros", "rows 4"), setup=zero_rows, wrong_result=True),
    case("arrays-knn-train-zero-rows-float64", [*KNN_TRAIN, "{tmp}/zerobank.npy"],
         ("{tmp}/zerobank.npy", "all zeros", "rows 0, 17"), setup=zero_rows_train_npy),
    case("arrays-logreg-train-zero-rows", [*LOGREG_TRAIN, "{tmp}/zerobank.npy"],
         ("{tmp}/zerobank.npy", "all zeros", "rows 0, 17"), setup=zero_rows_train_npy),
    # data readers
    case("arrays-embed-fmnist-label-out-of-range", [*EMBED_TEST, "--data", "fashion-mnist", "--root", "{tmp}/fm"],
         ("{tmp}/fm/t10k-labels-idx1-ubyte", "label 12 at row 2"), setup=fmnist_label_out_of_range),
    case("arrays-embed-cifar-negative-label", [*EMBED_TEST, "--data", "cifar10", "--root", "{tmp}/c10"],
         ("{tmp}/c10/cifar-10-batches-py/test_batch", ">= 0", "row 2"), setup=cifar_negative_label),
    # the same answer whatever the scale (golden: the unscaled answer)
    case("arrays-knn-scale-1", _knn("s1"), ("38.00", "84.00"), code=0, setup=golden_split),
    case("arrays-knn-scale-1e-25", _knn("s-25"), ("38.00", "84.00"), code=0, setup=golden_split, wrong_result=True),
    case("arrays-knn-scale-1e30", _knn("s30"), ("38.00", "84.00"), code=0, setup=golden_split),
    case("arrays-knn-hnsw-scale-1e30", _knn("s30", "--index", "hnsw"),
         ("38.00", "84.00", "recall@20 of hnsw against exact search: 100.00%"), code=0, setup=golden_split,
         wrong_result=True),
    case("arrays-knn-ivf-scale-1e-25", _knn("s-25", "--index", "ivf"), ("38.00", "84.00"), code=0,
         setup=golden_split, wrong_result=True),
    case("arrays-logreg-scale-1", _logreg("s1"), ("55.00", "94.00"), code=0, setup=golden_split),
    case("arrays-logreg-scale-1e-25", _logreg("s-25"), ("55.00", "94.00"), code=0, setup=golden_split,
         wrong_result=True),
    case("arrays-logreg-scale-1e30", _logreg("s30"), ("55.00", "94.00"), code=0, setup=golden_split,
         wrong_result=True),
    # the same predictions whatever the class numbering
    case("arrays-knn-classes-renamed", _knn("r"), ("38.00", "84.00"), code=0, setup=golden_split),
    case("arrays-knn-tie-classes-as-numbered", ["knn", *_names("t"), "--k", "2", "--temperature", "0.07", NP],
         ("100.00   100.00",), code=0, setup=golden_ties, wrong_result=True),
    case("arrays-knn-tie-classes-renumbered", ["knn", *_names("tr"), "--k", "2", "--temperature", "0.07", NP],
         ("100.00   100.00",), code=0, setup=golden_ties, wrong_result=True),
]
