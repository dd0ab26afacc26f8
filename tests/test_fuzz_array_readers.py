"""Fuzzing the array readers and the writer directly (issue 21, causes 2 and 7): the label validator
against the oracle, the normaliser (unit rows at any scale), safetensors write/read round trips
(float16 overflow and rows lost to zero refused at write time), Fashion-MNIST IDX and CIFAR
batches, corrupted embeddings files (truncated, overwritten, generated safetensors headers), and
the vote's tie rule under random renaming of the classes.

Budgets (max_examples, times SSL_BF_FUZZ_SCALE): labels 150, normaliser 60, writer 50, dataset
files 60, vote 100, corrupt files 60: about 15 s on 2 cores.
"""
from __future__ import annotations

import json
import os
import pickle
import tempfile

import numpy as np
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from array_oracle import EXPONENTS, FORMATS, features_ok, fuzz_examples, labels_ok, stored, unit, write_split
from fuzz_contract import check_contract, count, run_cli, snapshot


LABEL_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
                "float64", "bool", "complex64", "U3")


@settings(max_examples=fuzz_examples(150))
@given(dtype=st.sampled_from(LABEL_DTYPES), values=st.lists(st.one_of(
    st.integers(-5, 20), st.integers(-2**64, 2**64), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, 2.0**63, 2.0**63 - 1024, -2.0**63, 1e19, 2.0**53 + 1])), min_size=0, max_size=8),
    column=st.booleans(), num_classes=st.sampled_from([None, 3, 20]))
def test_fuzz_check_labels_matches_the_oracle(dtype, values, column, num_classes):
    """check_labels accepts exactly what the oracle accepts; what it returns equals the values."""
    from ssl_bf.validate import ArrayError, check_labels

    count("arrays-labels", 1)
    with np.errstate(all="ignore"):
        try:
            y = np.array(values, dtype=object).astype(dtype) if values else np.zeros(0, dtype)
        except (OverflowError, ValueError, TypeError):
            return
    y = y[:, None] if column else y
    expected = labels_ok(y, len(y), num_classes)
    try:
        got = check_labels(y, "labels.npy", num_classes=num_classes)
    except ArrayError as err:
        assert not expected, (y, str(err))
        assert str(err).startswith("labels.npy: ")
        return
    assert expected, y
    assert got.dtype == np.int64 and [int(a) for a in got] == [int(a) for a in np.asarray(y).reshape(-1).tolist()]


@settings(max_examples=fuzz_examples(60))
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 20), dim=st.integers(1, 9),
       dtype=st.sampled_from(["float16", "float32", "float64"]), exponent=EXPONENTS)
def test_fuzz_normalise_is_unit_and_scale_free(seed, rows, dim, dtype, exponent):
    """unit_rows_ gives rows of norm 1 (within float32), equal to the float64 reference; rows it
    refuses are exactly the non-finite or zero ones."""
    from ssl_bf.knn.arrays import l2_normalise
    from ssl_bf.validate import ArrayError

    count("arrays-normalise", 1)
    rng = np.random.default_rng(seed)
    x = stored(rng.normal(size=(rows, dim)) * 10.0 ** exponent * rng.choice([0, 1, 1, 1], size=(rows, 1)), dtype)
    try:
        got = l2_normalise(x, "feats.npy")
    except ArrayError as err:
        assert not features_ok(x) and "feats.npy" in str(err) and "rows" in str(err)
        return
    assert features_ok(x)
    np.testing.assert_allclose(got, unit(x), rtol=0, atol=2e-7)


@settings(max_examples=fuzz_examples(50))
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(0, 6), dim=st.integers(1, 4),
       exponent=st.integers(-12, 12), dtype=st.sampled_from(["float32", "float16"]))
def test_fuzz_write_then_read_embeddings(seed, rows, dim, exponent, dtype):
    """save_embeddings writes only what load_embeddings reads back (float16 overflow and rows that
    round to zero are refused at write time, naming the file), and the file round-trips."""
    from ssl_bf.eval.formats import EmbeddingsError, load_embeddings, save_embeddings

    count("arrays-write", 1)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, dim)) * 10.0 ** exponent
    y = rng.integers(0, 3, rows)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "e.safetensors")
        try:
            save_embeddings(path, x.astype(np.float32), y, dtype=dtype)
        except EmbeddingsError as err:
            assert path in str(err) and not (features_ok(stored(x, "float32")) and features_ok(stored(x, dtype)))
            assert not os.path.exists(path)
            return
        back = load_embeddings(path)
        assert features_ok(stored(x, dtype)) and np.array_equal(back.embeddings, stored(x.astype(np.float32), dtype))
        assert back.labels.tolist() == y.tolist()


@settings(max_examples=fuzz_examples(60))
@given(labels=st.lists(st.integers(0, 255), min_size=0, max_size=6), images=st.integers(0, 7),
       cifar=st.booleans(), extra=st.sampled_from([None, -1, 2.5, 1e19, "x"]))
def test_fuzz_dataset_files(labels, images, cifar, extra):
    """Fashion-MNIST IDX files and CIFAR pickle batches: accepted exactly when the labels are
    in range and as many as the images (the labels file named otherwise), never a traceback."""
    from ssl_bf.data import DataError, build_dataset
    from ssl_bf.data.base import _ARRAY_CACHE

    count("arrays-datasets", 1)
    with tempfile.TemporaryDirectory() as root:
        if cifar:
            folder = os.path.join(root, "cifar-10-batches-py")
            os.makedirs(folder)
            values = labels + ([extra] if extra is not None else [])
            with open(os.path.join(folder, "test_batch"), "wb") as f:
                pickle.dump({b"data": np.zeros((images, 3072), np.uint8), b"labels": values}, f)
            source, name, ok = os.path.join(folder, "test_batch"), "cifar10", values and all(
                isinstance(v, (int, float)) and float(v).is_integer() and 0 <= v < 10 for v in values)
        else:
            def idx(path, a):
                with open(path, "wb") as f:
                    f.write(bytes([0, 0, 0x08, a.ndim]) + np.array(a.shape, ">u4").tobytes() + a.astype(np.uint8).tobytes())
            values = labels
            idx(os.path.join(root, "t10k-images-idx3-ubyte"), np.zeros((images, 28, 28), np.uint8))
            idx(os.path.join(root, "t10k-labels-idx1-ubyte"), np.array(values, np.uint8))
            source, name, ok = os.path.join(root, "t10k-labels-idx1-ubyte"), "fashion-mnist", values and \
                all(v < 10 for v in values)
        ok = bool(ok) and len(values) == images
        try:
            ds = build_dataset(name, root=root, split="test")
        except DataError as err:
            assert not ok, str(err)
            assert root in str(err), str(err)
            return
        finally:
            _ARRAY_CACHE.clear()
        assert ok and ds.labels.tolist() == [int(v) for v in values]


@settings(max_examples=fuzz_examples(100))
@given(seed=st.integers(0, 2**32 - 1), q=st.integers(1, 6), k=st.integers(1, 12), c=st.integers(1, 8),
       levels=st.integers(1, 4), t=st.sampled_from([1e-3, 0.07, 1.0]), missing=st.booleans())
def test_fuzz_vote_ties_follow_the_neighbours_not_the_class_numbers(seed, q, k, c, levels, t, missing):
    """The vote on neighbour lists full of exact ties: rank_classes equals the documented rule
    (score, then nearest neighbour; only voted classes), and renaming the classes by a random
    permutation renames the predictions and changes nothing else."""
    from ssl_bf.knn.vote import knn_vote, rank_classes

    count("arrays-vote", 1)
    rng = np.random.default_rng(seed)
    sims = -np.sort(-rng.integers(0, levels, (q, k)) / levels, axis=1)  # (Q, k), best first, many ties
    labels = rng.integers(0, c, (q, k))
    if missing:
        labels[:, -1] = -1  # a neighbour an approximate index did not return
    perm = rng.permutation(c)
    renamed = np.where(labels >= 0, perm[labels.clip(0)], -1)
    ranked = []
    for lab in (labels, renamed):
        lab_t = torch.from_numpy(lab)
        ranked.append(rank_classes(knn_vote(torch.from_numpy(sims).float(), lab_t, c, t), lab_t).numpy())
    np.testing.assert_array_equal(ranked[1], np.where(ranked[0] >= 0, perm[ranked[0].clip(0)], -1))
    for row in range(q):
        scores, first = {}, {}
        for j in range(k):
            if labels[row, j] >= 0:
                w = float(np.exp((float(np.float32(sims[row, j])) - float(np.float32(sims[row, 0]))) / t))
                scores[labels[row, j]] = scores.get(labels[row, j], 0.0) + w
                first.setdefault(labels[row, j], j)
        expected = sorted(scores, key=lambda cl: (-scores[cl], first[cl]))[:5]
        assert ranked[0][row].tolist() == expected + [-1] * (ranked[0].shape[1] - len(expected)), (row, scores)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8)


@settings(max_examples=fuzz_examples(60))
@given(fmt=st.sampled_from(FORMATS), which=st.sampled_from(["features", "labels"]),
       mutation=st.sampled_from(["truncate", "bytes", "header"]), where=st.floats(0, 1), data=st.binary(min_size=1, max_size=8),
       header=st.dictionaries(st.sampled_from(["embeddings", "labels", "__metadata__", "x"]),
                              st.fixed_dictionaries({}, optional={"dtype": st.sampled_from(["F32", "I64", "BF16", "F64"])
                                                                  | JSON, "shape": st.lists(st.integers(-2, 9), max_size=3)
                                                                  | JSON, "data_offsets": st.lists(
                                                                      st.integers(-5, 300), max_size=3) | JSON})
                              | JSON, max_size=3))
def test_fuzz_corrupt_embeddings_files(fmt, which, mutation, where, data, header):
    """A valid pair with one file truncated, overwritten in places, or (safetensors) given a
    generated header: `ssl-bf knn` exits 0 or 2, names the file when it refuses, and writes nothing."""
    count("arrays-corrupt-files", 1)
    x, y = np.random.default_rng(3).normal(size=(8, 3)).astype(np.float32), np.arange(8) % 3
    with tempfile.TemporaryDirectory() as folder:
        tr = write_split(folder, "train", fmt, x, y, "float32")
        te = write_split(folder, "test", "npy", x[:3] + 0.5, y[:3], "float32")
        target = tr[0] if which == "features" else tr[1]
        blob = bytearray(open(target, "rb").read())
        if mutation == "truncate":
            blob = blob[: int(where * len(blob))]
        elif mutation == "bytes":
            at = int(where * (len(blob) - 1))
            blob[at:at + len(data)] = data
        elif fmt == "safetensors":
            text = json.dumps(header).encode()
            blob = bytearray(len(text).to_bytes(8, "little") + text + blob[8 + int.from_bytes(blob[:8], "little"):])
        with open(target, "wb") as f:
            f.write(bytes(blob))
        watched = snapshot([os.path.join(folder, f) for f in os.listdir(folder)])
        code, output = run_cli(["knn", "--train", tr[0], "--test", te[0], "--k", "3", "--device", "cpu", "--no-progress"])
        check_contract(code, output, (target, tr[0]), watched)
        event(f"exit {code}")
