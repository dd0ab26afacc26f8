"""Tests for ssl_bf.data: real Fashion-MNIST, synthetic CIFAR files, image folders; the
restricted unpickler of ssl_bf.io."""
from __future__ import annotations

import gzip
import os
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_bf.data import (DATASET_STATS, DataError, UnreadableImageError, build_dataset, cifar, fashion_mnist, load_image,
                         read_idx)
from ssl_bf.io import NUMPY_ARRAY_GLOBALS, BlockedGlobalError, safe_unpickle

FMNIST_DIR = Path(fashion_mnist.FASHION_MNIST_SYSTEM_DIR)
needs_fmnist = pytest.mark.skipif(
    not (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="needs the Debian package: apt-get install -y dataset-fashion-mnist")


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST (the real files)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fmnist_train():
    return build_dataset("fashion-mnist", split="train")


@pytest.fixture(scope="module")
def fmnist_test():
    return build_dataset("fashion-mnist", split="test")


def _gz_bytes(name: str, offset: int, count: int) -> bytes:
    with gzip.open(FMNIST_DIR / name, "rb") as f:
        return f.read()[offset:offset + count]


@needs_fmnist
def test_fmnist_shapes_and_attributes(fmnist_train, fmnist_test):
    assert fmnist_train.images.shape == (60000, 1, 28, 28)
    assert fmnist_test.images.shape == (10000, 1, 28, 28)
    assert fmnist_train.images.dtype == torch.uint8 and fmnist_train.images.is_contiguous()
    assert fmnist_train.labels.dtype == torch.int64 and fmnist_train.labels.shape == (60000,)
    assert len(fmnist_train) == 60000 and len(fmnist_test) == 10000
    assert (fmnist_train.name, fmnist_train.num_channels, fmnist_train.image_size) == ("fashion-mnist", 1, 28)
    assert fmnist_train.root == str(FMNIST_DIR)
    assert (fmnist_train.mean, fmnist_train.std) == DATASET_STATS["fashion-mnist"]
    assert len(fmnist_train.classes) == 10 and fmnist_train.classes[9] == "Ankle boot"


@needs_fmnist
def test_fmnist_first_sample_matches_raw_file(fmnist_train):
    first_label = _gz_bytes("train-labels-idx1-ubyte.gz", 8, 1)[0]  # after the 8-byte header
    first_pixels = np.frombuffer(_gz_bytes("train-images-idx3-ubyte.gz", 16, 784), np.uint8)
    image, label = fmnist_train[0]
    assert first_label == 9 and label == 9 and isinstance(label, int)
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8
    assert torch.equal(image.flatten(), torch.from_numpy(first_pixels.copy()))


@needs_fmnist
def test_fmnist_labels_balanced(fmnist_train, fmnist_test):
    assert fmnist_train.labels.min() == 0 and fmnist_train.labels.max() == 9
    assert torch.bincount(fmnist_train.labels).tolist() == [6000] * 10
    assert torch.bincount(fmnist_test.labels).tolist() == [1000] * 10
    assert 0.27 < fmnist_train.images.float().mean().item() / 255 < 0.30  # stats match the data


@needs_fmnist
def test_fmnist_get_batch_matches_getitem(fmnist_train):
    idx = torch.tensor([5, 0, 59999, 123, 5])
    images, labels = fmnist_train.get_batch(idx)
    assert images.shape == (5, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    for row, i in enumerate(idx.tolist()):
        image, label = fmnist_train[i]
        assert torch.equal(images[row], image) and labels[row].item() == label


@needs_fmnist
def test_fmnist_subset_and_cache(fmnist_train):
    small = build_dataset("fashion-mnist", subset=100)
    assert len(small) == 100 and small.images.shape == (100, 1, 28, 28)
    assert torch.equal(small.images, fmnist_train.images[:100])
    assert torch.equal(small.labels, fmnist_train.labels[:100])
    assert len(fmnist_train) == 60000  # the subset did not shrink the cached arrays
    with pytest.raises(ValueError, match="60001"):
        build_dataset("fashion-mnist", subset=60001)


@needs_fmnist
def test_fmnist_dataloader_collates(fmnist_train):
    loader = torch.utils.data.DataLoader(fmnist_train, batch_size=8)
    images, labels = next(iter(loader))
    assert images.shape == (8, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.tolist() == fmnist_train.labels[:8].tolist()


@needs_fmnist
def test_fmnist_torchvision_layout_uncompressed(tmp_path, fmnist_test):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(FMNIST_DIR / f"{stem}.gz", "rb") as src:
            (raw / stem).write_bytes(src.read())
    ds = build_dataset("fashion-mnist", root=str(tmp_path), split="test")
    assert ds.root == str(raw)
    assert torch.equal(ds.images, fmnist_test.images) and torch.equal(ds.labels, fmnist_test.labels)


def test_fmnist_missing_root_names_path_and_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        build_dataset("fashion-mnist", root=str(missing))
    message = str(info.value)
    assert str(missing) in message
    assert "apt-get install -y dataset-fashion-mnist" in message and "data.root=" in message


def test_fmnist_default_search_falls_back_to_download(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "no-system-copy"))
    monkeypatch.setattr(fashion_mnist, "CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(fashion_mnist, "_download_fmnist", lambda cache: "URLError: offline")
    with pytest.raises(DataError) as info:
        build_dataset("fashion-mnist")
    message = str(info.value)
    assert str(tmp_path / "no-system-copy") in message and str(tmp_path / "cache") in message
    assert "offline" in message and "apt-get install -y dataset-fashion-mnist" in message

    def fake_download(cache: str) -> None:  # writes torchvision's layout, like the real one
        raw = Path(cache) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        _write_idx(raw / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
        _write_idx(raw / "train-labels-idx1-ubyte", np.array([1, 2]))

    monkeypatch.setattr(fashion_mnist, "_download_fmnist", fake_download)
    ds = build_dataset("fashion-mnist")
    assert ds.labels.tolist() == [1, 2]
    assert ds.root == str(tmp_path / "cache" / "fashion-mnist" / "FashionMNIST" / "raw")


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_idx_parser_roundtrip_and_corruption(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28)
    _write_idx(tmp_path / "train-images-idx3-ubyte", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([3, 7]))
    ds = build_dataset("fashion-mnist", root=str(tmp_path))
    assert ds.labels.tolist() == [3, 7] and torch.equal(ds.images[:, 0], torch.from_numpy(images))

    truncated = tmp_path / "train-images-idx3-ubyte"
    truncated.write_bytes(truncated.read_bytes()[:-5])
    with pytest.raises(DataError, match="corrupt") as info:
        read_idx(str(truncated))
    assert str(truncated) in str(info.value)
    (tmp_path / "bad").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match="magic"):
        read_idx(str(tmp_path / "bad"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("mnist")
    with pytest.raises(ValueError, match="split"):
        build_dataset("fashion-mnist", split="val")


# ----------------------------------------------------------------------------------------------
# CIFAR (synthetic files in both layouts)
# ----------------------------------------------------------------------------------------------


def _cifar_arrays(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            rng.integers(0, num_classes, n).astype(np.int64))


def _dump(path: Path, obj: object, protocol: int) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _write_cifar10(root: Path, batches: list, test: tuple, names: list[str], protocol: int) -> None:
    py, binary = root / "cifar-10-batches-py", root / "cifar-10-batches-bin"
    py.mkdir(parents=True)
    binary.mkdir(parents=True)
    for i, (x, y) in enumerate([*batches, test]):
        stem = f"data_batch_{i + 1}" if i < len(batches) else "test_batch"
        # bytes keys, like the original Python-2 pickles
        _dump(py / stem, {b"batch_label": b"synthetic", b"labels": y.tolist(), b"data": x}, protocol)
        records = np.concatenate([y.astype(np.uint8)[:, None], x], axis=1)
        (binary / f"{stem}.bin").write_bytes(records.tobytes())
    _dump(py / "batches.meta", {b"label_names": [n.encode() for n in names]}, protocol)
    (binary / "batches.meta.txt").write_text("\n".join(names) + "\n\n")


def _load_layout(tmp_path: Path, name: str, layout_dir: str, split: str):
    only = tmp_path / f"only-{layout_dir}"
    shutil.copytree(tmp_path / "both" / layout_dir, only / layout_dir, dirs_exist_ok=True)
    return build_dataset(name, root=str(only), split=split)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_pickle_and_binary_layouts_agree(tmp_path, protocol):
    names = [f"class{i}" for i in range(10)]
    batches = [_cifar_arrays(4, 10, seed) for seed in range(5)]
    test = _cifar_arrays(3, 10, 99)
    _write_cifar10(tmp_path / "both", batches, test, names, protocol)
    for split, expected in (("train", batches), ("test", [test])):
        from_py = _load_layout(tmp_path, "cifar10", "cifar-10-batches-py", split)
        from_bin = _load_layout(tmp_path, "cifar10", "cifar-10-batches-bin", split)
        x = np.concatenate([b[0] for b in expected]).reshape(-1, 3, 32, 32)
        y = np.concatenate([b[1] for b in expected])
        for ds in (from_py, from_bin):
            assert ds.images.shape == (len(y), 3, 32, 32) and ds.images.dtype == torch.uint8
            assert ds.images.is_contiguous() and ds.labels.dtype == torch.int64
            assert torch.equal(ds.images, torch.from_numpy(x)) and ds.labels.tolist() == y.tolist()
            assert ds.classes == names and (ds.num_channels, ds.image_size) == (3, 32)
            assert (ds.mean, ds.std) == DATASET_STATS["cifar10"]
        assert from_py.root.endswith("cifar-10-batches-py")
        assert from_bin.root.endswith("cifar-10-batches-bin")


def test_cifar_channel_order(tmp_path):
    """A row is 1024 red, 1024 green, 1024 blue bytes, each row-major over 32x32."""
    x = np.zeros((1, 3072), np.uint8)
    x[0, 0] = 10  # red, (0, 0)
    x[0, 1024 + 33] = 20  # green, row 1, col 1
    x[0, 2048 + 1023] = 30  # blue, (31, 31)
    y = np.array([4])
    _write_cifar10(tmp_path, [(x, y)] * 5, (x, y), [str(i) for i in range(10)], 2)
    image, label = build_dataset("cifar10", root=str(tmp_path), split="test")[0]
    assert label == 4
    assert (image[0, 0, 0].item(), image[1, 1, 1].item(), image[2, 31, 31].item()) == (10, 20, 30)
    assert image.sum().item() == 60


def test_cifar100_layouts_agree_and_use_fine_labels(tmp_path):
    names = [f"fine{i}" for i in range(100)]
    py, binary = tmp_path / "cifar-100-python", tmp_path / "cifar-100-binary"
    py.mkdir()
    binary.mkdir()
    splits = {"train": _cifar_arrays(6, 100, 1), "test": _cifar_arrays(2, 100, 2)}
    for split, (x, fine) in splits.items():
        coarse = fine // 5
        _dump(py / split, {"data": x, "fine_labels": fine.tolist(), "coarse_labels": coarse.tolist()}, 4)
        records = np.concatenate([coarse.astype(np.uint8)[:, None], fine.astype(np.uint8)[:, None], x], 1)
        (binary / f"{split}.bin").write_bytes(records.tobytes())
    _dump(py / "meta", {"fine_label_names": names, "coarse_label_names": ["c"] * 20}, 4)
    (binary / "fine_label_names.txt").write_text("\n".join(names))
    from_py = build_dataset("cifar100", root=str(tmp_path), split="train")  # pickle preferred
    shutil.rmtree(py)
    from_bin = build_dataset("cifar100", root=str(tmp_path), split="train")
    assert from_py.root.endswith("cifar-100-python") and from_bin.root.endswith("cifar-100-binary")
    for ds in (from_py, from_bin):
        assert ds.labels.tolist() == splits["train"][1].tolist() and ds.classes == names
        assert torch.equal(ds.images, torch.from_numpy(splits["train"][0].reshape(-1, 3, 32, 32)))
    images, labels = from_bin.get_batch(torch.tensor([5, 1]))
    assert torch.equal(images[0], from_bin[5][0]) and labels.tolist() == [from_bin[5][1], from_bin[1][1]]
    assert len(build_dataset("cifar100", root=str(tmp_path), split="test")) == 2
    with pytest.raises(ValueError, match="subset=7"):
        build_dataset("cifar100", root=str(tmp_path), subset=7)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_with_forbidden_global_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    x, y = _cifar_arrays(2, 10, 0)
    _write_cifar10(tmp_path, [(x, y)] * 5, (x, y), [str(i) for i in range(10)], 2)
    _dump(tmp_path / "cifar-10-batches-py" / "test_batch", {"data": _Exploit(marker), "labels": [0]}, 2)
    with pytest.raises(DataError, match="refusing to load global") as info:
        build_dataset("cifar10", root=str(tmp_path), split="test")
    assert "system" in str(info.value) and "test_batch" in str(info.value)
    assert not marker.exists()
    evil = tmp_path / "evil.pkl"
    _dump(evil, {"f": eval}, 4)  # builtins.eval
    with pytest.raises(DataError, match="builtins.eval"):
        cifar.read_cifar_pickle(str(evil))
    with pytest.raises(BlockedGlobalError, match="refusing to load global builtins.eval") as blocked:
        safe_unpickle(str(evil), NUMPY_ARRAY_GLOBALS, "numpy array reconstruction")
    assert (blocked.value.module, blocked.value.name) == ("builtins", "eval")
    _dump(evil, {b"data": np.arange(3, dtype=np.uint8)}, 4)  # numpy arrays: on the allow-list
    assert safe_unpickle(str(evil), NUMPY_ARRAY_GLOBALS, "numpy arrays")[b"data"].tolist() == [0, 1, 2]
    with pytest.raises(BlockedGlobalError, match=r"multiarray._reconstruct: only nothing is allowed"):
        safe_unpickle(str(evil), allowed={}, what="nothing")


def test_cifar_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError) as info:
        build_dataset("cifar10", root=str(tmp_path))
    assert str(tmp_path) in str(info.value) and "cifar-10-batches-py" in str(info.value)
    assert "data.root=" in str(info.value)
    binary = tmp_path / "cifar-10-batches-bin"
    binary.mkdir()
    (binary / "test_batch.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(DataError, match="not a multiple"):
        build_dataset("cifar10", root=str(tmp_path), split="test")


# ----------------------------------------------------------------------------------------------
# Image folders
# ----------------------------------------------------------------------------------------------

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (24, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _image_tree(base: Path) -> None:
    for i in range(3):
        _png(base / "cat" / f"c{i}.png", RED)
    _png(base / "dog" / "d0.PNG", BLUE)  # upper-case extension
    _png(base / "dog" / "nested" / "d1.png", BLUE)  # found recursively
    (base / "dog" / "broken.png").write_bytes(b"not a png at all")
    (base / "dog" / "notes.txt").write_text("ignored")


def test_imagefolder_loads_labels_and_refuses_a_corrupt_file(tmp_path):
    _image_tree(tmp_path / "train")
    ds = build_dataset("imagefolder", root=str(tmp_path), split="train", load_size=16)
    assert ds.classes == ["cat", "dog"] and len(ds) == 6  # txt ignored, broken file listed
    assert ds.root == str(tmp_path / "train") and not hasattr(ds, "get_batch")
    assert (ds.num_channels, ds.image_size, ds.mean, ds.std) == (3, 16, *DATASET_STATS["imagefolder"])
    broken = str(tmp_path / "train" / "dog" / "broken.png")
    bad = [p for p, _ in ds.samples].index(broken)
    for i in range(len(ds)):
        if i == bad:
            with pytest.raises(UnreadableImageError, match="broken.png") as info:
                ds[i]
            assert "\n" not in str(info.value) and "--skip-unreadable" in str(info.value)
            continue
        image, label = ds[i]
        assert image.shape == (3, 16, 16) and image.dtype == torch.uint8
        assert image[:, 8, 8].tolist() == list(RED if label == 0 else BLUE)  # the pixels belong to the label
    assert ds.unreadable.indices() == [bad]


def test_imagefolder_with_skip_unreadable_leaves_out_or_replaces_with_its_own_label(tmp_path):
    _image_tree(tmp_path / "train")
    ds = build_dataset("imagefolder", root=str(tmp_path), split="train", load_size=16, skip_unreadable=True)
    bad = [p for p, _ in ds.samples].index(str(tmp_path / "train" / "dog" / "broken.png"))
    image, label, readable = ds.get_or_skip(bad)  # extraction: the row is left out
    assert not readable and image.shape == (3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stand_in, its_label = ds[bad]  # training: another readable image, with its own label
    assert stand_in[:, 8, 8].tolist() == list(RED if its_label == 0 else BLUE)
    assert torch.equal(ds[bad][0], stand_in)  # the same stand-in every time
    assert ds.unreadable_paths() == [ds.samples[bad][0]]


def test_imagefolder_resize_then_centre_crop(tmp_path):
    img = Image.new("RGB", (40, 20), RED)
    img.paste(BLUE, (20, 0, 40, 20))  # right half blue
    img.save(tmp_path / "wide.png")
    image = load_image(str(tmp_path / "wide.png"), 10)  # -> 20x10, crop columns 5..14
    assert image.shape == (3, 10, 10)
    assert image[:, 5, 1].tolist() == list(RED) and image[:, 5, 8].tolist() == list(BLUE)
    gray = tmp_path / "gray.JPG"
    Image.new("L", (30, 60), 128).save(gray, format="JPEG")
    out = load_image(str(gray), 12)
    assert out.shape == (3, 12, 12) and (out.int() - 128).abs().max() <= 2


def test_imagefolder_test_split_shares_class_indices(tmp_path):
    _image_tree(tmp_path / "train")
    _png(tmp_path / "val" / "dog" / "v0.png", BLUE)  # no cat folder in val
    ds = build_dataset("imagefolder", root=str(tmp_path), split="test", load_size=8)
    assert ds.root == str(tmp_path / "val") and ds.classes == ["cat", "dog"]
    assert ds[0][1] == 1 and len(ds) == 1


def test_imagefolder_flat_root_used_for_both_splits(tmp_path):
    _png(tmp_path / "a" / "x.png", RED)
    _png(tmp_path / "b" / "y.bmp", BLUE)
    with pytest.warns(UserWarning, match="BOTH"):
        train = build_dataset("imagefolder", root=str(tmp_path), load_size=8)
    with pytest.warns(UserWarning, match="BOTH"):
        test = build_dataset("imagefolder", root=str(tmp_path), split="test", load_size=8)
    assert train.samples == test.samples and train.classes == ["a", "b"]


def test_unlabeled_folder(tmp_path):
    _image_tree(tmp_path / "pics")
    ds = build_dataset("folder", root=str(tmp_path / "pics"), load_size=12, subset=5)
    assert ds.classes == [] and len(ds) == 5 and ds.name == "folder"
    image, label = ds[0]
    assert label == -1 and image.shape == (3, 12, 12) and image.dtype == torch.uint8


def test_folder_errors_name_the_path(tmp_path):
    missing = tmp_path / "missing"
    for name in ("folder", "imagefolder"):
        with pytest.raises(DataError, match="data.root=") as info:
            build_dataset(name, root=str(missing))
        assert str(missing) in str(info.value)
    empty = tmp_path / "empty"
    (empty / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no images") as info:
        build_dataset("imagefolder", root=str(empty))
    assert str(empty / "train") in str(info.value)
    with pytest.raises(DataError, match="val/ or test/"):
        build_dataset("imagefolder", root=str(empty), split="test")
    with pytest.raises(DataError, match="no images found under"):
        build_dataset("folder", root=str(empty))
    with pytest.raises(DataError, match="data.root=DIR"):
        build_dataset("folder")


def test_all_files_corrupt_raises(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"junk")
    (tmp_path / "b.png").write_bytes(b"junk")
    ds = build_dataset("folder", root=str(tmp_path), load_size=8)
    with pytest.raises(UnreadableImageError, match="a.jpg"):
        ds[0]
    skipping = build_dataset("folder", root=str(tmp_path), load_size=8, skip_unreadable=True)
    with pytest.raises(UnreadableImageError, match="no readable image in .* 2 of its 2 images") as info:
        skipping[0]
    assert str(tmp_path / "a.jpg") in str(info.value)
