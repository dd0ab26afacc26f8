"""The pretraining order on shards: every sample once per epoch (less than one global batch left
out), the same batches for any worker count that divides the stream count and from any step on,
and the crops of `TwoCropFolder` for the same image and index."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz_contract import count, fuzz_examples
from shard_data import copy_shards, cut_image, load, make_folder, make_shards, restamp, rewrite_shard, shard_entries
from ssl_bf.data import TwoCropFolder, build_dataset
from ssl_bf.data.shards import ShardCropStream, ShardError
from ssl_bf.data.shards.order import (EpochPlan, buffer_shuffle, rank_batches_order, stream_batch_counts,
                                      worker_batches)


def _reference_buffer(items: list, size: int, draws: np.ndarray) -> list:
    """The shuffle buffer written plainly, from the same draws: fill; then each new item replaces a
    drawn slot whose item goes out; then drain by drawing among what is left."""
    slots, out, d = [], [], iter(draws.tolist())
    for x in items:
        if len(slots) == size:
            i = int(next(d) * size)
            out.append(slots[i])
            slots[i] = x
        else:
            slots.append(x)
    while slots:
        i = int(next(d) * len(slots))
        out.append(slots[i])
        slots[i] = slots[-1]
        del slots[-1]
    return out


@settings(max_examples=fuzz_examples(200))
@given(st.lists(st.integers(0, 10 ** 6), max_size=80, unique=True), st.integers(1, 30), st.integers(0, 2 ** 32 - 1))
def test_the_shuffle_buffer_is_a_permutation_equal_to_a_plain_reference(items, size, seed):
    count("shards: shuffle buffer", 1)
    arr = np.array(items, dtype=np.int64)
    got = buffer_shuffle(arr, size, np.random.default_rng(seed))
    draws = np.random.default_rng(seed).random(len(items))
    assert got.tolist() == _reference_buffer(items, size, draws)
    assert sorted(got.tolist()) == sorted(items)
    if size == 1:
        assert got.tolist() == items


@st.composite
def epochs(draw):
    counts = draw(st.lists(st.integers(1, 40), min_size=1, max_size=12))
    offsets = np.cumsum([0, *counts])
    n = int(offsets[-1])
    lo = draw(st.integers(0, n - 1))
    hi = draw(st.integers(lo + 1, n))
    world, batch, streams = draw(st.integers(1, 3)), draw(st.integers(1, 8)), draw(st.integers(1, 6))
    return offsets, lo, hi, world, batch, streams, draw(st.integers(1, 20)), draw(st.integers(0, 5))


@settings(max_examples=fuzz_examples(150))
@given(epochs())
def test_an_epoch_reads_every_sample_once_and_leaves_out_fewer_than_one_global_batch(args):
    count("shards: epoch plans", 1)
    offsets, lo, hi, world, batch, streams, buffer, epoch = args
    plan = EpochPlan.make(offsets, lo, hi, 7, epoch, world, batch, streams)
    n = hi - lo
    assert plan.steps == n // (world * batch) and sorted(plan.sequence.tolist()) == list(range(lo, hi))
    read = np.concatenate([rank_batches_order(plan, r, buffer).reshape(-1) for r in range(world)])
    assert len(read) == world * plan.steps * batch and len(set(read.tolist())) == len(read)
    dropped = plan.dropped(world)
    assert len(dropped) < world * batch and set(read.tolist()) | set(dropped.tolist()) == set(range(lo, hi))
    assert sum(stream_batch_counts(plan.steps, streams)) == plan.steps
    for r in range(world):  # the streams of a process tile its range of the sequence, in order
        spans = [plan.stream_span(r, v) for v in range(streams)]
        assert spans[0][0] == r * plan.steps * batch and spans[-1][1] == (r + 1) * plan.steps * batch
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def _dataloader_round_robin(per_worker: list[list]) -> list:
    """What a DataLoader yields from iterable workers: one item from each live worker in turn."""
    out, its, live = [], [iter(w) for w in per_worker], list(range(len(per_worker)))
    while live:
        for w in list(live):
            item = next(its[w], None)
            if item is None:
                live.remove(w)
            else:
                out.append(item)
    return out


@settings(max_examples=fuzz_examples(150))
@given(st.integers(1, 40), st.sampled_from([(1, 1), (2, 1), (2, 2), (4, 2), (4, 4), (6, 3), (8, 4), (8, 8)]),
       st.integers(0, 40))
def test_the_workers_interleaved_give_the_process_order_and_each_reads_its_own_streams(steps, vw, start):
    count("shards: worker interleave", 1)
    streams, workers = vw
    start = min(start, steps)
    per_worker = [worker_batches(start, steps, w, workers, streams) for w in range(workers)]
    assert [j for j, _, _ in _dataloader_round_robin(per_worker)] == list(range(start, steps))
    owners = {}
    for w, jobs in enumerate(per_worker):
        for j, v, b in jobs:
            assert (v, b) == (j % streams, j // streams)
            assert owners.setdefault(v, w) == w  # a stream is read by one worker only


def test_epochs_deal_the_shards_differently():
    offsets = np.cumsum([0] + [10] * 9)
    a, b = (EpochPlan.make(offsets, 0, 90, 0, e, 2, 8, 2) for e in (0, 1))
    assert a.sequence.tolist() != b.sequence.tolist() and set(a.dropped(2)) != set(b.dropped(2))
    assert EpochPlan.make(offsets, 0, 90, 0, 0, 2, 8, 2).sequence.tolist() == a.sequence.tolist()


# --- the real loader ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(str(tmp_path_factory.mktemp("jpegs")))


@pytest.fixture(scope="module")
def sorted_shards(folder, tmp_path_factory):
    return make_shards(folder, str(tmp_path_factory.mktemp("shards") / "out"), "--order", "sorted")


def _batches(stream, workers, start=0, epoch=1, rank=0, world=1, batch=4):
    from torch.utils.data import DataLoader

    stream.set_position(epoch, start)  # the pass the workers make, as the trainer sets it
    loader = DataLoader(stream.rank_stream(rank, world, batch), batch_size=None, num_workers=workers)
    return [(a.clone(), b.clone()) for a, b in loader]


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
def test_the_stream_gives_the_same_batches_for_any_worker_count_and_from_any_step(sorted_shards):
    stream = ShardCropStream(build_dataset("shards", sorted_shards, "train"), 24, seed=3, streams=4, buffer=5)
    ref = _batches(stream, 0)
    assert len(ref) == 16
    for workers in (1, 2, 4):
        got = _batches(stream, workers)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, ref)) and len(got) == 16
    for start in (1, 6, 15):
        got = _batches(stream, 2, start)
        assert len(got) == 16 - start and all(torch.equal(a[0], b[0]) for a, b in zip(got, ref[start:]))
    # a worker count that does not divide the streams is refused by the config check
    # (data_setup.shard_stream; bad case shards-pretrain-workers-do-not-divide-streams)


def test_the_crops_of_a_sample_are_the_two_crop_folders_crops_of_the_same_image(folder, sorted_shards):
    """With shards in the folder readers' order, sample g is the folder's image g, and its two crops
    (drawn from (seed, epoch, g) on the whole image) are TwoCropFolder's, bit for bit."""
    images = build_dataset("shards", sorted_shards, "train")
    stream = ShardCropStream(images, 24, scale=(0.2, 1.0), seed=3, streams=2, buffer=7)
    plan = stream.plan(1, 1, 4)
    order = rank_batches_order(plan, 0, 7)  # (T, B) sample numbers
    crops = TwoCropFolder(build_dataset("imagefolder", folder, "train"), 24, scale=(0.2, 1.0), seed=3)
    crops.set_epoch(1)
    for (c1, c2), rows in zip(_batches(stream, 2, batch=4), order):
        for k, g in enumerate(rows.tolist()):
            f1, f2, _ = crops[g]
            assert torch.equal(c1[k], f1) and torch.equal(c2[k], f2)


def test_a_member_that_does_not_decode_stops_the_stream_naming_the_shard_and_member(sorted_shards, tmp_path):
    manifest = copy_shards(os.path.dirname(sorted_shards), str(tmp_path / "out"))
    name = shard_entries(load(manifest))[3]["name"]
    bad_key = rewrite_shard(os.path.join(tmp_path / "out", name), lambda s: cut_image(s, 1, 60))[1]["__key__"]
    restamp(manifest, name)
    stream = ShardCropStream(build_dataset("shards", manifest, "train"), 24, seed=0, streams=2, buffer=3)
    with pytest.raises(ShardError) as err:
        _batches(stream, 2)
    text = str(err.value)
    assert f"{tmp_path / 'out' / name} member {bad_key}.jpg does not decode" in text and "Traceback" not in text


def test_a_process_opens_each_shard_it_reads_once_an_epoch(sorted_shards, monkeypatch):
    """A worker opens a shard at its first sample and closes it after its last one, whatever the
    interleaving of its streams: in one process every shard read is opened exactly once."""
    from ssl_bf.data.shards import dataset as dataset_module

    images = build_dataset("shards", sorted_shards, "train")
    opened = []
    real = dataset_module.ShardImageDataset.open_shard
    monkeypatch.setattr(dataset_module.ShardImageDataset, "open_shard",
                        lambda self, slot: opened.append(slot) or real(self, slot))
    stream = ShardCropStream(images, 24, seed=0, streams=4, buffer=3)
    _batches(stream, 0, batch=5)
    read = rank_batches_order(stream.plan(1, 1, 5), 0, 3).reshape(-1)
    touched = {images.locate(int(g))[0] for g in read}
    assert sorted(opened) == sorted(touched) and len(touched) >= len(images.shards) - 1
