"""The image probes (mocov2/mocov3) over several processes, and their per-epoch resume.

- one process gives exactly what the one-process probe gave before it learnt to split batches (a
  golden file written by that code, commit d03d139);
- `torchrun --nproc_per_node=2 ... linear --protocol mocov2` (gloo, CPU, real Fashion-MNIST) gives
  the head and accuracy of one process on the same global batch;
- a probe killed by SIGKILL mid-way, run again with the same --work-dir, ends with the head of an
  uninterrupted run.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from ssl_bf.data import build_dataset
from ssl_bf.eval.linear_cli import linear_main
from ssl_bf.eval.linear_common import recipe_for
from ssl_bf.eval.linear_images import ProbeTrainTransform, probe_images
from ssl_bf.eval.linear_state import ProbeStateError, state_path

from tiny_run import tiny_config

HERE = os.path.dirname(os.path.abspath(__file__))
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
GOLDEN = os.path.join(HERE, "golden", "linear_images_one_process.json")


def fixed_backbone() -> nn.Module:
    """A frozen conv backbone with fixed weights (numpy RNG): the same network in every torch version."""
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(1, 8, 3, stride=2)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(rng.normal(0, 0.3, (8, 1, 3, 3)).astype(np.float32)))
        conv.bias.copy_(torch.from_numpy(rng.normal(0, 0.1, 8).astype(np.float32)))
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def fmnist(train: int = 500, test: int = 300):
    return (build_dataset("fashion-mnist", split="train", subset=train),
            build_dataset("fashion-mnist", split="test", subset=test))


def _probe(protocol: str, bn: bool, **kw):
    train, test = fmnist()
    return probe_images(fixed_backbone(), train, test, recipe_for(protocol, epochs=2, batch_size=64, lr=1.0),
                        image_size=24, protocol=protocol, bn_head=bn, num_workers=0, seed=3, progress=False, **kw)


@pytest.mark.parametrize("protocol,bn", [("mocov2", False), ("mocov3", True)], ids=["mocov2", "mocov3-bn"])
def test_one_process_probe_equals_the_golden_of_the_old_code(protocol, bn):
    golden = json.load(open(GOLDEN))[f"{protocol}{'-bn' if bn else ''}"]
    res = _probe(protocol, bn)
    state = res.head.state_dict()
    assert res.top1 == pytest.approx(golden["top1"]) and res.top5 == pytest.approx(golden["top5"])
    # float rounding only (the golden was written with one thread; BLAS may use more here)
    torch.testing.assert_close(state["fc.weight"], torch.tensor(golden["weight"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state["fc.bias"], torch.tensor(golden["bias"]), rtol=1e-5, atol=1e-6)
    if bn:
        torch.testing.assert_close(state["norm.running_var"], torch.tensor(golden["running_var"]))


def test_crop_draws_for_the_global_batch_are_shared_by_its_parts():
    tf = ProbeTrainTransform(10, [0.5], [0.25])
    images = (torch.rand(7, 1, 12, 12) * 255).to(torch.uint8)
    torch.manual_seed(5)
    whole = tf(images)  # (7, 1, 10, 10)
    parts = []
    for rows in (slice(0, 4), slice(4, 7), slice(7, 7)):  # 3 ranks, the last one without rows
        torch.manual_seed(5)
        parts.append(tf(images[rows], rows, 7))
    assert parts[2].shape == (0, 1, 10, 10)
    assert torch.equal(torch.cat(parts), whole)
    assert not torch.equal(whole[0], whole[1])  # really random per image


class _Indices(torch.utils.data.Dataset):
    """A folder-like dataset (no get_batch) whose items are their own indices."""

    def __len__(self) -> int:
        return 23

    def __getitem__(self, i):
        return torch.tensor(i), i


def test_folder_order_equals_the_shuffling_dataloader_of_the_one_process_probe():
    from ssl_bf.eval.linear_shards import epoch_order

    old, new = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for _ in range(3):  # epochs: the generators must stay in step too
        loader = torch.utils.data.DataLoader(_Indices(), batch_size=5, shuffle=True, generator=old)
        assert torch.cat([x for x, _ in loader]).tolist() == epoch_order(_Indices(), new).tolist()


def test_work_dir_holding_another_probe_is_refused(tmp_path):
    _probe("mocov2", False, work_dir=str(tmp_path / "w"))
    saved = torch.load(state_path(str(tmp_path / "w")), weights_only=True)
    assert saved["epoch"] == 2 and saved["definition"]["protocol"] == "mocov2"
    with pytest.raises(ProbeStateError, match="holds another probe .*bn_head: False -> True"):
        _probe("mocov2", True, work_dir=str(tmp_path / "w"))
    (tmp_path / "w" / "linear-probe.pt").write_bytes(b"not torch")
    with pytest.raises(ProbeStateError, match="cannot resume the probe.*mv "):
        _probe("mocov2", False, work_dir=str(tmp_path / "w"))


def test_finished_work_dir_is_evaluated_again_without_training(tmp_path):
    first = _probe("mocov2", False, work_dir=str(tmp_path / "w"))
    again = _probe("mocov2", False, work_dir=str(tmp_path / "w"))  # the saved state is at the last epoch
    assert torch.equal(first.head.fc.weight, again.head.fc.weight) and again.top1 == first.top1


def test_work_dir_is_for_image_protocols_only(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    rc = linear_main(["--protocol", "cached", "--train", "a.npy", "--test", "b.npy", "--work-dir", str(tmp_path)])
    assert rc == 2 and "--work-dir keeps the epochs of --protocol mocov2/mocov3" in capsys.readouterr().err
    rc = linear_main(["--protocol", "mocov2", "--checkpoint", "x.pt", "--work-dir", str(tmp_path / "file")])
    assert rc == 2 and "is a file; give a folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Several processes
# ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained tiny ResNet-18 checkpoint (train.epochs=0): fixed random features."""
    from ssl_bf.train.trainer import pretrain

    run = tmp_path_factory.mktemp("tiny")
    pretrain(tiny_config(run, "train.epochs=0"))
    return str(run / "run" / "checkpoints" / "last.pt")


def _linear_args(checkpoint: str, out: str, *extra: str) -> list[str]:
    # 505 train images, global batch 64: 7 full batches and one of 57 (29 + 28 rows on 2 ranks)
    return ["linear", "--protocol", "mocov2", "--checkpoint", checkpoint, "--subset", "505", "--epochs", "2",
            "--batch-size", "64", "--lr", "0.3", "--workers", "0", "--device", "cpu", "--no-progress",
            "--save-head", f"{out}.pt", "--json", f"{out}.json", *extra]


@pytest.mark.slow
def test_two_process_mocov2_equals_one_process(checkpoint, tmp_path):
    one = subprocess.run([sys.executable, "-m", "ssl_bf", *_linear_args(checkpoint, str(tmp_path / "one"))],
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([TORCHRUN, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
                          "-m", "ssl_bf", *_linear_args(checkpoint, str(tmp_path / "two"))],
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("linear probe, protocol mocov2") == 1  # rank 0 alone reports
    assert "2 process(es)" in two.stdout and "1 process(es)" in one.stdout
    a = torch.load(tmp_path / "one.pt", weights_only=True)["head"]
    b = torch.load(tmp_path / "two.pt", weights_only=True)["head"]
    for key in ("fc.weight", "fc.bias"):
        diff = (a[key] - b[key]).abs().max().item()
        print(f"{key}: max |1 process - 2 processes| = {diff:.3g} (max |w| {a[key].abs().max().item():.3g})")
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
    j1, j2 = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    print(f"top-1 {j1['top1']:.4f} / {j2['top1']:.4f}, top-5 {j1['top5']:.4f} / {j2['top5']:.4f}")
    # every test image counted once: 505 images, so a percentage is a multiple of 100/505
    assert round(j2["top1"] * 505 / 100, 6) == round(j2["top1"] * 505 / 100)
    assert j2["top1"] == pytest.approx(j1["top1"], abs=1e-9) and j2["top5"] == pytest.approx(j1["top5"], abs=1e-9)


def _bn_worker(rank: int, port: int, out_dir: str) -> None:
    from ssl_bf import distributed as dist_utils

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    dist_utils.init_distributed(torch.device("cpu"))
    res = _probe("mocov3", True)
    torch.save({"head": res.head.state_dict(), "top1": torch.tensor(res.top1), "top5": torch.tensor(res.top5)},
               os.path.join(out_dir, f"r{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_bn_head_uses_global_batch_statistics(tmp_path):
    mp.spawn(_bn_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.set_num_threads(1)
    ref = _probe("mocov3", True)
    r0, r1 = (torch.load(tmp_path / f"r{r}.pt", weights_only=True) for r in (0, 1))
    for key, value in ref.head.state_dict().items():
        assert torch.equal(r0["head"][key], r1["head"][key]), key  # DDP: one head
        if value.is_floating_point():
            torch.testing.assert_close(r0["head"][key], value, rtol=1e-4, atol=1e-5)
    assert float(r0["top1"]) == pytest.approx(ref.top1) and float(r1["top5"]) == pytest.approx(ref.top5)


def _kill_once_saved(args: list[str], work, wanted) -> dict:
    """Start the probe `args`; SIGKILL it (no chance to save more) as soon as its saved state
    satisfies `wanted`; return that state."""
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    seen = None
    try:
        deadline = time.time() + 300
        while seen is None and time.time() < deadline:
            assert proc.poll() is None, "the probe ended before it could be killed"
            try:
                state = torch.load(state_path(str(work)), weights_only=True)
            except (FileNotFoundError, RuntimeError, EOFError):
                time.sleep(0.01)
                continue
            seen = state if wanted(state) else None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert seen is not None, "no saved state of the wanted kind within 300 s"
    return seen


def _resume_and_compare(args: list[str], tmp_path, resume_flags: tuple) -> str:
    """Rerun the killed probe, run it straight without `resume_flags` (each with its value), and
    require the same head bit for bit and the same top-1; the resumed run's stdout."""
    resumed = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    dropped = {i + k for i, a in enumerate(args) if a in resume_flags for k in (0, 1)}
    straight = [a.replace(str(tmp_path / "resumed"), str(tmp_path / "straight")) for i, a in enumerate(args)
                if i not in dropped]
    done = subprocess.run(straight, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(tmp_path / "resumed.pt", weights_only=True)["head"]
    b = torch.load(tmp_path / "straight.pt", weights_only=True)["head"]
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed probe ended elsewhere"
    assert json.loads((tmp_path / "resumed.json").read_text())["top1"] == \
        json.loads((tmp_path / "straight.json").read_text())["top1"]
    return resumed.stdout


@pytest.mark.slow
def test_probe_killed_mid_way_resumes_to_the_uninterrupted_result(checkpoint, tmp_path):
    work = tmp_path / "work"
    args = [sys.executable, "-m", "ssl_bf", *_linear_args(checkpoint, str(tmp_path / "resumed"), "--work-dir", str(work))]
    args[args.index("--epochs") + 1] = "6"
    args[args.index("--subset") + 1] = "2000"
    killed = _kill_once_saved(args, work, lambda state: True)
    assert 1 <= killed["epoch"] < 6 and killed["batches_done"] == 0  # 32 steps an epoch: no mid-epoch save
    out = _resume_and_compare(args, tmp_path, ("--work-dir",))
    assert f"resuming from {state_path(str(work))} after epoch" in out
    assert torch.load(state_path(str(work)), weights_only=True)["epoch"] == 6


@pytest.mark.slow
def test_probe_killed_mid_epoch_resumes_from_that_step_to_the_uninterrupted_result(checkpoint, tmp_path):
    """--save-every 5: the state is saved inside the epoch too; a probe SIGKILLed after such a save
    resumes from that step (not the epoch's start) and ends bit for bit where a straight run ends."""
    work = tmp_path / "work"
    args = [sys.executable, "-m", "ssl_bf", *_linear_args(checkpoint, str(tmp_path / "resumed"), "--work-dir",
                                                         str(work), "--save-every", "5")]
    args[args.index("--epochs") + 1] = "3"
    args[args.index("--subset") + 1] = "2000"  # 32 steps an epoch
    killed = _kill_once_saved(args, work, lambda state: state["batches_done"] > 0 and state["epoch"] < 2)
    assert killed["batches_done"] % 5 == 0, killed["batches_done"]
    state = torch.load(state_path(str(work)), weights_only=True)  # a later save may have landed before the kill
    out = _resume_and_compare(args, tmp_path, ("--work-dir", "--save-every"))
    if state["batches_done"]:
        assert f"after step {state['batches_done']} of 32 in epoch {state['epoch'] + 1}" in out, out
    final = torch.load(state_path(str(work)), weights_only=True)
    assert final["epoch"] == 3 and final["batches_done"] == 0
