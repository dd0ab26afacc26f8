"""ssl_bf.launch without a SLURM cluster: dry runs, option checks, `--cluster local|debug` jobs,
the job's checkpoint()/signal guard, and sweep-report."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ssl_bf.cli import main as ssl_bf_main
from ssl_bf.launch import LaunchError, SubcommandJob, make_options
from ssl_bf.launch import cluster_checks
from ssl_bf.report import sweep_table as report_mod
from ssl_bf.launch.submission import with_overrides

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")


@pytest.fixture
def no_cluster(monkeypatch):
    """Submit-time cluster checks see no cluster (as on a laptop)."""
    monkeypatch.setattr(cluster_checks, "_run", lambda *a, **k: None)


@pytest.fixture
def one_thread(monkeypatch):
    """Tiny runs on a shared 2-core machine: one thread each (oversubscribed OpenMP is ~10x slower)."""
    import torch
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited by --cluster local jobs
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # --cluster debug runs in this process
    yield
    torch.set_num_threads(before)


def starts(run) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("event") == "start"]


# --- dry run ------------------------------------------------------------------------------------
def test_dry_run_prints_the_sbatch_script_and_submits_nothing(tmp_path, capsys, no_cluster):
    run = tmp_path / "run"
    rc = ssl_bf_main([
        "submit", "pretrain", "--cluster", "slurm", "--nodes", "2", "--gpus-per-node", "8",
        "--cpus-per-task", "10", "--mem-gb", "480", "--partition", "gpu", "--account", "acc", "--qos", "high",
        "--constraint", "a100", "--time", "4320", "--exclusive", "--signal-delay", "180", "--max-requeues", "5",
        "--slurm-extra", "mail-type=END", "--setup", "module load cuda", "--sweep", "seed=0,1,2",
        "--sweep", "batchformer.enabled=false,true", "--then", "evaluate", "--dry-run",
        "--", "--config", TINY, f"run.dir={run}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    for line in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=10", "#SBATCH --mem=491520M", "#SBATCH --partition=gpu",
                 "#SBATCH --account=acc", "#SBATCH --qos=high", "#SBATCH --constraint=a100",
                 "#SBATCH --time=4320", "#SBATCH --exclusive", "#SBATCH --signal=USR2@180",
                 "#SBATCH --mail-type=END", "#SBATCH --array=0-5%6", "module load cuda",
                 f"#SBATCH --output={run}/submitit/%A_%a_0_log.out", "srun --unbuffered",
                 "#SBATCH --kill-on-invalid-dep=yes", "aftercorr:"]:
        assert line in out, f"{line!r} missing from:\n{out}"
    assert "nothing submitted" in out
    assert f"run folder: {run}/seed=2__batchformer.enabled=true" in out
    assert not run.exists()


def test_dry_run_single_job_defaults(tmp_path, capsys, no_cluster):
    rc = ssl_bf_main(["submit", "pretrain", "--dry-run", "--then", "evaluate", "--",
                      "--config", TINY, f"run.dir={tmp_path / 'r'}"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "#SBATCH --nodes=1" in out and "#SBATCH --ntasks-per-node=1" in out
    assert "--gpus-per-node" not in out and "#SBATCH --array" not in out
    assert "afterok:" in out


def test_dry_run_chained_evaluation_keeps_the_pretraining_layout(tmp_path, capsys, no_cluster):
    rc = ssl_bf_main(["submit", "pretrain", "--cluster", "slurm", "--nodes", "2", "--gpus-per-node", "8",
                      "--dry-run", "--then", "evaluate", "--", "--config", TINY, f"run.dir={tmp_path / 'r'}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    train, chained = out.split("--- chained evaluation (sbatch script) ---")
    for script in (train, chained):  # the evaluation splits its extraction over the same 16 processes
        for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8"):
            assert line in script, f"{line!r} missing from:\n{script}"
    assert "#SBATCH --job-name=ssl-bf-evaluate" in chained and "afterok:" in chained


@pytest.mark.parametrize("command, args", [
    ("linear", ["--protocol", "mocov2", "--checkpoint", "RUN/checkpoints/last.pt", "--work-dir", "RUN/lin"]),
    ("embed", ["--checkpoint", "RUN/checkpoints/last.pt", "--split", "train", "--out", "train.safetensors"]),
    ("evaluate", ["RUN"]),
])
def test_evaluation_commands_are_submitted_across_nodes_and_gpus(tmp_path, capsys, no_cluster, monkeypatch,
                                                                  command, args):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "RUN" / "checkpoints").mkdir(parents=True)  # the dry run checks the inputs exist
    (tmp_path / "RUN" / "checkpoints" / "last.pt").write_bytes(b"")
    rc = ssl_bf_main(["submit", command, "--cluster", "slurm", "--nodes", "2", "--gpus-per-node", "4",
                      "--dry-run", "--", *args])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "2 node(s) x 4 task(s) x 4 GPU(s)/node" in out
    assert "#SBATCH --nodes=2" in out and "#SBATCH --ntasks-per-node=4" in out


# --- options and bad requests -------------------------------------------------------------------
def test_preset_then_command_line():
    opts = make_options("testcluster", time=5, slurm_extra={"comment": "x"})
    assert (opts.cluster, opts.partition, opts.time, opts.mem_gb, opts.cpus_per_task) == ("slurm", "debug", 5, 2, 1)
    assert opts.slurm_extra == {"comment": "x"} and opts.setup == ["export OMP_NUM_THREADS=1"]
    assert make_options("example-gpu").ntasks_per_node == 8


def test_preset_from_environment(monkeypatch):
    monkeypatch.setenv("SSL_BF_CLUSTER_PRESET", "local")
    assert make_options(None).cluster == "local"


def test_preset_with_unknown_key(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("partion: gpu\n")
    with pytest.raises(LaunchError, match="unknown launcher option 'partion'; did you mean 'partition'"):
        make_options(str(bad))
    with pytest.raises(LaunchError, match="unknown cluster preset 'nope'"):
        make_options("nope")


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "--cluster", "local", "--nodes", "2"], "--cluster local runs on this machine only"),
    (["pretrain", "--gpus-per-node", "4", "--tasks-per-node", "2"], "one task per GPU"),
    (["pretrain", "--time", "1", "--signal-delay", "90"], "must be shorter than --time"),
    (["pretrain", "--sweep", "seed"], "--sweep expects key=v1,v2"),
    (["pretrain", "--sweep", "seed=1,1"], "must be non-empty and distinct"),
    (["pretrain", "--sweep", "run.dir=a,b"], "each element gets its own run folder"),
    (["knn", "--sweep", "seed=0,1"], "needs `submit pretrain`"),
    (["knn", "--then", "evaluate"], "chains after a pretrain job"),
    (["knn", "--nodes", "2"], "knn runs as a single task"),
    (["pretrain", "--then-args=-x"], "--then-args needs --then evaluate"),
], ids=["local-nodes", "tasks-vs-gpus", "signal-delay", "sweep-format", "sweep-dupes", "sweep-run-dir",
        "sweep-not-pretrain", "then-not-pretrain", "knn-nodes", "then-args"])
def test_bad_requests_are_refused_before_submission(tmp_path, capsys, no_cluster, argv, message):
    run = tmp_path / "run"
    rc = ssl_bf_main(["submit", *argv, "--", "--config", TINY, f"run.dir={run}"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert not run.exists()


def test_config_errors_are_reported_at_submit_time(tmp_path, capsys, no_cluster):
    rc = ssl_bf_main(["submit", "pretrain", "--sweep", "sed=0,1", "--", "--config", TINY, f"run.dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown config key 'sed'" in err and "did you mean 'seed'" in err


def test_overrides_stay_contiguous_for_argparse():
    args = ["--config", "c.yaml", "run.dir=a", "seed=1", "--json", "o.json"]
    assert with_overrides(args, ["run.dir=/abs", "train.epochs=3"]) == \
        ["--config", "c.yaml", "run.dir=/abs", "seed=1", "train.epochs=3", "--json", "o.json"]
    assert with_overrides(["--config", "c.yaml"], ["run.dir=/x"]) == ["--config", "c.yaml", "run.dir=/x"]


# --- jobs on this machine -----------------------------------------------------------------------
@pytest.mark.slow
def test_local_pretrain_completes_and_every_start_resumes(tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    out_json = tmp_path / "sub.json"
    rc = ssl_bf_main(["submit", "pretrain", "--cluster", "local", "--wait", "--json", str(out_json), "--",
                      "--config", TINY, f"run.dir={run}", "train.epochs=1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    record = json.loads(out_json.read_text())
    result = record["results"][0]["results"][0]
    assert result["world_size"] == 1 and result["summary"]["step"] == 8
    assert (run / "checkpoints" / "last.pt").is_file()
    assert f"run folder: {run}" in out and str(run / "submitit") in out

    # A second start of the same run (as after a requeue) continues from its checkpoint.
    rc = ssl_bf_main(["submit", "pretrain", "--cluster", "local", "--wait", "--",
                      "--config", TINY, f"run.dir={run}", "train.epochs=2"])
    assert rc == 0, capsys.readouterr()
    assert [s["resumed_from_step"] for s in starts(run)] == [None, 8]


@pytest.mark.slow
def test_debug_cluster_runs_in_this_process(tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    rc = ssl_bf_main(["submit", "pretrain", "--cluster", "debug", "--wait", "--",
                      "--config", TINY, f"run.dir={run}", "train.epochs=1"])
    assert rc == 0, capsys.readouterr()
    assert (run / "checkpoints" / "last.pt").is_file()


@pytest.mark.slow
def test_local_sweep_with_evaluation_and_report(tmp_path, capsys, one_thread):
    base = tmp_path / "sweep"
    rc = ssl_bf_main(["submit", "pretrain", "--cluster", "local", "--sweep", "seed=0,1", "--then", "evaluate",
                      "--then-args=--subset 1000 --workers 0 --no-progress", "--wait",
                      "--", "--config", TINY, f"run.dir={base}", "train.epochs=1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "`ssl-bf evaluate RUN` runs at the end of the same job" in out
    for name in ("seed=0", "seed=1"):
        assert (base / name / "results.json").is_file()
    assert ssl_bf_main(["sweep-report", str(base)]) == 0
    assert "(n=2)" in capsys.readouterr().out


@pytest.mark.slow
def test_local_two_task_pretrain_then_evaluate_on_both_tasks(tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    out_json = tmp_path / "sub.json"
    rc = ssl_bf_main(["submit", "pretrain", "--cluster", "local", "--tasks-per-node", "2", "--then", "evaluate",
                      "--then-args=--subset 512 --workers 0 --no-progress --linear cached", "--wait",
                      "--json", str(out_json), "--", "--config", TINY, f"run.dir={run}", "train.epochs=1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    results = json.loads(out_json.read_text())["results"][0]["results"]
    assert sorted(r["rank"] for r in results) == [0, 1] and all(r["then_rc"] == 0 for r in results)
    assert {r["world_size"] for r in results} == {2}
    ev = json.loads((run / "results.json").read_text())["evaluated"]
    assert ev["train_rows"] == 512 and ev["test_rows"] == 512  # both tasks embedded, rank 0 scored


# --- the job object -----------------------------------------------------------------------------
def test_checkpoint_saves_state_and_returns_a_clean_job(monkeypatch):
    import ssl_bf.train.trainer

    class FakeTrainer:
        step = 7
        saved = 0

        def save_checkpoint(self):
            self.saved += 1
            return "/run/checkpoints/last.pt"

    trainer = FakeTrainer()
    monkeypatch.setattr(ssl_bf.train.trainer, "current_trainer", lambda: trainer)
    job = SubcommandJob(["pretrain", "--config", "c.yaml", "run.dir=/run"], then=["evaluate", "/run"])
    job.extra_state = "not carried over"
    delayed = job.checkpoint()
    assert trainer.saved == 1
    clean = delayed.function
    assert isinstance(clean, SubcommandJob) and clean is not job
    assert clean.argv == job.argv and clean.then == job.then
    assert vars(clean) == {"argv": job.argv, "then": job.then}  # the command line only: no extra_state
    assert delayed.args == () and delayed.kwargs == {}


# --- sweep-report -------------------------------------------------------------------------------
def _results(top1: float, lin: float) -> dict:
    return {"knn": [{"k": 20, "temperature": 0.07, "top1": top1, "top5": top1 + 10},
                    {"k": 200, "temperature": 0.07, "top1": top1 - 1, "top5": top1 + 9}],
            "linear": {"top1": lin, "protocol": "cached", "ok": True}, "note": "ignored"}


def _fake_sweep(base: Path, values: dict) -> None:
    elements = []
    for (bf, seed), res in values.items():
        name = f"batchformer.enabled={bf}__seed={seed}"
        d = base / name
        d.mkdir(parents=True)
        if res is not None:
            (d / "results.json").write_text(json.dumps(res))
        (d / "config.yaml").write_text(f"seed: {seed}\nbatchformer:\n  enabled: {bf}\nrun:\n  dir: {d}\n")
        elements.append({"name": name, "overrides": {"batchformer.enabled": bf, "seed": seed}, "run_dir": str(d)})
    (base / "sweep.json").write_text(json.dumps({"base_dir": str(base), "keys": ["batchformer.enabled", "seed"],
                                                 "elements": elements}))


def test_sweep_report_mean_and_std_grouped_without_seed(tmp_path, capsys):
    base = tmp_path / "sweep"
    _fake_sweep(base, {("false", "0"): _results(70, 80), ("false", "1"): _results(72, 82),
                       ("true", "0"): _results(75, 85), ("true", "1"): _results(77, 86),
                       ("true", "2"): None})
    # a run of sweep.json without results.json: the table is written, the run listed, and the exit code says so
    assert ssl_bf_main(["sweep-report", str(base)]) == 3
    captured = capsys.readouterr()
    assert "batchformer.enabled=true__seed=2: no results.json (not evaluated)" in captured.out
    assert "--allow-missing" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert ssl_bf_main(["sweep-report", str(base), "--allow-missing", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "batchformer.enabled=false" in out and "batchformer.enabled=true" in out
    assert "| knn[k=20,temperature=0.07].top1 | 71.00 ± 1.41 (n=2) | 76.00 ± 1.41 (n=2) |" in out
    assert "| linear.top1 | 81.00 ± 1.41 (n=2) | 85.50 ± 0.71 (n=2) |" in out
    assert "batchformer.enabled=true__seed=2: no results.json (not evaluated)" in out
    assert "- `batchformer.enabled=true__seed=2`: no results.json (not evaluated)" in \
        (base / "sweep-report.md").read_text()
    with open(base / "sweep-report.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["batchformer.enabled", "metric", "mean", "std", "n", "values"]
    assert ["true", "knn[k=200,temperature=0.07].top5", "85", "1.41421", "2", "84 86"] in table
    table_json = json.loads((tmp_path / "r.json").read_text())
    assert table_json["not_read"] == [{"name": "batchformer.enabled=true__seed=2", "kind": "missing", "expected": True,
                                       "problem": "no results.json (not evaluated)"}]
    rows = table_json["rows"]
    assert {r["metric"] for r in rows} >= {"linear.top1", "knn[k=20,temperature=0.07].top5"}
    assert not any("note" in r["metric"] or r["metric"].endswith(".ok") for r in rows)


def test_sweep_report_without_sweep_file_infers_the_keys(tmp_path):
    base = tmp_path / "runs"
    _fake_sweep(base, {("false", "0"): _results(70, 80), ("false", "1"): _results(74, 80)})
    (base / "sweep.json").unlink()
    rep = report_mod.sweep_report(str(base))
    assert rep["keys"] == ["seed"] and rep["group_keys"] == []
    row = next(r for r in rep["rows"] if r["metric"] == "knn[k=20,temperature=0.07].top1")
    assert row["mean"] == 72 and row["n"] == 2


def test_sweep_report_on_an_empty_folder_fails_clearly(tmp_path, capsys):
    assert ssl_bf_main(["sweep-report", str(tmp_path)]) == 1
    assert "no run with results.json" in capsys.readouterr().err


# --- options a cluster does not use ------------------------------------------------------------
def test_a_slurm_preset_on_the_local_cluster_says_what_it_does_not_use(tmp_path, capsys, no_cluster):
    rc = ssl_bf_main(["submit", "pretrain", "--preset", "example-gpu", "--cluster", "local", "--gpus-per-node", "0",
                      "--dry-run", "--json", str(tmp_path / "sub.json"), "--", "--config", TINY,
                      f"run.dir={tmp_path / 'r'}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "--cluster local does not use the preset's exclusive, mem_gb, cpus_per_task" in out
    record = json.loads((tmp_path / "sub.json").read_text())  # strict JSON, written atomically
    assert record["dry_run"] is True and record["job_ids"] == []


def test_the_local_cluster_keeps_the_options_it_uses(tmp_path, capsys, no_cluster):
    rc = ssl_bf_main(["submit", "pretrain", "--cluster", "local", "--time", "30", "--signal-delay", "60",
                      "--max-requeues", "2", "--setup", "export X=1", "--max-parallel", "1", "--sweep", "seed=0,1",
                      "--dry-run", "--", "--config", TINY, f"run.dir={tmp_path / 'r'}"])
    assert rc == 0, capsys.readouterr()
    assert not (tmp_path / "r").exists()


def test_an_explicit_slurm_option_on_the_local_cluster_is_refused(tmp_path, capsys, no_cluster):
    with pytest.raises(LaunchError, match="--partition is a SLURM"):
        make_options(None, cluster="local", partition="gpu")
    with pytest.raises(LaunchError, match=r"--mem-gb must be a positive number of GB per node, got nan"):
        make_options(None, cluster="slurm", mem_gb=float("nan"))


# --- submit checks what the job would check; a job's refusal is one line (issue 21) -------------
def _npz(path: Path, rows: int = 8) -> str:
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(path, embeddings=rng.normal(size=(rows, 4)).astype("float32"), labels=np.arange(rows) % 2)
    return str(path)


def _fill(argv: list[str], tmp_path: Path) -> list[str]:
    return [a.replace("{tmp}", str(tmp_path)) for a in argv]


REFUSED_BY_THE_SUBCOMMAND = [
    (["knn", "--", "--train", "{tmp}/nope.npz", "--test", "{tmp}/b.npz"], ["--train", "{tmp}/nope.npz", "no such file"]),
    (["knn", "--", "--train", "{tmp}/a.npz", "--test", "{tmp}/a.npz"], ["is the --train file"]),
    (["knn", "--", "--train", "{tmp}/a.npz", "--test", "{tmp}/b.npz", "--json", "{tmp}/a.npz"], ["--json"]),
    (["knn", "--", "--train", "{tmp}/a.npz", "--test", "{tmp}/b.npz", "--json", "{tmp}"], ["--json", "folder"]),
    (["linear", "--", "--protocol", "cached", "--train", "{tmp}/a.npz", "--test", "{tmp}/a.npz"],
     ["is the --train file"]),
    (["embed", "--", "--checkpoint", "{tmp}/none.pt", "--split", "test", "--out", "{tmp}/e.safetensors"],
     ["--checkpoint", "{tmp}/none.pt"]),
    (["embed", "--", "--checkpoint", "{tmp}/a.npz", "--split", "test", "--out", "{tmp}"], ["--out"]),
    (["evaluate", "--", "{tmp}/no-run"], ["run folder not found", "{tmp}/no-run"]),
    (["pretrain", "--", "--config", TINY, "run.dir={tmp}/a.npz"], ["run.dir", "{tmp}/a.npz"]),
    (["pretrain", "--", "--config", TINY, "run.dir={tmp}/r", "--json", TINY], ["--json", TINY]),
]


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "submission"])
@pytest.mark.parametrize("argv, words", REFUSED_BY_THE_SUBCOMMAND,
                         ids=["knn-missing-train", "knn-train-is-test", "knn-json-onto-input", "knn-json-folder",
                              "linear-train-is-test", "embed-missing-checkpoint", "embed-out-folder",
                              "evaluate-missing-run", "pretrain-run-dir-is-a-file", "pretrain-json-is-the-config"])
def test_submit_runs_the_subcommands_own_input_checks_before_submitting(tmp_path, capsys, no_cluster, argv, words,
                                                                        dry_run):
    _npz(tmp_path / "a.npz")
    _npz(tmp_path / "b.npz")
    command, rest = argv[0], argv[1:]
    rc = ssl_bf_main(["submit", command, "--cluster", "local", "--folder", str(tmp_path / "jobs"),
                      *(["--dry-run"] if dry_run else []), *_fill(rest, tmp_path)])
    out = capsys.readouterr()
    assert rc == 2, out
    assert out.err.count("\n") == 1 and "Traceback" not in out.err + out.out, out.err
    for word in _fill(words, tmp_path):
        assert word in out.err, (word, out.err)
    assert "submitted" not in out.out and not (tmp_path / "jobs").exists()


def test_a_dry_run_with_good_inputs_passes_the_same_checks(tmp_path, capsys, no_cluster):
    rc = ssl_bf_main(["submit", "knn", "--cluster", "local", "--dry-run", "--", "--train", _npz(tmp_path / "a.npz"),
                      "--test", _npz(tmp_path / "b.npz"), "--json", str(tmp_path / "knn.json")])
    assert rc == 0, capsys.readouterr()
    assert not (tmp_path / "knn.json").exists()


VIT_BF = ["backbone.name=vit_mini", "backbone.patch_size=7", "method=mocov3", "batchformer.enabled=true",
          "batchformer.position=vit_blocks", "batchformer.insert_after=[4]"]


def test_a_bracketed_sweep_value_is_one_value(tmp_path, capsys, no_cluster):
    def elements(sweep: str) -> list[str]:
        rc = ssl_bf_main(["submit", "pretrain", "--cluster", "local", "--dry-run", "--sweep", sweep, "--",
                          "--config", TINY, f"run.dir={tmp_path}/s", *VIT_BF])
        out = capsys.readouterr()
        assert rc == 0, out
        return [line for line in out.out.splitlines() if line.startswith("# local: ssl-bf pretrain")]

    one = elements("batchformer.insert_after=[1,3]")
    assert len(one) == 1 and "batchformer.insert_after=[1,3]" in one[0]
    two = elements("batchformer.insert_after=[1,3],[2]")
    assert len(two) == 2 and "batchformer.insert_after=[1,3]" in two[0] and "batchformer.insert_after=[2]" in two[1]
    for bad, words in (("batchformer.insert_after=[1,3", "does not close"), ("seed=0],1", "closes no bracket")):
        rc = ssl_bf_main(["submit", "pretrain", "--cluster", "local", "--dry-run", "--sweep", bad, "--",
                          "--config", TINY, f"run.dir={tmp_path}/s", *VIT_BF])
        err = capsys.readouterr().err
        assert rc == 2 and words in err and bad in err, err


def test_a_sweep_file_list_value_is_one_value_of_a_list_key(tmp_path, capsys, no_cluster):
    path = tmp_path / "sweep.yaml"
    path.write_text("axes:\n  batchformer.insert_after: [[1, 3], [2]]\n  seed: ['010']\n")
    rc = ssl_bf_main(["submit", "pretrain", "--cluster", "local", "--dry-run", "--sweep-file", str(path), "--",
                      "--config", TINY, f"run.dir={tmp_path}/s", *VIT_BF])
    err = capsys.readouterr().err
    assert rc == 2 and "seed: expected an integer, got the text '010'" in err, err  # quoted: YAML text
    path.write_text("axes:\n  batchformer.insert_after: [[1, 3], [2]]\n  seed: [010]\n")
    rc = ssl_bf_main(["submit", "pretrain", "--cluster", "local", "--dry-run", "--sweep-file", str(path), "--",
                      "--config", TINY, f"run.dir={tmp_path}/s", *VIT_BF])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = [line for line in out.splitlines() if line.startswith("# local: ssl-bf pretrain")]
    assert len(lines) == 2 and "batchformer.insert_after=[1,3]' seed=10" in lines[0]  # 010 is 10 (YAML 1.2)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_wait_prints_the_one_line_of_a_job_that_refuses_its_input(tmp_path, capsys, one_thread):
    """The device is the one check submit leaves to the job (the job's node may have GPUs): the
    job's refusal comes back as its one line and exit 2, not submitit's traceback."""
    run = tmp_path / "run"
    rc = ssl_bf_main(["submit", "pretrain", "--cluster", "debug", "--wait", "--json", str(tmp_path / "sub.json"),
                      "--", "--config", TINY, f"run.dir={run}", "train.device=cuda:7"])
    out = capsys.readouterr()
    assert rc == 2, out
    assert "Traceback" not in out.out + out.err and out.err.count("\n") == 1, out.err
    assert "refused its input: ssl-bf pretrain: config error: train.device" in out.err
    assert json.loads((tmp_path / "sub.json").read_text())["results"][0]["state"] == "FAILED"
    assert not (run / "checkpoints").exists()


def test_wait_prints_the_one_line_of_an_evaluation_job_that_refuses_its_input(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_text("not an archive\n")  # it exists (the submit-time check), the job cannot read it
    rc = ssl_bf_main(["submit", "knn", "--cluster", "debug", "--folder", str(tmp_path / "jobs"), "--",
                      "--train", str(bad), "--test", _npz(tmp_path / "b.npz"), "--no-progress"])
    out = capsys.readouterr()
    assert rc == 2, out
    assert "Traceback" not in out.out + out.err, out.err  # (a debug job runs here: its own line shows too)
    assert out.err.splitlines()[-1].endswith(f"refused its input: ssl-bf knn: error: {bad}: not a readable .npz "
                                             f"file (corrupt, or it holds Python objects, which ssl-bf never loads)")


@pytest.mark.slow
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_wait_on_a_local_job_that_refuses_its_input(tmp_path, capsys, one_thread):
    rc = ssl_bf_main(["submit", "pretrain", "--cluster", "local", "--wait", "--",
                      "--config", TINY, f"run.dir={tmp_path / 'run'}", "train.device=cuda:7"])
    out = capsys.readouterr()
    assert rc == 2, out
    assert "Traceback" not in out.out + out.err and out.err.count("\n") == 1, out.err
    assert "refused its input: ssl-bf pretrain: config error: train.device" in out.err
