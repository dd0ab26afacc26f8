"""Fuzzing the long-tail index files: the reader (`read_index_file`, what data.indices_file reads)
against an independent oracle for generated arrays of every dtype and shape, corrupted .npy bytes,
and the writer (RUN/data_indices.npy) round trip back through the reader.

Budgets (max_examples, times SSL_BF_FUZZ_SCALE): arrays 150, corrupt bytes 80, round trip 60:
a few seconds on 2 cores.
"""
from __future__ import annotations

import io
import os
import tempfile

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz_contract import count, fuzz_examples
from bad_inputs_harness import digest

DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
          "float64", "bool", "complex64", "U4")


def oracle(values: np.ndarray, size: int):
    """The sorted indices a valid file gives, or None: a 1-D non-empty array of whole numbers in
    [0, size), each once."""
    if values.ndim != 1 or values.size == 0 or values.dtype.kind not in "iuf":
        return None
    as_float = values.astype(np.float64)
    if not np.all(np.isfinite(as_float)) or not np.all(as_float == np.round(as_float)):
        return None
    ints = [int(v) for v in values.tolist()]
    if any(v < 0 or v >= size for v in ints) or len(set(ints)) != len(ints):
        return None
    return np.asarray(sorted(ints), dtype=np.int64)


@settings(max_examples=fuzz_examples(150))
@given(dtype=st.sampled_from(DTYPES), values=st.lists(st.one_of(
    st.integers(-3, 40), st.integers(-2 ** 64, 2 ** 64), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, 2.0 ** 53 + 1, 1e19, -0.0])), min_size=0, max_size=10),
    column=st.booleans(), size=st.integers(1, 40))
def test_fuzz_index_file_reader_matches_the_oracle(dtype, values, column, size):
    from ssl_bf.data.long_tail import LongTailError, read_index_file

    count("long-tail-index-arrays", 1)
    with np.errstate(all="ignore"):
        try:
            arr = np.asarray(values).astype(dtype)
        except (OverflowError, ValueError):
            return
    if column:
        arr = arr.reshape(-1, 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "split.npy")
        np.save(path, arr, allow_pickle=False)
        before = digest(path)
        expected = oracle(arr, size)
        try:
            got = read_index_file(path, size)
        except LongTailError as err:
            assert expected is None, (arr, size, err)
            assert f"data.indices_file {path}" in str(err) and "\n" not in str(err)
        else:
            assert expected is not None, (arr, size, got)
            assert got.dtype == np.int64 and np.array_equal(got, expected)
        assert digest(path) == before


@settings(max_examples=fuzz_examples(80))
@given(cut=st.integers(0, 200), flips=st.lists(st.tuples(st.integers(0, 199), st.integers(0, 255)), max_size=6),
       size=st.integers(1, 50))
def test_fuzz_corrupt_index_files_are_refused_naming_the_file(cut, flips, size):
    from ssl_bf.data.long_tail import LongTailError, read_index_file

    count("long-tail-index-bytes", 1)
    buf = io.BytesIO()
    np.save(buf, np.arange(min(size, 12), dtype=np.int64), allow_pickle=False)
    data = bytearray(buf.getvalue()[:cut] if cut < len(buf.getvalue()) else buf.getvalue())
    for where, byte in flips:
        if where < len(data):
            data[where] = byte
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "split.npy")
        with open(path, "wb") as f:  # a test fixture, not an ssl-bf output
            f.write(bytes(data))
        try:
            got = read_index_file(path, size)
        except LongTailError as err:
            assert f"data.indices_file {path}" in str(err)
        else:  # what survived the damage is still a valid index list
            assert got.dtype == np.int64 and got.ndim == 1 and got.size
            assert np.all(np.diff(got) > 0) and got.min() >= 0 and got.max() < size


@settings(max_examples=fuzz_examples(60))
@given(chosen=st.sets(st.integers(0, 10 ** 6), min_size=1, max_size=50))
def test_fuzz_saved_indices_read_back_identical(chosen):
    from ssl_bf.data.long_tail import read_index_file
    from ssl_bf.train.train_subset import INDICES_FILE, TrainSubset, write_indices

    count("long-tail-index-round-trip", 1)
    indices = np.asarray(sorted(chosen), dtype=np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        write_indices(tmp, TrainSubset(indices, (len(indices),)))
        path = os.path.join(tmp, INDICES_FILE)
        stored = np.load(path, allow_pickle=False)
        assert stored.dtype == np.int64 and np.array_equal(stored, indices)
        assert np.array_equal(read_index_file(path, 10 ** 6 + 1), indices)
