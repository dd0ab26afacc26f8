"""Private APIs of other libraries: replaced, or pinned and watched.

- torchvision's `VisionTransformer._process_input` is no longer used: `ViTBackbone.tokens` builds
  the patch tokens from public attributes (`conv_proj`, `class_token`, `encoder`), and the backbone
  equals torchvision's own public `forward` (so a torchvision that changes the ViT fails here).
- submitit's `_make_sbatch_string` (launch/submission.py `sbatch_script`, the script `ssl-bf submit
  --dry-run` prints) has no public equivalent. submitit is pinned (pyproject.toml, environment.yml);
  a golden script made with that version and a check that the dry-run script is byte for byte the
  one submitit hands to sbatch fail with a message naming the version to re-check.
- torch's `DataLoader` iterator method `_shutdown_workers` (ssl_bf/train/batches.py
  `PretrainBatches.close`) stops persistent workers whose iterator an exception's traceback still
  holds; there is no public way. torch is pinned (scripts/setup.sh, pyproject.toml); a test below
  fails naming it if the method goes, and tests/test_gpu_perf.py checks that close() stops the
  workers.
- No other private name of another library is imported by ssl-bf's packages.
"""
from __future__ import annotations

import ast
import os
import re
import sys
import tomllib

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_SBATCH = os.path.join(ROOT, "tests", "golden", "sbatch_submitit_1.5.4.sh")
PINNED = {"submitit": "1.5.4"}  # the versions the golden files were made with
ALLOWED_PRIVATE = {("submitit.slurm.slurm", "_make_sbatch_string")}  # each watched by a test below
# every sbatch option ssl-bf passes (launch/options.py sbatch_parameters), with values
PARAMS = {"job_name": "ssl-bf-pretrain", "time": 4320, "nodes": 2, "ntasks_per_node": 8, "signal_delay_s": 180,
          "wckey": None, "gpus_per_node": 8, "cpus_per_task": 10, "mem": "491520M", "partition": "gpu",
          "account": "acc", "qos": "high", "constraint": "a100", "exclusive": True, "array_parallelism": 2,
          "setup": ["module load cuda"], "dependency": "aftercorr:1234",
          "additional_parameters": {"mail-type": "END", "kill-on-invalid-dep": "yes"}}


def _recheck(what: str) -> str:
    import submitit

    return (f"submitit {submitit.__version__} (pinned: {PINNED['submitit']}): {what}. `ssl-bf submit --dry-run` "
            f"prints launch/submission.py sbatch_script(), built on submitit's private _make_sbatch_string; "
            f"re-check it against the new submitit, then update the pin and {os.path.relpath(GOLDEN_SBATCH, ROOT)}")


def test_submitit_is_the_pinned_version():
    import submitit

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    assert f"submitit=={PINNED['submitit']}" in deps, deps
    assert submitit.__version__ == PINNED["submitit"], _recheck("another version is installed")


def test_sbatch_script_equals_the_golden_script_of_the_pinned_submitit():
    from ssl_bf.launch.submission import sbatch_script

    script = sbatch_script("/golden/submitit", PARAMS, array=4).replace(sys.executable, "{python}")
    with open(GOLDEN_SBATCH) as f:
        golden = f.read()
    assert script == golden, _recheck("its sbatch script changed")


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """An `sbatch` on PATH that accepts any script and answers with a job id, as SLURM does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text('#!/bin/sh\necho "Submitted batch job 4242"\n')
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


@pytest.mark.parametrize("jobs", [1, 3], ids=["one-job", "array"])
def test_dry_run_script_is_what_submitit_hands_to_sbatch(fake_sbatch, jobs):
    import submitit

    from ssl_bf.launch.submission import sbatch_script

    folder = str(fake_sbatch / "submitit")
    params = {k: v for k, v in PARAMS.items() if jobs > 1 or k != "array_parallelism"}
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=3)
    executor.update_parameters(**params)
    with executor.batch():
        handles = [executor.submit(print, i) for i in range(jobs)]
    submitted = handles[0].paths.submission_file.read_text()
    assert sbatch_script(folder, params, array=jobs) == submitted, _recheck("the dry-run script differs from the "
                                                                            "script it submits")


def test_torch_dataloader_iterators_still_stop_their_workers_with_shutdown_workers():
    from torch.utils.data import DataLoader

    loader = DataLoader(list(range(4)), batch_size=2, num_workers=1, persistent_workers=True)
    iterator = iter(loader)
    assert next(iterator).tolist() == [0, 1]
    assert callable(getattr(iterator, "_shutdown_workers", None)), (
        f"torch {torch.__version__}: DataLoader iterators no longer have _shutdown_workers, which "
        "ssl_bf/train/batches.py PretrainBatches.close() calls to stop persistent workers; find the new way")
    iterator._shutdown_workers()
    assert not any(w.is_alive() for w in iterator._workers)


def test_no_other_private_name_of_another_library_is_imported():
    found = set()
    for folder in ("ssl_bf", "eval", "launch", "report"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in (f for f in files if f.endswith(".py")):
                with open(os.path.join(dirpath, name)) as f:
                    tree = ast.parse(f.read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.ImportFrom) and not node.level and node.module and \
                            not node.module.startswith("ssl_bf"):
                        found |= {(node.module, a.name) for a in node.names if a.name.startswith("_")}
    assert found == ALLOWED_PRIVATE, found


# --- torchvision's ViT through public attributes only ------------------------------------------------
@pytest.mark.parametrize("in_channels, size, patch", [(3, 32, 8), (1, 28, 7)])
def test_vit_backbone_equals_torchvision_forward(in_channels, size, patch):
    from ssl_bf.models.backbones import ViTBackbone

    torch.manual_seed(0)
    backbone = ViTBackbone("vit_mini", size, patch, in_channels).eval()
    x = torch.randn(4, in_channels, size, size)
    with torch.no_grad():
        ours = backbone(x)  # (N, D)
        theirs = backbone.vit(x)  # torchvision's public forward; heads replaced by Identity
    assert ours.shape == (4, backbone.feature_dim)
    assert torch.equal(ours, theirs)
    assert backbone.tokens(x).shape == (4, 1 + (size // patch) ** 2, backbone.feature_dim)


def test_vit_backbone_refuses_another_image_size_naming_both():
    from ssl_bf.models.backbones import ViTBackbone

    backbone = ViTBackbone("vit_mini", 32, 8)
    with pytest.raises(ValueError, match=re.escape("takes 32x32 images, got 28x28")):
        backbone(torch.randn(2, 3, 28, 28))
