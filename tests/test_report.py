"""`ssl-bf report`: real 1-epoch runs on a Fashion-MNIST subset, evaluated, then reported."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from tiny_run import tiny_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_ARGS = ("train.epochs=1", "data.subset=256", "monitor.knn_every=1", "monitor.knn_at_start=true",
            "monitor.full_sets=false", "monitor.bank_subset=256", "monitor.query_subset=128")
TSNE = ("--tsne-sample", "120")


def _fashion_mnist_or_skip():
    from ssl_bf.data import DataError, build_dataset

    try:
        build_dataset("fashion-mnist", split="test", subset=16)
    except DataError as err:
        pytest.skip(f"Fashion-MNIST unavailable: {err}")


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """A sweep of two seeds of one variant, each trained 1 epoch and evaluated on 300 images."""
    from ssl_bf.eval.evaluate_cli import evaluate_main
    from ssl_bf.launch.sweep import expand, write_sweep
    from ssl_bf.train.trainer import pretrain

    _fashion_mnist_or_skip()
    base = str(tmp_path_factory.mktemp("sweep"))
    sweep = expand({"seed": ["0", "1"]}, base, variants={"mocov2": {"batchformer.enabled": "false"}},
                   variants_first=False)
    write_sweep(sweep)
    for el in sweep.elements:
        pretrain(tiny_config(None, *RUN_ARGS, f"run.dir={el.run_dir}",
                             *(f"{k}={v}" for k, v in el.overrides.items())))
        assert evaluate_main([el.run_dir, "--subset", "300", "--no-progress", "--device", "cpu",
                              "--workers", "0"]) == 0
    return base


def _check_png(path: str) -> None:
    import matplotlib.image

    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC, path
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4) and img.shape[0] > 100 and img.shape[1] > 100, img.shape


def _results(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "results.json")) as f:
        return json.load(f)


def _headline(res: dict) -> dict[str, float]:
    knn = {(r["k"], r["temperature"]): r["top1"] for r in res["knn"]}
    return {"knn[k=20,temperature=0.07].top1": knn[(20, 0.07)], "knn[k=200,temperature=0.1].top1": knn[(200, 0.1)],
            "linear.top1": res["linear"]["top1"], "logreg.top1": res["logreg"]["top1"]}


def _read_report(out: str) -> tuple[str, dict]:
    with open(os.path.join(out, "report.md")) as f:
        md = f.read()
    with open(os.path.join(out, "report.json")) as f:
        return md, json.load(f)


def test_report_single_run(sweep_dir, tmp_path, capsys):
    from ssl_bf.report.run_report import report_main

    run = os.path.join(sweep_dir, "seed=0__variant=mocov2")
    out = str(tmp_path / "single")
    assert report_main([run, "--out", out, *TSNE]) == 0
    assert "report.md" in capsys.readouterr().out
    for name in ("loss.png", "knn.png", "ablation.png", "tsne.png"):
        _check_png(os.path.join(out, name))
        assert f"]({name})" in _read_report(out)[0]  # embedded with a relative link
    md, rep = _read_report(out)
    headline = _headline(_results(run))
    (variant,) = rep["variants"]
    assert variant["label"] == "seed=0__variant=mocov2" and variant["runs"] == ["seed=0__variant=mocov2"]
    for metric, value in headline.items():
        cell = variant["results"][metric]
        assert cell["mean"] == value and cell["n"] == 1 and cell["std"] is None
    row = next(line for line in md.splitlines() if line.startswith("| seed=0__variant=mocov2 | "))
    assert f"{headline['knn[k=20,temperature=0.07].top1']:.2f} (n=1)" in row
    assert f"{headline['logreg.top1']:.2f} (n=1)" in row
    assert "Raw-pixel anchors (fashion-mnist)" in md and "84.59" in md
    (timing,) = rep["runs"]
    metrics = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    epoch_end = [r for r in metrics if "train_seconds" in r]
    knn = [r for r in metrics if r.get("event") == "knn"]
    assert len(epoch_end) == 1 and len(knn) == 1 and knn[0]["epoch"] == epoch_end[0]["epoch"] == 0
    expected = epoch_end[0]["train_seconds"] + knn[0]["knn_seconds"]
    assert timing["train_seconds"] == pytest.approx(expected, abs=0.01)
    assert timing["eval_seconds"] == _results(run)["evaluated"]["seconds"]
    assert timing["missing"] == [] and rep["tsne"]["sample"] == 120
    assert f"`ssl-bf report {run} --out {out} --tsne-sample 120`" in md


def test_report_sweep(sweep_dir, tmp_path):
    from ssl_bf.report.run_report import report_main
    from ssl_bf.report.sweep_table import aggregate, collect

    out = str(tmp_path / "sweep")
    assert report_main([sweep_dir, "--out", out, *TSNE]) == 0
    for name in ("loss.png", "knn.png", "ablation.png", "tsne.png"):
        _check_png(os.path.join(out, name))
    md, rep = _read_report(out)
    keys, runs, missing = collect(sweep_dir)
    assert missing == [] and len(runs) == 2
    _, rows = aggregate(keys, runs)
    (variant,) = rep["variants"]
    assert variant["label"] == "mocov2" and len(variant["runs"]) == 2
    values = [_headline(_results(os.path.join(sweep_dir, f"seed={s}__variant=mocov2"))) for s in (0, 1)]
    row = next(line for line in md.splitlines() if line.startswith("| mocov2 | "))
    for metric in values[0]:
        agg = next(r for r in rows if r["metric"] == metric)
        cell = variant["results"][metric]
        assert (cell["mean"], cell["std"], cell["n"]) == (agg["mean"], agg["std"], 2)
        assert cell["mean"] == pytest.approx(np.mean([v[metric] for v in values]))
        assert cell["std"] == pytest.approx(np.std([v[metric] for v in values], ddof=1))
        assert f"{cell['mean']:.2f} ± {cell['std']:.2f} (n=2)" in row
    assert [r["name"] for r in rep["runs"]] == ["seed=0__variant=mocov2", "seed=1__variant=mocov2"]
    assert rep["group_keys"] == ["variant"] and "mean ± sample std over seed" in md


def test_report_folder_of_runs_with_a_partial_run(sweep_dir, tmp_path):
    """No sweep.json: runs are the sub-folders; one without results.json still gets its curves."""
    from ssl_bf.report.run_report import report_main

    folder = tmp_path / "runs"
    for s in (0, 1):
        shutil.copytree(os.path.join(sweep_dir, f"seed={s}__variant=mocov2"), folder / f"s{s}")
    os.remove(folder / "s1" / "results.json")
    shutil.rmtree(folder / "s1" / "embeddings")
    assert report_main([str(folder), "--no-tsne"]) == 0
    out = folder / "report"
    for name in ("loss.png", "knn.png", "ablation.png"):
        _check_png(str(out / name))
    assert not (out / "tsne.png").exists()
    md, rep = _read_report(str(out))
    assert rep["group_keys"] == [] and rep["keys"] == ["seed"]
    (variant,) = rep["variants"]
    assert variant["runs"] == ["s0", "s1"] and variant["results"]["linear.top1"]["n"] == 1
    assert "- `s1`: no results.json (not evaluated); no embeddings/test.safetensors" in md
    s1 = next(r for r in rep["runs"] if r["name"] == "s1")
    assert s1["train_seconds"] > 0 and s1["eval_seconds"] is None


def test_where_a_run_writes_and_how_it_shows_progress_never_split_variants():
    """Two runs that differ only in run.dir/run.progress/run.tensorboard are one variant; any other
    differing key (here BatchFormer on/off) still splits them."""
    from ssl_bf.report.sweep_table import differing_keys

    a = {"seed": 0, "run.dir": "a", "run.progress": True, "run.tensorboard": True, "batchformer.enabled": True}
    b = dict(a, **{"run.dir": "b", "run.progress": False, "run.tensorboard": False})
    assert differing_keys([a, b]) == []
    assert differing_keys([a, dict(b, **{"batchformer.enabled": False})]) == ["batchformer.enabled"]
    assert differing_keys([a, dict(b, **{"train.log_every": 7})]) == ["train.log_every"]


def test_report_errors(tmp_path, capsys):
    from ssl_bf.cli import main

    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no runs under" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "report").exists()
    broken = tmp_path / "runs" / "r0"  # a run whose config.yaml is not YAML: an error naming the file
    broken.mkdir(parents=True)
    (broken / "config.yaml").write_text("seed: [0\n")
    (broken / "results.json").write_text('{"linear": {"top1": 50.0}}')
    for command in ("report", "sweep-report"):
        assert main([command, str(tmp_path / "runs")]) == 2
        err = capsys.readouterr().err
        assert f"ssl-bf {command}: error: {broken / 'config.yaml'}: not valid YAML" in err, err


def test_mean_curve_keeps_only_the_points_every_run_has():
    from ssl_bf.report.records import mean_curve

    full, cut = ([1.0, 2.0, 3.0], [10.0, 20.0, 30.0]), ([1.0, 2.0], [12.0, 22.0])
    m = mean_curve([full, cut, ([], [])])  # a run with no points yet does not count
    assert m["x"] == [1.0, 2.0] and m["mean"] == [11.0, 21.0] and m["n"] == 2
    assert m["low"] == [10.0, 20.0] and m["high"] == [12.0, 22.0]
    assert mean_curve([([], [])]) is None


def test_report_lists_every_run_it_could_not_read(tmp_path, capsys):
    """A sweep whose runs have a corrupt and a non-object results.json: the table averages the one
    readable run (n=1), report.md/report.json/stdout name the other two with the file and the reason,
    and the exit code is 3 (0 with --allow-missing)."""
    from ssl_bf.cli import main
    from ssl_bf.launch.sweep import expand, write_sweep

    base = tmp_path / "sweep"
    sweep = expand({"seed": ["0", "1", "2"]}, str(base))
    for el, text in zip(sweep.elements, ['{"linear": {"top1": 61.5}}', '{"linear": {"top1": 6', '[61.5]']):
        os.makedirs(el.run_dir)
        with open(os.path.join(el.run_dir, "config.yaml"), "w") as f:
            f.write(f"seed: {el.overrides['seed']}\n")
        with open(os.path.join(el.run_dir, "results.json"), "w") as f:
            f.write(text)
    write_sweep(sweep)
    out = tmp_path / "out"
    assert main(["report", str(base), "--no-tsne", "--out", str(out)]) == 3
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1 and "--allow-missing" in captured.err
    md, rep = _read_report(str(out))
    bad, listed = base / "seed=1" / "results.json", base / "seed=2" / "results.json"
    assert f"- `seed=1`: {bad}: not valid JSON" in md and f"- `seed=2`: {listed}: holds a JSON list" in md
    assert f"seed=1: {bad}: not valid JSON" in captured.out
    assert f"seed=2: {listed}: holds a JSON list, not a JSON object" in captured.out
    assert [(n["name"], n["kind"]) for n in rep["not_read"]] == [("seed=1", "unreadable"), ("seed=2", "unreadable")]
    (variant,) = rep["variants"]
    assert variant["results"]["linear.top1"] == {"mean": 61.5, "std": None, "n": 1, "values": [61.5]}
    assert main(["report", str(base), "--no-tsne", "--out", str(out), "--allow-missing"]) == 0
    assert "seed=2" in capsys.readouterr().out


# --- issue 21, cause 6: impossible values, degenerate t-SNE inputs --------------------------------
@pytest.mark.parametrize("results, problem", [
    ({"knn": [{"k": 20, "temperature": 0.07, "top1": 70.0, "top5": None}], "linear": None, "extra": {"x": [1, "a"]}},
     None),
    ({"linear": {"top1": 100.0, "top5": 0}, "evaluated": {"seconds": 12.5, "epoch": 3}}, None),
    ({"linear": {"top1": 100.01}}, "'linear.top1' is 100.01, outside [0, 100] (an accuracy in percent)"),
    ({"knn": [{"k": 20, "top1": "71"}]}, "'knn[0].top1' is a JSON string, not a number"),
    ({"logreg": {"acc1": True}}, "'logreg.acc1' is a JSON boolean, not a number"),
    ({"knn": [{"k": 20, "top5": float("nan")}]}, "'knn[0].top5' is nan, outside [0, 100] (an accuracy in percent)"),
    ({"evaluated": {"seconds": float("-inf")}}, "'evaluated.seconds' is -inf, not a finite number"),
    ({"evaluated": {"rows": 10 ** 301}}, "'evaluated.rows' is a number too large for a table"),
    ({"knn": {"top1": 70}}, "'knn' is a JSON object, not a list"),
    ({"knn": [{"k": 0, "top1": 70}]}, "knn[0] has k = 0, not a count"),
    ({"knn": [{"k": 20, "temperature": -1, "top1": 70}]}, "knn[0] has temperature = -1, not a positive number"),
    ({"x": {"val_accuracy": [50]}}, "'x.val_accuracy' is a JSON list, not a number"),
])
def test_results_problem_names_the_first_impossible_value(results, problem):
    from ssl_bf.report.inputs import results_problem

    assert results_problem(results) == problem


def test_results_nested_deeper_than_a_results_file_are_refused_without_recursion():
    from ssl_bf.report.inputs import MAX_DEPTH, results_problem

    deep: list = []
    for _ in range(5000):
        deep = [deep]
    assert f"nested more than {MAX_DEPTH} levels deep" in results_problem({"extra": deep})


def test_means_stay_finite_and_match_a_float64_reference():
    from ssl_bf.report.sweep_table import mean_and_std

    rng = np.random.default_rng(0)
    for scale in (1.0, 1e-300, 1e150, 1e307):
        values = list(rng.uniform(-1, 1, size=5) * scale)
        mean, std = mean_and_std(values)
        ref = np.asarray(values, dtype=np.float64) / scale
        assert np.isclose(mean / scale, ref.mean(), rtol=1e-12) and np.isclose(std / scale, ref.std(ddof=1), rtol=1e-12)
    assert mean_and_std([1.7e308, 1.7e308]) == (1.7e308, 0.0)
    assert mean_and_std([70.0, 71.0, 72.0]) == (71.0, 1.0) and np.isnan(mean_and_std([61.5])[1])


@pytest.mark.parametrize("name, rows, words", [
    ("all zeros", np.zeros((50, 8)), "only 1 distinct direction(s) among 50 points"),
    ("one point", np.ones((1, 8)), "only 1 distinct direction(s) among 1 points"),
    ("two points", np.repeat(np.eye(8)[:2], 25, axis=0), "only 2 distinct direction(s)"),
    ("identical points", np.tile(np.arange(8.0), (50, 1)), "only 1 distinct direction(s)"),
    ("one direction at many scales", np.tile(np.arange(8.0), (50, 1)) * np.linspace(1, 2, 50)[:, None], "direction"),
    ("NaN", np.where(np.eye(50, 8) > 0, np.nan, 1.0), "NaN or infinite"),
    ("one dimension", np.arange(50.0)[:, None], "rows of 2 or more values"),
])
def test_tsne_refuses_degenerate_rows_before_scikit_learn_sees_them(name, rows, words):
    """scikit-learn crashes the process (SIGSEGV) on all-zero or identical rows: the check runs first."""
    from ssl_bf.report.tsne import MapError, map_problem, tsne_2d

    assert words in map_problem(rows)
    with pytest.raises(MapError, match="direction|NaN|values"):
        tsne_2d(rows)
    assert map_problem(np.random.default_rng(0).normal(size=(50, 8))) is None
