"""Per-group accuracy and few-shot / low-label probes of `ssl-bf knn | linear | evaluate` (issue 22,
parts 2-3): parity of the JSON's per-group figures with an independent float64 numpy computation,
balanced and reproducible draws, mean ± std over draws, the CLI and evaluate on a long-tailed run."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from ssl_bf.eval.formats import save_embeddings
from ssl_bf.eval.knn_cli import knn_main
from ssl_bf.eval.linear_cli import linear_main

TRAIN_COUNTS = [40, 34, 28, 22, 16, 10]  # a long tail over six classes


def _pair(tmp_path, seed: int = 0):
    """A fixed train/test embeddings pair: six overlapping blobs, long-tailed train, balanced test."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 12)) * 0.7
    ytr = np.concatenate([np.full(n, c) for c, n in enumerate(TRAIN_COUNTS)])
    yte = np.repeat(np.arange(6), 15)
    xtr = (centres[ytr] + rng.normal(size=(len(ytr), 12))).astype(np.float32)
    xte = (centres[yte] + rng.normal(size=(len(yte), 12))).astype(np.float32)
    tr, te = str(tmp_path / "train.safetensors"), str(tmp_path / "test.safetensors")
    save_embeddings(tr, xtr, ytr)
    save_embeddings(te, xte, yte)
    return tr, te, (xtr, ytr, xte, yte)


def _reference_groups(counts, thresholds=None):
    """Independent: thirds of the classes by count (most first, ties by class), or by thresholds."""
    c = len(counts)
    if thresholds:
        high, low = thresholds
        return {"many": [i for i in range(c) if counts[i] > high],
                "medium": [i for i in range(c) if low <= counts[i] <= high], "few": [i for i in range(c) if counts[i] < low]}
    order = sorted(range(c), key=lambda i: (-counts[i], i))
    third = round(c / 3)
    return {"many": sorted(order[:third]), "medium": sorted(order[third:c - third]), "few": sorted(order[c - third:])}


def _reference_per_group(pred, truth, groups):
    out = {g: 100.0 * np.mean(pred[np.isin(truth, cls)] == truth[np.isin(truth, cls)]) for g, cls in groups.items()}
    per_class = [100.0 * np.mean(pred[truth == k] == k) for k in np.unique(truth)]
    out["class_std"] = float(np.std(per_class, dtype=np.float64))
    return out


def _reference_knn_top1(xtr, ytr, xte, k, t):
    """Weighted k-NN top-1 in float64 numpy: cosine, exp(s / T) votes, argmax (no ties on random data)."""
    a = xtr.astype(np.float64) / np.linalg.norm(xtr.astype(np.float64), axis=1, keepdims=True)
    b = xte.astype(np.float64) / np.linalg.norm(xte.astype(np.float64), axis=1, keepdims=True)
    sims = b @ a.T  # (Q, N)
    nn = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # (Q, k)
    scores = np.zeros((len(b), ytr.max() + 1))
    for q in range(len(b)):
        np.add.at(scores[q], ytr[nn[q]], np.exp(sims[q, nn[q]] / t))
    return scores.argmax(1)


def _assert_group_parity(got, want):
    for g in ("many", "medium", "few", "class_std"):
        assert got[g] == pytest.approx(want[g], abs=1e-9), g


@pytest.mark.parametrize("thresholds", [None, (30, 15)])
def test_knn_per_group_matches_numpy(tmp_path, thresholds):
    tr, te, (xtr, ytr, xte, yte) = _pair(tmp_path)
    out = tmp_path / "k.json"
    extra = ["--group-thresholds", *map(str, thresholds)] if thresholds else []
    assert knn_main(["--train", tr, "--test", te, "--k", "5", "20", "--temperature", "0.1", "--json", str(out),
                     "--no-progress", *extra]) == 0
    groups = _reference_groups(TRAIN_COUNTS, thresholds)
    for row in json.loads(out.read_text())["results"]:
        pred = _reference_knn_top1(xtr, ytr, xte, row["k"], row["temperature"])
        assert row["top1"] == pytest.approx(100.0 * np.mean(pred == yte))
        assert row["per_group"]["groups"] == groups
        _assert_group_parity(row["per_group"], _reference_per_group(pred, yte, groups))


def test_logreg_per_group_matches_numpy_from_the_saved_head(tmp_path):
    tr, te, (xtr, ytr, xte, yte) = _pair(tmp_path)
    out, head = tmp_path / "l.json", tmp_path / "h.pt"
    assert linear_main(["--protocol", "logreg", "--train", tr, "--test", te, "--json", str(out),
                        "--save-head", str(head), "--no-progress"]) == 0
    blob = torch.load(head, weights_only=True)
    state = {k: v.double().numpy() for k, v in blob["head"].items() if v.is_floating_point()}
    x = (xte.astype(np.float64) - state["norm.running_mean"]) / np.sqrt(state["norm.running_var"] + 1e-6)
    pred = (x @ state["fc.weight"].T + state["fc.bias"]).argmax(1)  # (Q,)
    report = json.loads(out.read_text())
    assert report["top1"] == pytest.approx(100.0 * np.mean(pred == yte))
    _assert_group_parity(report["per_group"], _reference_per_group(pred, yte, _reference_groups(TRAIN_COUNTS)))


def test_group_counts_file_defines_the_groups(tmp_path):
    """--group-counts (a JSON list or .npy) replaces the train labels' own counts."""
    tr, te, _ = _pair(tmp_path)
    counts = [1, 2, 300, 4, 500, 6]  # many: classes 4, 2; few: 0, 1
    (tmp_path / "c.json").write_text(json.dumps(counts))
    np.save(tmp_path / "c.npy", np.asarray(counts, dtype=np.int32))
    for path in ("c.json", "c.npy"):
        out = tmp_path / f"{path}.out.json"
        assert knn_main(["--train", tr, "--test", te, "--k", "5", "--group-counts", str(tmp_path / path),
                         "--json", str(out), "--no-progress"]) == 0
        groups = json.loads(out.read_text())["results"][0]["per_group"]["groups"]
        assert groups == {"many": [2, 4], "medium": [3, 5], "few": [0, 1]}


def test_shot_draws_are_balanced_reproducible_and_differ():
    from ssl_bf.eval.few_shot_probe import draw_rows

    labels = np.repeat(np.arange(5), [30, 25, 20, 15, 12])
    a, b, c = draw_rows(labels, 7, None, 3, 0), draw_rows(labels, 7, None, 3, 0), draw_rows(labels, 7, None, 3, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(np.bincount(labels[a]), np.full(5, 7)) and len(np.unique(a)) == len(a)
    assert not np.array_equal(a, draw_rows(labels, 7, None, 4, 0))  # another seed, other rows
    frac = draw_rows(labels, None, 0.2, 0, 0)
    assert list(np.bincount(labels[frac])) == [6, 5, 4, 3, 2]  # round(0.2 x n_c)


def test_linear_few_shot_json_mean_std_and_reproducible(tmp_path):
    tr, te, (_, ytr, _, _) = _pair(tmp_path)
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    for out in outs:
        assert linear_main(["--protocol", "logreg", "--train", tr, "--test", te, "--shots", "8", "--draws", "3",
                            "--max-iter", "30", "--json", str(out), "--no-progress"]) == 0
    a, b = (json.loads(o.read_text()) for o in outs)
    strip = [{k: v for k, v in d.items() if k != "seconds"} for d in a["draws"]]
    assert strip == [{k: v for k, v in d.items() if k != "seconds"} for d in b["draws"]]  # same seed, same draws
    assert a["num_draws"] == 3 and all(d["train_rows"] == 8 * 6 for d in a["draws"])
    top1 = [d["top1"] for d in a["draws"]]
    assert a["top1"] == pytest.approx(np.mean(top1)) and a["top1_std"] == pytest.approx(np.std(top1, ddof=1))
    many = [d["per_group"]["many"] for d in a["draws"]]
    assert a["per_group"]["many"] == pytest.approx(np.mean(many))
    assert a["per_group_std"]["many"] == pytest.approx(np.std(many, ddof=1))
    assert a["per_group"]["groups"] == _reference_groups(TRAIN_COUNTS)  # the full train set's groups, not the draw's


def test_few_shot_choice_never_sees_the_test_labels(tmp_path):
    """The L2 each draw chooses is the same whatever the test labels are (held out from the drawn rows)."""
    tr, te, (_, _, xte, yte) = _pair(tmp_path)
    shuffled = str(tmp_path / "shuffled.safetensors")
    save_embeddings(shuffled, xte, np.random.default_rng(5).permutation(yte))
    chosen = []
    for test in (te, shuffled):
        out = tmp_path / "c.json"
        assert linear_main(["--protocol", "logreg", "--train", tr, "--test", test, "--shots", "10", "--draws", "2",
                            "--max-iter", "30", "--json", str(out), "--no-progress"]) == 0
        chosen.append([d["l2"] for d in json.loads(out.read_text())["draws"]])
    assert chosen[0] == chosen[1]


@pytest.mark.parametrize("protocol", ["cached", "logreg"])
def test_one_shot_and_label_fraction(tmp_path, protocol, capsys):
    tr, te, _ = _pair(tmp_path)
    out = tmp_path / "o.json"
    assert linear_main(["--protocol", protocol, "--train", tr, "--test", te, "--shots", "1", "--draws", "2",
                        "--epochs", "2", "--max-iter", "20", "--json", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert report["num_draws"] == 2 and all(d["train_rows"] == 6 for d in report["draws"])
    assert "nothing held out" in capsys.readouterr().out
    assert linear_main(["--protocol", protocol, "--train", tr, "--test", te, "--label-fraction", "0.25",
                        "--epochs", "2", "--max-iter", "20", "--json", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert report["num_draws"] == 1 and report["draws"][0]["train_rows"] == sum(round(0.25 * n) for n in TRAIN_COUNTS)
    assert linear_main(["--protocol", protocol, "--train", tr, "--test", te, "--shots", "1", "--lrs", "0.1", "1",
                        "--l2", "0.1", "0.01", "--no-progress"]) == 2  # two values, nothing to choose them on


def test_knn_few_shot_bank(tmp_path, capsys):
    tr, te, (xtr, ytr, xte, yte) = _pair(tmp_path)
    out = tmp_path / "k.json"
    assert knn_main(["--train", tr, "--test", te, "--k", "5", "--temperature", "0.1", "--shots", "6", "--draws", "2",
                     "--seed", "4", "--json", str(out), "--no-progress"]) == 0
    row = json.loads(out.read_text())["results"][0]
    from ssl_bf.eval.few_shot_probe import draw_rows

    for draw in row["draws"]:  # each draw's figure is the vote over that draw's bank
        rows = draw_rows(ytr, 6, None, 4, draw["draw"])
        pred = _reference_knn_top1(xtr[rows], ytr[rows], xte, 5, 0.1)
        assert draw["top1"] == pytest.approx(100.0 * np.mean(pred == yte))
        assert draw["train_rows"] == 36
    assert row["top1"] == pytest.approx(np.mean([d["top1"] for d in row["draws"]]))
    assert "k=5 T=0.1: top-1" in capsys.readouterr().out
    assert knn_main(["--train", tr, "--test", te, "--k", "50", "--shots", "6", "--no-progress"]) == 2
    assert "few-shot bank" in capsys.readouterr().err


def test_results_reader_checks_the_new_fields():
    from ssl_bf.report.inputs import results_problem

    good = {"knn": [{"k": 20, "temperature": 0.1, "top1": 50.0, "top5": 90.0,
                     "per_group": {"many": 60.0, "medium": None, "few": 30.0, "class_std": 12.0,
                                   "per_class": {"0": 60.0}, "groups": {"many": [0, 150], "medium": [], "few": [999]},
                                   "rule": "thirds"}}],
            "few_shot": {"10": {"top1": 40.0, "top1_std": 2.0, "per_group": {"many": 50.0, "medium": 40.0, "few": 30.0,
                                                                              "class_std": 5.0, "groups": {"few": [7]}},
                                "per_group_std": {"many": 1.0, "medium": 1.0, "few": 1.0, "class_std": 1.0},
                                "draws": [{"top1": 40.0, "per_group": {"many": 50.0}}]}}}
    assert results_problem(good) is None  # class indices in `groups` are not accuracies
    for path, bad in ((("knn", 0, "per_group", "few"), 250.0), (("few_shot", "10", "per_group", "many"), -3.0),
                      (("few_shot", "10", "draws", 0, "per_group", "many"), "high"),
                      (("few_shot", "10", "per_group_std", "medium"), 101),
                      (("knn", 0, "per_group", "per_class", "0"), 100.5)):
        data = json.loads(json.dumps(good))
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = bad
        problem = results_problem(data)
        assert problem and str(path[-1]) in problem, (path, problem)
    assert "'few_shot' is a JSON list" in results_problem({**good, "few_shot": [good["few_shot"]["10"]]})


def test_evaluate_long_tailed_run(tmp_path, capsys):
    """RUN/data_indices.npy marks a long-tailed run: groups from those rows' labels, 100- and 10-shot
    by default (100 left out with a note when no class has 100 images), every figure per group."""
    from test_embed import _fashion_mnist_or_skip, make_run

    from ssl_bf.eval.evaluate_cli import evaluate_main
    from ssl_bf.eval.formats import load_embeddings
    from ssl_bf.report.inputs import read_results

    _fashion_mnist_or_skip()
    run = make_run(tmp_path)
    base = [run, "--subset", "300", "--no-progress", "--device", "cpu", "--draws", "2"]
    from ssl_bf.data import build_dataset

    labels = build_dataset("fashion-mnist", split="train", subset=300).labels.numpy()
    keep = np.concatenate([np.flatnonzero(labels == c)[:max(1, 30 - 3 * c)] for c in range(10)])
    np.save(os.path.join(run, "data_indices.npy"), np.sort(keep).astype(np.int64))
    assert evaluate_main(base) == 0
    printed = capsys.readouterr()
    assert "100-shot left out" in printed.err and "10-shot" in printed.out
    results = json.loads(open(os.path.join(run, "results.json")).read())
    assert set(results["few_shot"]) == {"10"} and results["few_shot"]["10"]["num_draws"] == 2
    assert "data_indices.npy" in results["evaluated"]["groups_from"]
    counts = np.bincount(labels[keep], minlength=10)
    assert results["knn"][0]["per_group"]["groups"] == _reference_groups(list(counts))
    assert all("per_group" in results[k] for k in ("linear", "logreg"))
    emb = load_embeddings(os.path.join(run, "embeddings", "train.safetensors"))
    assert len(emb) == 300 and read_results(run)[2] == "ok"
    assert evaluate_main([*base, "--reuse-embeddings", "--shots", "none", "--linear", "logreg"]) == 0
    assert "few_shot" not in json.loads(open(os.path.join(run, "results.json")).read())  # no stale figures


def test_image_probe_reports_per_group(tmp_path):
    """`linear --protocol mocov2`: per_group from the train split's counts; the groups' accuracies,
    weighted by their test images, give the overall top-1 back."""
    from test_embed import _fashion_mnist_or_skip, make_run

    from ssl_bf.data import build_dataset

    _fashion_mnist_or_skip()
    run = make_run(tmp_path)
    out = tmp_path / "m.json"
    assert linear_main(["--protocol", "mocov2", "--checkpoint", os.path.join(run, "checkpoints", "last.pt"),
                        "--subset", "60", "--epochs", "1", "--workers", "0", "--device", "cpu", "--json", str(out),
                        "--no-progress"]) == 0
    report = json.loads(out.read_text())
    train = build_dataset("fashion-mnist", split="train", subset=60).labels.numpy()
    test = build_dataset("fashion-mnist", split="test", subset=60).labels.numpy()
    group = report["per_group"]
    assert group["groups"] == _reference_groups(list(np.bincount(train, minlength=10)))
    weighted = sum(group[g] * np.isin(test, group["groups"][g]).sum() for g in ("many", "medium", "few")
                   if group[g] is not None)
    assert weighted / len(test) == pytest.approx(report["top1"])
