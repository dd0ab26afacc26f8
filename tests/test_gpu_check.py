"""scripts/gpu_check.sh --cpu-smoke: the GPU check's three stages, tiny, on the CPU (gloo), so a
broken script fails here and not in a GPU session."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_smoke(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "GPU_CHECK_WORK": str(tmp_path / "work"), "OMP_NUM_THREADS": "1",
           "PYTHON": sys.executable}
    t0 = time.time()
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu-smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    seconds = time.time() - t0
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    print(f"gpu_check.sh --cpu-smoke: {seconds:.1f} s")

    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["ok"] and summary["mode"] == "cpu-smoke" and not summary["missing_stages"]
    stages = summary["stages"]
    assert {"nccl", "throughput", "end_to_end"} <= set(stages)

    # (a) torchrun with train.process_group=always: a real (gloo) group of one process
    runs = {r["name"]: r for r in stages["nccl"]["runs"]}
    assert set(runs) == {"mocov2_bf", "mocov3_bf"}
    for run in runs.values():
        assert run["rc"] == 0 and not run["problems"]
        assert run["world_size"] == 1 and run["device"] == "cpu"
        assert run["losses_finite"] and run["images_per_s"] > 0
        assert run["knn_top1"] is not None  # the sharded monitor ran through the group too
    for name in runs:
        records = [json.loads(line) for line in (tmp_path / "work" / "runs" / name / "metrics.jsonl").open()]
        start = next(r for r in records if r.get("event") == "start")
        assert start["world_size"] == 1 and "whole image" in start["crops"]

    # (b) model step: both methods, BatchFormer off and on
    rows = stages["throughput"]["rows"]
    assert {(r["method"], r["batchformer"]) for r in rows} == {
        (m, v) for m in ("mocov2", "mocov3") for v in ("off", "projection")}
    assert all(r["images_per_s"] > 0 for r in rows)

    # (c) end to end from the JPEG folder, ours vs the reference, and their ratio
    c = stages["end_to_end"]
    assert c["ours"]["images_per_s"] > 0 and c["reference"]["images_per_s"] > 0 and c["ratio"] > 0

    assert "ratio ours/reference" in (out / "gpu_check.md").read_text()
    assert "PASSED" in done.stdout and (out / "gpu_check.log").is_file()


def test_gpu_mode_without_cuda_exits_2(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: GPU mode would run")
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OUT": str(out), "PYTHON": sys.executable}, timeout=120)
    assert done.returncode == 2, done.stdout[-3000:]
    assert "no CUDA device is visible" in done.stdout  # the script's output goes through its log (tee)
    summary = json.loads((out / "gpu_check.json").read_text())
    assert not summary["ok"] and summary["failed_stage"] == "prepare" and summary["torch"]
