"""The independent oracle and float64 reference of the array fuzz suites (tests/test_fuzz_arrays.py,
tests/test_fuzz_array_readers.py), and how those suites write generated splits to files.

The oracle says which arrays ssl-bf must refuse (written from the documented rules, not from
ssl_bf.validate); the reference scores the weighted k-NN vote by brute force in float64 with the
documented tie rule (docs/protocols.md).
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from hypothesis import strategies as st

FORMATS = ("safetensors", "npy", "npz", "pth")
EXPONENTS = st.one_of(st.sampled_from([-30, -25, -20, 20, 25, 30]), st.integers(-30, 30))  # scale 10^k
FRAGILE = 1e-5  # similarities or relative class scores this close may order differently in float32


def _fuzz_examples():
    """tests/conftest.py's `fuzz_examples`. In a whole-tree run the module name `conftest` can be
    tests/cluster/conftest.py's, so tests/conftest.py is loaded by its path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "ssl_bf_tests_conftest", os.path.join(os.path.dirname(os.path.abspath(__file__)), "conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fuzz_examples

fuzz_examples = _fuzz_examples()


def defects(kinds: tuple[str, ...]):
    """'none' for about two inputs in three, else one of `kinds`."""
    return st.tuples(st.integers(0, 2), st.sampled_from(kinds)).map(lambda t: t[1] if t[0] == 2 else "none")


def features_ok(x: np.ndarray) -> bool:
    if x.dtype.kind != "f" or x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        return False
    x64 = x.astype(np.float64)
    return bool(np.isfinite(x64).all() and (np.abs(x64).max(axis=1) > 0).all())


def labels_ok(y: np.ndarray, rows: int, num_classes: int | None = None) -> bool:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != rows or rows == 0:
        return False
    if y.dtype.kind in "iu":
        if y.dtype.kind == "u" and y.dtype.itemsize == 8 and int(y.max()) > 2**63 - 1:
            return False
        v = y.astype(object)
    elif y.dtype.kind == "f":
        if not np.isfinite(y).all() or (y != np.floor(y)).any() or (np.abs(y.astype(np.float64)) >= 2.0**63).any():
            return False
        v = y.astype(np.float64).astype(object)
    else:
        return False
    return all(int(a) >= 0 for a in v) and (num_classes is None or all(int(a) < num_classes for a in v))


def unit(x: np.ndarray) -> np.ndarray:
    """Rows of unit L2 norm, in float64 (each row first divided by its largest |value|)."""
    x = x.astype(np.float64)
    x = x / np.abs(x).max(axis=1, keepdims=True)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_knn(train, ytr, test, yte, k, t):
    """Top-1 and top-5 hits of the weighted vote, and how many queries are fragile (their answer
    hangs on a near-tie the float32 search may break the other way)."""
    sims = unit(test) @ unit(train).T  # (Q, N) float64
    n = sims.shape[1]
    hits1 = hits5 = fragile = 0
    for q in range(len(sims)):
        s = sims[q]
        order = np.lexsort((np.arange(n), -s))  # by similarity, then by train row
        top = order[:k]
        weak = k < n and s[order[k - 1]] - s[order[k]] <= FRAGILE and \
            len({int(ytr[r]) for r in order if abs(s[r] - s[order[k - 1]]) <= FRAGILE}) > 1
        scores: dict[int, float] = {}
        first: dict[int, int] = {}
        for j, r in enumerate(top):
            c = int(ytr[r])
            scores[c] = scores.get(c, 0.0) + float(np.exp((s[r] - s[top[0]]) / t))
            first.setdefault(c, j)
        ranked = sorted(scores, key=lambda c: (-scores[c], first[c]))
        for cut in (1, 5):
            if len(ranked) > cut:
                a, b = ranked[cut - 1], ranked[cut]
                gap = scores[a] - scores[b]
                near_sims = 0 < abs(s[top[first[a]]] - s[top[first[b]]]) <= FRAGILE
                weak |= 0 < gap <= 1e-4 * scores[a] or (gap == 0 and near_sims)
        fragile += weak
        if not weak:
            hits1 += bool(ranked) and ranked[0] == int(yte[q])
            hits5 += int(yte[q]) in ranked[:5]
    return hits1, hits5, fragile


def labels_1d(y) -> np.ndarray:
    y = np.asarray(y)
    return (y[:, 0] if y.ndim == 2 else y).astype(np.int64)  # exact: integral values within int64


def stored(x64: np.ndarray, dtype: str) -> np.ndarray:
    """The array as a file of `dtype` holds it (bfloat16: its exact float32 values)."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        if dtype == "bfloat16":
            return torch.from_numpy(x64.astype(np.float32)).bfloat16().float().numpy()
        if dtype == "int64":
            return np.nan_to_num(np.round(x64), posinf=0, neginf=0).clip(-2**62, 2**62).astype(np.int64)
        return x64.astype(dtype)


def write_split(folder: str, stem: str, fmt: str, x: np.ndarray, y: np.ndarray, dtype: str,
                classes: int | None = None) -> tuple[str, str]:
    """Write features `x` (as `dtype`) and labels `y`; returns (features file, labels file)."""
    from safetensors.torch import save_file

    xt = torch.from_numpy(np.ascontiguousarray(x))
    if dtype == "bfloat16":
        xt = xt.to(torch.bfloat16)
    if fmt == "safetensors":
        path = os.path.join(folder, f"{stem}.safetensors")
        meta = {"classes": json.dumps([f"c{i}" for i in range(classes)])} if classes else None
        save_file({"embeddings": xt, "labels": torch.from_numpy(np.ascontiguousarray(y))}, path, metadata=meta)
        return path, path
    if fmt == "npz":
        path = os.path.join(folder, f"{stem}.npz")
        np.savez(path, embeddings=x, labels=y)
        return path, path
    if fmt == "npy":
        path, lpath = os.path.join(folder, f"{stem}.npy"), os.path.join(folder, f"{stem}_labels.npy")
        np.save(path, x)
        np.save(lpath, y)
        return path, lpath
    path, lpath = os.path.join(folder, f"{stem}feat.pth"), os.path.join(folder, f"{stem}labels.pth")
    torch.save(xt, path)
    torch.save(torch.from_numpy(np.ascontiguousarray(y)), lpath)
    return path, lpath
