"""Image files decoded with PIL: labelled class folders (`imagefolder`) and unlabeled folder trees
(`folder`).

Every file is read through `decode.decode_rgb`, so an image that cannot be read correctly is never
turned into pixels. What happens then is the dataset's policy (`skip_unreadable`):
- off (the default): `UnreadableImageError` naming the file, also from inside DataLoader workers;
- on: extraction leaves the row out (`get_or_skip`), and training consumers get another readable
  image with its own label in its place (`__getitem__`, `replacement_candidates`).
Either way the sample is marked in `unreadable` (shared with the workers), so the main process can
list every file its workers left out.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Iterator, Optional, Sequence, TypeVar

import numpy as np
import torch

from .base import DATASET_STATS, DataError, ImageDataset, expand_path
from .decode import UnreadableImageError, decode_rgb, unreadable_reason

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
T = TypeVar("T")
RANDOM_REPLACEMENTS = 16  # random draws for a stand-in before every sample is tried in turn
REPLACEMENT_STREAM = 0x5EED  # keeps the stand-in draws apart from any other use of the same key


class UnreadableMarks:
    """Which samples were found unreadable, in shared memory, so that DataLoader workers' marks are
    seen by the process that made the dataset: uint8 (N,), 1 = unreadable."""

    def __init__(self, n: int) -> None:
        self.flags = torch.zeros(n, dtype=torch.uint8).share_memory_()  # (N,)

    def mark(self, index: int) -> None:
        self.flags[index] = 1

    def __contains__(self, index: int) -> bool:
        return bool(self.flags[index])

    def indices(self) -> list[int]:
        return self.flags.nonzero().flatten().tolist()

    def keep_first(self, n: int) -> None:
        self.flags = self.flags[:n]  # a view: still shared


def replacement_candidates(n: int, key: Sequence[int]) -> Iterator[int]:
    """Sample indices to try, in order, in place of an unreadable one: random draws that are a
    function of `key` alone (e.g. (seed, epoch, index), so a resumed run draws the same), then every
    index once from a random start, so the search ends when no image is readable."""
    rng = np.random.default_rng([*key, REPLACEMENT_STREAM])
    for _ in range(RANDOM_REPLACEMENTS):
        yield int(rng.integers(n))
    start = int(rng.integers(n))
    for step in range(n):
        yield (start + step) % n


class ImageFolderDataset(ImageDataset):
    """Image files decoded with PIL to RGB uint8 (3, S, S): shorter side resized to S, centre crop.

    Label -1 and `classes == []` for unlabeled folders. An unreadable file raises
    `UnreadableImageError`, or with `skip_unreadable` is left out / replaced (module docstring).
    """

    def __init__(self, name: str, root: str, classes: list[str], samples: list[tuple[str, int]],
                 load_size: int, skip_unreadable: bool = False) -> None:
        super().__init__(name, root, classes, num_channels=3, image_size=load_size,
                         stats=DATASET_STATS[name])
        self.samples = samples
        self.load_size = load_size
        self.skip_unreadable = skip_unreadable
        self.unreadable = UnreadableMarks(len(samples))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """(uint8 (3, S, S), label). With `skip_unreadable`, an unreadable sample is replaced by the
        first readable one of `replacement_candidates(n, [index])`, with that sample's own label."""
        try:
            return self._load(index)
        except UnreadableImageError:
            if not self.skip_unreadable:
                raise
        return self.stand_in([index], index, self._load)

    def get_or_skip(self, index: int) -> tuple[torch.Tensor, int, bool]:
        """(image, label, readable) for extraction: with `skip_unreadable`, an unreadable sample gives
        a black image and readable=False (the row is left out); without, UnreadableImageError."""
        try:
            image, label = self._load(index)
            return image, label, True
        except UnreadableImageError:
            if not self.skip_unreadable:
                raise
        blank = torch.zeros((3, self.load_size, self.load_size), dtype=torch.uint8)  # (3, S, S)
        return blank, self.samples[index][1], False

    def _load(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            return load_image(path, self.load_size), label  # (3, S, S) uint8
        except UnreadableImageError:
            self.unreadable.mark(index)
            raise

    def stand_in(self, key: Sequence[int], bad: int, load: Callable[[int], T]) -> T:
        """`load(i)` for the first candidate i of `replacement_candidates(n, key)`, other than the
        unreadable sample `bad`, that can be read (marked ones are passed over without decoding).
        UnreadableImageError when none can."""
        self.unreadable.mark(bad)
        for candidate in replacement_candidates(len(self.samples), key):
            if candidate == bad or candidate in self.unreadable:
                continue
            try:
                return load(candidate)
            except UnreadableImageError:
                self.unreadable.mark(candidate)
        raise self.no_readable_image()

    def no_readable_image(self) -> UnreadableImageError:
        """The error for a folder none of whose images (asked for) can be read, naming one."""
        marked = self.unreadable.indices()
        example = ""
        if marked:
            path = self.samples[marked[0]][0]
            example = f" (the first, {path}: {unreadable_reason(path) or 'unreadable'})"
        return UnreadableImageError(f"no readable image in {self.root}: {len(marked)} of its {len(self)} "
                                    f"images are unreadable{example}; fix or replace the files")

    def unreadable_paths(self, indices: Optional[Sequence[int]] = None) -> list[str]:
        """The paths of the samples marked unreadable in this process (or of `indices`), in order."""
        chosen = self.unreadable.indices() if indices is None else sorted(set(int(i) for i in indices))
        return [self.samples[i][0] for i in chosen]

    def take_first(self, n: int) -> None:
        """Keep only the first `n` samples."""
        self.samples = self.samples[:n]
        self.unreadable.keep_first(n)

    def label_array(self) -> np.ndarray:
        return np.asarray([label for _, label in self.samples], dtype=np.int64)  # (N,)

    def select(self, indices: np.ndarray) -> None:
        """Keep the samples at `indices` (before any image is read: the marks start afresh)."""
        self.samples = [self.samples[int(i)] for i in indices]
        self.unreadable = UnreadableMarks(len(self.samples))


def load_image(path: str, size: int) -> torch.Tensor:
    """Decode to RGB, resize the shorter side to `size`, centre crop: uint8 (3, size, size).
    UnreadableImageError (naming the file) when it cannot be read correctly."""
    from PIL import Image

    img, _ = decode_rgb(path, lambda opened: opened.draft("RGB", (size, size)))  # JPEG: reduced scale >= size
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    array = np.array(img, dtype=np.uint8)  # (S, S, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, S, S)


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def find_images(folder: str) -> list[str]:
    """Image files under `folder`, recursively, sorted; hidden files and folders skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f))
    return found


def _class_dirs(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _require_dir(root: Optional[str], name: str, expected: str) -> str:
    if root is None:
        raise DataError(f"dataset {name!r} needs a folder. Fix: set data.root=DIR ({expected})")
    path = expand_path(root)
    if not os.path.isdir(path):
        raise DataError(f"{name} root {path} does not exist or is not a folder. Fix: set "
                        f"data.root=DIR ({expected})")
    return path


_IMAGEFOLDER_EXPECTED = ("DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg (or DIR/test/), or "
                         "DIR/<class>/*.jpg for one folder used as both splits")


def _imagefolder_split_dirs(root: str) -> tuple[Optional[str], Optional[str]]:
    """(train dir, test dir) under root; a flat root of class folders serves as both, with a warning."""
    train = os.path.join(root, "train")
    tests = [os.path.join(root, s) for s in ("val", "test") if os.path.isdir(os.path.join(root, s))]
    test = tests[0] if tests else None
    if os.path.isdir(train):
        return train, test
    if test is None and _class_dirs(root):
        warnings.warn(f"{root} has no train/ folder: using its class folders for BOTH the train and "
                      f"test splits, so test scores are measured on training images", stacklevel=4)
        return root, root
    return None, test


def build_imagefolder(root: Optional[str], split: str, load_size: int,
                      skip_unreadable: bool = False) -> ImageFolderDataset:
    base = _require_dir(root, "imagefolder", _IMAGEFOLDER_EXPECTED)
    train_dir, test_dir = _imagefolder_split_dirs(base)
    folder = train_dir if split == "train" else test_dir
    if folder is None:
        want = "train/" if split == "train" else "val/ or test/"
        raise DataError(f"imagefolder: no {want} folder in {base}. Expected {_IMAGEFOLDER_EXPECTED}")
    # One class list for both splits (sorted union), so label i means the same class in each.
    classes = sorted(set(_class_dirs(train_dir or folder)) | set(_class_dirs(test_dir or folder)))
    samples = [(path, label) for label, cls in enumerate(classes)
               for path in find_images(os.path.join(folder, cls))]
    if not samples:
        raise DataError(f"imagefolder: no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders "
                        f"of {folder}. Expected {_IMAGEFOLDER_EXPECTED}")
    return ImageFolderDataset("imagefolder", folder, classes, samples, load_size, skip_unreadable)


def build_unlabeled_folder(root: Optional[str], load_size: int, skip_unreadable: bool = False) -> ImageFolderDataset:
    expected = "any folder tree of images: jpg, jpeg, png, bmp, webp, tif"
    base = _require_dir(root, "folder", expected)
    samples = [(path, -1) for path in find_images(base)]
    if not samples:
        raise DataError(f"folder: no images found under {base}. Expected {expected}")
    return ImageFolderDataset("folder", base, [], samples, load_size, skip_unreadable)


def unreadable_everywhere(datasets: Sequence[ImageFolderDataset], device: torch.device) -> Optional[list[str]]:
    """The paths marked unreadable in any of `datasets` by any rank, sorted, each once. Under a
    process group a collective (every rank calls it, with the same datasets): rank 0 gets the
    list, the other ranks None."""
    from .. import distributed as dist_utils

    offsets = np.cumsum([0] + [len(d) for d in datasets])  # dataset k's samples start at offsets[k]
    marked = torch.tensor([int(offsets[k]) + i for k, d in enumerate(datasets) for i in d.unreadable.indices()],
                          dtype=torch.int64)  # (m,) indices into the concatenated samples
    everyone = dist_utils.gather_shards_to_main(marked, device)  # (M,) on rank 0, else None
    if everyone is None:
        return None
    paths = set()
    for flat in everyone.tolist():
        k = int(np.searchsorted(offsets, flat, side="right")) - 1
        paths.add(datasets[k].samples[flat - int(offsets[k])][0])
    return sorted(paths)
