"""ssl_bf.features: shards, parity with a plain loop, 2-process gather, and `ssl-bf embed` under torchrun."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from ssl_bf.data.augment import EvalTransform
from ssl_bf.data import TensorImageDataset, build_dataset
from ssl_bf.knn.features import extract_features, shard_bounds

from image_folder import make_jpeg_folder
from tiny_run import ROOT, TINY

N_SPAWN = 37  # odd: the two shards differ in length


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(channels: int) -> nn.Module:
    """A small conv net with BatchNorm whose running stats are not the defaults (eval != train)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 6))
    model[1].running_mean.normal_()
    model[1].running_var.uniform_(0.5, 2.0)
    return model.train()  # extract_features must switch to eval and back


def _tensor_dataset(n: int = 50) -> TensorImageDataset:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return TensorImageDataset("cifar10", "<memory>", [str(i) for i in range(10)], images,
                              torch.arange(n) % 10)


@torch.no_grad()
def _plain_loop(model: nn.Module, dataset, transform, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """One image at a time, eval mode: the reference."""
    was = model.training
    model.eval()
    feats, labels = [], []
    for i in indices:
        image, label = dataset[int(i)]
        feats.append(model(transform(image[None]))[0])
        labels.append(label)
    model.train(was)
    return torch.stack(feats), torch.tensor(labels, dtype=torch.int64)


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory) -> str:
    try:
        build_dataset("fashion-mnist", split="test")
    except Exception as err:  # DataError: no copy of Fashion-MNIST on this machine
        pytest.skip(f"Fashion-MNIST unavailable: {err}")
    return make_jpeg_folder(str(tmp_path_factory.mktemp("jpeg") / "imgs"))


# ----------------------------------------------------------------------------------------------
# Shards
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_shard_bounds_cover_in_order_and_balanced(world):
    for n in range(0, 30):
        bounds = [shard_bounds(n, r, world) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, in rank order
        sizes = [hi - lo for lo, hi in bounds]
        assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
        assert sizes == sorted(sizes, reverse=True)  # the larger shards first
        if n < world:
            assert sizes == [1] * n + [0] * (world - n)
    with pytest.raises(ValueError):
        shard_bounds(5, 2, 2)


# ----------------------------------------------------------------------------------------------
# One process: equal to a plain loop
# ----------------------------------------------------------------------------------------------


def test_tensor_dataset_matches_plain_loop_with_indices():
    dataset = _tensor_dataset()
    model = _model(3)
    transform = EvalTransform(28, dataset.mean, dataset.std)  # resize + centre crop
    indices = torch.tensor([17, 3, 49, 0, 3, 22, 8, 41, 5], dtype=torch.int64)  # a subset, any order
    feats, labels = extract_features(model, dataset, transform, torch.device("cpu"), indices=indices,
                                     batch_size=4, progress=False)
    assert model.training  # the previous mode is restored
    ref, ref_labels = _plain_loop(model, dataset, transform, indices)
    assert feats.dtype == torch.float32 and feats.shape == (len(indices), 6)
    torch.testing.assert_close(feats, ref, rtol=1e-4, atol=1e-5)
    assert labels.dtype == torch.int64 and labels.tolist() == ref_labels.tolist()
    all_feats, all_labels = extract_features(model, dataset, transform, "cpu", batch_size=16, progress=False)
    torch.testing.assert_close(all_feats[indices], feats, rtol=1e-4, atol=1e-5)
    assert all_labels.tolist() == dataset.labels.tolist()


@pytest.mark.parametrize("workers", [0, 2])
def test_image_folder_matches_plain_loop(jpeg_root, workers):
    dataset = build_dataset("imagefolder", root=jpeg_root, split="test", load_size=40)  # val/: 40 images
    model = _model(3)
    transform = EvalTransform(32, dataset.mean, dataset.std)
    indices = torch.tensor([39, 0, 12, 25, 7, 30, 1], dtype=torch.int64)
    feats, labels = extract_features(model, dataset, transform, torch.device("cpu"), indices=indices,
                                     batch_size=3, num_workers=workers, progress=False)
    ref, ref_labels = _plain_loop(model, dataset, transform, indices)
    torch.testing.assert_close(feats, ref, rtol=1e-4, atol=1e-5)
    assert labels.tolist() == ref_labels.tolist() == [dataset.samples[i][1] for i in indices]


def test_nothing_to_embed_and_bad_indices():
    dataset = _tensor_dataset(5)
    model, transform = _model(3), EvalTransform(32, dataset.mean, dataset.std)
    with pytest.raises(ValueError, match="nothing to embed"):
        extract_features(model, dataset, transform, "cpu", indices=torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 5\)"):
        extract_features(model, dataset, transform, "cpu", indices=torch.tensor([0, 5]))


# ----------------------------------------------------------------------------------------------
# Two processes (spawn + gloo): rank 0 gets every shard, in order
# ----------------------------------------------------------------------------------------------


def _worker(rank: int, port: int, out_dir: str, folder: str) -> None:
    import torch.distributed as dist

    from ssl_bf import distributed as dist_utils

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    dist_utils.init_distributed(torch.device("cpu"))
    dataset, model = _tensor_dataset(N_SPAWN), _model(3)
    transform = EvalTransform(28, dataset.mean, dataset.std)
    results = {
        "all": extract_features(model, dataset, transform, "cpu", batch_size=8, progress=False),
        "order": extract_features(model, dataset, transform, "cpu", indices=torch.arange(N_SPAWN).flip(0)[:11],
                                  batch_size=4, progress=False),
        "one": extract_features(model, dataset, transform, "cpu", indices=torch.tensor([9]), progress=False),
        "folder": extract_features(model, build_dataset("imagefolder", root=folder, split="test", load_size=40),
                                   EvalTransform(32, dataset.mean, dataset.std), "cpu", batch_size=6,
                                   num_workers=0, progress=False),
    }
    torch.save({k: v if v is None else list(v) for k, v in results.items()},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_gather_in_order(tmp_path, jpeg_root):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), jpeg_root), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert all(v is None for v in ranks[1].values())  # only rank 0 receives the rows

    dataset, model = _tensor_dataset(N_SPAWN), _model(3)
    transform = EvalTransform(28, dataset.mean, dataset.std)
    cases = {"all": torch.arange(N_SPAWN), "order": torch.arange(N_SPAWN).flip(0)[:11], "one": torch.tensor([9])}
    for name, idx in cases.items():
        feats, labels = ranks[0][name]
        single, single_labels = extract_features(model, dataset, transform, "cpu", indices=idx, progress=False)
        assert feats.shape == (len(idx), 6), name
        torch.testing.assert_close(feats, single, rtol=1e-4, atol=1e-5)
        assert labels.tolist() == single_labels.tolist() == dataset.labels[idx].tolist()
    folder = build_dataset("imagefolder", root=jpeg_root, split="test", load_size=40)
    single, single_labels = extract_features(model, folder, EvalTransform(32, dataset.mean, dataset.std), "cpu",
                                             progress=False)
    torch.testing.assert_close(ranks[0]["folder"][0], single, rtol=1e-4, atol=1e-5)
    assert ranks[0]["folder"][1].tolist() == single_labels.tolist()


# ----------------------------------------------------------------------------------------------
# `torchrun -m ssl_bf embed` writes one file equal to the single-process one
# ----------------------------------------------------------------------------------------------


def _pretrain(run_dir: str, *overrides: str) -> str:
    from ssl_bf.cli import main

    assert main(["pretrain", "--config", TINY, f"run.dir={run_dir}", "train.epochs=1", *overrides]) == 0
    return os.path.join(run_dir, "checkpoints", "last.pt")


def _run(argv: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(argv)}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def _embed_both(tmp_path, name: str, args: list[str]):
    """`python -m ssl_bf embed` and `torchrun --nproc_per_node=2 -m ssl_bf embed`: both files, loaded."""
    from ssl_bf.eval.formats import load_embeddings

    one, two = str(tmp_path / f"{name}-1.safetensors"), str(tmp_path / f"{name}-2.safetensors")
    printed = _run([sys.executable, "-m", "ssl_bf", "embed", *args, "--workers", "0", "--out", one])
    assert "rows" in printed
    printed = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr",
                    "127.0.0.1", "--master_port", str(_free_port()), "-m", "ssl_bf", "embed", *args,
                    "--workers", "2", "--out", two])
    assert printed.count(" rows ") == 1  # the table is printed by rank 0 only
    written = {f for f in os.listdir(tmp_path) if f.endswith(".safetensors") or f.startswith(".tmp")}
    assert written <= {f"{n}-{k}.safetensors" for n in ("fmnist", "folder") for k in (1, 2)}  # one file each
    return load_embeddings(one), load_embeddings(two)


@pytest.mark.slow
def test_torchrun_embed_equals_one_process(tmp_path, jpeg_root):
    tic = time.perf_counter()
    fm_ckpt = _pretrain(str(tmp_path / "fm"), "data.subset=128")
    rgb_ckpt = _pretrain(str(tmp_path / "rgb"), "data.name=imagefolder", f"data.root={jpeg_root}",
                         "data.subset=null", "data.load_size=40", "augment.image_size=32",
                         "train.batch_size=32", "moco.queue_size=64")
    cases = {"fmnist": ["--checkpoint", fm_ckpt, "--data", "fashion-mnist", "--split", "test", "--subset", "301"],
             "folder": ["--checkpoint", rgb_ckpt, "--data", jpeg_root, "--split", "test"]}
    for name, args in cases.items():
        one, two = _embed_both(tmp_path, name, [*args, "--no-progress", "--batch-size", "64"])
        assert two.embeddings.shape == one.embeddings.shape and len(one) in (301, 40)
        np.testing.assert_allclose(two.embeddings, one.embeddings, rtol=1e-4, atol=1e-5)
        assert two.labels.tolist() == one.labels.tolist()
        assert two.image_paths == one.image_paths
        assert two.metadata == one.metadata  # nothing rank-specific
    assert one.image_paths and one.image_paths[0].startswith(jpeg_root)
    # about 33 s on 2 CPU cores (2 tiny pretrain runs, 2 single-process and 2 torchrun embeds)
    print(f"torchrun embed test: {time.perf_counter() - tic:.1f} s")
