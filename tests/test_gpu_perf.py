"""No work the GPU waits for (issue 25, sections 2-3), checked on the CPU with stand-ins for the GPU:

- cuDNN's algorithm search (`cudnn.benchmark`) is switched on exactly when the device is CUDA;
- pretraining's DataLoader keeps its workers across epochs and tells them the epoch through shared
  memory: the same batches, crops and losses as a fresh DataLoader per epoch, for 0, 1 and 2 workers;
- the image linear probe reads its loss back every LOSS_LOG_EVERY steps, not every step, with the
  same head as before, and pins its batches for a CUDA device;
- FAISS GPU indexes go on the trainer's GPU (not GPU 0) and their resources are let go after each
  monitor check.
What only a GPU can confirm (the speed, cuDNN's choice, real page-locked copies, faiss-gpu's memory)
is listed in docs/scaling.md.
"""
from __future__ import annotations

import os
import sys
import time
import types
import weakref

import numpy as np
import pytest
import torch

from fuzz_contract import run_cli
from image_files import image_folder
from ssl_bf.data import TwoCropFolder, build_dataset
from ssl_bf.train.batches import PretrainBatches, epoch_batches
from ssl_bf.train.metrics import read_metrics
from tiny_run import TINY


class Stop(Exception):
    """Ends a set-up early, once the part under test has run."""


# ----------------------------------------------------------------------------------------------
# 1. cudnn.benchmark exactly on CUDA
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device, expected", [("cuda:0", True), ("cuda:3", True), ("cpu", False)])
def test_gpu_stand_in_trainer_sets_cudnn_benchmark_exactly_on_cuda(monkeypatch, device, expected):
    from ssl_bf.train import trainer

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(trainer, "resolve_device", lambda name: torch.device(device))  # the GPU stand-in

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(trainer.dist_utils, "init_distributed", stop)  # right after the device set-up
    with pytest.raises(Stop):
        trainer.Trainer(types.SimpleNamespace(train=types.SimpleNamespace(device="auto", process_group="auto")))
    assert torch.backends.cudnn.benchmark is expected


@pytest.mark.parametrize("device, expected", [("cuda:1", True), ("cpu", False)])
def test_gpu_stand_in_embed_sets_cudnn_benchmark_exactly_on_cuda(monkeypatch, device, expected):
    from ssl_bf.eval import embed

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(embed, "resolve_device", lambda name: torch.device(device))

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr("ssl_bf.distributed.init_distributed", stop)
    with pytest.raises(Stop):
        embed.embed("unused.pt", device="auto")
    assert torch.backends.cudnn.benchmark is expected


def test_the_cpu_leaves_an_explicit_cudnn_setting_alone(monkeypatch):
    from ssl_bf.devices import tune_for_fixed_shapes

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)  # a user's own choice
    tune_for_fixed_shapes(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is True


# ----------------------------------------------------------------------------------------------
# 2. persistent DataLoader workers, the epoch in shared memory
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gpuperf") / "imgs")
    image_folder(root, per_class=8)  # 16 train images, 32 x 40 JPEGs
    return root


def _crops(root: str) -> TwoCropFolder:
    return TwoCropFolder(build_dataset("imagefolder", root, "train", None, 32), out_size=16, seed=3)


def _fresh_loader_epoch(root: str, epoch: int, start: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The reference: what pretraining read before, a new dataset and DataLoader for the epoch."""
    crops = _crops(root)
    crops.set_epoch(epoch)
    mine = epoch_batches(len(crops), batch, epoch, 3)[start:]  # (steps, B)
    loader = torch.utils.data.DataLoader(crops, batch_sampler=mine.tolist(), num_workers=0)
    return [(a, b) for a, b, _ in loader]


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_the_run_long_loader_gives_a_fresh_loaders_crops_every_epoch(folder, workers):
    crops = _crops(folder)
    batches = PretrainBatches(crops.folder, crops, 4, 3, True, workers, pin_memory=False)
    try:
        for epoch, start in ((0, 0), (1, 0), (2, 3), (1, 1)):  # a resume's first epoch starts mid-way
            got = list(batches.epoch(epoch, start))
            want = _fresh_loader_epoch(folder, epoch, start, 4)
            assert len(got) == len(want) == 4 - start
            for (a, b), (c, d) in zip(got, want):
                assert torch.equal(a, c) and torch.equal(b, d)  # 2 x (4, 3, 16, 16) uint8
    finally:
        batches.close()


class PidFolder(TwoCropFolder):
    """Records which process cut each sample of each epoch: pids (epochs, N) in shared memory."""

    def __init__(self, *args, epochs: int = 2, **kwargs):
        super().__init__(*args, **kwargs)
        self.pids = torch.zeros(epochs, len(self), dtype=torch.int64).share_memory_()  # (E, N)

    def __getitem__(self, index):
        self.pids[self.epoch, index] = os.getpid()
        return super().__getitem__(index)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_are_not_respawned_between_epochs_and_stop_at_close(folder):
    crops = PidFolder(build_dataset("imagefolder", folder, "train", None, 32), out_size=16, seed=3, epochs=3)
    batches = PretrainBatches(crops.folder, crops, 4, 3, True, 2, pin_memory=False)
    for epoch in range(3):
        assert len(list(batches.epoch(epoch, 0))) == 4
    per_epoch = [set(row.tolist()) for row in crops.pids]
    assert per_epoch[0] == per_epoch[1] == per_epoch[2] and len(per_epoch[0]) == 2  # the same 2 workers
    assert os.getpid() not in per_epoch[0]
    batches.close()
    for pid in per_epoch[0]:
        for _ in range(200):  # the workers are joined when the loader goes
            if not _alive(pid):
                break
            time.sleep(0.05)
        assert not _alive(pid)


def _wait_gone(pids) -> None:
    for pid in pids:
        for _ in range(200):
            if not _alive(pid):
                break
            time.sleep(0.05)
        assert not _alive(pid), f"worker {pid} still runs"


def test_close_stops_the_workers_of_an_epoch_left_mid_way(folder):
    crops = PidFolder(build_dataset("imagefolder", folder, "train", None, 32), out_size=16, seed=3, epochs=1)
    batches = PretrainBatches(crops.folder, crops, 4, 3, True, 2, pin_memory=False)
    running = batches.epoch(0, 0)
    next(running)  # a step raised here: the traceback keeps the suspended epoch alive
    kept = iter(batches.loader)  # as a worker's exception does: torch's frames in its traceback hold this
    pids = {p for p in crops.pids[0].tolist() if p}
    assert pids and os.getpid() not in pids
    batches.close()
    _wait_gone(pids)
    with pytest.raises(StopIteration):
        next(running)  # the epoch ended with close()
    del kept


EXITS_WITHOUT_CLOSE = """
import os, sys
sys.path.insert(0, {tests!r})
from ssl_bf.data import TwoCropFolder, build_dataset
from ssl_bf.train.batches import PretrainBatches
crops = TwoCropFolder(build_dataset("imagefolder", {root!r}, "train", None, 32), out_size=16, seed=3)
batches = PretrainBatches(crops.folder, crops, 4, 3, True, 2, pin_memory=False)
KEPT = batches.epoch(0, 0)
next(KEPT)  # mid-epoch, never closed: what a caught exception leaves behind
KEPT_TOO = iter(batches.loader)  # and torch's iterator, which its frames in a traceback hold
print("read one batch", flush=True)
"""


def test_a_program_that_never_closes_its_batches_still_exits(folder):
    import subprocess

    tests = os.path.dirname(os.path.abspath(__file__))
    code = EXITS_WITHOUT_CLOSE.format(tests=tests, root=folder)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(tests))
    assert done.returncode == 0, done.stderr
    assert "read one batch" in done.stdout


def test_the_epoch_set_in_the_main_process_reaches_running_workers(folder):
    crops = PidFolder(build_dataset("imagefolder", folder, "train", None, 32), out_size=16, seed=3, epochs=2)
    batches = PretrainBatches(crops.folder, crops, 4, 3, True, 1, pin_memory=False)
    try:
        list(batches.epoch(0, 0))
        list(batches.epoch(1, 0))  # each epoch's samples were cut under their own epoch number
        assert bool((crops.pids[0] > 0).all()) and bool((crops.pids[1] > 0).all())
    finally:
        batches.close()


PRETRAIN = ["data.name=imagefolder", "data.subset=null", "data.load_size=32", "augment.image_size=32",
            "augment.recipe=light", "train.batch_size=8", "train.log_every=1", "moco.queue_size=32",
            "monitor.knn_every=0", "monitor.knn_at_start=false", "train.epochs=2", "run.progress=false"]


def _losses(run_dir: str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(os.path.join(run_dir, "metrics.jsonl"))
            if "loss" in r and "event" not in r and "images_per_s" not in r}


@pytest.mark.slow
def test_a_two_epoch_folder_run_has_the_same_losses_for_0_1_and_2_workers(folder, tmp_path):
    losses = []
    for workers in (0, 1, 2):
        run_dir = str(tmp_path / f"run{workers}")
        code, text = run_cli(["pretrain", "--config", TINY, f"run.dir={run_dir}", f"data.root={folder}", *PRETRAIN,
                              f"data.num_workers={workers}"])
        assert code == 0, text
        losses.append(_losses(run_dir))
    assert len(losses[0]) == 4 and losses[0] == losses[1] == losses[2]  # 2 epochs x 2 steps, bit for bit


def test_shard_streams_give_the_same_batches_with_live_workers(tmp_path):
    from shard_data import make_folder, make_shards
    from ssl_bf.data.shards import ShardCropStream

    manifest = make_shards(make_folder(str(tmp_path / "jpegs"), train_per_class=4, val_per_class=1),
                           str(tmp_path / "out"))
    images = build_dataset("shards", manifest, "train")

    def run(workers: int) -> list[list[torch.Tensor]]:
        stream = ShardCropStream(images, 16, seed=5, streams=2, buffer=4)
        batches = PretrainBatches(stream, stream, 4, 5, True, workers, pin_memory=False)
        try:
            return [[t for pair in batches.epoch(epoch, start) for t in pair]
                    for epoch, start in ((0, 0), (1, 0), (2, 2))]
        finally:
            batches.close()

    in_process, live = run(0), run(2)  # 0 workers: the stream's own pass, new each epoch
    assert [len(e) for e in in_process] == [8, 8, 4]  # 16 images, batches of 4, a pair per batch
    for a, b in zip(in_process, live):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(in_process[0][0], in_process[1][0])  # the epochs differ


# ----------------------------------------------------------------------------------------------
# 3. the image linear probe: loss read back every LOSS_LOG_EVERY steps, pinned batches on CUDA
# ----------------------------------------------------------------------------------------------


def _probe(root: str, monkeypatch, every: int):
    from ssl_bf.eval import linear_images
    from ssl_bf.eval.linear_common import Recipe

    monkeypatch.setattr(linear_images, "LOSS_LOG_EVERY", every)
    reads = []
    real_item = torch.Tensor.item

    def item(self):
        if sys._getframe(1).f_code.co_filename == linear_images.__file__:
            reads.append(1)
        return real_item(self)

    monkeypatch.setattr(torch.Tensor, "item", item)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    train = build_dataset("imagefolder", root, "train", None, 32)
    test = build_dataset("imagefolder", root, "test", None, 32)
    recipe = Recipe(epochs=2, batch_size=2, lr=0.1, schedule="cosine")
    result = linear_images.probe_images(model, train, test, recipe, 16, num_workers=0, progress=False, amp=False)
    monkeypatch.undo()
    return result, len(reads)


def test_the_probe_reads_its_loss_back_every_n_steps_with_the_same_head(folder, monkeypatch):
    per_step, reads_every_step = _probe(folder, monkeypatch, 1)  # the old behaviour: one read a step
    every_3, reads_every_3 = _probe(folder, monkeypatch, 3)
    assert reads_every_step == 16  # 2 epochs x 8 steps
    assert reads_every_3 == 2 * 3  # steps 3, 6 and the epoch's last (8), twice
    assert torch.equal(per_step.head.fc.weight, every_3.head.fc.weight)
    assert (per_step.top1, per_step.top5) == (every_3.top1, every_3.top5)


def test_probe_batches_are_pinned_exactly_when_asked(folder, monkeypatch):
    from ssl_bf.eval import linear_shards

    seen = []
    real = torch.utils.data.DataLoader

    class Recording(real):
        def __init__(self, *args, pin_memory=False, **kwargs):
            seen.append(pin_memory)
            super().__init__(*args, pin_memory=False, **kwargs)  # no CUDA here: recorded, not done

    monkeypatch.setattr(torch.utils.data, "DataLoader", Recording)
    train = build_dataset("imagefolder", folder, "train", None, 32)
    order = torch.arange(len(train))
    known = np.ones(len(train), bool)
    for pin in (True, False):
        assert len(list(linear_shards.shard_batches(train, order, 4, known, 0, 0, pin_memory=pin))) == 4
    assert seen == [True, False]


@pytest.mark.parametrize("device, pinned", [(torch.device("cuda", 0), True), (torch.device("cpu"), False)])
def test_gpu_stand_in_the_probe_asks_for_pinned_batches_on_cuda_only(folder, monkeypatch, device, pinned):
    from ssl_bf.eval import linear_images, linear_shards
    from ssl_bf.eval.linear_common import LinearHead, Recipe
    from ssl_bf.knn.vote import LabelSpace

    asked = []

    def recording(*args, pin_memory=False, **kwargs):
        asked.append(pin_memory)
        raise Stop  # before any tensor goes to the (stand-in) device

    monkeypatch.setattr(linear_shards, "shard_batches", recording)
    train = build_dataset("imagefolder", folder, "train", None, 32)
    labels = np.asarray([label for _, label in train.samples], np.int64)
    head = LinearHead(4, 2)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    with pytest.raises(Stop):
        linear_images._train(torch.nn.Identity(), head, opt, train, None, LabelSpace.from_train(labels, None), labels,
                             Recipe(epochs=1, batch_size=4, lr=0.1, schedule="cosine"), "mocov2", device, 0, 0,
                             False, False, None, 0)
    assert asked == [pinned]


# ----------------------------------------------------------------------------------------------
# 4. faiss-gpu: the trainer's GPU, resources let go after each check
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device, local_rank, gpus, gpu", [
    ("cuda:3", 0, 8, 3), ("cuda:0", 5, 8, 0), ("cuda", 5, 8, 5), ("auto", 9, 8, 1), ("cuda", 0, 1, 0)])
def test_faiss_gpu_id_is_the_torch_devices_gpu(device, local_rank, gpus, gpu):
    from ssl_bf.knn.index import faiss_gpu_id

    assert faiss_gpu_id(device, local_rank, gpus) == gpu


@pytest.mark.parametrize("device, gpus, error", [("cuda:8", 8, ValueError), ("cuda:x", 2, ValueError),
                                                 ("cuda:0", 0, RuntimeError)])
def test_faiss_gpu_id_refuses_a_gpu_faiss_cannot_see(device, gpus, error):
    from ssl_bf.knn.index import faiss_gpu_id

    with pytest.raises(error, match="FAISS"):
        faiss_gpu_id(device, 0, gpus)


class FakeGpuResources:
    """Stands in for faiss.StandardGpuResources: counts how many were made."""

    made = 0

    def __init__(self):
        FakeGpuResources.made += 1


def test_gpu_resources_are_made_on_first_use_and_let_go_after_the_block():
    from ssl_bf.knn import index

    FakeGpuResources.made = 0
    with index.gpu_resources(FakeGpuResources):
        first = index._gpu_resources()
        assert index._gpu_resources() is first and FakeGpuResources.made == 1  # one per block
        gone = weakref.ref(first)
        del first
    assert gone() is None  # nothing keeps it once the block is left
    with index.gpu_resources(FakeGpuResources):
        pass
    assert FakeGpuResources.made == 1  # a block that builds no GPU index makes none
    with pytest.raises(Stop):
        with index.gpu_resources(FakeGpuResources):
            gone = weakref.ref(index._gpu_resources())
            raise Stop
    assert gone() is None and not index._SCOPES  # also after an error


def _fake_faiss(monkeypatch, gpus: int):
    """faiss with `gpus` GPU stand-ins: the CPU index, and where index_cpu_to_gpu put it."""
    import faiss

    from ssl_bf.knn import index

    placed = []

    def to_gpu(resources, gpu, cpu_index):
        placed.append((resources, gpu))
        return cpu_index

    fake = types.SimpleNamespace(**{k: getattr(faiss, k) for k in dir(faiss) if not k.startswith("_")})
    fake.StandardGpuResources, fake.get_num_gpus, fake.index_cpu_to_gpu = FakeGpuResources, lambda: gpus, to_gpu
    monkeypatch.setattr(index, "_faiss", lambda: fake)
    return placed


def test_gpu_stand_in_knn_index_goes_on_the_asked_gpu_with_the_blocks_resources(monkeypatch):
    from ssl_bf.knn import index
    from ssl_bf.knn.vote import knn_accuracy

    placed = _fake_faiss(monkeypatch, 4)
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(40, 8)), rng.normal(size=(10, 8))
    labels = np.arange(40) % 4
    cpu = knn_accuracy(bank, labels, queries, labels[:10], ks=(5,), device="cpu")
    with index.gpu_resources() as scope:
        gpu = knn_accuracy(bank, labels, queries, labels[:10], ks=(5,), device="cuda:2")
        assert placed == [(scope.resources, 2)]
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    with index.gpu_resources():
        knn_accuracy(bank, labels, queries, labels[:10], ks=(5,), device="cuda")
    assert placed[-1][1] == 3  # LOCAL_RANK's GPU, not GPU 0
    assert cpu == gpu  # the same votes (the stand-in searches on the CPU)


@pytest.mark.parametrize("device, faiss_gpus, expected", [
    (torch.device("cuda", 1), 2, "cuda:1"), (torch.device("cuda", 1), 0, "cpu"), (torch.device("cpu"), 2, "cpu")])
def test_gpu_stand_in_the_monitor_searches_on_the_trainers_device_in_a_resource_block(monkeypatch, device,
                                                                                       faiss_gpus, expected):
    from ssl_bf.knn import index
    from ssl_bf.train import monitor

    _fake_faiss(monkeypatch, faiss_gpus)
    calls = []

    def knn_evaluate(*args, device="auto", **kwargs):
        calls.append((device, len(index._SCOPES)))
        return types.SimpleNamespace(results=[{"top1": 50.0}], predictions=None)

    monkeypatch.setattr(monitor, "knn_evaluate", knn_evaluate)
    mon = monitor.KnnMonitor.__new__(monitor.KnnMonitor)
    mon.device, mon.enabled = device, True
    mon.cfg = types.SimpleNamespace(monitor=types.SimpleNamespace(knn_k=5, knn_temperature=0.07, bank_subset=4,
                                                                  query_subset=4))
    mon.bank_set = types.SimpleNamespace(classes=["a", "b"])
    mon.query_set = mon.bank_set
    monkeypatch.setattr(mon, "features", lambda *a, **k: (torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64)))
    assert mon.top1(torch.nn.Identity(), full=False) == 50.0
    assert calls == [(expected, 1)] and not index._SCOPES  # inside one block, closed afterwards
