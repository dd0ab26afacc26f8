"""Fuzzing the --group-counts reader (issue 22, lteval): generated JSON and .npy files, valid and
not, read directly against an independent oracle, and through `ssl-bf knn` under the contract
(exit 0 or 2, no traceback, a refusal names the option and the file, the inputs byte-identical).

Budgets (max_examples, times SSL_BF_FUZZ_SCALE): reader 120, CLI 12: a few seconds on 2 cores.
"""
from __future__ import annotations

import json
import math
import os
import tempfile

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz_contract import check_contract, count, fuzz_examples, run_cli, snapshot

NUM_CLASSES = 4
NPY_DTYPES = ("int8", "int32", "int64", "uint8", "uint64", "float32", "float64", "bool", "U2", "complex64")
VALUES = st.one_of(st.integers(-3, 60), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.5, 2.0, 1e30, -0.0, True, None, "3", [1]]))


def _oracle(values, dtype: str | None) -> list[int] | None:
    """The counts a file of `values` (JSON when dtype is None) must give, or None: refused."""
    if dtype is not None and dtype in ("bool", "U2", "complex64"):
        return None
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        if isinstance(v, float) and (not math.isfinite(v) or v != math.floor(v) or abs(v) >= 2.0 ** 62):
            return None
        if int(v) < 0 or int(v) >= 2 ** 63:
            return None
        out.append(int(v))
    return out if len(out) == NUM_CLASSES else None


def _write(folder: str, values, dtype: str | None) -> tuple[str, list | None]:
    """The file for `values`; returns (path, the values as stored, None when they cannot be stored)."""
    if dtype is None:
        path = os.path.join(folder, "counts.json")
        with open(path, "w") as f:
            json.dump(values, f)
        return path, values
    path = os.path.join(folder, "counts.npy")
    with np.errstate(all="ignore"):
        try:
            arr = np.array(values, dtype=object).astype(dtype) if values else np.zeros(0, dtype)
        except (OverflowError, ValueError, TypeError):
            return path, None
    np.save(path, arr)
    return path, arr.tolist()


@settings(max_examples=fuzz_examples(120))
@given(values=st.lists(VALUES, min_size=0, max_size=6), dtype=st.one_of(st.none(), st.sampled_from(NPY_DTYPES)),
       wrap=st.sampled_from([None, "object", "nested", "garbage"]))
def test_fuzz_group_counts_reader_matches_the_oracle(values, dtype, wrap):
    from ssl_bf.eval.groups import GroupCountsError, read_group_counts

    count("groups-counts-reader", 1)
    with tempfile.TemporaryDirectory() as folder:
        if wrap is None:
            path, stored = _write(folder, values, dtype)
            if stored is None:
                return
            expected = _oracle(stored, dtype)
        else:
            path = os.path.join(folder, "counts.json")
            text = {"object": json.dumps({"counts": values}, default=str), "nested": json.dumps([values], default=str),
                    "garbage": "[1, 2," + "x" * len(values)}[wrap]
            with open(path, "w") as f:
                f.write(text)
            expected = None
        try:
            got = read_group_counts(path, NUM_CLASSES)
        except GroupCountsError as err:
            assert expected is None, (values, dtype, str(err))
            assert str(err).startswith(f"--group-counts {path}"), str(err)
            return
        assert expected is not None, (values, dtype, got)
        assert got.dtype == np.int64 and got.tolist() == expected


@settings(max_examples=fuzz_examples(12), deadline=None)
@given(values=st.lists(st.one_of(st.integers(-2, 50), st.floats(allow_nan=True)), min_size=0, max_size=5),
       as_npy=st.booleans())
def test_fuzz_group_counts_through_knn(values, as_npy, tmp_path_factory):
    """`ssl-bf knn --group-counts` keeps the contract on generated count files."""
    from ssl_bf.eval.formats import save_embeddings

    count("groups-counts-knn", 1)
    folder = str(tmp_path_factory.mktemp("gc"))
    rng = np.random.default_rng(0)
    train, test = os.path.join(folder, "train.safetensors"), os.path.join(folder, "test.safetensors")
    save_embeddings(train, rng.normal(size=(24, 5)).astype(np.float32), np.repeat(np.arange(NUM_CLASSES), 6))
    save_embeddings(test, rng.normal(size=(8, 5)).astype(np.float32), np.repeat(np.arange(NUM_CLASSES), 2))
    path, stored = _write(folder, values, "float64" if as_npy else None)
    if stored is None:
        return
    before = snapshot([train, test, path])
    out = os.path.join(folder, "k.json")
    code, text = run_cli(["knn", "--train", train, "--test", test, "--k", "3", "--group-counts", path,
                          "--json", out, "--no-progress"])
    check_contract(code, text, ("--group-counts",), before)
    assert (code == 0) == (_oracle(stored, "float64" if as_npy else None) is not None), text
    assert os.path.exists(out) == (code == 0)
