"""k-NN with the bank streamed from its file in row blocks (ssl_bf/knn/stream.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ssl_bf.knn import stream as knn_stream
from ssl_bf.eval.formats import open_embeddings, save_embeddings
from ssl_bf.knn.vote import knn_evaluate
from ssl_bf.knn.stream import ArrayRows, open_rows, plan_stream, stream_search


def blobs(n, d, classes, seed=0, noise=1.5):
    centres = np.random.default_rng(1).normal(size=(classes, d)).astype(np.float32)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    return (centres[y] + noise * rng.normal(size=(n, d))).astype(np.float32), y


def reference_topk(bank: np.ndarray, queries: np.ndarray, k: int):
    """Exact top-k cosine similarities by one torch matmul (float64)."""
    b = torch.nn.functional.normalize(torch.from_numpy(bank).double(), dim=1)
    q = torch.nn.functional.normalize(torch.from_numpy(queries).double(), dim=1)
    return (q @ b.T).topk(k, dim=1)


@pytest.mark.parametrize("query_rows,bank_rows", [(7, 13), (1000, 1000), (3, 50)])
def test_blocks_merge_to_the_exact_top_k(query_rows, bank_rows):
    bank, _ = blobs(300, 12, 5)
    queries, _ = blobs(40, 12, 5, seed=3)
    plan = knn_stream.StreamPlan(query_rows, bank_rows, 1024, 0)
    got = list(stream_search(ArrayRows(bank), ArrayRows(queries), 20, plan))
    assert [start for start, *_ in got] == list(range(0, 40, min(query_rows, 40)))
    sims = np.concatenate([s for _, s, _ in got])
    ids = np.concatenate([i for _, _, i in got])
    ref = reference_topk(bank, queries, 20)
    np.testing.assert_allclose(sims, ref.values.numpy(), rtol=1e-5, atol=1e-6)
    assert np.array_equal(ids, ref.indices.numpy())  # no ties in random data


@pytest.mark.parametrize("fmt", ["float32", "float16", "bfloat16", "npy"])
def test_file_rows_read_what_was_written(tmp_path, fmt):
    x, y = blobs(50, 6, 3)
    if fmt == "npy":
        path = str(tmp_path / "x.npy")
        np.save(path, x)
        expected = x
    else:
        from safetensors.torch import save_file

        path = str(tmp_path / "x.safetensors")
        stored = torch.from_numpy(x).to(getattr(torch, fmt))
        save_file({"labels": torch.from_numpy(y), "embeddings": stored}, path)
        expected = stored.float().numpy()
    rows = open_rows(path)
    assert rows.shape == (50, 6)
    assert np.array_equal(rows[0:50], expected) and np.array_equal(rows[17:23], expected[17:23])
    out = np.empty((10, 6), np.float32)
    assert np.array_equal(rows.read(40, 50, out=out), expected[40:50])


def test_truncated_or_wrong_files_are_refused(tmp_path):
    np.save(tmp_path / "ints.npy", np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match="2-D float32 or float16"):
        open_rows(str(tmp_path / "ints.npy"))
    np.save(tmp_path / "x.npy", np.zeros((100, 4), np.float32))
    with open(tmp_path / "x.npy", "r+b") as f:
        f.truncate(300)
    with pytest.raises(ValueError, match="truncated"):
        open_rows(str(tmp_path / "x.npy"))


def test_streamed_files_give_the_in_memory_result(tmp_path):
    train, ty = blobs(900, 16, 6)
    test, sy = blobs(120, 16, 6, seed=4)
    save_embeddings(str(tmp_path / "train.safetensors"), train, ty)
    np.save(tmp_path / "test.npy", test)
    np.save(tmp_path / "test_labels.npy", sy)
    in_memory = knn_evaluate(train, ty, test, sy, ks=(5, 50), temperatures=(0.07, 0.1), index="flat-fp16")
    a, b = open_embeddings(str(tmp_path / "train.safetensors")), open_embeddings(str(tmp_path / "test.npy"))
    assert isinstance(a.embeddings, knn_stream.FileRows) and isinstance(b.embeddings, knn_stream.FileRows)
    tiny = 30 * 16 * 4 / 2**30  # a budget of a few rows: many blocks of each
    streamed = knn_evaluate(a.embeddings, a.labels, b.embeddings, b.labels, ks=(5, 50), temperatures=(0.07, 0.1),
                            memory_budget_gb=tiny, device="cpu")
    assert streamed.plan.bank_rows < 900 and streamed.plan.query_rows < 120
    for x, y in zip(in_memory.results, streamed.results):  # fp16 storage vs exact: the same votes here
        assert x["top1"] == pytest.approx(y["top1"], abs=1.0) and x["k"] == y["k"]
    exact = knn_evaluate(train, ty, test, sy, ks=(5, 50), temperatures=(0.07, 0.1), device="cpu")
    assert exact.results == streamed.results


def test_streamed_file_with_nan_rows_is_refused_naming_them(tmp_path):
    train, ty = blobs(60, 4, 2)
    train[[7, 41]] = np.nan
    np.save(tmp_path / "train.npy", train)
    np.save(tmp_path / "train_labels.npy", ty)
    emb = open_embeddings(str(tmp_path / "train.npy"))
    with pytest.raises(ValueError, match=r"train.npy: 2 of 60 rows contain NaN or Inf \(rows 7, 41\)"):
        knn_evaluate(emb.embeddings, emb.labels, train[:5] * 0 + 1, ty[:5], ks=(3,), device="cpu")


def test_plan_fits_the_working_memory():
    for n, q, d, k, gb in [(1_280_000, 50_000, 2048, 200, 1.0), (1_000_000, 10_000, 256, 200, 0.3),
                           (500, 10, 8, 5, 2.0)]:
        plan = plan_stream(n, q, d, k, gb, 4 * d)
        assert plan.working_bytes <= gb * 2**30
        assert 1 <= plan.query_rows <= q and k <= plan.bank_rows <= n
    assert plan_stream(1_280_000, 50_000, 2048, 200, 1.0).bank_rows < 1_280_000  # 10.5 GB: streamed


@pytest.mark.slow
def test_cli_peak_memory_stays_under_the_budget_with_a_larger_bank(tmp_path):
    """`ssl-bf knn` on a 1.2 GB bank with a 1.6 GB budget for the whole process (torch and FAISS
    alone take about 0.7 GB here): the bank is never held whole."""
    n, d = 150_000, 2048
    rng = np.random.default_rng(0)
    bank = np.lib.format.open_memmap(tmp_path / "train.npy", mode="w+", dtype=np.float32, shape=(n, d))
    for s in range(0, n, 10_000):
        bank[s:s + 10_000] = rng.standard_normal((10_000, d), dtype=np.float32)
    bank.flush()
    del bank
    np.save(tmp_path / "train_labels.npy", rng.integers(0, 10, n))
    np.save(tmp_path / "test.npy", rng.standard_normal((200, d), dtype=np.float32))
    np.save(tmp_path / "test_labels.npy", rng.integers(0, 10, 200))
    bank_gb = os.path.getsize(tmp_path / "train.npy") / 2**30
    proc = subprocess.run([sys.executable, "-m", "ssl_bf", "knn", "--train", str(tmp_path / "train.npy"),
                           "--test", str(tmp_path / "test.npy"), "--k", "20", "--memory-budget", "1.6",
                           "--device", "cpu", "--no-progress", "--json", str(tmp_path / "knn.json")],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads((tmp_path / "knn.json").read_text())  # peak: the child's VmHWM
    print(f"bank {bank_gb:.2f} GB, peak resident memory {out['peak_memory_gb']:.2f} GB, budget 1.6 GB")
    assert bank_gb > 1.1 and out["streamed"] and "bank streamed" in proc.stdout
    assert out["peak_memory_gb"] < 1.6
