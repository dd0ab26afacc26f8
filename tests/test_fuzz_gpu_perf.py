"""Property tests of issue 25's "no work the GPU waits for" (tests/test_gpu_perf.py has the examples):

- `faiss_gpu_id` puts a FAISS index on the GPU `resolve_device` gives torch, for any local rank,
  GPU count and device string (a torch stand-in with `gpus` CUDA devices);
- the run-long pretraining loader (live workers, the epoch in shared memory) yields, for any
  sequence of (epoch, first step) passes, what a fresh DataLoader per pass yields.
"""
from __future__ import annotations

import types

import pytest
import torch
from hypothesis import given, settings, strategies as st

from fuzz_contract import count, fuzz_examples
from image_files import image_folder
from ssl_bf.data import TwoCropFolder, build_dataset
from ssl_bf.train.batches import PretrainBatches, epoch_batches


@settings(max_examples=fuzz_examples(200), deadline=None)
@given(gpus=st.integers(1, 16), local_rank=st.integers(0, 1000), pick=st.integers(-1, 20))
def test_faiss_gets_the_gpu_torch_gets(gpus, local_rank, pick):
    from ssl_bf import devices
    from ssl_bf.knn.index import faiss_gpu_id

    count("gpu_perf.faiss_gpu_id", 1)
    name = "cuda" if pick < 0 else f"cuda:{pick}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: True)
        mp.setattr(torch.cuda, "device_count", lambda: gpus)
        mp.setattr(devices, "launch_env", lambda: types.SimpleNamespace(local_rank=local_rank))
        torch_gpu = devices.resolve_device(name).index
    if pick >= gpus:
        with pytest.raises(ValueError, match=name):
            faiss_gpu_id(name, local_rank, gpus)
    else:
        assert faiss_gpu_id(name, local_rank, gpus) == torch_gpu
        assert 0 <= torch_gpu < gpus


_FOLDER: list[str] = []


def _folder(tmp_path_factory) -> str:
    if not _FOLDER:
        root = str(tmp_path_factory.mktemp("fuzz_gpu_perf") / "imgs")
        image_folder(root, per_class=6)  # 12 train images
        _FOLDER.append(root)
    return _FOLDER[0]


def _crops(root: str, seed: int) -> TwoCropFolder:
    return TwoCropFolder(build_dataset("imagefolder", root, "train", None, 32), out_size=8, seed=seed)


passes = st.lists(st.tuples(st.integers(0, 50), st.integers(0, 3)), min_size=1, max_size=4)


@settings(max_examples=fuzz_examples(8), deadline=None)
@given(passes=passes, workers=st.sampled_from([0, 1, 2]), batch=st.sampled_from([2, 3, 4]),
       seed=st.integers(0, 2**31 - 1))
def test_live_workers_give_a_fresh_loaders_batches_for_any_epoch_sequence(tmp_path_factory, passes, workers, batch,
                                                                          seed):
    count("gpu_perf.live_workers", 1)
    root = _folder(tmp_path_factory)
    crops = _crops(root, seed)
    batches = PretrainBatches(crops.folder, crops, batch, seed, True, workers, pin_memory=False)
    try:
        for epoch, start in passes:
            steps = len(crops) // batch
            start = min(start, steps)
            got = list(batches.epoch(epoch, start))
            reference = _crops(root, seed)
            reference.set_epoch(epoch)
            mine = epoch_batches(len(reference), batch, epoch, seed)[start:]  # (steps - start, B)
            want = [(a, b) for a, b, _ in torch.utils.data.DataLoader(reference, batch_sampler=mine.tolist())]
            assert len(got) == len(want) == steps - start
            for (a, b), (c, d) in zip(got, want):
                assert torch.equal(a, c) and torch.equal(b, d)  # 2 x (B, 3, 8, 8) uint8
    finally:
        batches.close()
