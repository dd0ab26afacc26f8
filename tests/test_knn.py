"""k-NN evaluation: FAISS vs a plain torch reference, a hand-made example, edge cases, the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ssl_bf.knn import index as knn_index
from ssl_bf.knn import vote as knn_mod
from ssl_bf.knn import stream as knn_stream
from ssl_bf.eval.knn_cli import knn_main
from ssl_bf.eval.formats import save_embeddings
from ssl_bf.knn.vote import knn_accuracy, knn_evaluate, knn_predict, knn_vote


def blobs(n: int, d: int, classes: int, seed: int = 0, noise: float = 1.5, labels=None):
    """Gaussian class blobs (the same centres for every seed): features (n, d) float32, labels (n,)."""
    centres = np.random.default_rng(1234).normal(size=(classes, d))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n) if labels is None else labels
    x = centres[y] + noise * rng.normal(size=(n, d))
    return x.astype(np.float32), y.astype(np.int64)


def torch_reference(train, train_y, test, k, t, num_classes):
    """Independent reference: full matmul, topk, one-hot weighted sum (DINO style, float64); the
    classes some neighbour voted for, by score, then by their nearest neighbour; -1 fills top-5."""
    tr = torch.nn.functional.normalize(torch.as_tensor(train, dtype=torch.float64), dim=1)
    te = torch.nn.functional.normalize(torch.as_tensor(test, dtype=torch.float64), dim=1)
    sims, idx = (te @ tr.T).topk(k, dim=1)  # (Q, k)
    nbr = torch.as_tensor(train_y)[idx]  # (Q, k)
    onehot = torch.nn.functional.one_hot(nbr, num_classes).double()  # (Q, k, C)
    scores = (onehot * (sims / t).exp()[..., None]).sum(1)  # (Q, C)
    out = np.full((len(te), min(5, k)), -1)
    for q in range(len(te)):  # voted classes in order of their nearest neighbour; sorted() is stable
        ranked = sorted(dict.fromkeys(nbr[q].tolist()), key=lambda c: -float(scores[q, c]))[:5]
        out[q, :len(ranked)] = ranked
    return out


# ----------------------------------------------------------------------------------------------
# Correctness
# ----------------------------------------------------------------------------------------------


def test_faiss_matches_torch_matmul_topk_reference():
    train, ty = blobs(3000, 32, 10, seed=1)
    test, _ = blobs(400, 32, 10, seed=2)
    preds = knn_predict(train, ty, test, ks=(1, 5, 20), temperatures=(0.07, 0.5))
    for (k, t), p in preds.items():
        ref = torch_reference(train, ty, test, k, t, 10)
        assert (p[:, 0] == ref[:, 0]).all(), f"top-1 differs at k={k}, T={t}"
        assert (p == ref).mean() > 0.99, f"top-5 order differs at k={k}, T={t}"  # near-ties in 5th place only


def test_hand_made_example_two_k_t_pairs():
    # Query q = (1, 0). Train points at angles (rad) and labels:
    #   0.10 -> class 0 (cos 0.9950), 0.30 -> class 1 (cos 0.9553), -0.35 -> class 1 (cos 0.9394),
    #   2.00 -> class 2 (cos -0.4161), 3.00 -> class 0 (cos -0.9900).
    # k=3, T=0.01: class 0 gets e^99.50, class 1 e^95.53 + e^93.94 ~ e^95.72 -> predicts 0.
    # k=3, T=1.0:  class 0 gets e^0.995 = 2.705, class 1 2.600 + 2.558 = 5.158 -> predicts 1.
    # k=5, T=1.0:  class 0 2.705 + e^-0.990 (0.372) = 3.077, class 1 5.158, class 2 0.660 -> 1, 0, 2.
    angles = np.array([0.10, 0.30, -0.35, 2.00, 3.00])
    train = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    labels = np.array([0, 1, 1, 2, 0])
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    preds = knn_predict(train, labels, query, ks=(3, 5), temperatures=(0.01, 1.0))
    assert preds[(3, 0.01)][0, 0] == 0
    assert preds[(3, 1.0)][0, 0] == 1
    assert preds[(5, 1.0)][0].tolist() == [1, 0, 2]
    # The vote itself: scores proportional to the sums above.
    sims = torch.tensor(np.cos([[0.10, 0.30, -0.35]]), dtype=torch.float32)
    scores = knn_vote(sims, torch.tensor([[0, 1, 1]]), 3, 1.0)[0]
    ratio = (math.exp(math.cos(0.30)) + math.exp(math.cos(-0.35))) / math.exp(math.cos(0.10))
    assert float(scores[1] / scores[0]) == pytest.approx(ratio, rel=1e-5)
    assert float(scores[2]) == 0.0
    acc = knn_accuracy(train, labels, query, np.array([1]), ks=(3,), temperatures=(0.01, 1.0))
    assert [r["top1"] for r in acc] == [0.0, 100.0]


def test_small_temperature_stays_finite():
    sims = torch.tensor([[0.99, 0.98, 0.10]])
    scores = knn_vote(sims, torch.tensor([[0, 1, 1]]), 2, 1e-3)  # exp(990) overflows without the shift
    assert torch.isfinite(scores).all() and scores[0, 0] > scores[0, 1]


def test_cosine_not_euclidean():
    """Scaling rows by positive factors must not change anything (the vote is on cosine)."""
    train, ty = blobs(1000, 16, 5, seed=3)
    test, sy = blobs(100, 16, 5, seed=4)
    rng = np.random.default_rng(0)
    scaled = train * rng.uniform(0.01, 100.0, size=(len(train), 1)).astype(np.float32)
    a = knn_accuracy(train, ty, test, sy, ks=(10,))
    b = knn_accuracy(scaled, ty, test * 7.0, sy, ks=(10,))
    assert a == b


def test_inputs_not_modified_and_torch_accepted():
    train, ty = blobs(500, 8, 4)
    test, sy = blobs(50, 8, 4, seed=9)
    before = train.copy()
    a = knn_accuracy(train, ty, test, sy)
    assert np.array_equal(train, before)
    b = knn_accuracy(torch.from_numpy(train).double(), torch.from_numpy(ty), torch.from_numpy(test), sy)
    assert a == b


def test_one_search_for_all_k(monkeypatch):
    """Every (k, T) pair comes from a single search for max(k) (no per-k re-search)."""
    calls = []
    real_build = knn_mod.build_index

    class CountingIndex:
        def __init__(self, index):
            self.index = index

        def search(self, x, k):
            calls.append((len(x), k))
            return self.index.search(x, k)

    monkeypatch.setattr(knn_mod, "build_index", lambda *a, **kw: CountingIndex(real_build(*a, **kw)))
    real_stream = knn_stream.stream_search

    def counting_stream(bank, queries, k, plan, progress=False):
        calls.append(("stream", len(queries), k))
        return real_stream(bank, queries, k, plan, progress)

    monkeypatch.setattr(knn_stream, "stream_search", counting_stream)
    train, ty = blobs(800, 8, 4)
    test, sy = blobs(60, 8, 4, seed=5)
    res = knn_accuracy(train, ty, test, sy, ks=(10, 20, 100, 200), temperatures=(0.07, 0.1))
    assert calls == [("stream", 60, 200)]  # exact CPU search: the streamed one
    assert [(r["k"], r["temperature"]) for r in res] == [(k, t) for k in (10, 20, 100, 200) for t in (0.07, 0.1)]
    calls.clear()
    knn_accuracy(train, ty, test, sy, ks=(10, 20, 100, 200), temperatures=(0.07, 0.1), index="flat-fp16")
    assert calls == [(60, 200)]


def test_memory_budget_chunks_queries(monkeypatch):
    train, ty = blobs(600, 8, 4)
    test, sy = blobs(300, 8, 4, seed=6)
    full = knn_accuracy(train, ty, test, sy, ks=(5, 50))
    assert knn_index.query_chunk_size(50, 4, 1e-6) == 1
    tiny = knn_accuracy(train, ty, test, sy, ks=(5, 50), memory_budget_gb=40 * 50 / 2**30)
    assert tiny == full
    assert knn_index.query_chunk_size(200, 1000, 2.0) > 10_000  # a sane default is not tiny


def test_blas_blocks_are_restored():
    import faiss

    before = (faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs)
    with knn_index.blas_blocks(2.0):
        assert faiss.cvar.distance_compute_blas_database_bs == 8192
    with knn_index.blas_blocks(0.01):  # a small budget keeps FAISS's small blocks
        assert faiss.cvar.distance_compute_blas_database_bs == 1024
    assert (faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs) == before


# ----------------------------------------------------------------------------------------------
# Edge cases seen in the peers
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [1, 3, 99])
def test_fewer_than_100_queries(q):
    train, ty = blobs(400, 8, 4, noise=0.1)
    test, sy = blobs(q, 8, 4, seed=7, noise=0.1)
    res = knn_accuracy(train, ty, test, sy, ks=(20,))
    assert res[0]["top1"] == 100.0


def test_non_contiguous_labels():
    train, ty = blobs(600, 8, 3, noise=0.1)
    test, sy = blobs(40, 8, 3, seed=8, noise=0.1)
    values = np.array([5, 77, 1000])
    res = knn_accuracy(train, values[ty], test, values[sy], ks=(10,))
    assert res[0]["top1"] == 100.0
    preds = knn_predict(train, values[ty], test, ks=(10,))[(10, 0.07)]
    assert set(np.unique(preds[:, 0])) <= {5, 77, 1000}
    assert (preds[:, 0] == values[sy]).all()


def test_more_than_1000_classes():
    c = 1500
    rng = np.random.default_rng(0)
    train = rng.normal(size=(2 * c, 16)).astype(np.float32)
    ty = np.repeat(np.arange(c), 2)
    test = train[::2] + 0.001 * rng.normal(size=(c, 16)).astype(np.float32)
    res = knn_accuracy(train, ty, test, np.arange(c), ks=(1,))
    assert res[0]["top1"] == 100.0


def test_class_count_from_train_not_test():
    train, ty = blobs(600, 8, 6, noise=0.1)
    # The test set only holds classes 4 and 5: a count inferred from it would break the vote.
    test, sy = blobs(30, 8, 6, seed=9, noise=0.1, labels=np.array([4, 5] * 15))
    res = knn_evaluate(train, ty, test, sy, ks=(10,))
    assert res.num_classes == 6 and res.results[0]["top1"] == 100.0
    # A test class unseen in train counts as an error instead of crashing.
    res = knn_accuracy(train, ty, test, np.where(sy == 5, 9, sy), ks=(10,))
    assert res[0]["top1"] == pytest.approx(50.0)
    # A given class count (e.g. from the class list) wins over the labels present.
    assert knn_evaluate(train, ty, test, sy, ks=(10,), num_classes=20).num_classes == 20


def test_k_equal_to_train_size_and_errors():
    train, ty = blobs(30, 4, 3)
    test, sy = blobs(5, 4, 3, seed=1)
    assert knn_accuracy(train, ty, test, sy, ks=(30,))[0]["top1"] >= 0
    with pytest.raises(ValueError, match="k=31 is larger than the train set"):
        knn_accuracy(train, ty, test, sy, ks=(31,))
    with pytest.raises(ValueError, match="dimensions differ"):
        knn_accuracy(train, ty, test[:, :3], sy)
    with pytest.raises(ValueError, match="train labels: 29 labels for 30 rows"):
        knn_accuracy(train, ty[:-1], test, sy)


@pytest.mark.parametrize("index", ["ivf", "hnsw", "flat-fp16"])
def test_other_indexes(index):
    train, ty = blobs(5000, 32, 10, seed=11)
    test, sy = blobs(300, 32, 10, seed=12)
    exact = knn_evaluate(train, ty, test, sy, ks=(20,))
    approx = knn_evaluate(train, ty, test, sy, ks=(20,), index=index, recall_sample=200)
    assert abs(approx.results[0]["top1"] - exact.results[0]["top1"]) <= 2.0
    if index == "flat-fp16":
        assert approx.recall is None
    else:
        assert 0.8 <= approx.recall <= 1.0


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def _files(tmp_path, d_test: int = 16, n_test: int = 50):
    train, ty = blobs(500, 16, 5, noise=0.2)
    test, sy = blobs(n_test, d_test, 5, seed=3, noise=0.2)
    save_embeddings(str(tmp_path / "train.safetensors"), train, ty, classes=list("abcde"), split="train")
    save_embeddings(str(tmp_path / "test.safetensors"), test, sy, classes=list("abcde"), split="test")
    return str(tmp_path / "train.safetensors"), str(tmp_path / "test.safetensors")


def test_cli_json_contract(tmp_path, capsys):
    tr, te = _files(tmp_path)
    out = tmp_path / "knn.json"
    assert knn_main(["--train", tr, "--test", te, "--k", "10", "20", "--temperature", "0.07", "0.1",
                     "--json", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert [(r["k"], r["temperature"]) for r in report["results"]] == [(10, 0.07), (10, 0.1), (20, 0.07), (20, 0.1)]
    assert all(set(r) == {"k", "temperature", "top1", "top5", "per_group"} for r in report["results"])
    assert report["num_classes"] == 5
    printed = capsys.readouterr().out
    assert "top-1 %" in printed and "0.07" in printed


def test_cli_reads_npy_pairs_and_dino_dumps(tmp_path):
    train, ty = blobs(300, 8, 3, noise=0.2)
    test, sy = blobs(40, 8, 3, seed=2, noise=0.2)
    np.save(tmp_path / "train_features.npy", train)
    np.save(tmp_path / "train_labels.npy", ty)
    np.save(tmp_path / "test.npy", test)
    np.save(tmp_path / "test_labels.npy", sy)
    torch.save(torch.from_numpy(train), tmp_path / "trainfeat.pth")
    torch.save(torch.from_numpy(ty), tmp_path / "trainlabels.pth")
    torch.save(torch.from_numpy(test), tmp_path / "testfeat.pth")
    torch.save(torch.from_numpy(sy), tmp_path / "testlabels.pth")
    expected = knn_accuracy(train, ty, test, sy, ks=(20,), temperatures=(0.07,))
    for a, b in [("train_features.npy", "test.npy"), ("trainfeat.pth", "testfeat.pth")]:
        out = tmp_path / f"{a}.json"
        assert knn_main(["--train", str(tmp_path / a), "--test", str(tmp_path / b), "--k", "20",
                         "--temperature", "0.07", "--json", str(out), "--no-progress"]) == 0
        assert [{k: v for k, v in r.items() if k != "per_group"}
                for r in json.loads(out.read_text())["results"]] == expected


def _expect_error(capsys, argv, *fragments):
    assert knn_main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    for f in fragments:
        assert f in err, err


def test_cli_bad_inputs(tmp_path, capsys):
    tr, te = _files(tmp_path)
    bad_dim = tmp_path / "bad_dim.safetensors"
    save_embeddings(str(bad_dim), np.ones((4, 7), np.float32), np.zeros(4))
    _expect_error(capsys, ["--train", tr, "--test", str(bad_dim)], "dimensions differ", tr, str(bad_dim), "D=16", "D=7")

    _expect_error(capsys, ["--train", tr, "--test", te, "--k", "501"], "k=501 is larger than the train set", tr)

    np.save(tmp_path / "x.npy", np.ones((6, 16), np.float32))
    np.save(tmp_path / "x_labels.npy", np.zeros(5, np.int64))
    _expect_error(capsys, ["--train", tr, "--test", str(tmp_path / "x.npy")], "x_labels.npy holds 5 labels", "x.npy has 6 rows")

    nan = np.ones((6, 16), np.float32)
    nan[[1, 4]] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "nan_labels.npy", np.zeros(6, np.int64))
    _expect_error(capsys, ["--train", tr, "--test", str(tmp_path / "nan.npy")], "nan.npy", "2 of 6 rows", "rows 1, 4")

    (tmp_path / "empty.safetensors").write_bytes(b"")
    _expect_error(capsys, ["--train", str(tmp_path / "empty.safetensors"), "--test", te], "empty.safetensors", "empty")

    from safetensors.numpy import save_file
    save_file({"embeddings": np.zeros((0, 16), np.float32), "labels": np.zeros(0, np.int64)},
              str(tmp_path / "norows.safetensors"))
    _expect_error(capsys, ["--train", tr, "--test", str(tmp_path / "norows.safetensors")], "norows.safetensors",
                  "no embeddings")

    _expect_error(capsys, ["--train", tr, "--test", str(tmp_path / "missing.safetensors")], "missing.safetensors",
                  "no such file")
    _expect_error(capsys, ["--train", tr, "--test", te, "--temperature", "0"], "--temperature", "positive")


@pytest.mark.slow
def test_fashion_mnist_raw_pixel_anchor():
    """protocols.md: raw pixels, cosine, 60k/10k: 84.6% (k=20, T=0.07) and 78.9% (k=200, T=0.1)."""
    from ssl_bf.data import DataError, build_dataset

    try:
        tr, te = build_dataset("fashion-mnist", split="train"), build_dataset("fashion-mnist", split="test")
    except DataError as err:
        pytest.skip(str(err))
    x = tr.images.reshape(len(tr), -1).float()
    q = te.images.reshape(len(te), -1).float()
    res = knn_accuracy(x, tr.labels, q, te.labels, ks=(20, 200), temperatures=(0.07, 0.1))
    by = {(r["k"], r["temperature"]): r["top1"] for r in res}
    assert by[(20, 0.07)] == pytest.approx(84.6, abs=0.3)
    assert by[(200, 0.1)] == pytest.approx(78.9, abs=0.3)


# ----------------------------------------------------------------------------------------------
# Repeated and non-finite settings (a repeated (k, T) pair used to add its hits twice: 126%)
# ----------------------------------------------------------------------------------------------


def test_repeated_k_and_temperature_are_scored_once():
    train, ty = blobs(300, 8, 3, noise=0.3)
    test, sy = blobs(60, 8, 3, seed=2, noise=0.3)
    once = knn_accuracy(train, ty, test, sy, ks=(5, 20), temperatures=(0.07,))
    repeated = knn_accuracy(train, ty, test, sy, ks=(5, 20, 5), temperatures=(0.07, 0.07))
    assert repeated == once
    assert all(0 <= r["top1"] <= 100 and 0 <= r["top5"] <= 100 for r in repeated)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"temperatures": (float("nan"),)}, "temperatures must be positive and finite"),
    ({"temperatures": (0.07, float("inf"))}, "temperatures must be positive and finite"),
    ({"temperatures": (-0.1,)}, "temperatures must be positive and finite"),
    ({"memory_budget_gb": float("nan")}, "memory budget"),
    ({"memory_budget_gb": 0.0}, "memory budget"),
])
def test_non_finite_settings_are_refused(kwargs, fragment):
    train, ty = blobs(50, 4, 2)
    with pytest.raises(ValueError, match=fragment):
        knn_accuracy(train, ty, train[:5], ty[:5], ks=(3,), **kwargs)


def test_cli_repeated_values_give_one_row_each(tmp_path, capsys):
    tr, te = _files(tmp_path)
    single, repeated = tmp_path / "single.json", tmp_path / "repeated.json"
    assert knn_main(["--train", tr, "--test", te, "--k", "10", "--temperature", "0.07", "--json", str(single),
                     "--no-progress"]) == 0
    capsys.readouterr()
    assert knn_main(["--train", tr, "--test", te, "--k", "10", "10", "--temperature", "0.07", "0.07",
                     "--json", str(repeated), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "--k lists 10 more than once" in err and "--temperature lists 0.07 more than once" in err
    assert json.loads(repeated.read_text())["results"] == json.loads(single.read_text())["results"]


@pytest.mark.parametrize("option, value", [("--temperature", "nan"), ("--temperature", "inf"), ("--k", "0"),
                                           ("--memory-budget", "-1"), ("--device", "tpu"),
                                           ("--recall-sample", "-1")])
def test_cli_bad_numbers_refused_at_parse_time(tmp_path, capsys, monkeypatch, option, value):
    import ssl_bf.eval.formats as formats

    tr, te = _files(tmp_path)
    monkeypatch.setattr(formats, "load_embeddings", lambda *a, **k: pytest.fail("loaded before parsing ended"))
    assert knn_main(["--train", tr, "--test", te, option, value, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ssl-bf knn: error: argument " + option), err


def test_cli_outputs_checked_before_any_compute(tmp_path, capsys, monkeypatch):
    import ssl_bf.knn.vote as knn

    tr, te = _files(tmp_path)
    before = open(tr, "rb").read()
    monkeypatch.setattr(knn, "knn_evaluate", lambda *a, **k: pytest.fail("searched before checking --json"))
    for target in (tr, str(tmp_path)):
        assert knn_main(["--train", tr, "--test", te, "--json", target, "--no-progress"]) == 2
        assert "--json" in capsys.readouterr().err
    assert open(tr, "rb").read() == before
    assert knn_main(["--train", tr, "--test", tr, "--no-progress"]) == 2  # itself as its own test set
    assert "is the --train file" in capsys.readouterr().err
