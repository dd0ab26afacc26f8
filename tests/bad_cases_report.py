"""Bad inputs of `ssl-bf report`, `ssl-bf sweep-report` and `ssl-bf submit` (harness:
tests/bad_inputs_harness.py, run by tests/test_bad_inputs.py).

The sweep cases copy the finished tiny run three times into {tmp}/sweep/seed=0..2, give each a
results.json (valid, or one of the bad ones below) and write a sweep.json as `ssl-bf submit
--sweep seed=0,1,2` records it. A report never hides a run: a run it could not read is listed
with the file and the reason, and the command exits 3 unless --allow-missing is given.
Every submit case is a dry run or is refused before anything runs: nothing is ever submitted.
"""
from __future__ import annotations

import json
import os
import shutil

from bad_inputs_harness import Case, copy_run
from tiny_run import TINY

SEEDS = ("0", "1", "2")
RUNS = tuple(f"{{tmp}}/sweep/seed={s}" for s in SEEDS)  # the run folders, kept byte-identical


def _results(i: int) -> dict:
    return {"knn": [{"k": 20, "temperature": 0.07, "top1": 70.0 + i, "top5": 90.0},
                    {"k": 200, "temperature": 0.1, "top1": 68.0 + i, "top5": 89.0}],
            "linear": {"top1": 80.0 + i, "top5": 95.0, "protocol": "cached"},
            "logreg": {"top1": 79.0 + i, "top5": 94.0, "protocol": "logreg"}}


# What a run's results.json holds: a name here, or None for no file at all.
_RESULTS_FILES = {
    "broken": lambda p: open(p, "w").write('{"knn": [1, 2'),
    "list": lambda p: open(p, "w").write("[1, 2, 3]\n"),
    "number": lambda p: open(p, "w").write("42\n"),
    "empty": lambda p: open(p, "w").close(),
    "binary": lambda p: open(p, "wb").write(b"\xff\xfe\x00\x81" * 64),
    "folder": lambda p: os.makedirs(p),
}


def _element(name: str, base: str) -> dict:
    seed = name.split("=", 1)[1]
    return {"name": name, "overrides": {"seed": seed}, "run_dir": os.path.join(base, name), "job_id": None,
            "eval_job_id": None, "params": None}


def _sweep_json(base: str, names: list[str]) -> dict:
    return {"base_dir": base, "keys": ["seed"], "command": ["pretrain", "--config", TINY, f"run.dir={base}"],
            "elements": [_element(n, base) for n in names]}


def sweep(results=("ok", "ok", "ok"), sweep_json="ok", runs=SEEDS):
    """A setup: {tmp}/sweep with the runs `runs` (copies of the tiny run) whose results.json are
    `results` ("ok", a name of _RESULTS_FILES, or None), and a sweep.json over seeds 0, 1, 2:
    "ok", None (no sweep.json), text or bytes (written as they are) or a callable that
    edits the good one."""
    def setup(env, tmp):
        base = os.path.join(tmp, "sweep")
        os.makedirs(base)
        for i, seed in enumerate(SEEDS):
            if seed not in runs:
                continue
            run = copy_run(env, os.path.join(base, f"seed={seed}"))
            path = os.path.join(run, "results.json")
            kind = results[i]
            if kind == "ok":
                with open(path, "w") as f:
                    json.dump(_results(i), f)
            elif kind is not None:
                _RESULTS_FILES[kind](path)
        good = _sweep_json(base, [f"seed={s}" for s in SEEDS])
        path = os.path.join(base, "sweep.json")
        if sweep_json is None:
            return
        if isinstance(sweep_json, (str, bytes)) and sweep_json != "ok":
            with open(path, "wb") as f:
                f.write(sweep_json if isinstance(sweep_json, bytes) else sweep_json.encode())
            return
        data = good if sweep_json == "ok" else (sweep_json(good) if callable(sweep_json) else sweep_json)
        with open(path, "w") as f:
            json.dump(data, f)
    return setup


def moved_sweep(env, tmp):
    """{tmp}/sweep is a copy of the sweep {tmp}/old, whose sweep.json still records the old run folders;
    the copy's runs were re-evaluated (top-1 +10): the report must read the runs beside its sweep.json."""
    sweep()(env, tmp)
    os.rename(os.path.join(tmp, "sweep"), os.path.join(tmp, "old"))
    shutil.copytree(os.path.join(tmp, "old"), os.path.join(tmp, "sweep"))
    data = json.load(open(os.path.join(tmp, "old", "sweep.json")))
    data["elements"] = [_element(e["name"], os.path.join(tmp, "old")) for e in data["elements"]]
    with open(os.path.join(tmp, "sweep", "sweep.json"), "w") as f:
        json.dump(data, f)
    for i, seed in enumerate(SEEDS):
        res = _results(i + 10)
        with open(os.path.join(tmp, "sweep", f"seed={seed}", "results.json"), "w") as f:
            json.dump(res, f)


def run_with(results: str | None = None, embeddings: bool = False, metrics: str | None = None):
    """A setup: {tmp}/r, a copy of the tiny run with a bad results.json / test embeddings / metrics."""
    def setup(env, tmp):
        run = copy_run(env, os.path.join(tmp, "r"))
        if results is not None:
            _RESULTS_FILES[results](os.path.join(run, "results.json"))
        if embeddings:
            os.makedirs(os.path.join(run, "embeddings"), exist_ok=True)
            with open(os.path.join(run, "embeddings", "test.safetensors"), "wb") as f:
                f.write(os.urandom(2048))
        if metrics is not None:
            with open(os.path.join(run, "metrics.jsonl"), "wb") as f:
                f.write(metrics.encode("latin-1"))
    return setup


def write(name: str, text: str):
    """A setup: write {tmp}/NAME with `text`."""
    def setup(env, tmp):
        with open(os.path.join(tmp, name), "w") as f:
            f.write(text)
    return setup


def copy_config(env, tmp):
    shutil.copy(TINY, os.path.join(tmp, "c.yaml"))


def _edit(fn):
    def edit(good):
        fn(good)
        return good
    return edit


SR = ["sweep-report", "{tmp}/sweep"]
NOT_READ = ("--allow-missing",)  # every refusal over a run that could not be read says how to go on

CASES = [
    # ------------------------------------------------------------------ sweep-report: runs not read
    Case("sweep-report-corrupt-results-json", SR, code=3, setup=sweep(("ok", "broken", "ok")),
         says=("seed=1", "{tmp}/sweep/seed=1/results.json", "not valid JSON", *NOT_READ), unchanged=RUNS,
         wrong_result=True),
    Case("sweep-report-results-json-is-a-list", SR, code=3, setup=sweep(("ok", "list", "ok")),
         says=("seed=1", "{tmp}/sweep/seed=1/results.json", "a JSON list", *NOT_READ), unchanged=RUNS,
         wrong_result=True),
    Case("sweep-report-results-json-is-a-number", SR, code=3, setup=sweep(("ok", "ok", "number")),
         says=("seed=2", "{tmp}/sweep/seed=2/results.json", "a JSON number"), unchanged=RUNS, wrong_result=True),
    Case("sweep-report-results-json-empty", SR, code=3, setup=sweep(("empty", "ok", "ok")),
         says=("seed=0", "{tmp}/sweep/seed=0/results.json", "empty"), unchanged=RUNS, wrong_result=True),
    Case("sweep-report-results-json-binary", SR, code=3, setup=sweep(("ok", "binary", "ok")),
         says=("seed=1", "{tmp}/sweep/seed=1/results.json", "not valid JSON"), unchanged=RUNS),
    Case("sweep-report-results-json-is-a-folder", SR, code=3, setup=sweep(("ok", "ok", "folder")),
         says=("seed=2", "{tmp}/sweep/seed=2/results.json", "a folder"), unchanged=RUNS, wrong_result=True),
    Case("sweep-report-run-not-evaluated", SR, code=3, setup=sweep(("ok", None, "ok")),
         says=("seed=1", "no results.json", *NOT_READ), unchanged=RUNS),
    Case("sweep-report-run-folder-missing", SR, code=3, setup=sweep(runs=("0", "1")),
         says=("seed=2", "no run folder", *NOT_READ), unchanged=RUNS),
    Case("sweep-report-every-run-unreadable", SR, code=3, setup=sweep(("broken", "list", "empty")),
         says=("seed=0", "seed=1", "seed=2", "not valid JSON", "a JSON list", "empty"), unchanged=RUNS,
         wrong_result=True),
    Case("sweep-report-allow-missing-lists-the-corrupt-run", [*SR, "--allow-missing"], code=0,
         setup=sweep(("ok", "broken", "ok")),
         says=("seed=1", "{tmp}/sweep/seed=1/results.json", "not valid JSON", "71.00 ± 1.41 (n=2)"),
         unchanged=RUNS),
    Case("sweep-report-allow-missing-report-md-lists-the-run", [*SR, "--allow-missing", "--out", "{tmp}/o"],
         code=0, setup=sweep(("ok", "ok", "list")),
         says=("seed=2", "a JSON list", "{tmp}/o/sweep-report.md", "70.50 ± 0.71 (n=2)"), unchanged=RUNS),
    Case("sweep-report-folder-of-runs-corrupt-results", SR, code=3, setup=sweep(("ok", "broken", "ok"), None),
         says=("seed=1", "{tmp}/sweep/seed=1/results.json", "not valid JSON"), unchanged=RUNS,
         wrong_result=True),
    Case("sweep-report-folder-of-runs-list-results", SR, code=3, setup=sweep(("list", "ok", "ok"), None),
         says=("seed=0", "a JSON list"), unchanged=RUNS, wrong_result=True),
    Case("sweep-report-moved-sweep-reads-the-runs-beside-its-sweep-json", SR, code=0, setup=moved_sweep,
         says=("| knn[k=20,temperature=0.07].top1 | 81.00 ± 1.00 (n=3) |",), unchanged=("{tmp}/old", *RUNS),
         wrong_result=True),
    # ------------------------------------------------------------------ sweep-report: sweep.json
    Case("sweep-report-sweep-json-truncated", SR, setup=sweep(sweep_json='{"keys": ["seed"], "elements": [{'),
         says=("{tmp}/sweep/sweep.json", "not valid JSON"), unchanged=RUNS),
    Case("sweep-report-sweep-json-is-a-list", SR, setup=sweep(sweep_json="[1, 2, 3]\n"),
         says=("{tmp}/sweep/sweep.json", "JSON object"), unchanged=RUNS),
    Case("sweep-report-sweep-json-binary", SR, setup=sweep(sweep_json=b"\xff\xfe{\x81" * 32),
         says=("{tmp}/sweep/sweep.json",), unchanged=RUNS),
    Case("sweep-report-sweep-json-elements-not-a-list", SR,
         setup=sweep(sweep_json=_edit(lambda d: d.update(elements={"seed=0": {}}))),
         says=("{tmp}/sweep/sweep.json", "'elements'"), unchanged=RUNS),
    Case("sweep-report-sweep-json-element-without-name", SR,
         setup=sweep(sweep_json=_edit(lambda d: d["elements"][1].pop("name"))),
         says=("{tmp}/sweep/sweep.json", "element 1", "'name'"), unchanged=RUNS),
    Case("sweep-report-sweep-json-element-unknown-field", SR,
         setup=sweep(sweep_json=_edit(lambda d: d["elements"][0].update(rundir="x"))),
         says=("{tmp}/sweep/sweep.json", "element 0", "'rundir'"), unchanged=RUNS),
    Case("sweep-report-sweep-json-keys-a-string", SR,
         setup=sweep(sweep_json=_edit(lambda d: d.update(keys="seed"))),
         says=("{tmp}/sweep/sweep.json", "'keys'"), unchanged=RUNS),
    Case("sweep-report-sweep-json-params-not-an-object", SR,
         setup=sweep(sweep_json=_edit(lambda d: d["elements"][2].update(params=["seed", "2"]))),
         says=("{tmp}/sweep/sweep.json", "element 2", "'params'"), unchanged=RUNS),
    Case("sweep-report-sweep-json-run-listed-twice", SR,
         setup=sweep(sweep_json=_edit(lambda d: d["elements"].append(dict(d["elements"][0])))),
         says=("{tmp}/sweep/sweep.json", "seed=0", "listed twice"), unchanged=RUNS, wrong_result=True),
    Case("sweep-report-sweep-json-no-elements", SR,
         setup=sweep(sweep_json=_edit(lambda d: d.update(elements=[]))),
         says=("{tmp}/sweep/sweep.json", "no runs"), unchanged=RUNS),
    Case("sweep-report-sweep-json-is-a-folder", SR,
         setup=lambda env, tmp: (sweep(sweep_json=None)(env, tmp), os.makedirs(f"{tmp}/sweep/sweep.json")),
         says=("{tmp}/sweep/sweep.json", "a folder"), unchanged=RUNS),
    # ------------------------------------------------------------------ sweep-report: options, outputs
    Case("sweep-report-no-such-folder", ["sweep-report", "{tmp}/nope"], says=("{tmp}/nope",)),
    Case("sweep-report-unknown-option", ["sweep-report", "{tmp}", "--outt", "{tmp}/o"], says=("--outt",),
         unchanged=("{tmp}",)),
    Case("sweep-report-folder-is-a-file", ["sweep-report", "{bad_json_list}"],
         says=("{bad_json_list}", "not a folder"), unchanged=("{bad_json_list}",)),
    Case("sweep-report-out-is-a-file", [*SR, "--out", "{bad_json_list}"], setup=sweep(),
         says=("--out", "{bad_json_list}", "a file"), unchanged=(*RUNS, "{bad_json_list}")),
    Case("sweep-report-out-under-a-file", [*SR, "--out", "{bad_text}/report"], setup=sweep(),
         says=("--out", "{bad_text}"), unchanged=(*RUNS, "{bad_text}")),
    Case("sweep-report-json-is-a-folder", [*SR, "--json", "{tmp}/sweep"], setup=sweep(),
         says=("--json", "{tmp}/sweep", "a folder"), unchanged=("{tmp}/sweep",)),
    Case("sweep-report-json-under-a-file", [*SR, "--json", "{bad_text}/t.json"], setup=sweep(),
         says=("--json", "{bad_text}"), unchanged=("{tmp}/sweep", "{bad_text}")),
    Case("sweep-report-json-overwrites-sweep-json", [*SR, "--json", "{tmp}/sweep/sweep.json"], setup=sweep(),
         says=("--json", "{tmp}/sweep/sweep.json", "own input"), unchanged=("{tmp}/sweep",)),
    Case("sweep-report-json-overwrites-results-json", [*SR, "--json", "{tmp}/sweep/seed=0/results.json"],
         setup=sweep(), says=("--json", "{tmp}/sweep/seed=0/results.json", "own input"),
         unchanged=("{tmp}/sweep",)),
    # ------------------------------------------------------------------ report
    Case("report-corrupt-results-json-is-not-not-evaluated", ["report", "{tmp}/r", "--no-tsne"], code=3,
         setup=run_with(results="broken"), says=("{tmp}/r/results.json", "not valid JSON", *NOT_READ),
         unchanged=("{tmp}/r/results.json", "{tmp}/r/config.yaml", "{tmp}/r/checkpoints")),
    Case("report-results-json-is-a-list", ["report", "{tmp}/r", "--no-tsne"], code=3,
         setup=run_with(results="list"), says=("{tmp}/r/results.json", "a JSON list"),
         unchanged=("{tmp}/r/results.json", "{tmp}/r/checkpoints")),
    Case("report-results-json-binary", ["report", "{tmp}/r", "--no-tsne"], code=3,
         setup=run_with(results="binary"), says=("{tmp}/r/results.json", "not valid JSON"),
         unchanged=("{tmp}/r/results.json", "{tmp}/r/checkpoints")),
    Case("report-results-json-is-a-folder", ["report", "{tmp}/r", "--no-tsne"], code=3,
         setup=run_with(results="folder"), says=("{tmp}/r/results.json", "a folder"),
         unchanged=("{tmp}/r/checkpoints",)),
    Case("report-sweep-corrupt-results-json", ["report", "{tmp}/sweep", "--no-tsne"], code=3,
         setup=sweep(("ok", "broken", "ok")), says=("seed=1", "{tmp}/sweep/seed=1/results.json", "not valid JSON"),
         unchanged=RUNS),
    Case("report-sweep-results-json-is-a-list", ["report", "{tmp}/sweep", "--no-tsne"], code=3,
         setup=sweep(("ok", "ok", "list")), says=("seed=2", "a JSON list"), unchanged=RUNS),
    Case("report-sweep-run-not-started", ["report", "{tmp}/sweep", "--no-tsne"], code=3,
         setup=sweep(runs=("0", "2")), says=("seed=1", "no run folder", *NOT_READ), unchanged=RUNS),
    Case("report-sweep-allow-missing-lists-the-run-in-report-md",
         ["report", "{tmp}/sweep", "--no-tsne", "--allow-missing", "--out", "{tmp}/o"], code=0,
         setup=sweep(("ok", "list", "ok")), says=("seed=1", "a JSON list", "{tmp}/o/report.md"),
         unchanged=RUNS),
    Case("report-sweep-json-truncated", ["report", "{tmp}/sweep", "--no-tsne"],
         setup=sweep(sweep_json='{"keys": ['), says=("{tmp}/sweep/sweep.json", "not valid JSON"), unchanged=RUNS),
    Case("report-sweep-json-is-a-list", ["report", "{tmp}/sweep", "--no-tsne"],
         setup=sweep(sweep_json="[]"), says=("{tmp}/sweep/sweep.json", "JSON object"), unchanged=RUNS),
    Case("report-sweep-json-element-without-run-dir", ["report", "{tmp}/sweep", "--no-tsne"],
         setup=sweep(sweep_json=_edit(lambda d: d["elements"][0].pop("run_dir"))),
         says=("{tmp}/sweep/sweep.json", "element 0", "'run_dir'"), unchanged=RUNS),
    Case("report-out-is-a-file", ["report", "{run}", "--no-tsne", "--out", "{bad_text}"],
         says=("--out", "{bad_text}", "a file"), unchanged=("{run}", "{bad_text}")),
    Case("report-out-under-a-file", ["report", "{run}", "--no-tsne", "--out", "{bad_text}/rep"],
         says=("--out", "{bad_text}"), unchanged=("{run}", "{bad_text}")),
    Case("report-folder-is-a-file", ["report", "{bad_json_broken}"], says=("{bad_json_broken}", "not a folder"),
         unchanged=("{bad_json_broken}",)),
    Case("report-tsne-sample-not-a-number", ["report", "{run}", "--tsne-sample", "many"],
         says=("--tsne-sample", "many")),
    Case("report-tsne-sample-zero", ["report", "{run}", "--tsne-sample", "0"], says=("--tsne-sample", "--no-tsne")),
    Case("report-perplexity-above-the-sample", ["report", "{run}", "--tsne-sample", "50", "--perplexity", "80"],
         says=("--perplexity", "--tsne-sample")),
    Case("report-perplexity-negative", ["report", "{run}", "--perplexity", "-5", "--out", "{tmp}/o"],
         says=("--perplexity",), unchanged=("{run}", "{tmp}")),
    Case("report-metrics-jsonl-binary", ["report", "{tmp}/r", "--no-tsne"], code=3,
         setup=run_with(metrics="\xff\xfe\x81garbage\n"), says=("{tmp}/r/metrics.jsonl",),
         unchanged=("{tmp}/r/metrics.jsonl", "{tmp}/r/checkpoints")),
    Case("report-test-embeddings-corrupt-is-named", ["report", "{tmp}/r", "--tsne-sample", "50"], code=0,
         setup=run_with(embeddings=True), says=("embeddings/test.safetensors",),
         unchanged=("{tmp}/r/embeddings", "{tmp}/r/checkpoints")),
    # ------------------------------------------------------------------ submit
    Case("submit-then-args-unbalanced-quote",
         ["submit", "pretrain", "--cluster", "local", "--dry-run", "--then", "evaluate",
          "--then-args", "--subset '5", "--", "--config", "{tiny}", "run.dir={tmp}/r"],
         says=("--then-args", "No closing quotation"), unchanged=("{tmp}",)),
    Case("submit-then-args-unknown-option",
         ["submit", "pretrain", "--cluster", "local", "--dry-run", "--then", "evaluate",
          "--then-args=--subsett 5", "--", "--config", "{tiny}", "run.dir={tmp}/r"],
         says=("--then-args", "--subsett"), unchanged=("{tmp}",)),
    Case("submit-then-args-bad-value",
         ["submit", "pretrain", "--cluster", "local", "--dry-run", "--then", "evaluate",
          "--then-args=--subset many", "--", "--config", "{tiny}", "run.dir={tmp}/r"],
         says=("--then-args", "--subset"), unchanged=("{tmp}",)),
    *[Case(f"submit-{opt[2:]}-with-cluster-{cluster}",
           ["submit", "pretrain", "--cluster", cluster, "--dry-run", opt, *([value] if value else []),
            "--", "--config", "{tiny}", "run.dir={tmp}/r"],
           says=(opt, f"--cluster {cluster}"), unchanged=("{tmp}",))
      for opt, value, cluster in [("--partition", "gpu", "local"), ("--account", "acc", "local"),
                                  ("--qos", "high", "local"), ("--constraint", "a100", "local"),
                                  ("--exclusive", None, "local"), ("--slurm-extra", "mail-type=END", "local"),
                                  ("--mem-gb", "16", "local"), ("--cpus-per-task", "4", "local"),
                                  ("--partition", "gpu", "debug"), ("--setup", "module load cuda", "debug"),
                                  ("--tasks-per-node", "2", "debug")]],
    Case("submit-partition-with-cluster-debug-not-a-dry-run",
         ["submit", "pretrain", "--cluster", "debug", "--partition", "gpu", "--", "--config", "{tiny}",
          "run.dir={tmp}/r", "train.epochs=1", "data.subset=64"],
         says=("--partition", "--cluster debug"), unchanged=("{tmp}",)),
    Case("submit-preset-local-sets-a-partition",
         ["submit", "pretrain", "--preset", "{tmp}/p.yaml", "--dry-run", "--", "--config", "{tiny}", "run.dir={tmp}/r"],
         setup=write("p.yaml", "cluster: local\npartition: gpu\n"),
         says=("{tmp}/p.yaml", "partition", "local"), unchanged=("{tmp}",)),
    Case("submit-nodes-negative", ["submit", "pretrain", "--nodes", "-2", "--dry-run", "--", "--config", "{tiny}",
                                   "run.dir={tmp}/r"], says=("--nodes",), unchanged=("{tmp}",)),
    Case("submit-nodes-not-a-number", ["submit", "pretrain", "--nodes", "two", "--dry-run", "--", "--config",
                                       "{tiny}", "run.dir={tmp}/r"], says=("--nodes", "two"), unchanged=("{tmp}",)),
    Case("submit-time-zero", ["submit", "pretrain", "--cluster", "local", "--time", "0", "--dry-run", "--",
                              "--config", "{tiny}", "run.dir={tmp}/r"], says=("--time",), unchanged=("{tmp}",)),
    Case("submit-max-parallel-zero", ["submit", "pretrain", "--cluster", "local", "--max-parallel", "0",
                                      "--sweep", "seed=0,1", "--dry-run", "--", "--config", "{tiny}",
                                      "run.dir={tmp}/r"], says=("--max-parallel",), unchanged=("{tmp}",)),
    Case("submit-mem-gb-negative", ["submit", "pretrain", "--cluster", "slurm", "--mem-gb", "-1", "--dry-run", "--",
                                    "--config", "{tiny}", "run.dir={tmp}/r"], says=("--mem-gb",),
         unchanged=("{tmp}",)),
    Case("submit-mem-gb-nan", ["submit", "pretrain", "--cluster", "slurm", "--mem-gb", "nan", "--dry-run", "--",
                               "--config", "{tiny}", "run.dir={tmp}/r"], says=("--mem-gb", "nan"),
         unchanged=("{tmp}",)),
    Case("submit-mem-gb-inf", ["submit", "pretrain", "--cluster", "slurm", "--mem-gb", "inf", "--dry-run", "--",
                               "--config", "{tiny}", "run.dir={tmp}/r"], says=("--mem-gb", "inf"),
         unchanged=("{tmp}",)),
    Case("submit-unknown-preset", ["submit", "pretrain", "--preset", "nope", "--dry-run", "--", "--config",
                                   "{tiny}", "run.dir={tmp}/r"], says=("--preset", "nope"), unchanged=("{tmp}",)),
    Case("submit-preset-not-yaml", ["submit", "pretrain", "--preset", "{bad_yaml_broken}", "--dry-run", "--",
                                    "--config", "{tiny}", "run.dir={tmp}/r"],
         says=("{bad_yaml_broken}", "not valid YAML"), unchanged=("{tmp}",)),
    Case("submit-preset-is-a-list", ["submit", "pretrain", "--preset", "{tmp}/p.yaml", "--dry-run", "--",
                                     "--config", "{tiny}", "run.dir={tmp}/r"],
         setup=write("p.yaml", "- cluster: local\n"), says=("{tmp}/p.yaml", "mapping"), unchanged=("{tmp}",)),
    Case("submit-preset-unknown-key", ["submit", "pretrain", "--preset", "{tmp}/p.yaml", "--dry-run", "--",
                                       "--config", "{tiny}", "run.dir={tmp}/r"],
         setup=write("p.yaml", "cluster: local\nnode: 1\n"), says=("{tmp}/p.yaml", "'node'", "'nodes'"),
         unchanged=("{tmp}",)),
    Case("submit-preset-wrong-type", ["submit", "pretrain", "--preset", "{tmp}/p.yaml", "--dry-run", "--",
                                      "--config", "{tiny}", "run.dir={tmp}/r"],
         setup=write("p.yaml", "cluster: local\nnodes: two\n"), says=("{tmp}/p.yaml", "nodes", "two"),
         unchanged=("{tmp}",)),
    Case("submit-preset-setup-not-a-list", ["submit", "pretrain", "--preset", "{tmp}/p.yaml", "--dry-run", "--",
                                            "--config", "{tiny}", "run.dir={tmp}/r"],
         setup=write("p.yaml", "cluster: slurm\nsetup: {module: cuda}\n"), says=("{tmp}/p.yaml", "setup"),
         unchanged=("{tmp}",)),
    Case("submit-sweep-axis-without-values", ["submit", "pretrain", "--cluster", "local", "--sweep", "seed=",
                                              "--dry-run", "--", "--config", "{tiny}", "run.dir={tmp}/r"],
         says=("--sweep", "seed="), unchanged=("{tmp}",)),
    Case("submit-sweep-key-twice", ["submit", "pretrain", "--cluster", "local", "--sweep", "seed=0,1", "--sweep",
                                    "seed=2", "--dry-run", "--", "--config", "{tiny}", "run.dir={tmp}/r"],
         says=("--sweep", "seed", "twice"), unchanged=("{tmp}",)),
    Case("submit-sweep-without-key", ["submit", "pretrain", "--cluster", "local", "--sweep", "=0,1",
                                      "--dry-run", "--", "--config", "{tiny}", "run.dir={tmp}/r"],
         says=("--sweep",), unchanged=("{tmp}",)),
    Case("submit-sweep-file-missing", ["submit", "pretrain", "--cluster", "local", "--sweep-file", "{tmp}/s.yaml",
                                       "--dry-run", "--", "--config", "{tiny}", "run.dir={tmp}/r"],
         says=("--sweep-file", "{tmp}/s.yaml"), unchanged=("{tmp}",)),
    Case("submit-sweep-file-is-a-folder", ["submit", "pretrain", "--cluster", "local", "--sweep-file", "{tmp}",
                                           "--dry-run", "--", "--config", "{tiny}", "run.dir={tmp}/r"],
         says=("--sweep-file", "{tmp}", "a folder"), unchanged=("{tmp}",)),
    Case("submit-sweep-file-not-yaml", ["submit", "pretrain", "--cluster", "local", "--sweep-file",
                                        "{bad_yaml_broken}", "--dry-run", "--", "--config", "{tiny}",
                                        "run.dir={tmp}/r"],
         says=("{bad_yaml_broken}", "not valid YAML"), unchanged=("{tmp}",)),
    Case("submit-sweep-file-axis-without-values", ["submit", "pretrain", "--cluster", "local", "--sweep-file",
                                                   "{tmp}/s.yaml", "--dry-run", "--", "--config", "{tiny}",
                                                   "run.dir={tmp}/r"],
         setup=write("s.yaml", "axes:\n  seed:\n"), says=("{tmp}/s.yaml", "'seed'", "no values"),
         unchanged=("{tmp}",)),
    Case("submit-sweep-file-unknown-section", ["submit", "pretrain", "--cluster", "local", "--sweep-file",
                                               "{tmp}/s.yaml", "--dry-run", "--", "--config", "{tiny}",
                                               "run.dir={tmp}/r"],
         setup=write("s.yaml", "axis: {seed: [0, 1]}\n"), says=("{tmp}/s.yaml", "'axes'"), unchanged=("{tmp}",)),
    Case("submit-json-is-a-folder", ["submit", "pretrain", "--cluster", "local", "--dry-run", "--json", "{tmp}",
                                     "--", "--config", "{tiny}", "run.dir={tmp}/r"],
         says=("--json", "{tmp}", "a folder"), unchanged=("{tmp}",)),
    Case("submit-json-under-a-file", ["submit", "pretrain", "--cluster", "local", "--dry-run", "--json",
                                      "{bad_text}/sub.json", "--", "--config", "{tiny}", "run.dir={tmp}/r"],
         says=("--json", "{bad_text}"), unchanged=("{tmp}", "{bad_text}")),
    Case("submit-json-overwrites-the-config", ["submit", "pretrain", "--cluster", "local", "--dry-run", "--json",
                                               "{tmp}/c.yaml", "--", "--config", "{tmp}/c.yaml", "run.dir={tmp}/r"],
         setup=copy_config, says=("--json", "{tmp}/c.yaml", "own input"), unchanged=("{tmp}",)),
    Case("submit-folder-is-a-file", ["submit", "pretrain", "--cluster", "local", "--dry-run", "--folder",
                                     "{bad_text}", "--", "--config", "{tiny}", "run.dir={tmp}/r"],
         says=("--folder", "{bad_text}"), unchanged=("{tmp}", "{bad_text}")),
    Case("submit-slurm-extra-line-break", ["submit", "pretrain", "--cluster", "slurm", "--dry-run",
                                           "--slurm-extra", "mail-type=END\n#SBATCH --partition=other", "--",
                                           "--config", "{tiny}", "run.dir={tmp}/r"],
         says=("--slurm-extra", "line break"), unchanged=("{tmp}",)),
    Case("submit-knn-unknown-argument", ["submit", "knn", "--cluster", "local", "--dry-run", "--", "--train",
                                         "{train}", "--test", "{test}", "--kk", "20"],
         says=("knn", "--kk"), unchanged=("{tmp}",)),
    Case("submit-evaluate-bad-value", ["submit", "evaluate", "--cluster", "local", "--dry-run", "--", "{run}",
                                       "--subset", "all"], says=("evaluate", "--subset"), unchanged=("{tmp}", "{run}")),
]


# ----------------------------------------------------------------------------------------------
# Issue 21, cause 1: one output guard for every output (ssl_bf/outputs.py): report --out and its
# files, sweep-report --out/--json, submit --json/--folder. Each is refused before any work, names
# the option, and leaves the target (a special file stays special) and the runs byte-identical.
# ----------------------------------------------------------------------------------------------
from output_targets import (JSON, LONG_NAME, PNG, both, copy_of, make_bytes, make_chardev, make_fifo,  # noqa: E402
                            make_socket)

REPORT = ["report", "{run}", "--no-tsne"]
SUBMIT = ["submit", "pretrain", "--cluster", "local", "--dry-run"]
SUBMIT_ARGS = ["--", "--config", "{tiny}", "run.dir={tmp}/r"]


def _copied_run(name: str):
    return lambda env, tmp: copy_run(env, os.path.join(tmp, name))


OUTPUT_GUARD_CASES = [
    Case("report-out-a-fifo", [*REPORT, "--out", "{tmp}/fifo"], says=("--out", "{tmp}/fifo", "FIFO"),
         setup=make_fifo("fifo"), unchanged=("{run}", "{tmp}")),
    Case("report-out-holds-report-md-as-a-fifo", [*REPORT, "--out", "{tmp}/o"], says=("--out", "{tmp}/o/report.md"),
         setup=make_fifo("o/report.md"), unchanged=("{run}", "{tmp}")),
    Case("report-out-loss-png-holds-json", [*REPORT, "--out", "{tmp}/o"], says=("--out", "{tmp}/o/loss.png", "JSON"),
         setup=make_bytes("o/loss.png", JSON), unchanged=("{run}", "{tmp}")),
    Case("report-default-folder-a-socket", ["report", "{tmp}/r", "--no-tsne"], says=("{tmp}/r/report", "socket"),
         setup=both(_copied_run("r"), make_socket("r/report")), unchanged=("{run}", "{tmp}")),
    Case("report-out-into-run-embeddings", [*REPORT, "--out", "{run}/embeddings"],
         says=("--out", "{run}/embeddings", "ssl-bf evaluate")),
    Case("report-out-into-run-checkpoints", [*REPORT, "--out", "{run}/checkpoints"],
         says=("--out", "{run}/checkpoints", "ssl-bf pretrain")),
    Case("report-out-name-too-long", [*REPORT, "--out", "{tmp}/" + "r" * 300], says=("--out", "bytes"),
         unchanged=("{run}", "{tmp}")),
    Case("sweep-report-json-a-fifo", [*SR, "--json", "{tmp}/fifo"], setup=both(sweep(), make_fifo("fifo")),
         says=("--json", "{tmp}/fifo", "FIFO"), unchanged=("{tmp}",)),
    Case("sweep-report-json-a-char-device", [*SR, "--json", "{tmp}/null"], setup=both(sweep(), make_chardev("null")),
         says=("--json", "{tmp}/null"), unchanged=("{tmp}",)),
    Case("sweep-report-json-into-run-checkpoints", [*SR, "--json", "{tmp}/sweep/seed=0/checkpoints/t.json"],
         setup=sweep(), says=("--json", "ssl-bf pretrain"), unchanged=("{tmp}",)),
    Case("sweep-report-json-onto-a-png", [*SR, "--json", "{tmp}/t.json"], setup=both(sweep(), make_bytes("t.json", PNG)),
         says=("--json", "{tmp}/t.json", "PNG"), unchanged=("{tmp}",)),
    Case("sweep-report-json-name-too-long", [*SR, "--json", "{tmp}/" + LONG_NAME], setup=sweep(),
         says=("--json", "bytes"), unchanged=("{tmp}",)),
    Case("sweep-report-out-md-a-socket", [*SR, "--out", "{tmp}/o"], setup=both(sweep(), make_socket("o/sweep-report.md")),
         says=("--out", "{tmp}/o/sweep-report.md", "socket"), unchanged=("{tmp}",)),
    Case("sweep-report-out-csv-holds-a-png", [*SR, "--out", "{tmp}/o"],
         setup=both(sweep(), make_bytes("o/sweep-report.csv", PNG)), says=("--out", "PNG"), unchanged=("{tmp}",)),
    Case("submit-json-a-fifo", [*SUBMIT, "--json", "{tmp}/fifo", *SUBMIT_ARGS], setup=make_fifo("fifo"),
         says=("--json", "{tmp}/fifo", "FIFO"), unchanged=("{tmp}",)),
    Case("submit-json-a-char-device", [*SUBMIT, "--json", "{tmp}/null", *SUBMIT_ARGS], setup=make_chardev("null"),
         says=("--json", "{tmp}/null"), unchanged=("{tmp}",)),
    Case("submit-json-onto-run-metrics", [*SUBMIT, "--json", "{run}/metrics.jsonl", *SUBMIT_ARGS],
         says=("--json", "{run}/metrics.jsonl", "ssl-bf pretrain"), unchanged=("{tmp}", "{run}")),
    Case("submit-json-onto-a-checkpoint-copy", [*SUBMIT, "--json", "{tmp}/s.json", *SUBMIT_ARGS],
         setup=copy_of("ckpt", "s.json"), says=("--json", "{tmp}/s.json", "torch"), unchanged=("{tmp}",)),
    Case("submit-json-name-too-long", [*SUBMIT, "--json", "{tmp}/" + LONG_NAME, *SUBMIT_ARGS],
         says=("--json", "bytes"), unchanged=("{tmp}",)),
    Case("submit-folder-a-fifo", [*SUBMIT, "--folder", "{tmp}/fifo", *SUBMIT_ARGS], setup=make_fifo("fifo"),
         says=("--folder", "{tmp}/fifo", "FIFO"), unchanged=("{tmp}",)),
]
CASES = CASES + OUTPUT_GUARD_CASES


# ===========================================================================================

# issue 21, cause 6 (worktree runfiles): reports refuse impossible values, and t-SNE of degenerate
# embeddings is skipped with a note. An accuracy outside [0, 100], or a string, bool or NaN where
# a number belongs, used to be averaged into the table (or dropped from it without a word); t-SNE
# of all-zero or identical embeddings crashed the process with SIGSEGV before report.md.
# ==================================================================================================
def _results_with(edit):
    def make(path):
        res = _results(1)
        edit(res)
        with open(path, "w") as f:
            f.write(json.dumps(res))  # NaN / Infinity as Python writes them
    return make


_RESULTS_FILES.update({
    "acc_250": _results_with(lambda r: r["knn"][0].update(top1=250.0)),
    "acc_negative": _results_with(lambda r: r["linear"].update(top1=-3.5)),
    "acc_string": _results_with(lambda r: r["linear"].update(top1="81.0")),
    "acc_bool": _results_with(lambda r: r["logreg"].update(top1=True)),
    "acc_nan": _results_with(lambda r: r["knn"][1].update(top5=float("nan"))),
    "acc_inf": _results_with(lambda r: r["linear"].update(top5=float("inf"))),
    "huge_int": _results_with(lambda r: r.update(evaluated={"seconds": 10 ** 400})),
    "knn_not_a_list": _results_with(lambda r: r.update(knn={"top1": 70.0})),
    "k_a_string": _results_with(lambda r: r["knn"][0].update(k="twenty")),
})


def _report_tsne_of(make):
    """A setup: {tmp}/r, a copy of the tiny run whose embeddings/test.safetensors holds `make(x)`
    in place of its features (written directly: no reader's checks)."""
    def setup(env, tmp):
        import torch
        from safetensors import safe_open
        from safetensors.torch import save_file

        run = copy_run(env, os.path.join(tmp, "r"))
        with safe_open(env.paths(tmp)["test"], "pt") as f:
            tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
        x = make(torch, tensors["embeddings"])  # (N', D)
        tensors = {"embeddings": x.contiguous(), "labels": tensors["labels"][:len(x)].contiguous()}
        os.makedirs(os.path.join(run, "embeddings"), exist_ok=True)
        save_file(tensors, os.path.join(run, "embeddings", "test.safetensors"), metadata=meta)
    return setup


def _nan_rows(torch, x):
    x = x.clone()
    x[3, 1] = float("nan")
    return x


_TSNE = ["report", "{tmp}/r", "--tsne-sample", "60"]
_REPORT_WRITTEN = ("{tmp}/r/report/report.md", "no map")

CASES += [
    *[Case(f"sweep-report-{kind.replace('_', '-')}-is-an-unreadable-run", SR, code=3,
           setup=sweep(("ok", kind, "ok")), says=("seed=1", "{tmp}/sweep/seed=1/results.json", word, *NOT_READ),
           unchanged=RUNS, wrong_result=True)
      for kind, word in (("acc_250", "outside [0, 100]"), ("acc_negative", "outside [0, 100]"),
                         ("acc_string", "a JSON string, not a number"), ("acc_bool", "a JSON boolean"),
                         ("acc_nan", "nan"), ("acc_inf", "inf"), ("huge_int", "too large"),
                         ("knn_not_a_list", "'knn'"), ("k_a_string", "knn[0]"))],
    Case("sweep-report-allow-missing-leaves-the-impossible-run-out-of-the-mean", [*SR, "--allow-missing"], code=0,
         setup=sweep(("ok", "ok", "acc_250")), says=("seed=2", "outside [0, 100]", "70.50 ± 0.71 (n=2)"),
         unchanged=RUNS, wrong_result=True),
    Case("report-accuracy-above-100-is-an-unreadable-run", ["report", "{tmp}/sweep", "--no-tsne"], code=3,
         setup=sweep(("acc_250", "ok", "ok")), says=("seed=0", "{tmp}/sweep/seed=0/results.json", "outside [0, 100]"),
         unchanged=RUNS, wrong_result=True),
    Case("report-accuracy-a-string-is-an-unreadable-run", ["report", "{tmp}/r", "--no-tsne"], code=3,
         setup=run_with(results="acc_string"), says=("{tmp}/r/results.json", "'linear.top1'", "not a number"),
         unchanged=("{tmp}/r/results.json", "{tmp}/r/checkpoints"), wrong_result=True),
    # metrics.jsonl: a garbage line in the middle, or a folder in its place (used to be skipped silently)
    Case("report-metrics-garbage-line-in-the-middle", ["report", "{tmp}/r", "--no-tsne"], code=3,
         setup=run_with(metrics='{"step": 0}\nnot json\n{"step": 2, "epoch": 0, "loss": 1.0}\n'),
         says=("{tmp}/r/metrics.jsonl", "line 2 is not JSON", *NOT_READ), unchanged=("{tmp}/r/metrics.jsonl",)),
    Case("report-metrics-impossible-accuracy", ["report", "{tmp}/r", "--no-tsne"], code=3,
         setup=run_with(metrics='{"event": "knn", "epoch": 0, "step": 4, "knn_top1": 250}\n{"step": 5}\n'),
         says=("{tmp}/r/metrics.jsonl", "'knn_top1' = 250"), unchanged=("{tmp}/r/metrics.jsonl",), wrong_result=True),
    Case("report-metrics-is-a-folder", ["report", "{tmp}/r", "--no-tsne"], code=3,
         setup=lambda env, tmp: (copy_run(env, f"{tmp}/r"), os.unlink(f"{tmp}/r/metrics.jsonl"),
                                 os.makedirs(f"{tmp}/r/metrics.jsonl")),
         says=("{tmp}/r/metrics.jsonl", "folder"), unchanged=("{tmp}/r/checkpoints",)),
    Case("report-metrics-torn-last-line-is-a-note", ["report", "{tmp}/r", "--no-tsne"], code=0,
         setup=run_with(metrics='{"step": 2, "epoch": 0, "loss": 1.0}\n{"step": 4, "lo'),
         says=("missing or partial",), unchanged=("{tmp}/r/metrics.jsonl",)),
    # t-SNE of degenerate embeddings: skipped with a note, report.md written (in a child: a crash shows)
    *[Case(f"report-tsne-of-{name}-is-skipped-with-a-note", _TSNE, code=0, setup=_report_tsne_of(make),
           says=says, unchanged=("{tmp}/r/embeddings", "{tmp}/r/checkpoints"), subprocess=True)
      for name, make, says in (
          ("all-zero-embeddings", lambda t, x: t.zeros_like(x), _REPORT_WRITTEN),
          ("identical-points", lambda t, x: x[:1].repeat(len(x), 1), _REPORT_WRITTEN),
          ("two-distinct-points", lambda t, x: t.cat([x[:1].repeat(40, 1), x[1:2].repeat(40, 1)]),
           (*_REPORT_WRITTEN, "2 distinct")),
          ("one-point", lambda t, x: x[:1].clone(), ("{tmp}/r/report/report.md", "too few for a map")),
          ("nan-embeddings", _nan_rows, _REPORT_WRITTEN))],
]

# ==================================================================================================
# Issue 21, cause 5 (configlang): submit's sweep values, its options given twice, and the
# subcommand's own input checks before anything is submitted (a dry run makes them too).
# ==================================================================================================
_SUBMIT_KNN = ["submit", "knn", "--cluster", "local", "--dry-run", "--"]


def _with_file(id_: str, option: str, text: str, says: tuple[str, ...]) -> Case:
    """`submit pretrain OPTION {tmp}/f.yaml --dry-run` with `text` as the sweep file or preset."""
    local = ["--cluster", "local"] if option == "--sweep-file" else []
    return Case(id_, ["submit", "pretrain", *local, option, "{tmp}/f.yaml", "--dry-run", "--", "--config", "{tiny}",
                      "run.dir={tmp}/r"], setup=write("f.yaml", text), says=("{tmp}/f.yaml", *says),
                unchanged=("{tmp}",))


CASES += [
    Case("submit-sweep-unbalanced-bracket", ["submit", "pretrain", "--cluster", "local", "--sweep",
                                             "batchformer.insert_after=[1,3", "--dry-run", "--", "--config", "{tiny}",
                                             "run.dir={tmp}/r"],
         says=("--sweep", "batchformer.insert_after=[1,3", "does not close"), unchanged=("{tmp}",)),
    _with_file("submit-sweep-file-quoted-number", "--sweep-file", "axes: {seed: ['010', '011']}\n",
               ("seed", "text '010'")),
    _with_file("submit-sweep-file-complex-key", "--sweep-file", "axes: {[seed]: [0, 1]}\n", ("complex key",)),
    _with_file("submit-preset-recursive-alias", "--preset", "cluster: local\nsetup: &s [*s]\n", ("recursive alias",)),
    _with_file("submit-preset-key-twice", "--preset", "cluster: local\ntime: 10\ntime: 20\n",
               ("'time' is given twice",)),
    Case("submit-cluster-given-twice", ["submit", "pretrain", "--cluster", "local", "--cluster", "slurm", "--dry-run",
                                        "--", "--config", "{tiny}", "run.dir={tmp}/r"],
         says=("--cluster", "given twice"), unchanged=("{tmp}",)),
    Case("submit-dry-run-knn-missing-train", [*_SUBMIT_KNN, "--train", "{tmp}/nope.safetensors", "--test", "{test}"],
         says=("--train", "{tmp}/nope.safetensors", "no such file"), unchanged=("{tmp}",)),
    Case("submit-dry-run-knn-train-is-test", [*_SUBMIT_KNN, "--train", "{train}", "--test", "{train}"],
         says=("--test", "is the --train file"), unchanged=("{tmp}",)),
    Case("submit-dry-run-knn-json-onto-an-input", [*_SUBMIT_KNN, "--train", "{train}", "--test", "{test}",
                                                   "--json", "{test}"],
         says=("--json", "{test}"), unchanged=("{tmp}", "{test}")),
    Case("submit-dry-run-embed-out-is-a-folder", ["submit", "embed", "--cluster", "local", "--dry-run", "--",
                                                  "--checkpoint", "{ckpt}", "--split", "test", "--out", "{tmp}"],
         says=("--out", "{tmp}"), unchanged=("{tmp}",)),
    Case("submit-dry-run-evaluate-missing-run", ["submit", "evaluate", "--cluster", "local", "--dry-run", "--",
                                                 "{tmp}/no-run"],
         says=("run folder not found", "{tmp}/no-run"), unchanged=("{tmp}",)),
    Case("submit-dry-run-pretrain-run-dir-is-a-file", ["submit", "pretrain", "--cluster", "local", "--dry-run", "--",
                                                       "--config", "{tiny}", "run.dir={bad_text}"],
         says=("run.dir", "{bad_text}"), unchanged=("{tmp}", "{bad_text}")),
    Case("submit-dry-run-pretrain-resume-changes-the-run", ["submit", "pretrain", "--cluster", "local", "--dry-run",
                                                            "--", "--config", "{tiny}", "run.dir={run}",
                                                            "train.epochs=1", "data.subset=256",
                                                            "moco.queue_size=128", "seed=3"],
         says=("seed",), unchanged=("{tmp}", "{run}")),
    Case("submit-knn-missing-train-not-a-dry-run", ["submit", "knn", "--cluster", "local", "--folder", "{tmp}/jobs",
                                                    "--", "--train", "{tmp}/nope.safetensors", "--test", "{test}"],
         says=("--train", "no such file"), unchanged=("{tmp}",)),
]
