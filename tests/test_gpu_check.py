"""scripts/gpu_check.sh --cpu-smoke: the GPU check's stages, tiny, on the CPU (gloo), so a broken
script fails here and not in a GPU session. The multi-process stage (d) runs on 2 gloo processes;
its SyncBN check, which needs CUDA, is run here with SyncBN left out, where it must fail."""
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
                          capture_output=True, text=True, timeout=420)
    seconds = time.time() - t0
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    print(f"gpu_check.sh --cpu-smoke: {seconds:.1f} s")

    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["ok"] and summary["mode"] == "cpu-smoke" and not summary["missing_stages"]
    stages = summary["stages"]
    assert {"nccl", "multi_gpu", "throughput", "end_to_end"} <= set(stages)

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

    # (c) ours vs the reference, one factor at a time: data only, model only, end to end
    c = stages["end_to_end"]
    for part in ("data_only", "model_only", "end_to_end"):
        rows = c[part]
        assert rows["ours"]["images_per_s"] > 0 and rows["reference"]["images_per_s"] > 0
        assert rows["ratio"] == pytest.approx(rows["ours"]["images_per_s"] / rows["reference"]["images_per_s"])
        assert rows["ours"]["steps"] == rows["reference"]["steps"] == c["steps"]
    assert "PIL blur" in c["data_only"]["reference"]["pipeline"]
    assert c["precision"].startswith("fp32")  # the same on both sides (bf16 + channels-last on CUDA)

    # (d) 2 gloo processes against one: every check ran and passed, and could have failed
    d = stages["multi_gpu"]
    assert d["ran"] and d["world_size"] == 2 and d["backend"] == "gloo"
    assert {r["name"] for r in d["checks"]} == {"shuffle_bn", "batchformer_global_gather", "gather_shards_to_main"}
    assert all(r["passed"] and r["discriminates"] for r in d["checks"])
    assert any("SyncBatchNorm" in line for line in summary["untested"])  # said plainly: no CUDA here

    md = (out / "gpu_check.md").read_text()
    for words in ("data only: ratio ours/reference", "model only: ratio ours/reference",
                  "end to end: ratio ours/reference", "UNTESTED on this machine: SyncBatchNorm"):
        assert words in md, words
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


def test_one_gpu_records_every_multi_process_check_as_untested(tmp_path):
    out = tmp_path / "d.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "multi_gpu_check.py"), "--json", str(out),
                           "--skip", "only 1 GPU visible"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(out.read_text())
    assert not record["ran"] and record["checks"] == [] and len(record["untested"]) == 4

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check_report import untested

    lines = untested({"multi_gpu": record})
    assert len(lines) == 4 and all(line.startswith("UNTESTED (only 1 GPU visible)") for line in lines)
    assert any("SyncBatchNorm in bf16 with channels_last" in line for line in lines)


def _syncbn_left_out(rank: int, port: int, out_dir: str) -> None:
    """The stage's SyncBN check on 2 CPU processes with SyncBN replaced by plain BatchNorm (torch has
    no CPU SyncBatchNorm): the check must see the per-rank statistics and fail."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    import torch
    from torch import nn

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import multi_gpu_check
    from ssl_bf import distributed as dist_utils

    torch.set_num_threads(1)
    nn.SyncBatchNorm.convert_sync_batchnorm = staticmethod(lambda net, *a, **k: net)
    dist_utils.init_distributed(torch.device("cpu"))
    result = multi_gpu_check.check_syncbn(torch.device("cpu"), 2, rank)
    (Path(out_dir) / f"r{rank}.json").write_text(json.dumps(result))
    dist_utils.shut_down()


def test_the_syncbn_check_fails_when_batchnorm_is_not_synchronised(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_syncbn_left_out, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        r = json.loads((tmp_path / f"r{rank}.json").read_text())
        assert not r["passed"] and r["discriminates"]
        assert r["max_error"] > 10 * r["tolerance"] and r["control_error"] > 10 * r["tolerance"]


def test_the_reference_pipeline_blurs_with_pil_as_moco_does():
    """moco.loader.GaussianBlur: PIL's ImageFilter.GaussianBlur, radius uniform in [0.1, 2.0]; not
    torchvision's tensor blur (which is several times slower per image and flattered ssl-bf)."""
    import random

    import numpy as np
    import torchvision.transforms as T
    from PIL import Image, ImageFilter

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from moco_reference import PILGaussianBlur, ReferenceTwoCrops

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    random.seed(3)
    got = PILGaussianBlur()(image)
    radius = random.Random(3).uniform(0.1, 2.0)
    assert np.array_equal(np.asarray(got), np.asarray(image.filter(ImageFilter.GaussianBlur(radius=radius))))
    steps = ReferenceTwoCrops([], 32).transform.transforms
    blurs = [t for t in steps if isinstance(t, T.RandomApply) and any(isinstance(b, PILGaussianBlur) for b in t.transforms)]
    assert len(blurs) == 1 and blurs[0].p == 0.5
    assert not any(isinstance(t, T.GaussianBlur) for s in steps for t in getattr(s, "transforms", [s]))
