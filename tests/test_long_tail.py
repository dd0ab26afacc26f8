"""Long-tailed subsets, class groups, per-group accuracy and few-shot draws: formulas, round trips,
an independent numpy computation, balance and reproducibility."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssl_bf.data.few_shot import FewShotError, fraction_indices, mean_std, shot_indices
from ssl_bf.data.long_tail import (LongTailError, check_indices, class_counts, draw_long_tail, long_tail_counts,
                                   make_groups, per_group_accuracy, read_index_file)

from fuzz_contract import count, fuzz_examples


def test_exp_counts_follow_the_ldam_formula_on_fashion_mnist_sizes():
    counts = long_tail_counts([6000] * 10, 100, "exp")
    expected = [math.floor(6000 * 100 ** (-c / 9)) for c in range(10)]
    assert counts.tolist() == expected and counts[0] == 6000 and counts[-1] == 60
    assert counts.tolist() == [int(6000 * 0.01 ** (c / 9.0)) for c in range(10)]  # LDAM: img_max * imb_factor^(c/(C-1))


def test_step_counts_and_ratio_one_is_the_balanced_split():
    assert long_tail_counts([500] * 4, 10, "step").tolist() == [500, 500, 50, 50]
    assert long_tail_counts([500, 700, 600], 1, "exp").tolist() == [500, 500, 500]


@pytest.mark.parametrize("ratio,kind,says", [(0.5, "exp", "at least 1"), (float("nan"), "exp", "at least 1"),
                                             (10_000, "exp", "without images"), (2, "linear", "one of exp, step")])
def test_bad_long_tail_settings_are_refused(ratio, kind, says):
    with pytest.raises(LongTailError, match=says):
        long_tail_counts([6000] * 10, ratio, kind)


def test_a_draw_has_the_formulas_counts_and_is_a_function_of_the_split():
    labels = np.repeat(np.arange(10), 300)[np.random.default_rng(1).permutation(3000)]
    a, b, c = draw_long_tail(labels, 50, "exp", 0), draw_long_tail(labels, 50, "exp", 0), draw_long_tail(labels, 50, "exp", 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert class_counts(labels[a], 10).tolist() == long_tail_counts([300] * 10, 50).tolist()
    assert np.array_equal(a, np.unique(a))


@settings(max_examples=fuzz_examples(60))
@given(st.lists(st.integers(2, 60), min_size=2, max_size=12), st.floats(1, 80), st.sampled_from(["exp", "step"]),
       st.integers(0, 2 ** 31))
def test_fuzz_draws_match_the_formula_or_are_refused_naming_the_key(sizes, ratio, kind, split):
    count("long_tail_draws")
    labels = np.repeat(np.arange(len(sizes)), sizes)
    try:
        idx = draw_long_tail(labels, ratio, kind, split)
    except LongTailError as err:
        assert "data.long_tail" in str(err)
        assert min(sizes) / ratio < 1 or ("step" == kind and min(sizes) // 1 < ratio)
        return
    counts = class_counts(labels[idx], len(sizes))
    n_max = min(sizes)
    if kind == "exp":
        expected = [math.floor(n_max * ratio ** (-c / (len(sizes) - 1)) + 1e-9) for c in range(len(sizes))]
    else:
        expected = [n_max if c < len(sizes) // 2 else math.floor(n_max / ratio + 1e-9) for c in range(len(sizes))]
    assert counts.tolist() == expected
    assert np.array_equal(idx, np.unique(idx))


def test_the_index_file_round_trips_as_npy_and_as_a_path_list(tmp_path):
    labels = np.repeat(np.arange(4), 25)
    idx = draw_long_tail(labels, 5, "exp", 3)
    np.save(tmp_path / "split.npy", idx)
    assert np.array_equal(read_index_file(str(tmp_path / "split.npy"), len(labels)), idx)
    paths = [f"/data/train/c{int(y)}/img{i}.jpg" for i, y in enumerate(labels)]
    (tmp_path / "split.txt").write_text("".join(f"train/c{int(labels[i])}/img{i}.jpg {int(labels[i])}\n" for i in idx))
    assert np.array_equal(read_index_file(str(tmp_path / "split.txt"), len(labels), paths, root="/data"), idx)


@pytest.mark.parametrize("content,says", [
    (np.array([0, 5, 5]), "listed twice"), (np.array([0, 100]), "outside the train split"),
    (np.array([[0, 1]]), "1-D"), (np.array([0.5, 1.0]), "integers"), (np.array([], dtype=np.int64), "non-empty"),
    (np.array([-1, 2]), "outside the train split")])
def test_bad_index_files_are_refused_naming_the_file(tmp_path, content, says):
    path = tmp_path / "bad.npy"
    np.save(path, content)
    with pytest.raises(LongTailError, match=says):
        read_index_file(str(path), 100)


def test_a_pickled_or_missing_index_file_is_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(LongTailError, match="not a readable .npy"):
        read_index_file(str(tmp_path / "obj.npy"), 10)
    with pytest.raises(LongTailError, match="does not exist"):
        read_index_file(str(tmp_path / "nope.npy"), 10)
    with pytest.raises(LongTailError, match="outside"):
        check_indices(np.array([3, 11]), 10, "x")


def test_groups_are_thirds_by_count_or_thresholds():
    counts = long_tail_counts([6000] * 10, 100)
    g = make_groups(counts)
    assert g.members == {"many": (0, 1, 2), "medium": (3, 4, 5, 6), "few": (7, 8, 9)}
    shuffled = make_groups([60, 6000, 464, 100, 3597, 774, 166, 2156, 278, 1292])
    assert shuffled.members["many"] == (1, 4, 7) and shuffled.members["few"] == (0, 3, 6)
    t = make_groups([500, 101, 100, 20, 19, 0], thresholds=(100, 20))
    assert t.members == {"many": (0, 1), "medium": (2, 3), "few": (4, 5)}
    with pytest.raises(LongTailError, match="HIGH >= LOW"):
        make_groups([1, 2], thresholds=(5, 10))


def _numpy_reference(pred, labels, groups):
    """Per-group top-1 and class std written independently of the library: loops over classes."""
    out, per_class = {}, []
    for name, cls in groups.items():
        hits = total = 0
        for c in cls:
            rows = [i for i in range(len(labels)) if labels[i] == c]
            hits += sum(1 for i in rows if pred[i] == c)
            total += len(rows)
        out[name] = 100.0 * hits / total if total else None
    for c in sorted(set(labels.tolist())):
        rows = [i for i in range(len(labels)) if labels[i] == c]
        per_class.append(100.0 * sum(pred[i] == c for i in rows) / len(rows))
    mean = sum(per_class) / len(per_class)
    out["class_std"] = math.sqrt(sum((v - mean) ** 2 for v in per_class) / len(per_class))
    return out


def test_per_group_accuracy_equals_an_independent_computation_on_a_fixed_pair():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 100)
    pred = np.where(rng.random(1000) < np.linspace(0.95, 0.3, 10)[labels], labels, rng.integers(0, 10, 1000))
    groups = make_groups(long_tail_counts([6000] * 10, 100))
    got = per_group_accuracy(pred, labels, groups)
    ref = _numpy_reference(pred, labels, groups.members)
    for key in ("many", "medium", "few", "class_std"):
        assert got[key] == pytest.approx(ref[key], abs=1e-9), key
    assert got["many"] > got["few"]


@settings(max_examples=fuzz_examples(80))
@given(st.integers(2, 12), st.integers(1, 200), st.integers(0, 2 ** 31))
def test_fuzz_per_group_accuracy_matches_the_reference(classes, n, seed):
    count("per_group_accuracy")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    pred = rng.integers(0, classes, n)
    groups = make_groups(rng.integers(1, 1000, classes))
    got, ref = per_group_accuracy(pred, labels, groups), _numpy_reference(pred, labels, groups.members)
    for key in ("many", "medium", "few", "class_std"):
        assert (got[key] is None and ref[key] is None) or got[key] == pytest.approx(ref[key], abs=1e-9)


def test_shots_are_balanced_reproducible_and_refused_above_the_smallest_class():
    labels = np.repeat(np.arange(5), [40, 30, 20, 10, 50])
    a = shot_indices(labels, 10, seed=3, draw=0)
    assert np.bincount(labels[a]).tolist() == [10] * 5
    assert np.array_equal(a, shot_indices(labels, 10, seed=3, draw=0))
    assert not np.array_equal(a, shot_indices(labels, 10, seed=3, draw=1))
    with pytest.raises(FewShotError, match="more than the 10 train images of class 3"):
        shot_indices(labels, 11)


def test_label_fractions_are_class_balanced():
    labels = np.repeat(np.arange(3), [1000, 500, 30])
    idx = fraction_indices(labels, 0.01, seed=0)
    assert np.bincount(labels[idx]).tolist() == [10, 5, 1]
    assert np.bincount(labels[fraction_indices(labels, 0.1)]).tolist() == [100, 50, 3]
    with pytest.raises(FewShotError, match="label-fraction"):
        fraction_indices(labels, 0)
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert mean_std([5.0]) == (5.0, 0.0)
