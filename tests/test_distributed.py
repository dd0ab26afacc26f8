"""Collectives on the right device, no per-step host sync, and the normalisation chosen under DDP.

No GPU exists here, so the NCCL rule ("serves CUDA tensors only") is checked with a FAKE backend
name: a real gloo process group whose reported backend is patched to "nccl". That is enough to
show that every helper in ssl_bf/distributed.py refuses a tensor its backend cannot serve, and
the host-sync counter below shows that the training step hands nothing to the host.
"""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ssl_bf import distributed as dist_utils
from ssl_bf.models.norm import SplitBatchNorm2d
from ssl_bf.models.registry import method_class
from ssl_bf.train.trainer import Trainer

from tiny_run import tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_process_group(monkeypatch):
    """A real one-member gloo group in this process, destroyed afterwards."""
    for name, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(_free_port())),
                        ("RANK", "0"), ("WORLD_SIZE", "1")):
        monkeypatch.setenv(name, value)
    assert dist_utils.init_distributed(torch.device("cpu"), force=True)
    yield
    dist.destroy_process_group()


def _every_collective(x: torch.Tensor) -> dict:
    return {"all_reduce_": lambda: dist_utils.all_reduce_(x.clone(), "max"),
            "broadcast_": lambda: dist_utils.broadcast_(x.clone()),
            "gather_rows": lambda: dist_utils.gather_rows(x),
            "gather_rows_with_grad": lambda: dist_utils._GatherWithGrad.apply(x),
            "gather_shards_to_main": lambda: dist_utils.gather_shards_to_main(x, x.device)}


def test_fake_nccl_backend_refuses_cpu_tensors_in_every_collective(one_process_group, monkeypatch):
    x = torch.arange(6.0).view(3, 2)
    for name, call in _every_collective(x).items():  # the real gloo group serves CPU tensors
        call()
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")  # FAKE: NCCL-only group
    for name, call in _every_collective(x).items():
        with pytest.raises(dist_utils.CollectiveDeviceError, match="serves only cuda"):
            call()
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "cpu:gloo,cuda:nccl")  # our CUDA init
    for name, call in _every_collective(x).items():
        call()


def test_backend_spec_pairs_nccl_with_gloo_on_cuda():
    assert dist_utils.backend_spec(torch.device("cuda", 0)) == "cpu:gloo,cuda:nccl"
    assert dist_utils.backend_spec(torch.device("cpu")) == "gloo"


def _gather_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    dist_utils.init_distributed(torch.device("cpu"))
    rows = 7 if rank == 0 else 4  # unequal shards, several chunks of 3 rows
    x = torch.arange(rows * 2, dtype=torch.float32).view(rows, 2) + 1000 * rank
    got = dist_utils.gather_shards_to_main(x, torch.device("cpu"), chunk_rows=3)
    torch.save({"got": got, "is_none": got is None}, os.path.join(out_dir, f"r{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_gather_shards_to_main_keeps_rank_order_with_unequal_shards(tmp_path):
    mp.spawn(_gather_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "r0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "r1.pt", weights_only=True)
    expected = torch.cat([torch.arange(14.0).view(7, 2), torch.arange(8.0).view(4, 2) + 1000])
    assert torch.equal(r0["got"], expected)
    assert r1["is_none"]


# --- no host sync inside a training step -----------------------------------------------------
_SYNCING = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")


def _count_host_syncs(monkeypatch, calls: list) -> None:
    """Wrap the Tensor methods that copy to the host; record the ssl_bf frames that call them."""
    import sys

    package = os.path.dirname(os.path.abspath(dist_utils.__file__))
    for name in _SYNCING:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, _original=original, _name=name, **kwargs):
            frame = sys._getframe(1)
            if os.path.abspath(frame.f_code.co_filename).startswith(package):
                calls.append((_name, os.path.basename(frame.f_code.co_filename), frame.f_code.co_name))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)


@pytest.mark.parametrize("extra", [(), ("batchformer.enabled=true",),
                                   ("method=mocov3", "train.optimizer=lars", "augment.recipe=mocov3",
                                    "moco.pred_hidden_dim=64", "batchformer.enabled=true")],
                         ids=["mocov2", "mocov2-bf", "mocov3-bf-lars"])
def test_training_steps_make_no_host_sync_between_log_points(tmp_path, monkeypatch, extra):
    cfg = tiny_config(tmp_path, "data.subset=512", "train.epochs=1", "train.log_every=4", *extra)
    trainer = Trainer(cfg)  # 8 steps an epoch: syncs after steps 4 and 8 (and at the epoch end)
    in_step, syncs = [], []
    step, add, sync = trainer._train_step, trainer.stats.add, trainer.stats.sync

    def watched_step(*a, **k):
        start = len(calls)
        out = step(*a, **k)
        in_step.append(calls[start:])
        return out

    def watched_add(*a, **k):
        start = len(calls)
        add(*a, **k)
        in_step[-1] = in_step[-1] + calls[start:]

    def counted_sync(*a, **k):
        syncs.append(trainer.step)
        return sync(*a, **k)

    monkeypatch.setattr(trainer, "_train_step", watched_step)
    monkeypatch.setattr(trainer.stats, "add", watched_add)
    monkeypatch.setattr(trainer.stats, "sync", counted_sync)
    calls: list = []
    _count_host_syncs(monkeypatch, calls)
    trainer.fit()
    monkeypatch.undo()
    assert len(in_step) == 8
    assert all(c == [] for c in in_step), [c for c in in_step if c]
    assert syncs == [4, 8, 8]  # the two log points and the epoch end; nothing in between


# --- normalisation under DDP -------------------------------------------------------------------
def test_normalisation_plan_follows_the_process_count():
    v2 = tiny_config(None, "moco.split_bn_groups=8")
    v3 = tiny_config(None, "method=mocov3")
    one = method_class("mocov2").norm_plan(v2, 1, "cuda")
    assert (one.split_bn_groups, one.sync_bn) == (8, False) and "split BatchNorm (8 groups)" in one.description
    many = method_class("mocov2").norm_plan(v2, 16, "cuda")
    assert (many.split_bn_groups, many.sync_bn) == (1, False)
    assert "shuffle-BN" in many.description and "split_bn_groups=8 is ignored" in many.description
    v3_gpu = method_class("mocov3").norm_plan(v3, 8, "cuda")
    assert v3_gpu.sync_bn and "SyncBatchNorm across 8 ranks" in v3_gpu.description
    v3_cpu = method_class("mocov3").norm_plan(v3, 2, "cpu")
    assert not v3_cpu.sync_bn and "only on CUDA" in v3_cpu.description
    assert not method_class("mocov3").norm_plan(v3, 1, "cuda").sync_bn


def _norm_worker(rank: int, port: int, out_dir: str, run_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    cfg = tiny_config(None, f"run.dir={run_dir}", "moco.split_bn_groups=4", "train.epochs=1")
    trainer = Trainer(cfg)
    split = [m.groups if isinstance(m, SplitBatchNorm2d) else 1
             for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with open(os.path.join(out_dir, f"norm{rank}.txt"), "w") as f:
        f.write(f"{max(split)}|{trainer.norm.description}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_mocov2_drops_split_bn_for_shuffle_bn(tmp_path):
    mp.spawn(_norm_worker, args=(_free_port(), str(tmp_path), str(tmp_path / "run")), nprocs=2, join=True)
    for rank in range(2):
        groups, description = (tmp_path / f"norm{rank}.txt").read_text().split("|")
        assert groups == "1"  # plain BN in every layer, whatever the preset said
        assert "shuffle-BN" in description and "2 ranks" in description


# --- two groups, two timeouts ----------------------------------------------------------------------
def test_training_group_times_out_within_30_minutes_and_waits_use_a_long_gloo_group(one_process_group):
    """The process groups' own options (what gloo and NCCL enforce), read back from torch."""
    from datetime import timedelta

    world = dist.group.WORLD._get_backend(torch.device("cpu")).options._timeout
    long_group = dist_utils._LONG_WAIT_GROUP
    assert long_group is not None and dist.get_backend(long_group) == "gloo"
    long = long_group._get_backend(torch.device("cpu")).options._timeout
    assert world == dist_utils.TRAINING_TIMEOUT <= timedelta(minutes=30)
    assert long == dist_utils.LONG_WAIT_TIMEOUT > world
    dist_utils.wait_for_main()  # a real barrier on it


def test_no_module_but_distributed_py_calls_torch_distributed():
    """Every collective lives in ssl_bf/distributed.py: no other installed module imports
    torch.distributed or reaches it as an attribute (DDP, the model wrapper, is not a collective call)."""
    import ast

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    offenders = []
    for folder in ("ssl_bf", "eval", "launch", "report"):
        for dirpath, _, files in os.walk(os.path.join(root, folder)):
            for name in files:
                path = os.path.join(dirpath, name)
                if not name.endswith(".py") or path == os.path.abspath(dist_utils.__file__):
                    continue
                with open(path) as f:
                    tree = ast.parse(f.read(), path)
                for node in ast.walk(tree):
                    names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                             [node.module or ""] if isinstance(node, ast.ImportFrom) else
                             [ast.unparse(node)] if isinstance(node, ast.Attribute) else [])
                    if any(n == "torch.distributed" or n.startswith("torch.distributed.") for n in names):
                        offenders.append(f"{os.path.relpath(path, root)}:{node.lineno}")
    assert not offenders, offenders
