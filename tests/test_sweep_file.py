"""Sweep files: named variants x axes, element order, validation, and the shipped ablation sweep."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssl_bf.cli import main as ssl_bf_main
from ssl_bf.launch import LaunchError, cluster_checks
from ssl_bf.launch.job import SubcommandChain, SubcommandJob
from ssl_bf.report.sweep_table import collect
from ssl_bf.launch.submission import lanes
from ssl_bf.launch.sweep import expand, load_sweep_file, write_sweep

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return str(path)


def test_axes_first_vary_slowest_and_variants_carry_their_overrides(tmp_path):
    path = _write(tmp_path, "axes: {seed: [0, 1]}\n"
                            "variants:\n  plain: {batchformer.enabled: false}\n"
                            "  bf: {batchformer.enabled: true, train.base_lr: 0.5}\n")
    variants, axes, variants_first = load_sweep_file(path)
    assert variants == {"plain": {"batchformer.enabled": "false"},
                        "bf": {"batchformer.enabled": "true", "train.base_lr": "0.5"}}
    assert axes == {"seed": ["0", "1"]} and variants_first is False
    sweep = expand(axes, str(tmp_path / "base"), variants, variants_first)
    assert sweep.keys == ["seed", "variant"]
    assert [e.name for e in sweep.elements] == ["seed=0__variant=plain", "seed=0__variant=bf",
                                                "seed=1__variant=plain", "seed=1__variant=bf"]
    on1 = sweep.elements[3]
    assert on1.overrides == {"batchformer.enabled": "true", "train.base_lr": "0.5", "seed": "1"}
    assert on1.labels() == {"seed": "1", "variant": "bf"}
    # Variants listed first vary slowest instead.
    path = _write(tmp_path, "variants: {a: {seed: 3}, b: {seed: 4}}\naxes: {train.base_lr: [0.1, 0.2]}\n")
    variants, axes, variants_first = load_sweep_file(path)
    assert variants_first is True
    sweep = expand(axes, str(tmp_path), variants, variants_first)
    assert [e.name for e in sweep.elements][:2] == ["variant=a__train.base_lr=0.1", "variant=a__train.base_lr=0.2"]


@pytest.mark.parametrize("text,message", [
    ("seeds: [0]\n", "holds 'variants' and/or 'axes' only"),
    ("variants: {a: {run.dir: x}}\n", "sets run.dir"),
    ("variants: {a: 3}\n", "must map config keys to values"),
    ("variants: {a: {seed: [1, 2]}}\n", "seed: expected an integer, got a list"),
    ("axes: {seed: [1, 1]}\n", "needs distinct values"),
    ("axes: {seed: []}\n", "needs distinct values"),
    ("{}\n", "defines no variants and no axes"),
    ("variants: {true: {seed: 1}}\n", "is not a non-empty string"),
    ("variants: {010: {seed: 1}}\n", "is not a non-empty string"),
    ("variants: {a: {seed: 1}, a: {seed: 2}}\n", "the key 'a' is given twice"),
    ("variants: {a: {seed: 1, seed: 2}}\n", "the key 'seed' is given twice"),
    ("variants: [a, b]\n", "'variants' must be a mapping"),
    ("axes: [seed]\n", "'axes' must be a mapping"),
    ("axes: {seed: [0}\n", "not valid YAML"),
], ids=["top-level-key", "run-dir", "not-a-mapping", "list-value", "duplicate", "no-values", "empty",
        "yaml-boolean-name", "yaml-number-name",
        "variant-twice", "key-twice", "variants-list", "axes-list", "bad-yaml"])
def test_bad_sweep_files_are_rejected(tmp_path, text, message):
    with pytest.raises(LaunchError, match=message):
        load_sweep_file(_write(tmp_path, text))


def test_a_key_set_by_a_variant_and_an_axis_is_an_error(tmp_path, capsys):
    path = _write(tmp_path, "variants: {a: {seed: 1}}\n")
    with pytest.raises(LaunchError, match=r"set by both a variant and a sweep axis"):
        expand({"seed": ["0"]}, str(tmp_path), load_sweep_file(path)[0])
    rc = ssl_bf_main(["submit", "pretrain", "--cluster", "local", "--sweep-file", path, "--sweep", "seed=0,1",
                      "--dry-run", "--", "--config", TINY, f"run.dir={tmp_path}/r"])
    assert rc == 2 and "set by both a variant and a sweep axis" in capsys.readouterr().err
    rc = ssl_bf_main(["submit", "pretrain", "--sweep-file", str(tmp_path / "nope.yaml"), "--dry-run", "--",
                      "--config", TINY])
    assert rc == 2 and "no such file" in capsys.readouterr().err


def test_the_shipped_ablation_sweep_is_valid(tmp_path, capsys, monkeypatch):
    """configs/ablation_fmnist_sweep.yaml: 8 variants x 3 seeds, every element a valid config."""
    monkeypatch.setattr(cluster_checks, "_run", lambda *a, **k: None)
    rc = ssl_bf_main(["submit", "pretrain", "--cluster", "local", "--dry-run", "--sweep-file",
                      str(ROOT / "configs" / "ablation_fmnist_sweep.yaml"), "--then", "evaluate", "--",
                      "--config", str(ROOT / "configs" / "ablation_fmnist.yaml"), f"run.dir={tmp_path}/abl"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = [line for line in out.splitlines() if line.startswith("# local: ssl-bf pretrain")]
    assert len(lines) == 24
    assert "seed=0__variant=random-init train.epochs=0 seed=0" in lines[0]
    assert "seed=0__variant=mocov3+bf-projection method=mocov3" in lines[5] and "batchformer.enabled=true" in lines[5]
    assert "variant=mocov3-vit+bfv2-vit_blocks" in lines[7] and "batchformer.insert_after=2" in lines[7]
    assert lines[23].endswith("seed=2")


def test_the_vit_sweep_is_the_full_sweeps_vit_pair():
    """configs/ablation_fmnist_vit_sweep.yaml runs the ViT rows alone: the same variants and seeds."""
    variants, axes, _ = load_sweep_file(str(ROOT / "configs" / "ablation_fmnist_sweep.yaml"))
    vit_variants, vit_axes, _ = load_sweep_file(str(ROOT / "configs" / "ablation_fmnist_vit_sweep.yaml"))
    assert vit_axes == axes and set(vit_variants) == {"mocov3-vit", "mocov3-vit+bfv2-vit_blocks"}
    assert all(variants[name] == overrides for name, overrides in vit_variants.items())


def test_sweep_report_groups_by_variant(tmp_path, capsys):
    base = tmp_path / "sweep"
    path = _write(tmp_path, "axes: {seed: [0, 1]}\nvariants: {'off': {batchformer.enabled: false}, "
                            "'on': {batchformer.enabled: true}}\n")
    variants, axes, first = load_sweep_file(path)
    sweep = expand(axes, str(base), variants, first)
    for i, el in enumerate(sweep.elements):
        Path(el.run_dir).mkdir(parents=True)
        Path(el.run_dir, "results.json").write_text(json.dumps({"knn": [{"k": 20, "temperature": 0.07,
                                                                         "top1": 70.0 + i}]}))
    write_sweep(sweep)
    keys, runs, missing = collect(str(base))
    assert keys == ["seed", "variant"] and not missing
    assert runs[1]["params"] == {"seed": "0", "variant": "on"}
    assert ssl_bf_main(["sweep-report", str(base)]) == 0
    out = capsys.readouterr().out
    # off: seeds give 70, 72; on: 71, 73
    assert "| knn[k=20,temperature=0.07].top1 | 71.00 ± 1.41 (n=2) | 72.00 ± 1.41 (n=2) |" in out


def test_max_parallel_throttles_the_slurm_array(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cluster_checks, "_run", lambda *a, **k: None)
    args = ["--sweep", "seed=0,1,2", "--dry-run", "--", "--config", TINY, f"run.dir={tmp_path}/r"]
    assert ssl_bf_main(["submit", "pretrain", "--cluster", "slurm", "--max-parallel", "2", *args]) == 0
    assert "#SBATCH --array=0-2%2" in capsys.readouterr().out
    assert ssl_bf_main(["submit", "pretrain", "--cluster", "debug", "--max-parallel", "1", *args]) == 2
    assert "one by one in this process already" in capsys.readouterr().err
    assert ssl_bf_main(["submit", "pretrain", "--cluster", "slurm", "--max-parallel", "0", *args]) == 2
    assert "at least 1" in capsys.readouterr().err


def test_merge_keys_null_values_commas_and_folder_clashes(tmp_path):
    path = _write(tmp_path, "variants:\n  base: &b {data.subset: null, data.root: 'a,b'}\n"
                            "  more:\n    <<: *b\n    data.subset: 512\n")
    variants, axes, _ = load_sweep_file(path)
    assert variants == {"base": {"data.subset": "null", "data.root": "a,b"},
                        "more": {"data.subset": "512", "data.root": "a,b"}}  # a merged key may be overridden
    variants, axes, _ = load_sweep_file(_write(tmp_path, "axes: {data.root: ['a,b', c]}\n"))
    assert axes == {"data.root": ["a,b", "c"]}  # a comma inside a value is not a separator here
    variants, axes, _ = load_sweep_file(_write(tmp_path, "variants: {'a b': {seed: 1}, a_b: {seed: 2}}\n"))
    with pytest.raises(LaunchError, match="share the folder name 'variant=a_b'"):
        expand(axes, str(tmp_path), variants)


def test_lanes_deal_round_robin_and_a_chain_requeues_the_rest(monkeypatch):
    assert lanes([0, 1, 2, 3, 4], 2) == [[0, 2, 4], [1, 3]]
    assert lanes([0, 1], 5) == [[0], [1]]
    import ssl_bf.train.trainer
    monkeypatch.setattr(ssl_bf.train.trainer, "current_trainer", lambda: None)
    chain = SubcommandChain([SubcommandJob(["pretrain", f"run.dir=/r{i}"], then=["evaluate", f"/r{i}"])
                             for i in range(3)])
    chain.current = 1  # preempted while the second job runs
    rest = chain.checkpoint().function
    assert isinstance(rest, SubcommandChain) and rest.current == 0
    assert [j.argv for j in rest.jobs] == [["pretrain", "run.dir=/r1"], ["pretrain", "run.dir=/r2"]]
    assert [j.then for j in rest.jobs] == [["evaluate", "/r1"], ["evaluate", "/r2"]]


@pytest.mark.slow
def test_a_throttled_local_sweep_runs_its_elements_one_after_another(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    base = tmp_path / "sweep"
    rc = ssl_bf_main(["submit", "pretrain", "--cluster", "local", "--max-parallel", "1", "--sweep", "seed=0,1",
                      "--then", "evaluate", "--then-args=--subset 500 --workers 0 --no-progress --linear none",
                      "--wait", "--json", str(tmp_path / "sub.json"),
                      "--", "--config", TINY, f"run.dir={base}", "train.epochs=1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "2 elements in 1 background process(es)" in out
    sub = json.loads((tmp_path / "sub.json").read_text())
    assert len(sub["job_ids"]) == 1 and len(sub["run_dirs"]) == 2
    first, second = (base / "seed=0", base / "seed=1")
    for run in (first, second):
        assert (run / "results.json").is_file()
    # one after another: the second run began after the first one's evaluation was written
    assert (second / "config.yaml").stat().st_mtime >= (first / "results.json").stat().st_mtime
    elements = json.loads((base / "sweep.json").read_text())["elements"]
    assert {e["job_id"] for e in elements} == set(sub["job_ids"])
